import Foundation
import XCTest
import Tensor

/// The bundled fixtures (tools/make_diffusion_model_fixtures.py).
enum Fixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    static func folder(_ name: String) -> URL { root.appendingPathComponent(name) }

    /// The reference inputs and outputs of a fixture folder.
    static func io(_ name: String) throws -> TensorArchive {
        try TensorArchive(contentsOf: folder(name).appendingPathComponent("io.safetensors"))
    }
}

/// max|actual − expected| / max|expected|: the error relative to the tensor's scale.
func relativeError(_ actual: Tensor, _ expected: Tensor) -> Float {
    precondition(actual.shape == expected.shape, "shape \(actual.shape) vs expected \(expected.shape)")
    var worst: Float = 0, scale: Float = 0
    for i in 0..<expected.count {
        worst = max(worst, abs(actual.pointer[i] - expected.pointer[i]))
        scale = max(scale, abs(expected.pointer[i]))
    }
    return worst / max(scale, .leastNormalMagnitude)
}

func assertClose(_ actual: Tensor?, _ expected: Tensor, tolerance: Float, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    guard let actual else { XCTFail("\(what): missing", file: file, line: line); return }
    guard actual.shape == expected.shape else {
        XCTFail("\(what): shape \(actual.shape), expected \(expected.shape)", file: file, line: line)
        return
    }
    let error = relativeError(actual, expected)
    if ProcessInfo.processInfo.environment["PRINT_ERRORS"] != nil { print("ERR \(what): \(error)") }
    XCTAssertLessThanOrEqual(error, tolerance, "\(what): relative error \(error)", file: file, line: line)
}

/// A fresh temporary directory, removed when the test case ends.
func temporaryDirectory(_ testCase: XCTestCase) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("diffusion-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    testCase.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
}
