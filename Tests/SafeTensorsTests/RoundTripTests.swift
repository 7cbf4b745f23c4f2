import XCTest
import SafeTensors

/// Write with `writeSafeTensors`, read back with `SafeTensorsFile`, once per dtype.
final class RoundTripTests: SafeTensorsTestCase {
    private func roundTrip(_ data: TensorData, shape: [Int], name: String = "t") throws -> (SafeTensorsFile, TensorInfo) {
        let fileURL = url("roundtrip.safetensors")
        try writeSafeTensors([TensorToWrite(name: name, shape: shape, data: data)], to: fileURL)
        let file = try SafeTensorsFile(url: fileURL)
        return (file, try file.info(name))
    }

    func testF32() throws {
        let values: [Float] = [0, -0.0, 1.5, -3.25e-20, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude]
        let (file, info) = try roundTrip(.floats(values), shape: [2, 4])
        XCTAssertEqual(info, TensorInfo(name: "t", dtype: .f32, shape: [2, 4], dataOffsets: 0..<32))
        XCTAssertBitwiseEqual(try file.floats("t"), values)
        XCTAssertTrue(try roundTrip(.floats([.nan]), shape: [1]).0.floats("t")[0].isNaN)
    }

    func testF16() throws {
        let values: [Float] = [0, -0.0, 1, -2.5, 65504, 0x1p-24, .infinity, 0.0999755859375]
        let (file, info) = try roundTrip(.floats(values, storedAs: .f16), shape: [8])
        XCTAssertEqual(info.dtype, .f16)
        XCTAssertEqual(info.dataOffsets, 0..<16)
        XCTAssertBitwiseEqual(try file.floats("t"), values)
        // Values that are not representable come back rounded.
        XCTAssertEqual(try roundTrip(.floats([0.1, 1e6], storedAs: .f16), shape: [2]).0.floats("t"), [0.0999755859375, .infinity])
    }

    func testBF16() throws {
        let values: [Float] = [0, -0.0, 1, -2.5, 3.140625, .infinity, -.infinity, 0x1p-130]
        let (file, info) = try roundTrip(.floats(values, storedAs: .bf16), shape: [4, 2])
        XCTAssertEqual(info.dtype, .bf16)
        XCTAssertBitwiseEqual(try file.floats("t"), values)
        XCTAssertEqual(try roundTrip(.floats([Float.pi], storedAs: .bf16), shape: [1]).0.floats("t"), [3.140625])
    }

    func testF64() throws {
        let values: [Float] = [1.5, -0.0, .infinity, 0.1]
        let (file, info) = try roundTrip(.floats(values, storedAs: .f64), shape: [4])
        XCTAssertEqual(info.dtype, .f64)
        XCTAssertEqual(info.dataOffsets, 0..<32)
        XCTAssertBitwiseEqual(try file.floats("t"), values)
    }

    func testI64() throws {
        let values: [Int64] = [.min, -1, 0, 1, .max, 1 << 40]
        let (file, info) = try roundTrip(.int64s(values), shape: [3, 2])
        XCTAssertEqual(info.dtype, .i64)
        XCTAssertEqual(try file.int64s("t"), values)
    }

    func testI32() throws {
        let values: [Int32] = [.min, -7, 0, .max]
        let (file, _) = try roundTrip(.raw(littleEndianBytes(values), dtype: .i32), shape: [4])
        XCTAssertEqual(try file.int64s("t"), values.map(Int64.init))
    }

    func testI16() throws {
        let values: [Int16] = [.min, -1, .max]
        let (file, _) = try roundTrip(.raw(littleEndianBytes(values), dtype: .i16), shape: [3])
        XCTAssertEqual(try file.int64s("t"), values.map(Int64.init))
    }

    func testI8() throws {
        let values: [Int8] = [.min, -1, 0, .max]
        let (file, _) = try roundTrip(.raw(values.map { UInt8(bitPattern: $0) }, dtype: .i8), shape: [2, 2])
        XCTAssertEqual(try file.int64s("t"), values.map(Int64.init))
    }

    func testU8() throws {
        let (file, _) = try roundTrip(.raw([0, 1, 128, 255], dtype: .u8), shape: [4])
        XCTAssertEqual(try file.int64s("t"), [0, 1, 128, 255])
    }

    func testU16AndU32() throws {
        let (file16, _) = try roundTrip(.raw(littleEndianBytes([UInt16.max, 0]), dtype: .u16), shape: [2])
        XCTAssertEqual(try file16.int64s("t"), [65535, 0])
        let (file32, _) = try roundTrip(.raw(littleEndianBytes([UInt32.max]), dtype: .u32), shape: [1])
        XCTAssertEqual(try file32.int64s("t"), [4_294_967_295])
    }

    func testBool() throws {
        let (file, info) = try roundTrip(.raw([1, 0, 1], dtype: .bool), shape: [3])
        XCTAssertEqual(info.dtype, .bool)
        XCTAssertEqual(try file.int64s("t"), [1, 0, 1])
    }

    func testTypesWithoutConversionStillOpenAndExposeRawBytes() throws {
        let bytes = littleEndianBytes([UInt64.max])
        let (file, info) = try roundTrip(.raw(bytes, dtype: .u64), shape: [])
        XCTAssertEqual(info.elementCount, 1)
        XCTAssertEqual(try file.withRawBytes("t") { Array($0) }, bytes)
        let (f8File, _) = try roundTrip(.raw([0x3C, 0xBC], dtype: .f8e4m3), shape: [2])
        XCTAssertEqual(try f8File.withRawBytes("t") { Array($0) }, [0x3C, 0xBC])
    }

    func testScalarAndEmptyTensors() throws {
        let fileURL = url("shapes.safetensors")
        try writeSafeTensors([
            (name: "scalar", shape: [], values: [7]),
            (name: "empty", shape: [3, 0], values: []),
        ], to: fileURL)
        let file = try SafeTensorsFile(url: fileURL)
        XCTAssertEqual(try file.floats("scalar"), [7])
        XCTAssertEqual(try file.info("scalar").shape, [])
        XCTAssertEqual(try file.floats("empty"), [])
        XCTAssertEqual(try file.info("empty").dataOffsets, 0..<0)
    }

    func testManyTensorsWithMixedTypesAndMetadata() throws {
        let fileURL = url("mixed.safetensors")
        let tensors = [
            TensorToWrite(name: "z.weight", shape: [3], data: .floats([1, 2, 3], storedAs: .f16)),
            TensorToWrite(name: "a.bias", shape: [1], data: .floats([0.5])),
            TensorToWrite(name: "m.ids", shape: [2], data: .int64s([4, 5])),
        ]
        let metadata = ["format": "pt", "quote\"and\\slash\n": "ünïcode ✓ \u{1}"]
        try writeSafeTensors(tensors, metadata: metadata, to: fileURL)
        let file = try SafeTensorsFile(url: fileURL)
        XCTAssertEqual(file.url, fileURL)
        XCTAssertEqual(file.names, ["a.bias", "m.ids", "z.weight"])
        XCTAssertEqual(file.metadata, metadata)
        XCTAssertEqual(try file.floats("z.weight"), [1, 2, 3])
        XCTAssertEqual(try file.floats("a.bias"), [0.5])
        XCTAssertEqual(try file.int64s("m.ids"), [4, 5])
        // Laid out in name order: a.bias (4 bytes), m.ids (16), z.weight (6).
        XCTAssertEqual(try file.info("m.ids").dataOffsets, 4..<20)
        XCTAssertEqual(try file.info("z.weight").dataOffsets, 20..<26)
    }

    func testUnalignedTensorsReadCorrectly() throws {
        // A 1-byte tensor first pushes the F32 data to an odd offset.
        let fileURL = url("unaligned.safetensors")
        try writeSafeTensors([
            TensorToWrite(name: "a", shape: [1], data: .raw([9], dtype: .u8)),
            TensorToWrite(name: "b", shape: [3], data: .floats([1.25, -2, 3])),
            TensorToWrite(name: "c", shape: [1], data: .int64s([-5])),
        ], to: fileURL)
        let file = try SafeTensorsFile(url: fileURL)
        XCTAssertEqual(try file.info("b").dataOffsets, 1..<13)
        XCTAssertEqual(try file.floats("b"), [1.25, -2, 3])
        XCTAssertEqual(try file.int64s("c"), [-5])
    }
}
