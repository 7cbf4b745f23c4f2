import Diffusion
import Evaluation
import Foundation
import Testbed
import XCTest

/// `score check-model --prompt`: the embedded model's trousers are judged as trousers, and the
/// fractions over the ten classes account for every image.
final class ClassDistributionTests: XCTestCase {
    func testTheEmbeddedModelsTrousersAreJudgedAsTrousers() throws {
        let model: LoadedModel
        do { model = try ModelLoader.load(nil) } catch { throw XCTSkip("the embedded model needs MiniLM (`score assets`): \(error)") }
        let judge = try DefaultModel.judge("cnn", folder: nil)
        let prompts = try FashionPrompts.bundled()
        let fractions = try classDistribution(pipeline: model.pipeline, judge: judge, prompts: prompts,
                                              prompt: "a photo of a pair of trousers", count: 8, steps: 10, guidance: 4, seed: 3)
        XCTAssertEqual(Set(fractions.keys), Set(prompts.classes.map(\.name)))
        XCTAssertEqual(fractions.values.reduce(0, +), 1, accuracy: 1e-9)
        XCTAssertGreaterThanOrEqual(fractions["Trouser"] ?? 0, 0.75, "\(fractions)")
    }
}
