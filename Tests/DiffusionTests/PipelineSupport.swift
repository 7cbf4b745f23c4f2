import Foundation
import XCTest
@testable import Diffusion
import Tensor

/// The tiny pipeline of tools/make_pipeline_fixture.py: a diffusers folder assembled in a
/// temporary directory from Fixtures/pipeline (unet/, scheduler/, model_index.json), the tiny
/// CLIP of Fixtures/text/clip_sd1 and the tiny VAE of Fixtures/vae.
enum PipelineFixture {
    static var source: URL { Fixtures.folder("pipeline") }

    /// A fresh, writable pipeline folder (removed when the test ends).
    static func folder(_ testCase: XCTestCase) throws -> URL {
        let folder = try temporaryDirectory(testCase).appendingPathComponent("tiny-sd")
        let fm = FileManager.default
        try fm.createDirectory(at: folder, withIntermediateDirectories: true)
        for part in ["unet", "scheduler", "model_index.json"] {
            try fm.copyItem(at: source.appendingPathComponent(part), to: folder.appendingPathComponent(part))
        }
        for part in ["text_encoder", "tokenizer"] {
            try fm.copyItem(at: Fixtures.folder("text/clip_sd1").appendingPathComponent(part),
                            to: folder.appendingPathComponent(part))
        }
        try fm.createDirectory(at: folder.appendingPathComponent("vae"), withIntermediateDirectories: true)
        for name in ["config.json", "diffusion_pytorch_model.safetensors"] {
            try fm.copyItem(at: Fixtures.folder("vae").appendingPathComponent(name),
                            to: folder.appendingPathComponent("vae").appendingPathComponent(name))
        }
        return folder
    }

    struct Case: Decodable {
        let name: String
        let prompts: [String]
        let negative_prompt: String
        let guidance: Float
        let steps: Int
        let scheduler: String
        /// Scheduler config keys the case sets over the folder's config.
        let scheduler_overrides: [String: Bool]?
    }

    static func cases() throws -> [Case] {
        try JSONDecoder().decode([Case].self, from: Data(contentsOf: source.appendingPathComponent("cases.json")))
    }

    static func reference() throws -> TensorArchive {
        try TensorArchive(contentsOf: source.appendingPathComponent("reference.safetensors"))
    }
}

/// Asserts that two tensors hold the same bits.
func assertSameBits(_ a: Tensor, _ b: Tensor, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, "\(what): shapes", file: file, line: line)
    guard a.shape == b.shape else { return }
    let same = memcmp(a.pointer, b.pointer, a.count * MemoryLayout<Float>.stride) == 0
    XCTAssertTrue(same, "\(what): values differ (relative error \(relativeError(a, b)))", file: file, line: line)
}

/// Runs `body`, expecting it to throw an error whose description contains every one of `parts`.
func expectError<T>(_ body: @autoclosure () throws -> T, mentioning parts: [String], _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("\(what): no error", file: file, line: line)
    } catch {
        let text = "\(error)"
        for part in parts {
            XCTAssertTrue(text.contains(part), "\(what): error does not mention '\(part)': \(text)", file: file, line: line)
        }
    }
}
