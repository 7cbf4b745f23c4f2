import Diffusion
import Evaluation
import Foundation
import Testbed
import XCTest

/// Figures of `score evaluate` and `score benchmark` must not depend on what the process
/// generated before: the same prompts and seed give the same images whatever ran earlier.
final class EvaluationDeterminismTests: XCTestCase {
    func testGenerationDoesNotDependOnEarlierWork() throws {
        let model: LoadedModel
        do { model = try ModelLoader.load(nil) } catch { throw XCTSkip("the embedded model needs MiniLM (`score assets`): \(error)") }
        let pipeline = model.pipeline
        let first = try pipeline.generate(prompts: ["a photo of a sneaker", "a photo of a bag"], steps: 4, guidance: 4, seed: 1000)
        _ = try pipeline.generate(prompts: ["a photo of a pair of trousers", "coat", "a picture of an ankle boot"], steps: 4,
                                  guidance: 4, seed: 7)
        let again = try pipeline.generate(prompts: ["a photo of a sneaker", "a photo of a bag"], steps: 4, guidance: 4, seed: 1000)
        XCTAssertEqual(first.scalars, again.scalars)
        let fresh = try ModelLoader.load(nil).pipeline
        let other = try fresh.generate(prompts: ["a photo of a sneaker", "a photo of a bag"], steps: 4, guidance: 4, seed: 1000)
        XCTAssertEqual(first.scalars, other.scalars)
    }
}
