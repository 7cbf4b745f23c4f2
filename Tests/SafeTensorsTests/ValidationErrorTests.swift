import Foundation
import XCTest
import SafeTensors

/// One test per validation failure: a hand-made corrupt file, the exact error case, and a
/// message that names the file and (where there is one) the key.
final class ValidationErrorTests: SafeTensorsTestCase {
    /// A valid 2-element F32 entry at `offsets` (8 bytes), for headers built by hand.
    private func entry(_ offsets: String = "[0,8]", dtype: String = "\"F32\"", shape: String = "[2]") -> String {
        "{\"dtype\":\(dtype),\"shape\":\(shape),\"data_offsets\":\(offsets)}"
    }
    private let eightBytes = [UInt8](repeating: 0, count: 8)

    private func open(_ fileURL: URL) throws -> SafeTensorsFile { try SafeTensorsFile(url: fileURL) }

    // MARK: Sanity: what is allowed

    func testMinimalValidFilesOpen() throws {
        let empty = try open(writeRawFile("empty.safetensors", header: "{}"))
        XCTAssertEqual(empty.names, [])
        let padded = try open(writeRawFile("padded.safetensors", header: "{\"w\":\(entry())}   ", data: eightBytes))
        XCTAssertEqual(padded.names, ["w"])
        // Gaps between tensors and unknown entry fields are tolerated, as in the reference.
        let gap = try open(writeRawFile(
            "gap.safetensors", header: "{\"w\":\(entry("[4,12]")),\"x\":{\"extra\":1,\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[12,13]}}",
            data: eightBytes + eightBytes))
        XCTAssertEqual(try gap.floats("w"), [0, 0])
    }

    // MARK: Opening

    func testMissingFile() {
        let path = url("absent.safetensors").path
        assertThrows(.cannotOpen(file: path, reason: "No such file or directory"), mentions: ["absent.safetensors"]) {
            try SafeTensorsFile(path: path)
        }
    }

    func testDirectoryIsNotAFile() {
        assertThrows(.cannotOpen(file: directory.path, reason: "not a regular file"), mentions: [directory.lastPathComponent]) {
            try SafeTensorsFile(url: directory)
        }
    }

    func testFileShorterThanEightBytes() throws {
        let fileURL = try writeBytes("short.safetensors", [1, 2, 3, 4, 5])
        assertThrows(.truncated(file: fileURL.path, size: 5), mentions: ["short.safetensors"]) { try open(fileURL) }
        let emptyURL = try writeBytes("zero.safetensors", [])
        assertThrows(.truncated(file: emptyURL.path, size: 0), mentions: ["zero.safetensors"]) { try open(emptyURL) }
    }

    func testHeaderLengthBeyondFile() throws {
        let fileURL = try writeRawFile("beyond.safetensors", header: "{}", declaredHeaderLength: 1000)
        assertThrows(.headerLengthBeyondFile(file: fileURL.path, headerLength: 1000, fileSize: 10), mentions: ["beyond.safetensors"]) {
            try open(fileURL)
        }
    }

    func testHeaderOver100MB() throws {
        let fileURL = try writeRawFile("huge.safetensors", header: "{}", declaredHeaderLength: 100_000_001)
        assertThrows(.headerTooLarge(file: fileURL.path, headerLength: 100_000_001, limit: 100_000_000), mentions: ["huge.safetensors"]) {
            try open(fileURL)
        }
        // A length that does not even fit in Int64 is reported the same way, without a crash.
        let wildURL = try writeRawFile("wild.safetensors", header: "{}", declaredHeaderLength: .max)
        assertThrows(.headerTooLarge(file: wildURL.path, headerLength: .max, limit: 100_000_000), mentions: ["wild.safetensors"]) {
            try open(wildURL)
        }
    }

    func testHeaderNotValidJSON() throws {
        let fileURL = try writeRawFile("badjson.safetensors", header: "{\"w\": ")
        assertThrows(.invalidHeaderJSON(file: fileURL.path, reason: "unexpected end of input at byte 6"), mentions: ["badjson.safetensors"]) {
            try open(fileURL)
        }
        let trailingComma = try writeRawFile("comma.safetensors", header: "{\"w\":\(entry()),}", data: eightBytes)
        assertThrows(.invalidHeaderJSON(file: trailingComma.path, reason: "expected a string key at byte 54"), mentions: ["comma.safetensors"]) {
            try open(trailingComma)
        }
        let badUTF8 = try writeBytes("utf8.safetensors", littleEndianBytes(UInt64(5)) + [0x7B, 0x22, 0xFF, 0x22, 0x7D])
        assertThrows(.invalidHeaderJSON(file: badUTF8.path, reason: "string is not valid UTF-8 at byte 4"), mentions: ["utf8.safetensors"]) {
            try open(badUTF8)
        }
        let emptyHeader = try writeRawFile("noheader.safetensors", header: "")
        assertThrows(.invalidHeaderJSON(file: emptyHeader.path, reason: "unexpected end of input at byte 0"), mentions: ["noheader.safetensors"]) {
            try open(emptyHeader)
        }
    }

    func testHeaderNotAnObject() throws {
        let fileURL = try writeRawFile("array.safetensors", header: "[1, 2]")
        assertThrows(.headerNotObject(file: fileURL.path), mentions: ["array.safetensors"]) { try open(fileURL) }
    }

    func testEntryMissingField() throws {
        let fileURL = try writeRawFile("missing.safetensors", header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", data: eightBytes)
        assertThrows(.invalidEntry(file: fileURL.path, key: "w", reason: "missing field 'data_offsets'"), mentions: ["missing.safetensors", "'w'"]) {
            try open(fileURL)
        }
    }

    func testEntryFieldsOfWrongType() throws {
        let cases: [(header: String, reason: String)] = [
            ("{\"w\":[1]}", "expected an object, found an array"),
            ("{\"w\":\(entry(dtype: "32"))}", "'dtype' must be a string"),
            ("{\"w\":\(entry(shape: "\"2\""))}", "'shape' must be an array"),
            ("{\"w\":\(entry("[0]"))}", "'data_offsets' must be an array of two integers"),
            ("{\"w\":\(entry("[0,8.0]"))}", "'data_offsets' must be an array of two integers"),
            ("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "duplicate field 'dtype'"),
        ]
        for (index, testCase) in cases.enumerated() {
            let fileURL = try writeRawFile("wrongtype\(index).safetensors", header: testCase.header, data: eightBytes)
            assertThrows(.invalidEntry(file: fileURL.path, key: "w", reason: testCase.reason), mentions: ["wrongtype\(index).safetensors", "'w'"]) {
                try open(fileURL)
            }
        }
    }

    func testUnknownDType() throws {
        let fileURL = try writeRawFile("dtype.safetensors", header: "{\"w\":\(entry(dtype: "\"F17\""))}", data: eightBytes)
        assertThrows(.unknownDType(file: fileURL.path, key: "w", dtype: "F17"), mentions: ["dtype.safetensors", "'w'", "F17"]) {
            try open(fileURL)
        }
    }

    func testNegativeShape() throws {
        let fileURL = try writeRawFile("negative.safetensors", header: "{\"w\":\(entry(shape: "[-2]"))}", data: eightBytes)
        assertThrows(
            .invalidShape(file: fileURL.path, key: "w", reason: "dimensions must be non-negative integers, found -2"),
            mentions: ["negative.safetensors", "'w'"]
        ) { try open(fileURL) }
    }

    func testNonIntegerShape() throws {
        // 2.0 must be rejected too: JSONSerialization would quietly accept it as 2.
        for (index, dimension) in ["2.0", "2.5", "\"2\"", "true", "2e0"].enumerated() {
            let described = ["2.0", "2.5", "a string", "a boolean", "2.0"][index]
            let fileURL = try writeRawFile("fraction\(index).safetensors", header: "{\"w\":\(entry(shape: "[\(dimension)]"))}", data: eightBytes)
            assertThrows(
                .invalidShape(file: fileURL.path, key: "w", reason: "dimensions must be non-negative integers, found \(described)"),
                mentions: ["fraction\(index).safetensors", "'w'"]
            ) { try open(fileURL) }
        }
    }

    func testShapeWhoseByteSizeOverflows() throws {
        let fileURL = try writeRawFile("overflow.safetensors", header: "{\"w\":\(entry(shape: "[4611686018427387904,4]"))}", data: eightBytes)
        assertThrows(.invalidShape(file: fileURL.path, key: "w", reason: "byte size overflows"), mentions: ["overflow.safetensors", "'w'"]) {
            try open(fileURL)
        }
    }

    func testDataOffsetsOutOfRange() throws {
        let fileURL = try writeRawFile("range.safetensors", header: "{\"w\":\(entry("[4,12]"))}", data: eightBytes)
        assertThrows(.offsetsOutOfRange(file: fileURL.path, key: "w", begin: 4, end: 12, dataSize: 8), mentions: ["range.safetensors", "'w'"]) {
            try open(fileURL)
        }
        let negative = try writeRawFile("negoffset.safetensors", header: "{\"w\":\(entry("[-8,0]"))}", data: eightBytes)
        assertThrows(.offsetsOutOfRange(file: negative.path, key: "w", begin: -8, end: 0, dataSize: 8), mentions: ["negoffset.safetensors", "'w'"]) {
            try open(negative)
        }
    }

    func testDataOffsetsBeginAfterEnd() throws {
        let fileURL = try writeRawFile("reversed.safetensors", header: "{\"w\":\(entry("[8,0]"))}", data: eightBytes)
        assertThrows(.offsetsReversed(file: fileURL.path, key: "w", begin: 8, end: 0), mentions: ["reversed.safetensors", "'w'"]) {
            try open(fileURL)
        }
    }

    func testByteSizeDoesNotMatchShapeAndDType() throws {
        // Two F32 values need 8 bytes; the offsets span 6.
        let fileURL = try writeRawFile("size.safetensors", header: "{\"w\":\(entry("[0,6]"))}", data: eightBytes)
        assertThrows(.byteSizeMismatch(file: fileURL.path, key: "w", expected: 8, actual: 6), mentions: ["size.safetensors", "'w'"]) {
            try open(fileURL)
        }
    }

    func testOverlappingTensors() throws {
        let header = "{\"a\":\(entry("[0,8]")),\"b\":\(entry("[4,12]")),\"empty\":\(entry("[6,6]", shape: "[0]"))}"
        let fileURL = try writeRawFile("overlap.safetensors", header: header, data: eightBytes + eightBytes)
        assertThrows(.overlappingTensors(file: fileURL.path, key: "b", otherKey: "a"), mentions: ["overlap.safetensors", "'a'", "'b'"]) {
            try open(fileURL)
        }
    }

    func testDuplicateKeys() throws {
        // JSONSerialization would silently keep one of the two "w" entries.
        let header = "{\"w\":\(entry("[0,8]")),\"v\":\(entry("[8,16]")),\"w\":\(entry("[8,16]"))}"
        let fileURL = try writeRawFile("duplicate.safetensors", header: header, data: eightBytes + eightBytes)
        assertThrows(.duplicateKey(file: fileURL.path, key: "w"), mentions: ["duplicate.safetensors", "'w'"]) { try open(fileURL) }
        // Keys are compared after unescaping: "\u0077" is "w".
        let escaped = "{\"w\":\(entry("[0,8]")),\"\\u0077\":\(entry("[8,16]"))}"
        let escapedURL = try writeRawFile("escaped.safetensors", header: escaped, data: eightBytes + eightBytes)
        assertThrows(.duplicateKey(file: escapedURL.path, key: "w"), mentions: ["escaped.safetensors", "'w'"]) { try open(escapedURL) }
    }

    func testMetadataMustMapStringsToStrings() throws {
        let fileURL = try writeRawFile("metadata.safetensors", header: "{\"__metadata__\":{\"epoch\":3}}")
        assertThrows(.invalidMetadata(file: fileURL.path, reason: "value of 'epoch' is a number, not a string"), mentions: ["metadata.safetensors", "epoch"]) {
            try open(fileURL)
        }
        let notObject = try writeRawFile("metadata2.safetensors", header: "{\"__metadata__\":\"pt\"}")
        assertThrows(.invalidMetadata(file: notObject.path, reason: "expected an object, found a string"), mentions: ["metadata2.safetensors"]) {
            try open(notObject)
        }
    }

    // MARK: Reading

    func testMissingKeyOnLookup() throws {
        let fileURL = try writeRawFile("lookup.safetensors", header: "{\"w\":\(entry())}", data: eightBytes)
        let file = try open(fileURL)
        for read in [{ _ = try file.info("nope") }, { _ = try file.floats("nope") }, { _ = try file.int64s("nope") },
                     { try file.withRawBytes("nope") { _ in } }] {
            assertThrows(.keyNotFound(file: fileURL.path, key: "nope"), mentions: ["lookup.safetensors", "'nope'"], read)
        }
    }

    func testDTypeNotConvertibleToFloat() throws {
        let fileURL = try writeRawFile("ints.safetensors", header: "{\"ids\":\(entry(dtype: "\"I32\""))}", data: eightBytes)
        let file = try open(fileURL)
        assertThrows(.notConvertibleToFloat(file: fileURL.path, key: "ids", dtype: .i32), mentions: ["ints.safetensors", "'ids'", "I32"]) {
            try file.floats("ids")
        }
        XCTAssertEqual(try file.int64s("ids"), [0, 0])
    }

    func testDTypeNotConvertibleToInt64() throws {
        let fileURL = try writeRawFile("floats.safetensors", header: "{\"w\":\(entry())}", data: eightBytes)
        assertThrows(.notConvertibleToInt64(file: fileURL.path, key: "w", dtype: .f32), mentions: ["floats.safetensors", "'w'", "F32"]) {
            try open(fileURL).int64s("w")
        }
        let u64URL = try writeRawFile("u64.safetensors", header: "{\"n\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[0,8]}}", data: eightBytes)
        assertThrows(.notConvertibleToInt64(file: u64URL.path, key: "n", dtype: .u64), mentions: ["u64.safetensors", "'n'"]) {
            try open(u64URL).int64s("n")
        }
    }
}
