import Foundation
import XCTest
import SafeTensors

/// Base class: each test gets a fresh temporary directory, removed afterwards.
class SafeTensorsTestCase: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("SafeTensorsTests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    /// Writes a hand-made file: an 8-byte length (the header's real length unless overridden),
    /// the header text, then `data`. This is how the corrupt files in the tests are built.
    @discardableResult
    func writeRawFile(_ name: String, header: String, data: [UInt8] = [], declaredHeaderLength: UInt64? = nil) throws -> URL {
        let headerBytes = Array(header.utf8)
        return try writeBytes(name, littleEndianBytes(declaredHeaderLength ?? UInt64(headerBytes.count)) + headerBytes + data)
    }

    @discardableResult
    func writeBytes(_ name: String, _ bytes: [UInt8]) throws -> URL {
        let fileURL = url(name)
        try Data(bytes).write(to: fileURL)
        return fileURL
    }

    /// Files in the test directory, to check that no temporary file was left behind.
    func directoryContents() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
    }

    /// Asserts that `body` throws exactly `expected`, and that its message mentions each of
    /// `mentions` (the file name and, where there is one, the key).
    func assertThrows<T>(
        _ expected: SafeTensorsError, mentions: [String], _ body: () throws -> T,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        do {
            _ = try body()
            XCTFail("expected \(expected), but nothing was thrown", file: file, line: line)
        } catch let error as SafeTensorsError {
            XCTAssertEqual(error, expected, file: file, line: line)
            for fragment in mentions {
                XCTAssertTrue(error.description.contains(fragment), "'\(error)' does not mention '\(fragment)'", file: file, line: line)
            }
        } catch {
            XCTFail("expected \(expected), got \(error)", file: file, line: line)
        }
    }
}

func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    values.flatMap { littleEndianBytes($0) }
}

/// Compares Floats by bit pattern, so -0 ≠ +0 and NaN == NaN (same payload).
func XCTAssertBitwiseEqual(_ actual: [Float], _ expected: [Float], file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(actual.map(\.bitPattern), expected.map(\.bitPattern), "\(actual) ≠ \(expected)", file: file, line: line)
}
