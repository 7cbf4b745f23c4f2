import ArgumentParser
import Erasure
import Foundation
@testable import ScoreCLI
import XCTest

/// `score erase --method mace` and `--method advunlearn`: their flags reach their configs, are
/// checked while parsing, and are refused for other methods.
final class BaselineArgumentTests: XCTestCase {
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("score-cli-baselines-\(UUID().uuidString)/run").path

    func refused(_ arguments: [String], mentioning needle: String, line: UInt = #line) {
        XCTAssertThrowsError(try Score.parseAsRoot(arguments), line: line) { error in
            let message = Score.message(for: error)
            XCTAssert(message.contains(needle), "'\(message)' does not mention \(needle)", line: line)
        }
    }

    func testMACEAndAdvUnlearnFlags() throws {
        let mace = try XCTUnwrap(try Score.parseAsRoot(["erase", "--method", "mace", "--concept", "sneaker", "--out", out,
                                                        "--mace-lambda", "10", "--mace-iterations", "7", "--seed", "3"]) as? Erase)
        let maceConfig = try XCTUnwrap(try mace.eraser() as? MACE).config
        XCTAssertEqual(maceConfig.lambda, 10)
        XCTAssertEqual(maceConfig.iterations, 7)
        XCTAssertEqual(maceConfig.seed, 3)
        let adv = try XCTUnwrap(try Score.parseAsRoot(["erase", "--method", "advunlearn", "--concept", "sneaker", "--out", out,
                                                       "--advunlearn-module", "cross-attention", "--advunlearn-attack-steps", "4"]) as? Erase)
        let advConfig = try XCTUnwrap(try adv.eraser() as? AdvUnlearn).config
        XCTAssertEqual(advConfig.module, .crossAttention)
        XCTAssertEqual(advConfig.attackSteps, 4)

        refused(["erase", "--method", "esd", "--concept", "sneaker", "--out", out, "--mace-lambda", "1"], mentioning: "--mace-")
        refused(["erase", "--method", "mace", "--concept", "sneaker", "--out", out, "--advunlearn-lr", "1"], mentioning: "--advunlearn-")
        refused(["erase", "--method", "mace", "--concept", "sneaker", "--out", out, "--mace-lambda", "0"], mentioning: "lambda")
        refused(["erase", "--method", "advunlearn", "--concept", "sneaker", "--out", out, "--advunlearn-module", "vae"], mentioning: "text-encoder")
        refused(["erase", "--method", "mace", "--concept", "sneaker", "--out", out, "--lr", "0.1"], mentioning: "--lr")
    }
}
