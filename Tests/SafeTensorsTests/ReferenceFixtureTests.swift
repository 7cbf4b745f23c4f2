import Foundation
import XCTest
import SafeTensors

/// Reads a file written by Python's reference `safetensors` (tools/make_safetensors_fixture.py).
/// The test target declares no resources, so the fixture is found next to this source file.
final class ReferenceFixtureTests: SafeTensorsTestCase {
    static let fixtureURL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .appendingPathComponent("Fixtures/reference.safetensors")

    func testReadsEveryTensorOfTheReferenceFile() throws {
        let file = try SafeTensorsFile(url: Self.fixtureURL)
        XCTAssertEqual(file.metadata, ["format": "pt"])
        XCTAssertEqual(file.names, [
            "a_int64", "b_float64", "c0_scalar", "c1_empty", "c_float32", "d_int32",
            "e_bfloat16", "f_float16", "g_int16", "h_int8", "i_uint8", "j_bool",
        ])

        XCTAssertEqual(try file.info("a_int64"), TensorInfo(name: "a_int64", dtype: .i64, shape: [2, 3], dataOffsets: 0..<48))
        XCTAssertEqual(try file.int64s("a_int64"), [-3, -1, 0, 1, 1 << 40, -(1 << 62)])
        XCTAssertEqual(try file.info("b_float64").dtype, .f64)
        XCTAssertEqual(try file.floats("b_float64"), [1.5, -2.25, Float(1e-3 as Double)])
        XCTAssertEqual(try file.info("c0_scalar").shape, [])
        XCTAssertEqual(try file.floats("c0_scalar"), [42.5])
        XCTAssertEqual(try file.info("c1_empty").shape, [0, 4])
        XCTAssertEqual(try file.floats("c1_empty"), [])
        XCTAssertBitwiseEqual(try file.floats("c_float32"), [0.1, -1.5, .infinity, -0.0])
        XCTAssertEqual(try file.int64s("d_int32"), [Int64(Int32.min), 0, Int64(Int32.max)])
        XCTAssertEqual(try file.info("e_bfloat16").dtype, .bf16)
        XCTAssertEqual(try file.floats("e_bfloat16"), [1, -2.5, 3.140625, -.infinity])
        XCTAssertEqual(try file.info("f_float16").dtype, .f16)
        XCTAssertEqual(try file.floats("f_float16"), [0.5, -65504, 0x1p-24, .infinity, 0.0999755859375])
        XCTAssertEqual(try file.int64s("g_int16"), [-32768, 32767])
        XCTAssertEqual(try file.int64s("h_int8"), [-128, 127])
        XCTAssertEqual(try file.int64s("i_uint8"), [0, 128, 255])
        XCTAssertEqual(try file.info("j_bool").dtype, .bool)
        XCTAssertEqual(try file.int64s("j_bool"), [1, 0])
    }

    /// The fixture's tensor names sort in the reference's layout order, so writing the same
    /// tensors from Swift must reproduce the reference file byte for byte.
    func testWriterReproducesTheReferenceFileByteForByte() throws {
        let tensors = [
            TensorToWrite(name: "a_int64", shape: [2, 3], data: .int64s([-3, -1, 0, 1, 1 << 40, -(1 << 62)])),
            TensorToWrite(name: "b_float64", shape: [3], data: .raw(littleEndianBytes([1.5, -2.25, 1e-3].map { (value: Double) in value.bitPattern }), dtype: .f64)),
            TensorToWrite(name: "c0_scalar", shape: [], data: .floats([42.5])),
            TensorToWrite(name: "c1_empty", shape: [0, 4], data: .floats([])),
            TensorToWrite(name: "c_float32", shape: [2, 2], data: .floats([0.1, -1.5, .infinity, -0.0])),
            TensorToWrite(name: "d_int32", shape: [3], data: .raw(littleEndianBytes([Int32.min, 0, Int32.max]), dtype: .i32)),
            TensorToWrite(name: "e_bfloat16", shape: [4], data: .floats([1, -2.5, 3.140625, -.infinity], storedAs: .bf16)),
            TensorToWrite(name: "f_float16", shape: [5], data: .floats([0.5, -65504, 0x1p-24, .infinity, 0.1], storedAs: .f16)),
            TensorToWrite(name: "g_int16", shape: [2], data: .raw(littleEndianBytes([Int16.min, Int16.max]), dtype: .i16)),
            TensorToWrite(name: "h_int8", shape: [2], data: .raw([0x80, 0x7F], dtype: .i8)),
            TensorToWrite(name: "i_uint8", shape: [3], data: .raw([0, 128, 255], dtype: .u8)),
            TensorToWrite(name: "j_bool", shape: [2], data: .raw([1, 0], dtype: .bool)),
        ]
        let written = url("swift-written.safetensors")
        try writeSafeTensors(tensors.reversed(), metadata: ["format": "pt"], to: written)
        XCTAssertEqual(try Data(contentsOf: written), try Data(contentsOf: Self.fixtureURL))
    }
}
