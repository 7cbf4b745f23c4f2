import Diffusion
@testable import Erasure
import Foundation
import NN
import Tensor
import XCTest

/// RECE on random matrices and the tiny model: the adversarial embedding against its defining
/// problem, the rounds on top of UCE, and their effect on that embedding.
final class RECETests: XCTestCase {
    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of cat"], anchor: "")],
        retainPrompts: ["dog", "a photo of car"])

    func random(_ rows: Int, _ columns: Int, _ g: inout RandomGenerator) -> Matrix64 {
        Matrix64(rows: rows, columns: columns, values: g.normal([rows * columns]).scalars.map(Double.init))
    }

    /// e minimises Σ_l ‖W_l e − W₀,l c‖² + ρ‖e‖²: its gradient Σ_l W_lᵀ(W_l e − W₀,l c) + ρe vanishes.
    func testAdversarialEmbeddingSolvesItsRegularisedLeastSquares() throws {
        var g = RandomGenerator(seed: 3)
        let d = 5
        let current = [random(3, d, &g), random(4, d, &g)], original = [random(3, d, &g), random(4, d, &g)]
        let rho = 0.2
        let adversary = try RECEAdversary(current: current, original: original, regularScale: rho)
        let c = g.normal([d]).scalars.map(Double.init)
        let e = adversary.embedding(c)
        var gradient = e.map { rho * $0 }
        for (w, w0) in zip(current, original) {
            let residual = zip(w.times(e), w0.times(c)).map { $0 - $1 }
            for r in 0..<w.rows { for k in 0..<d { gradient[k] += w[r, k] * residual[r] } }
        }
        XCTAssertLessThan(gradient.map(abs).max()!, 1e-10)
        // Unedited weights and a small ρ: the concept's own embedding is (nearly) the answer.
        let unedited = try RECEAdversary(current: original, original: original, regularScale: 1e-9)
        for (x, y) in zip(unedited.embedding(c), c) { XCTAssertEqual(x, y, accuracy: 1e-6) }
        XCTAssertEqual(RECEAdversary.residual(current: original, original: original, embeddings: [c], concept: [c]), 0)
    }

    func testTokenSequencesFollowTheMaskTheUNetSees() throws {
        let pipeline = try BaselineTests.endTokenPipeline()
        let sequences = RECE.tokenSequences(of: ["", "a photo of cat"], pipeline: pipeline)
        XCTAssertEqual(sequences[""]?.count, 2)                 // <s> </s>
        XCTAssertEqual(sequences["a photo of cat"]?.count, 6)   // <s> a photo of cat </s>
        XCTAssertEqual(sequences["a photo of cat"]![4], WordHashEndTokenEncoder.vector("cat").map(Double.init))
        let clipLike = try StableDiffusionPipeline(textEncoder: WordHashEndTokenEncoder(), unet: pipeline.unet, vae: nil,
                                                   scheduler: pipeline.scheduler, passesAttentionMask: false)
        XCTAssertEqual(RECE.tokenSequences(of: [""], pipeline: clipLike)[""]?.count, 6)   // every position, padding too
    }

    func testZeroRoundsIsUCEAndARoundEditsTheAdversarialEmbeddingAway() throws {
        let uce = try BaselineTests.endTokenPipeline()
        _ = try UCE().erase(Self.request, pipeline: uce, context: ErasureContext(output: nil))
        var config = RECEConfig()
        config.epochs = 0
        let none = try BaselineTests.endTokenPipeline()
        let plain = try RECE(config: config).erase(Self.request, pipeline: none, context: ErasureContext(output: nil))
        XCTAssertTrue(plain.losses.isEmpty)
        let reference = uce.unet.stateDict()
        for (name, p) in none.unet.namedParameters() { XCTAssertEqual(p.scalars, reference[name]!.scalars, name) }

        let pipeline = try BaselineTests.endTokenPipeline()
        let original = pipeline.unet.stateDict().mapValues { $0.copy() }
        config.epochs = 2
        let outcome = try RECE(config: config).erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
        var changed: Set<String> = []
        for (name, p) in pipeline.unet.namedParameters() where p.scalars != original[name]!.scalars { changed.insert(name) }
        XCTAssertEqual(changed, Set(pipeline.unet.namedParameters().map(\.name).filter(UCE.edits)))
        XCTAssertEqual(outcome.trainableParameters, plain.trainableParameters)

        // Each round's adversarial embedding regenerated the concept's original keys and values
        // closely; after the round's edit it no longer does.
        let before = try XCTUnwrap(outcome.losses["adversarial_residual"]), after = try XCTUnwrap(outcome.losses["adversarial_residual_after"])
        XCTAssertEqual(before.count, 2)
        for (b, a) in zip(before, after) { XCTAssertGreaterThan(a, 2 * b, "residual \(b) → \(a)") }
    }

    func testRoundIsUCEsClosedFormOnTheEditedWeights() throws {
        var config = RECEConfig()
        config.epochs = 1
        let pipeline = try BaselineTests.endTokenPipeline()
        let originals = RECE.projections(of: pipeline.unet)
        _ = try UCE().erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
        let edited = RECE.projections(of: pipeline.unet)
        // The round by hand: adversarial tokens of "cat", guided to ""'s tokens by position (the
        // last one beyond its length), preserving every token of "" and the retained prompts.
        let sequences = RECE.tokenSequences(of: ["cat", "", "dog", "a photo of car"], pipeline: pipeline)
        let adversary = try RECEAdversary(current: edited.map(\.weight), original: originals.map(\.weight), regularScale: 1e-3)
        let edits = sequences["cat"]!.map(adversary.embedding)
        let guides = edits.indices.map { sequences[""]![min($0, 1)] }
        let form = try UCEClosedForm(edits: edits, guides: guides,
                                     preserve: sequences[""]! + sequences["dog"]! + sequences["a photo of car"]!,
                                     lambda: 0.1, eraseScale: 1, preserveScale: 0.1)
        let expected = edited.map { (name: $0.name, weight: form.apply(to: $0.weight)) }

        let run = try BaselineTests.endTokenPipeline()
        _ = try RECE(config: config).erase(Self.request, pipeline: run, context: ErasureContext(output: nil))
        for (got, want) in zip(RECE.projections(of: run.unet), expected) {
            XCTAssertEqual(got.name, want.name)
            // The run stores Float32 weights between UCE and the round; the hand computation does too.
            for (x, y) in zip(got.weight.values, want.weight.values) { XCTAssertEqual(x, Double(Float(y)), accuracy: 1e-6) }
        }
    }

    func testDefaultsAreTheOfficialObjectScripts() throws {
        let c = RECEConfig()
        XCTAssertEqual(c.epochs, 1)
        XCTAssertEqual(c.lambda, 0.1)
        XCTAssertEqual(c.eraseScale, 1)
        XCTAssertEqual(c.preserveScale, 0.1)
        XCTAssertEqual(c.regularScale, 1e-3)
        XCTAssertEqual(c.uce, UCEConfig())
        var bad = RECEConfig()
        bad.regularScale = 0
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("regularScale"), "\($0)") }
        XCTAssertEqual(try ErasureMethods.make("rece").name, "rece")
    }
}
