import Foundation
import XCTest
import SafeTensors

final class WriterTests: SafeTensorsTestCase {
    private let sample: [(name: String, shape: [Int], values: [Float])] = [
        (name: "b", shape: [2], values: [1, 2]),
        (name: "a", shape: [1, 3], values: [3, 4, 5]),
        (name: "c", shape: [], values: [6]),
    ]

    func testOutputIsDeterministicSortedAndPaddedToEightBytes() throws {
        let first = url("first.safetensors"), second = url("second.safetensors")
        try writeSafeTensors(sample, metadata: ["y": "2", "x": "1"], to: first)
        try writeSafeTensors(sample.reversed(), metadata: ["x": "1", "y": "2"], to: second)
        let bytes = [UInt8](try Data(contentsOf: first))
        XCTAssertEqual(bytes, [UInt8](try Data(contentsOf: second)))

        let headerLength = Int(bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) })
        XCTAssertEqual(headerLength % 8, 0)
        let header = String(decoding: bytes[8..<(8 + headerLength)], as: UTF8.self)
        XCTAssertEqual(header.trimmingCharacters(in: .whitespaces), """
            {"__metadata__":{"x":"1","y":"2"},"a":{"dtype":"F32","shape":[1,3],"data_offsets":[0,12]},\
            "b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},"c":{"dtype":"F32","shape":[],"data_offsets":[20,24]}}
            """)
        XCTAssertEqual(bytes.count, 8 + headerLength + 24)
    }

    func testOverwritesAnExistingFile() throws {
        let target = url("model.safetensors")
        try writeSafeTensors([(name: "old", shape: [1], values: [1])], to: target)
        try writeSafeTensors([(name: "new", shape: [1], values: [2])], to: target)
        XCTAssertEqual(try SafeTensorsFile(url: target).names, ["new"])
        XCTAssertEqual(try directoryContents(), ["model.safetensors"])
    }

    func testValueCountMismatchLeavesTheOldFileIntact() throws {
        let target = url("model.safetensors")
        try writeSafeTensors([(name: "w", shape: [2], values: [1, 2])], to: target)
        let before = try Data(contentsOf: target)

        assertThrows(
            .valueCountMismatch(file: target.path, key: "bad", shape: [2, 2], expected: 4, actual: 3),
            mentions: ["model.safetensors", "'bad'"]
        ) {
            try writeSafeTensors([(name: "ok", shape: [1], values: [0]), (name: "bad", shape: [2, 2], values: [1, 2, 3])], to: target)
        }
        XCTAssertEqual(try Data(contentsOf: target), before)
        XCTAssertEqual(try directoryContents(), ["model.safetensors"], "no temporary file left behind")
    }

    func testADirectoryInTheWayIsRefusedBeforeWriting() throws {
        // A rename would fail over a non-empty directory (and replace an empty one): refused first.
        let target = url("occupied.safetensors")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: false)
        try Data([1]).write(to: target.appendingPathComponent("keep"))

        XCTAssertThrowsError(try writeSafeTensors(sample, to: target)) { error in
            guard case .writeFailed(let file, let reason)? = error as? SafeTensorsError else { return XCTFail("\(error)") }
            XCTAssertEqual(file, target.path)
            XCTAssertTrue(reason.contains("the path is a directory"), reason)
            XCTAssertTrue("\(error)".contains("occupied.safetensors"))
        }
        XCTAssertEqual(try directoryContents(), ["occupied.safetensors"], "temporary file removed")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: target.path), ["keep"])
    }

    func testMissingDirectoryFailsCleanly() {
        let target = directory.appendingPathComponent("no/such/dir/model.safetensors")
        XCTAssertThrowsError(try writeSafeTensors(sample, to: target)) { error in
            guard case .writeFailed(let file, _)? = error as? SafeTensorsError else { return XCTFail("\(error)") }
            XCTAssertEqual(file, target.path)
        }
    }

    func testUnsupportedFloatStorageType() {
        let target = url("model.safetensors")
        assertThrows(.unsupportedWriteDType(file: target.path, key: "w", dtype: .i32), mentions: ["model.safetensors", "'w'", "I32"]) {
            try writeSafeTensors([(name: "w", shape: [1], values: [1])], dtype: .i32, to: target)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: target.path))
    }

    func testDuplicateAndReservedNames() throws {
        let target = url("model.safetensors")
        assertThrows(.duplicateKey(file: target.path, key: "w"), mentions: ["model.safetensors", "'w'"]) {
            try writeSafeTensors([(name: "w", shape: [1], values: [1]), (name: "w", shape: [1], values: [2])], to: target)
        }
        assertThrows(
            .invalidEntry(file: target.path, key: "__metadata__", reason: "the name is reserved for metadata"),
            mentions: ["model.safetensors", "'__metadata__'"]
        ) {
            try writeSafeTensors([(name: "__metadata__", shape: [1], values: [1])], to: target)
        }
        XCTAssertEqual(try directoryContents(), [])
    }

    func testNegativeShapeAndShortRawData() {
        let target = url("model.safetensors")
        assertThrows(.invalidShape(file: target.path, key: "w", reason: "negative dimension -1"), mentions: ["model.safetensors", "'w'"]) {
            try writeSafeTensors([(name: "w", shape: [-1], values: [])], to: target)
        }
        assertThrows(.valueCountMismatch(file: target.path, key: "r", shape: [2], expected: 2, actual: 1), mentions: ["'r'"]) {
            try writeSafeTensors([TensorToWrite(name: "r", shape: [2], data: .raw([1, 2, 3], dtype: .i16))], to: target)
        }
    }
}
