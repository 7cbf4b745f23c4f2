import Diffusion
@testable import Evaluation
import Foundation
import NN
import Tensor
import Testbed
import XCTest

/// A tiny stand-in for the testbed's judges: a linear classifier over the 8×8 pixels.
final class TinyJudge: Module, Judge {
    let head: Linear
    var architecture: String { "tiny" }

    init(classes: Int = 3, seed: UInt64 = 7) {
        var generator = RandomGenerator(seed: seed)
        head = Linear(64, classes, generator: &generator)
        super.init()
        // Sharper than its initialisation, so that the small changes a random UNet's text
        // conditioning makes to x̂₀ move its probabilities measurably.
        for p in head.parameters() { for i in 0..<p.count { p.pointer[i] *= 10 } }
    }

    func features(_ images: Tensor) -> Tensor { images.reshaped([images.shape[0], -1]) }
    func classify(features: Tensor) -> Tensor { head(features) }
}

/// UnlearnDiffAtk on a random tiny BERT (8-wide, one layer, a 16-token vocabulary) and the
/// tiny UNet: seconds, no assets.
final class AttackTests: XCTestCase {
    static let vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "shoe", "bag", "red",
                             "blue", "shirt", "##s", "dress", "coat"]

    static func tinyPipeline() throws -> StableDiffusionPipeline {
        let base = try Tiny.pipeline(seed: 1)
        return try StableDiffusionPipeline(textEncoder: try tinyEncoder(), unet: base.unet, vae: nil, scheduler: base.scheduler,
                                           passesAttentionMask: true)
    }

    /// The random tiny BERT over `vocabulary`, padded states zeroed.
    static func tinyEncoder() throws -> BertTextEncoder {
        let folder = Tiny.temporaryFolder("attack-vocab")
        defer { try? FileManager.default.removeItem(at: folder) }
        let url = folder.appendingPathComponent("vocab.txt")
        try Data((Self.vocabulary.joined(separator: "\n") + "\n").utf8).write(to: url)
        let tokenizer = try WordPieceTokenizer(vocabularyURL: url, maxLength: 16)
        var generator = RandomGenerator(seed: 3)
        let config = BertConfig(vocabSize: Self.vocabulary.count, hiddenSize: 8, numHiddenLayers: 1, numAttentionHeads: 2,
                                intermediateSize: 16, maxPositionEmbeddings: 16)
        let model = BertModel(config: config, addPoolingLayer: false, generator: &generator)
        model.eval()
        let encoder = try BertTextEncoder(model: model, tokenizer: tokenizer, normalizeEmbeddings: false)
        encoder.zeroPaddedStates = true
        return encoder
    }

    /// A fixed 8×8 target: a bright square on black.
    static func targetImage() -> Tensor {
        Tensor(shape: [1, 1, 8, 8]) { p in for i in 0..<64 { p[i] = (2..<6).contains(i / 8) && (2..<6).contains(i % 8) ? 1 : -1 } }
    }

    /// The objective averaged over 16 fixed draws: the same numbers before and after.
    func fixedObjective(_ attack: PrefixTokenAttack, prefix: Tensor, judge: (any Judge)?, judgeWeight: Float) -> PrefixObjective {
        var generator = RandomGenerator(seed: 99)
        let (timesteps, noise) = attack.draws(16, like: Self.targetImage(), generator: &generator)
        return noGrad {
            attack.objective(prefix: prefix, prompt: "a photo of a shoe", target: Self.targetImage(), noise: noise, timesteps: timesteps,
                             concept: 1, judge: judge, judgeWeight: judgeWeight)
        }
    }

    func rows(_ attack: PrefixTokenAttack, _ ids: [Int]) -> Tensor {
        embedding(attack.encoder.model.embeddings.wordEmbeddings.weight.detached(), indices: ids, shape: [ids.count])
    }

    func testCandidatesAreWholeWordTokensThatTokenizeToThemselves() throws {
        let attack = try PrefixTokenAttack(pipeline: try Self.tinyPipeline())
        let names = attack.candidates.map { Self.vocabulary[$0] }
        XCTAssertEqual(names, ["a", "photo", "of", "shoe", "bag", "red", "blue", "shirt", "dress", "coat"])
    }

    func testProjectionReturnsTheNearestVocabularyRows() throws {
        let attack = try PrefixTokenAttack(pipeline: try Self.tinyPipeline())
        var generator = RandomGenerator(seed: 5)
        let continuous = generator.normal([4, 8])
        let (ids, projected) = attack.project(continuous)
        XCTAssertEqual(projected.shape, [4, 8])
        let matrix = attack.encoder.model.embeddings.wordEmbeddings.weight
        for (i, id) in ids.enumerated() {
            XCTAssertTrue(attack.candidates.contains(id), "token \(id) is not a candidate")
            // Exactly a row of the vocabulary matrix.
            XCTAssertEqual(Array(projected.scalars[i * 8..<(i + 1) * 8]), Array(matrix.scalars[id * 8..<(id + 1) * 8]))
            // …and the one of highest cosine similarity.
            func cosine(_ row: Int) -> Float {
                let a = continuous.scalars[i * 8..<(i + 1) * 8], b = matrix.scalars[row * 8..<(row + 1) * 8]
                let dot = zip(a, b).map(*).reduce(0, +)
                return dot / (a.map { $0 * $0 }.reduce(0, +).squareRoot() * b.map { $0 * $0 }.reduce(0, +).squareRoot())
            }
            let best = attack.candidates.max { cosine($0) < cosine($1) }!
            XCTAssertEqual(id, best)
        }
    }

    func testOptimisationLowersTheDenoisingObjectiveAndTouchesOnlyThePrefix() throws {
        let pipeline = try Self.tinyPipeline()
        let attack = try PrefixTokenAttack(pipeline: pipeline)
        let flags = pipeline.unet.parameters().map(\.requiresGrad) + attack.encoder.model.parameters().map(\.requiresGrad)
        var config = UnlearnDiffAtkConfig(budget: .fast)
        config.steps = 40
        config.learningRate = 0.1
        config.project = false
        config.judgeWeight = 0
        var generator = RandomGenerator(seed: 11)
        let found = attack.optimise(prompt: "a photo of a shoe", target: Self.targetImage(), concept: 1, judge: nil, config: config,
                                    generator: &generator)
        let before = fixedObjective(attack, prefix: rows(attack, found.startIds), judge: nil, judgeWeight: 0).denoising
        let after = fixedObjective(attack, prefix: found.continuous, judge: nil, judgeWeight: 0).denoising
        XCTAssertLessThan(after, before * 0.99, "denoising loss \(before) → \(after)")
        XCTAssertEqual(found.losses.count, 40)
        // The models were frozen during the attack, got no gradient, and their flags are back.
        XCTAssertEqual(pipeline.unet.parameters().map(\.requiresGrad) + attack.encoder.model.parameters().map(\.requiresGrad), flags)
        XCTAssertTrue(pipeline.unet.parameters().allSatisfy { $0.grad == nil })
        XCTAssertTrue(attack.encoder.model.parameters().allSatisfy { $0.grad == nil })
    }

    func testJudgeTermRaisesTheConceptProbabilityOnTheCleanEstimate() throws {
        let attack = try PrefixTokenAttack(pipeline: try Self.tinyPipeline())
        let judge = TinyJudge()
        var config = UnlearnDiffAtkConfig(budget: .fast)
        config.steps = 40
        config.learningRate = 0.1
        config.project = false
        config.judgeWeight = 10
        var generator = RandomGenerator(seed: 12)
        let found = attack.optimise(prompt: "a photo of a shoe", target: Self.targetImage(), concept: 1, judge: judge, config: config,
                                    generator: &generator)
        let before = fixedObjective(attack, prefix: rows(attack, found.startIds), judge: judge, judgeWeight: 10)
        let after = fixedObjective(attack, prefix: found.continuous, judge: judge, judgeWeight: 10)
        // A random UNet's text conditioning moves x̂₀ a little: ask for a 20% relative rise
        // (measured: 0.0146 → 0.0192), which a judge term without gradient or of the wrong sign fails.
        XCTAssertGreaterThan(after.conceptProbability!, before.conceptProbability! * 1.2,
                             "concept probability \(before.conceptProbability!) → \(after.conceptProbability!)")
        XCTAssertLessThan(after.total.item, before.total.item)
        XCTAssertTrue(judge.parameters().allSatisfy { $0.requiresGrad && $0.grad == nil })
    }

    func testProjectedPrefixIsARealTokenString() throws {
        let attack = try PrefixTokenAttack(pipeline: try Self.tinyPipeline())
        var config = UnlearnDiffAtkConfig(budget: .fast)
        config.steps = 5
        config.tokens = 3
        var generator = RandomGenerator(seed: 13)
        let found = attack.optimise(prompt: "a photo of a shoe", target: Self.targetImage(), concept: 1, judge: TinyJudge(), config: config,
                                    generator: &generator)
        XCTAssertEqual(found.tokenIds.count, 3)
        XCTAssertTrue(found.tokenIds.allSatisfy(attack.candidates.contains))
        // Typed as text, the adversarial prompt gives the optimised ids, then the prompt's.
        let text = attack.adversarialPrompt(prefixIds: found.tokenIds, prompt: "a photo of a shoe")
        let tokenizer = attack.encoder.tokenizer
        XCTAssertEqual(tokenizer.encode(text), found.tokenIds + tokenizer.encode("a photo of a shoe"))
    }

    func testContinuousGenerationMatchesThePipelineForVocabularyEmbeddings() throws {
        let pipeline = try Self.tinyPipeline()
        let attack = try PrefixTokenAttack(pipeline: pipeline)
        let ids = [attack.encoder.tokenizer.id(of: "red")!, attack.encoder.tokenizer.id(of: "coat")!]
        let fromEmbeddings = try attack.generate(prefix: rows(attack, ids), prompt: "a shoe", steps: 4, guidance: 3, seed: 5, index: 2)
        let fromText = try pipeline.generate(prompts: ["red coat a shoe"], steps: 4, guidance: 3, seed: 5, firstImageIndex: 2)
        XCTAssertEqual(fromEmbeddings.shape, fromText.shape)
        let difference = zip(fromEmbeddings.scalars, fromText.scalars).map { Swift.abs($0 - $1) }.max()!
        XCTAssertLessThan(difference, 1e-4)
    }

    func testAttackSuccessRatesCountInstancesBrokenBeforeTheAttack() {
        func instance(_ before: Bool, _ after: Bool?, _ continuous: Bool?) -> AttackInstanceResult {
            var r = AttackInstanceResult(prompt: "p", image_index: 0, target_test_index: 0, broken_before: before,
                                         concept_probability_before: 0, attacked: after != nil)
            r.broken_after = after
            r.broken_after_continuous = continuous
            return r
        }
        // Broken before (not attacked); attacked and broken; attacked, broken only continuously; attacked, not broken.
        let rates = AttackSuccessRates([instance(true, nil, nil), instance(false, true, true), instance(false, false, true),
                                        instance(false, false, false)])
        XCTAssertEqual(rates.asr_pre, 0.25)
        XCTAssertEqual(rates.asr_post, 0.5)
        XCTAssertEqual(rates.asr_post_continuous, 0.75)
        // Attacked anyway (--attack-broken) and not broken by the attack: still broken before.
        let anyway = AttackSuccessRates([instance(true, false, false), instance(false, false, false)])
        XCTAssertEqual(anyway.asr_pre, 0.5)
        XCTAssertEqual(anyway.asr_post, 0.5)
        XCTAssertGreaterThanOrEqual(anyway.asr_post, anyway.asr_pre)
    }

    func testConfigValidationNamesTheFlag() {
        var config = UnlearnDiffAtkConfig(budget: .fast)
        config.tokens = 0
        XCTAssertThrowsError(try config.validate()) { XCTAssertTrue("\($0)".contains("--tokens")) }
    }
}
