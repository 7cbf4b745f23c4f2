import ArgumentParser
import Diffusion
import Evaluation
import Foundation
@testable import ScoreCLI
import Testbed
import XCTest

/// Errors reach the user as one clean line naming the file, key or flag.
final class ErrorMessageTests: XCTestCase {
    func printed(_ error: Error) -> String {
        Score.message(for: CommandFailure.presenting(error))
    }

    func testFoundationFileErrorsPrintThePathAndReasonNotADump() throws {
        let missing = "/nonexistent-score-test/weights.safetensors"
        XCTAssertThrowsError(try Data(contentsOf: URL(fileURLWithPath: missing))) { error in
            let message = printed(error)
            XCTAssert(message.contains(missing), message)
            XCTAssertFalse(message.contains("Domain"), message)
            XCTAssertFalse(message.contains("Code="), message)
        }
    }

    func testDecodingErrorsNameTheKey() throws {
        struct Config: Decodable { var inner: Inner; struct Inner: Decodable { var steps: Int } }
        XCTAssertThrowsError(try JSONDecoder().decode(Config.self, from: Data(#"{"inner": {"steps": "many"}}"#.utf8))) { error in
            let message = printed(error)
            XCTAssert(message.contains("inner.steps"), message)
            XCTAssertFalse(message.contains("codingPath"), message)
        }
    }

    /// ArgumentParser prints what `validate()` throws as the error describes itself; a Foundation
    /// error thrown there is worded first.
    func testFoundationErrorsThrownWhileValidatingPrintThePathAndReason() throws {
        let missing = "/nonexistent-score-test/prompts.txt"
        XCTAssertThrowsError(try checking { _ = try Data(contentsOf: URL(fileURLWithPath: missing)) }) { error in
            let message = Score.message(for: error)
            XCTAssertEqual(message, "\(missing): no such file or folder")
        }
    }

    /// A --config value of the wrong JSON type names the file, the key and the type, not Swift's
    /// DecodingError.
    func testAConfigValueOfTheWrongTypeNamesTheKey() throws {
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("score-config-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: config) }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("score-config-run-\(UUID().uuidString)").path
        for (text, needle) in [(#"{"steps": 2.5}"#, "key 'steps' must be a whole number, not 2.5"),
                               (#"{"eta": true}"#, "key 'eta' must be a number, not true")] {
            try Data(text.utf8).write(to: config)
            XCTAssertThrowsError(try Score.parseAsRoot(["erase", "--concept", "sneaker", "--out", out, "--config", config.path])) { error in
                let message = Score.message(for: error)
                XCTAssert(message.contains(config.path) && message.contains(needle), message)
                for raw in ["DecodingError", "codingPath", "Context", "Domain"] { XCTAssertFalse(message.contains(raw), message) }
            }
        }
    }

    func testTheMissingTextEncoderErrorNamesAFlag() {
        let error = PipelineError.textEncoderRequired(file: URL(fileURLWithPath: "/models/x/model_index.json"), className: "BertModel")
        let message = printed(error)
        XCTAssert(message.contains("--model"), message)
        XCTAssertFalse(message.contains("textEncoder:"), message)
        XCTAssert(message.contains("/models/x/model_index.json"), message)
    }

    func testLibraryErrorsPrintTheirOwnMessage() {
        XCTAssertEqual(printed(EvaluationError.invalidSetting("--target-images must be at least 1, not 0")),
                       "--target-images must be at least 1, not 0")
        XCTAssertEqual(printed(TrainingError.invalidOption("--steps must be at least 1, not 0")), "--steps must be at least 1, not 0")
        let validation = ValidationError("--x is bad")
        XCTAssert(CommandFailure.presenting(validation) is ValidationError)
    }
}

/// `score generate` refuses a run that cannot fit in memory before allocating it.
final class GenerationMemoryTests: XCTestCase {
    func testTheEstimateGrowsWithImagesAndPixels() {
        let sd = GenerationRun.estimatedBytes(unetChannels: 320, vaeChannels: 128, vaeScale: 8, images: 1, height: 512, width: 512, guidance: 7.5)
        XCTAssert(sd > 1e8 && sd < 8e9, "SD 1.5 at 512² needs between 0.1 and 8 GB, estimated \(sd / 1e9) GB")
        let huge = GenerationRun.estimatedBytes(unetChannels: 320, vaeChannels: 128, vaeScale: 8, images: 1, height: 65536, width: 65536, guidance: 7.5)
        XCTAssert(huge > 1e12, "\(huge)")
        let many = GenerationRun.estimatedBytes(unetChannels: 32, vaeChannels: nil, vaeScale: 1, images: 1_000_000, height: 32, width: 32, guidance: 7.5)
        XCTAssert(many > 1e12, "\(many)")
        let one = GenerationRun.estimatedBytes(unetChannels: 32, vaeChannels: nil, vaeScale: 1, images: 1, height: 32, width: 32, guidance: 7.5)
        XCTAssertEqual(many / one, 1_000_000, accuracy: 1)
    }

    func testAnOversizedRunIsRefusedBeforeSampling() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("score-generate-\(UUID().uuidString).png")
        var run = GenerationRun(output: out.path)
        run.prompt = "a sneaker"
        run.numImages = 1_000_000
        do {
            _ = try run.run(assets: Assets())
            XCTFail("a million images were not refused")
        } catch let error as EvaluationError {
            XCTAssert(error.description.contains("--num-images"), error.description)
        } catch {
            throw XCTSkip("the embedded model cannot be loaded here: \(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
    }
}
