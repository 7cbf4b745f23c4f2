import Diffusion
import Erasure
@testable import Evaluation
import Foundation
import NN
import Tensor
import Testbed
import XCTest

/// The attacks on the flow family. On the tiny FLUX transformer with the tiny BERT (seconds, no
/// assets): the prompt-embedding attack's conditioning is `PooledSentenceEncoder`'s, its loss is
/// the flow's velocity MSE with a gradient that matches finite differences, and the Euler
/// inversion returns close to the image, P4D's loss is the two models' velocity MSE and falls.
/// On the un-erased embedded mini-FLUX: inversion,
/// Ring-A-Bell, UnlearnDiffAtk and CCE each succeed, give the same bits for the same seed, and record
/// their budget.
final class FluxAttackTests: XCTestCase {
    /// The tiny FLUX transformer (8-wide text, 8×8 pixel images) reading the tiny BERT through
    /// `PooledSentenceEncoder` at 12 positions.
    static func tinyPipeline() throws -> FluxPipeline {
        var generator = RandomGenerator(seed: 21)
        let transformer = try FluxTransformer2DModel(config: TinyFlux.config(), generator: &generator)
        let pipeline = try FluxPipeline(textEncoder: PooledSentenceEncoder(encoder: try AttackTests.tinyEncoder(), tokens: 12),
                                        transformer: transformer, vae: nil,
                                        scheduler: try FlowMatchEulerDiscreteScheduler(config: MiniFlux.schedulerConfig()))
        pipeline.defaultSize = 8
        return pipeline
    }

    func rows(_ attack: PromptEmbeddingAttack<FluxPipeline>, _ words: [String]) -> Tensor {
        let ids = words.map { attack.encoder.tokenizer.id(of: $0)! }
        return noGrad { embedding(attack.encoder.model.embeddings.wordEmbeddings.weight.detached(), indices: ids, shape: [ids.count]) }
    }

    func maxDifference(_ a: Tensor, _ b: Tensor) -> Float {
        XCTAssertEqual(a.shape, b.shape)
        return zip(a.scalars, b.scalars).map { Swift.abs($0 - $1) }.max() ?? 0
    }

    // MARK: The prompt-embedding attack on a flow

    func testPrefixConditioningAndGenerationAreThePooledEncodersForVocabularyEmbeddings() throws {
        let pipeline = try Self.tinyPipeline()
        let attack = try PromptEmbeddingAttack(pipeline: pipeline)
        let prefix = rows(attack, ["red", "coat"])
        let fromEmbeddings = noGrad { attack.promptConditioning(prefix: prefix, prompt: "a shoe") }
        let fromText = pipeline.encodePrompts(["red coat a shoe"])
        XCTAssertEqual(fromEmbeddings.states.shape, [1, 12, 8])
        XCTAssertLessThan(maxDifference(fromEmbeddings.states, fromText.states), 1e-5)
        XCTAssertLessThan(maxDifference(fromEmbeddings.pooled!, fromText.pooled), 1e-5)
        let image = try attack.generate(prefix: prefix, prompt: "a shoe", steps: 4, guidance: 3, seed: 5, index: 2)
        let text = try pipeline.generate(prompts: ["red coat a shoe"], steps: 4, guidance: 3, seed: 5, height: 8, width: 8, firstImageIndex: 2)
        XCTAssertLessThan(maxDifference(image, text), 1e-4)
    }

    /// Two fixed draws of the objective on a fixed 8×8 target.
    func fixedDraws(_ attack: PromptEmbeddingAttack<FluxPipeline>) -> (timesteps: [Int], noise: Tensor) {
        var generator = RandomGenerator(seed: 99)
        return attack.draws(2, like: AttackTests.targetImage(), generator: &generator)
    }

    func testObjectiveIsTheVelocityMSEAtTheBlocksSigma() throws {
        let pipeline = try Self.tinyPipeline()
        let attack = try PromptEmbeddingAttack(pipeline: pipeline)
        let (timesteps, noise) = fixedDraws(attack)
        let target = AttackTests.targetImage()
        let value = noGrad {
            attack.objective(prefix: rows(attack, ["red", "coat"]), prompt: "a shoe", target: target, noise: noise, timesteps: timesteps,
                             concept: 1, judge: nil, judgeWeight: 0)
        }
        // By hand: x_σ = (1 − σ)x₀ + σε in packed tokens, target velocity ε − x₀, σ = t/1000.
        let conditioning = pipeline.encodePrompts(["red coat a shoe"])
        var squared = 0.0, count = 0
        for (i, t) in timesteps.enumerated() {
            let x0 = FluxTransformer2DModel.packLatents(target)
            let epsilon = FluxTransformer2DModel.packLatents(noise.narrowed(axis: 0, start: i, length: 1))
            let sigma = Float(t) / 1000
            let noisy = x0 * (1 - sigma) + epsilon * sigma
            let v = noGrad { pipeline.velocity(tokens: noisy, height: 8, width: 8, timestep: Float(t), conditioning: conditioning) }
            for (a, b) in zip(v.scalars, (epsilon - x0).scalars) { squared += Double(a - b) * Double(a - b) }
            count += v.count
        }
        XCTAssertEqual(Double(value.denoising), squared / Double(count), accuracy: 1e-4 * squared / Double(count))
    }

    func testObjectiveGradientInThePrefixMatchesFiniteDifferences() throws {
        let pipeline = try Self.tinyPipeline()
        let attack = try PromptEmbeddingAttack(pipeline: pipeline)
        let (timesteps, noise) = fixedDraws(attack)
        let judge = TinyJudge()
        let prefix = rows(attack, ["red", "coat"]).copy()
        func loss() -> Float {
            noGrad {
                attack.objective(prefix: prefix, prompt: "a shoe", target: AttackTests.targetImage(), noise: noise, timesteps: [100, 400],
                                 concept: 1, judge: judge, judgeWeight: 0.5).total.item
            }
        }
        _ = timesteps
        let analytic: [Float] = withFrozen([pipeline.transformer, attack.encoder.model, judge]) {
            prefix.requiresGrad = true
            defer { prefix.requiresGrad = false }
            let value = attack.objective(prefix: prefix, prompt: "a shoe", target: AttackTests.targetImage(), noise: noise,
                                         timesteps: [100, 400], concept: 1, judge: judge, judgeWeight: 0.5)
            XCTAssertNotNil(value.judge, "both draws are below the judge's cut-off")
            value.total.backward()
            return prefix.grad!.scalars
        }
        prefix.grad = nil
        let scale = analytic.map { Swift.abs($0) }.max()!
        XCTAssertGreaterThan(scale, 0, "the prefix gets a gradient through MiniLM and the transformer")
        let h: Float = 1e-2
        for i in [0, 3, 5, 8, 13, 15] {
            let saved = prefix.pointer[i]
            prefix.pointer[i] = saved + h
            let up = loss()
            prefix.pointer[i] = saved - h
            let down = loss()
            prefix.pointer[i] = saved
            XCTAssertEqual((up - down) / (2 * h), analytic[i], accuracy: 0.03 * scale + 1e-4, "coordinate \(i)")
        }
    }

    func testOptimisationLowersTheVelocityObjectiveAndTouchesOnlyThePrefix() throws {
        let pipeline = try Self.tinyPipeline()
        let attack = try PromptEmbeddingAttack(pipeline: pipeline)
        let flags = pipeline.transformer.parameters().map(\.requiresGrad)
        var config = UnlearnDiffAtkConfig(budget: .fast)
        config.steps = 40
        config.learningRate = 0.1
        config.project = false
        config.judgeWeight = 0
        func optimise() -> PrefixOptimisation {
            var generator = RandomGenerator(seed: 11)
            return attack.optimise(prompt: "a photo of a shoe", target: AttackTests.targetImage(), concept: 1, judge: nil, config: config,
                                   generator: &generator)
        }
        let found = optimise()
        var generator = RandomGenerator(seed: 99)
        let (timesteps, noise) = attack.draws(16, like: AttackTests.targetImage(), generator: &generator)
        func denoising(_ prefix: Tensor) -> Float {
            noGrad {
                attack.objective(prefix: prefix, prompt: "a photo of a shoe", target: AttackTests.targetImage(), noise: noise,
                                 timesteps: timesteps, concept: 1, judge: nil, judgeWeight: 0).denoising
            }
        }
        let start = noGrad { embedding(attack.encoder.model.embeddings.wordEmbeddings.weight.detached(), indices: found.startIds,
                                       shape: [found.startIds.count]) }
        let (before, after) = (denoising(start), denoising(found.continuous))
        XCTAssertLessThan(after, before * 0.99, "velocity loss \(before) → \(after)")
        XCTAssertEqual(found.losses.count, 40)
        XCTAssertEqual(pipeline.transformer.parameters().map(\.requiresGrad), flags)
        XCTAssertTrue(pipeline.transformer.parameters().allSatisfy { $0.grad == nil })
        XCTAssertEqual(optimise().continuous.scalars, found.continuous.scalars, "the same seed, the same bits")
    }

    // MARK: P4D on a flow

    /// The tiny FLUX as the erased model, and another random transformer with the same encoder as the original.
    func p4dModels() throws -> (erased: FluxPipeline, original: FluxPipeline) {
        let erased = try Self.tinyPipeline()
        var generator = RandomGenerator(seed: 22)
        let original = try FluxPipeline(textEncoder: erased.textEncoder, transformer: try FluxTransformer2DModel(config: TinyFlux.config(), generator: &generator),
                                        vae: nil, scheduler: erased.scheduler)
        original.defaultSize = 8
        return (erased, original)
    }

    func testP4DLossIsTheVelocityMSEBetweenTheModelsAndItsPromptFitsTheTextLength() throws {
        let (erased, original) = try p4dModels()
        let optimizer = try HardPromptOptimizer(pipeline: erased, original: original)
        let tokenizer = optimizer.encoder.tokenizer
        var config = P4DConfig()
        config.tokens = 3
        let layout = try optimizer.layout(prompt: "a shoe", config: config)
        let ids = ["red", "bag", "coat"].map { tokenizer.id(of: $0)! }
        let text = optimizer.text(layout.ids(slots: ids))
        var generator = RandomGenerator(seed: 4)
        let noise = generator.normal([2, 1, 8, 8])
        let timesteps = [130, 720]
        let slots = noGrad { embedding(optimizer.encoder.model.embeddings.wordEmbeddings.weight.detached(), indices: ids, shape: [3]) }
        let value = noGrad {
            optimizer.loss(slots: slots, layout: layout, reference: optimizer.reference("a shoe"), target: AttackTests.targetImage(),
                           noise: noise, timesteps: timesteps).item
        }
        // By hand: both models' velocities at x_σ = (1 − σ)x₀ + σε, the erased one on the found text.
        var squared = 0.0, count = 0
        for (i, t) in timesteps.enumerated() {
            let x0 = FluxTransformer2DModel.packLatents(AttackTests.targetImage())
            let epsilon = FluxTransformer2DModel.packLatents(noise.narrowed(axis: 0, start: i, length: 1))
            let noisy = x0 * (1 - Float(t) / 1000) + epsilon * (Float(t) / 1000)
            let mine = noGrad { erased.velocity(tokens: noisy, height: 8, width: 8, timestep: Float(t), conditioning: erased.encodePrompts([text])) }
            let theirs = noGrad { original.velocity(tokens: noisy, height: 8, width: 8, timestep: Float(t), conditioning: original.encodePrompts(["a shoe"])) }
            for (a, b) in zip(mine.scalars, theirs.scalars) { squared += Double(a - b) * Double(a - b) }
            count += mine.count
        }
        XCTAssertGreaterThan(squared, 0)
        XCTAssertEqual(Double(value), squared / Double(count), accuracy: 1e-4 * squared / Double(count))
        // 12 positions hold [CLS], 10 tokens and [SEP]: 11 learned tokens are refused, naming the flag.
        config.tokens = 11
        XCTAssertThrowsError(try optimizer.layout(prompt: "a shoe", config: config)) { XCTAssert("\($0)".contains("--tokens"), "\($0)") }
        XCTAssertNoThrow(try optimizer.layout(prompt: "a shoe", config: config.fitted(textLength: erased.paddedTextLength)))
    }

    func testP4DLowersTheVelocityObjectiveOnAFlowAndRecordsItsBudget() throws {
        let (erased, original) = try p4dModels()
        let optimizer = try HardPromptOptimizer(pipeline: erased, original: original)
        var config = P4DConfig()
        config.tokens = 4
        config.iterations = 40
        config.evalEvery = 1
        let layout = try optimizer.layout(prompt: "a photo of a shoe", config: config)
        var draws = RandomGenerator(seed: 31)
        let timesteps = (0..<16).map { _ in min(999, Int(draws.uniform([1]).item * 1000)) }
        let noise = draws.normal([16, 1, 8, 8])
        let reference = optimizer.reference("a photo of a shoe")
        func objective(_ ids: [Int]) -> Float {
            let slots = noGrad { embedding(optimizer.encoder.model.embeddings.wordEmbeddings.weight.detached(), indices: ids, shape: [ids.count]) }
            return noGrad {
                optimizer.loss(slots: slots, layout: layout, reference: reference, target: AttackTests.targetImage(), noise: noise,
                               timesteps: timesteps).item
            }
        }
        func run() -> P4DOptimisation {
            var generator = RandomGenerator(seed: 21)
            return optimizer.optimise(layout: layout, prompt: "a photo of a shoe", target: AttackTests.targetImage(), config: config,
                                      generator: &generator) { ids in -Double(objective(ids)) }
        }
        let found = run()
        XCTAssertLessThan(objective(found.bestIds), objective(found.startIds))
        XCTAssertEqual(run().losses, found.losses, "the same seed, the same bits")
        XCTAssertTrue(erased.transformer.parameters().allSatisfy { $0.grad == nil } && original.transformer.parameters().allSatisfy { $0.grad == nil })

        var small = P4DConfig()
        (small.tokens, small.iterations, small.evalEvery, small.instances, small.samples, small.samplingSteps) = (2, 4, 2, 2, 2, 3)
        (small.selector, small.attackBroken) = ("pixels", true)
        let (result, _) = try P4DAttack.run(pipeline: erased, original: original, prompts: ["a photo of a shoe"], concept: "shoe", label: 1,
                                            conceptLabels: [1], judge: TinyJudge(), selector: nil, config: small, modelName: "tiny")
        XCTAssertEqual(result.budget, AttackBudget(mode: "testbed", steps: 4, instances: 2, seeds: 2))
        XCTAssertEqual(result.instances.map(\.broken_after_images?.count), [2, 2])
    }

    // MARK: Euler inversion

    func testEulerInversionThenSamplingReturnsCloseToTheImage() throws {
        let pipeline = try Self.tinyPipeline()
        let target = Tensor.concat([AttackTests.targetImage(), AttackTests.targetImage() * -0.5], axis: 0)
        var config = InversionAttackConfig()
        config.steps = 50
        let back = try InversionAttack.reconstruct(pipeline: pipeline, images: target, config: config)
        let fresh = try pipeline.generate(prompts: ["", ""], steps: 50, guidance: 1, seed: 3, height: 8, width: 8)
        func error(_ x: Tensor) -> Float { zip(x.scalars, target.scalars).map { Swift.abs($0 - $1) }.reduce(0, +) / Float(x.count) }
        XCTAssertLessThan(error(back), 0.2 * error(fresh), "reconstruction \(error(back)), fresh sample \(error(fresh))")
        XCTAssertEqual(try InversionAttack.reconstruct(pipeline: pipeline, images: target, config: config).scalars, back.scalars)
    }

    // MARK: The embedded mini-FLUX

    func embedded() throws -> FluxPipeline {
        do { return try MiniFlux.pipeline(folder: try DefaultModel.fluxFolder()) } catch {
            throw XCTSkip("the embedded mini-FLUX needs MiniLM (`score assets`): \(error)")
        }
    }

    func testInversionRegeneratesTheConceptThroughTheUnerasedMiniFlux() throws {
        try BreakingAttackTests.assertInversionRegeneratesSneakers(try embedded(), data: try BreakingAttackTests.fashion())
    }

    func testCCELearnsATokenThatDrawsTheConceptOnTheUnerasedMiniFlux() throws {
        try BreakingAttackTests.assertCCEDrawsSneakers(try embedded(), samplingSteps: 10, guidance: MiniFlux.guidance,
                                                         data: try BreakingAttackTests.fashion())
    }

    func testRingABellFindsAPromptThatDrawsTheConceptOnTheUnerasedMiniFlux() throws {
        let pipeline = try embedded()
        _ = try BreakingAttackTests.ringABell(pipeline, samplingSteps: 10, guidance: MiniFlux.guidance)
        // More tokens than the mini-FLUX's 16 text positions hold would be cut off: refused.
        XCTAssertThrowsError(try RingABell(pipeline: pipeline, length: 15)) { XCTAssert("\($0)".contains("--tokens 15"), "\($0)") }
    }

    func testOfficialUnlearnDiffAtkSucceedsOnTheUnerasedMiniFluxAndRecordsItsBudget() throws {
        let result = try BreakingAttackTests.officialUnlearnDiffAtk(try embedded(), samplingSteps: 10, guidance: MiniFlux.guidance)
        // The mini-FLUX, which draws few held-out paraphrases, is thrown off the sneaker by the
        // three random start tokens; the velocity loss finds a prefix it draws a sneaker with, and
        // the early stop ends the attack there (measured: block 23 of 50).
        let blocks = try XCTUnwrap(result.prompts[0].blocks_run)
        XCTAssertLessThan(blocks, result.config.blocks)
        XCTAssertEqual(result.prompts[0].steps_run, 2 * blocks)
    }

    /// A stored flow cell that lacks a selected attack gets just that attack, run on its model
    /// (the original's row: the embedded mini-FLUX); a row whose erased model is not stored is
    /// measured again (nil).
    func testAStoredFlowCellGetsAMissingAttackAddedOnItsModel() throws {
        _ = try embedded()
        let output = Tiny.temporaryFolder("flux-add-attacks")
        defer { try? FileManager.default.removeItem(at: output) }
        let original = try BenchmarkMethod.named("original")
        var benchmark = ObjectBenchmark(concepts: ["sneaker"], methods: [original], seeds: [0], output: output)
        benchmark.family = .flux
        benchmark.settings = .flux
        benchmark.sampleAttacksAsFlux()
        benchmark.attacks = ["inversion"]
        (benchmark.inversion.images, benchmark.inversion.steps) = (2, 10)
        var stored = BenchmarkStatisticsTests.cell("original", seed: 0, judged: BenchmarkStatisticsTests.judged(targetHits: 30),
                                                   benchmark: benchmark)
        stored.attacks = [:]
        XCTAssertEqual(benchmark.attacksToRun(stored), ["inversion"])
        let measurement = try CellMeasurement(benchmark: benchmark, prompts: try FashionPrompts.bundled(), assets: Assets(), log: { _ in })
        let completed = try XCTUnwrap(measurement.addAttacks(["inversion"], to: stored, method: original))
        XCTAssertEqual(completed.attacks?["inversion"]?.budget, AttackBudget(mode: "testbed", steps: 10, instances: 2, seeds: 1))
        XCTAssertEqual(completed.attacks?["inversion"]?.successes, 2, "the un-erased mini-FLUX regenerates both sneakers")
        XCTAssertEqual(completed.evaluation.acc_e, stored.evaluation.acc_e)
        XCTAssertEqual(benchmark.attacksToRun(completed), [])
        XCTAssertNil(try measurement.addAttacks(["inversion"], to: stored, method: try BenchmarkMethod.named("esd")))
    }
}
