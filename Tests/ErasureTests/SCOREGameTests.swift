import Diffusion
@testable import Erasure
@testable import Evaluation
import Foundation
import NN
import Tensor
import XCTest

/// The independence game's pieces on the tiny model: the guided x̂₀ the critic judges, the step's
/// terms and their recorded gradients against a direct computation, and stratified prompts.
final class SCOREGameTests: XCTestCase {
    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of a cat", "a cat", "one cat", "cats"], anchor: "")],
        retainPrompts: ["dog", "a photo of a car"])

    static func config() -> SCOREConfig {
        SCORETests.tinyConfig().independenceObjective
    }

    /// Step 0's loss and its gradient in θ (each term on its own leaf, then one pass back through
    /// θ), with the run's generator rewound so that the same entries can be drawn again.
    static func stepGradient(_ run: SCORERun<StableDiffusionPipeline>) throws -> (step: StepLosses, gradients: [Tensor?]) {
        let saved = run.generator
        let step = try run.losses(step: 0)
        step.total.backward()
        let gradients = run.trainable.map { $0.tensor.grad?.copy() }
        run.pipeline.unet.zeroGrad()
        run.generator = saved
        return (step, gradients)
    }

    /// θ's accumulated gradients equal `expected` entry by entry (then cleared).
    static func assertGradients(of run: SCORERun<StableDiffusionPipeline>, equal expected: [Tensor?], file: StaticString = #filePath, line: UInt = #line) {
        var compared = 0
        for ((name, p), expected) in zip(run.trainable, expected) {
            guard let g = p.grad, let expected else { continue }
            for i in 0..<g.count {
                XCTAssertEqual(g.pointer[i], expected.pointer[i], accuracy: 1e-5 + 1e-4 * abs(expected.pointer[i]), "\(name)[\(i)]",
                               file: file, line: line)
            }
            compared += 1
        }
        XCTAssertGreaterThan(compared, 0, file: file, line: line)
        run.pipeline.unet.zeroGrad()
    }

    /// The gradient of one critic term in the model's prediction ε_θ, at `entries` of the batch's
    /// prediction, against central differences (step 2e-3).
    static func assertPredictionGradient(of run: SCORERun<StableDiffusionPipeline>, _ b: SCORERun<StableDiffusionPipeline>.Batch,
                                         term: String, _ value: KeyPath<SCORERun<StableDiffusionPipeline>.Terms, Tensor>,
                                         at entries: [Int], file: StaticString = #filePath, line: UInt = #line) throws {
        func loss(_ prediction: Tensor) -> Tensor { run.terms(b, prediction: prediction, concept: 0, criticTerms: [term])[keyPath: value] }
        let leaf = Tensor(storage: b.prediction.detached().storage, shape: b.prediction.shape, requiresGrad: true)
        loss(leaf).backward()
        let grad = try XCTUnwrap(leaf.grad, file: file, line: line)
        let base = b.prediction.detached().scalars
        let h: Float = 2e-3
        for i in entries {
            func shifted(_ delta: Float) -> Double {
                var x = base
                x[i] += delta
                return Double(noGrad { loss(Tensor(shape: b.prediction.shape, scalars: x)).item })
            }
            let numeric = (shifted(h) - shifted(-h)) / Double(2 * h)
            XCTAssertEqual(Double(grad.scalars[i]), numeric, accuracy: 3e-2 * abs(numeric) + 1e-4, "\(term) entry \(i)", file: file, line: line)
        }
    }

    func testGuidedNoiseIsClassifierFreeGuidance() {
        let conditional = Tensor(shape: [2], scalars: [3, 0])
        let unconditional = Tensor(shape: [2], scalars: [1, 1])
        // ε(∅) + w(ε(c) − ε(∅)) with w = 7.5: [1 + 15, 1 − 7.5]
        XCTAssertEqual(guidedNoise(conditional: conditional, unconditional: unconditional, guidance: 7.5).scalars, [16, -6.5])
        XCTAssertEqual(guidedNoise(conditional: conditional, unconditional: unconditional, guidance: 1).scalars, [3, 0])
    }

    func testGuidedCleanEstimateMatchesTwoSeparatePasses() throws {
        let pipeline = try Tiny.pipeline()
        let table = ConditioningTable(captions: ["", "cat", "a photo of a dog"], model: pipeline)
        var g = RandomGenerator(seed: 4)
        let z = g.normal([2, 1, 8, 8])
        let t = [700, 450]
        let times = t.map(Float.init)
        let prompts = [1, 2]
        let estimate = noGrad {
            guidedCleanEstimate(pipeline: pipeline, model: nil, table: table, latents: z, timesteps: times, prompts: prompts,
                                unconditional: 0, guidance: 7.5)
        }
        let conditional = table.batch(prompts), empty = table.batch([0, 0])
        let epsC = noGrad { pipeline.predictNoise(latents: z, timesteps: t, states: conditional.states, mask: conditional.mask) }
        let epsU = noGrad { pipeline.predictNoise(latents: z, timesteps: t, states: empty.states, mask: empty.mask) }
        let alphas = pipeline.scheduler.alphasCumprod
        for i in 0..<2 {
            let a = alphas[t[i]]
            for j in 0..<64 {
                let k = i * 64 + j
                let eps = Double(epsU.scalars[k]) + 7.5 * Double(epsC.scalars[k] - epsU.scalars[k])
                let expected = (Double(z.scalars[k]) - (1 - a).squareRoot() * eps) / a.squareRoot()
                XCTAssertEqual(Double(estimate.scalars[k]), expected, accuracy: 1e-3 * max(1, abs(expected)))
            }
        }
        // Prompts that are all the unconditional caption need no second pass: x̂₀ of ε(∅).
        let unconditionalOnly = noGrad {
            guidedCleanEstimate(pipeline: pipeline, model: nil, table: table, latents: z, timesteps: times, prompts: [0, 0],
                                unconditional: 0, guidance: 7.5)
        }
        XCTAssertEqual(unconditionalOnly.scalars, cleanEstimate(latents: z, noise: epsU, timesteps: t, alphasCumprod: alphas).scalars)
    }

    /// The step's gradient (each term on its own leaf, then one pass back through θ) is the
    /// gradient of λ_adv·L_adv + λ_er·L_erase + λ_tr·L_traj computed directly, and the adversarial
    /// term is the non-saturating loss of the critic on the guided x̂₀ built by hand.
    func testStepGradientIsTheWeightedTermsGradientAndEachNormIsRecorded() throws {
        var config = Self.config()
        config.criticSteps = 0
        let pipeline = try Tiny.pipeline()
        let run = try SCORERun(config: config, request: Self.request, pipeline: pipeline, log: { _ in })
        let (step, viaLeaves) = try Self.stepGradient(run)
        let entries = run.drawEntries(concept: 0)
        let b = run.batch(concept: 0, late: entries.late, early: entries.early, retain: entries.retain)
        let terms = run.terms(b, prediction: b.prediction, concept: 0)
        (terms.erase * config.lambdaErase + terms.trajectory * config.lambdaTrajectory + terms.adversarial * config.lambdaAdversarial).backward()
        Self.assertGradients(of: run, equal: viaLeaves)

        // L_adv by hand: guided ε̂ with θ₀'s ε(∅), its x̂₀, the critic, −log(1 − D).
        let late = b.prediction.narrowed(axis: 0, start: 0, length: entries.late.count).detached()
        let eps = b.unconditional + (late - b.unconditional) * config.criticGuidance
        let x0 = cleanEstimate(latents: b.zLate, noise: eps, timesteps: b.tLate.map { Int($0) }, alphasCumprod: pipeline.scheduler.alphasCumprod)
        let logits = run.critics[0].logitsForModel(x0, timesteps: b.tLate.map { Int($0) }).scalars
        let expected = logits.map { Double(log1p(exp($0))) }.reduce(0, +) / Double(logits.count)
        XCTAssertEqual(Double(terms.adversarial.item), expected, accuracy: 1e-5)
        XCTAssertTrue(b.tLate.allSatisfy { (Float(config.gameMinTimestep)...Float(config.splitTimestep)).contains($0) }, "\(b.tLate)")

        let recorded = Dictionary(uniqueKeysWithValues: step.recorded)
        for term in ["grad_erase", "grad_adversarial"] {
            let norm = try XCTUnwrap(recorded[term], term)
            XCTAssertTrue(norm.isFinite && norm > 0, "\(term) = \(norm)")
        }
        // At the first step θ is θ₀: the trajectory term and its gradient are exactly 0.
        XCTAssertEqual(recorded["grad_trajectory"], 0)
    }

    /// The feature-matching loss against its definition: the squared distance of the two means
    /// with each batch's own pairs i = j left out, over the reference's variance; and its
    /// gradient in the model's features against central differences.
    func testFeatureMatchingLossIsTheUnbiasedMeanDistanceAndItsGradientMatchesDifferences() {
        var g = RandomGenerator(seed: 11)
        let a = g.normal([3, 5]), b = g.normal([4, 5]) + 0.7
        func direct(_ a: [Float]) -> Double {
            let (n, m, d) = (3, 4, 5)
            func row(_ x: [Float], _ i: Int) -> ArraySlice<Float> { x[(i * d)..<((i + 1) * d)] }
            func dot(_ u: ArraySlice<Float>, _ v: ArraySlice<Float>) -> Double { zip(u, v).reduce(0) { $0 + Double($1.0) * Double($1.1) } }
            var aa = 0.0, ab = 0.0, bb = 0.0
            for i in 0..<n { for j in 0..<n where i != j { aa += dot(row(a, i), row(a, j)) } }
            for i in 0..<n { for k in 0..<m { ab += dot(row(a, i), row(b.scalars, k)) } }
            for k in 0..<m { for l in 0..<m where k != l { bb += dot(row(b.scalars, k), row(b.scalars, l)) } }
            var variance = 0.0
            for j in 0..<d {
                let mean = (0..<m).reduce(0.0) { $0 + Double(b.scalars[$1 * d + j]) } / Double(m)
                variance += (0..<m).reduce(0.0) { $0 + pow(Double(b.scalars[$1 * d + j]) - mean, 2) } / Double(m - 1)
            }
            return (aa / Double(n * (n - 1)) - 2 * ab / Double(n * m) + bb / Double(m * (m - 1))) / variance
        }
        let leaf = Tensor(storage: a.storage, shape: a.shape, requiresGrad: true)
        let loss = featureMatchingLoss(model: leaf, reference: b)
        XCTAssertEqual(Double(loss.item), direct(a.scalars), accuracy: 1e-4 * max(1, abs(direct(a.scalars))))
        loss.backward()
        let grad = try! XCTUnwrap(leaf.grad)
        for i in 0..<a.count {
            var plus = a.scalars, minus = a.scalars
            plus[i] += 1e-2
            minus[i] -= 1e-2
            let numeric = (direct(plus) - direct(minus)) / 2e-2
            XCTAssertEqual(Double(grad.scalars[i]), numeric, accuracy: 1e-3 * max(1, abs(numeric)), "entry \(i)")
        }
        // One of four modes drawn four times is far from their mean: (1 − 1/3)/(4/3) = ½. The
        // modes themselves read below 0 (the unbiased estimate of a zero distance from a sample
        // compared with itself: (−1/3 − 1/3)/(4/3) = −½).
        let modes = Tensor(shape: [4, 2], scalars: [1, 0, -1, 0, 0, 1, 0, -1])
        let collapsed = Tensor(shape: [4, 2], scalars: [1, 0, 1, 0, 1, 0, 1, 0])
        XCTAssertEqual(featureMatchingLoss(model: collapsed, reference: modes).item, 0.5, accuracy: 1e-6)
        XCTAssertEqual(featureMatchingLoss(model: modes, reference: modes).item, -0.5, accuracy: 1e-6)
    }

    /// With λ_fm > 0 the step's gradient still is the weighted terms' gradient, the term reads the
    /// critic's features of the guided x̂₀ against θ₀'s reference estimates at the late entries'
    /// timesteps, and its gradient in θ's prediction matches central differences.
    func testFeatureMatchingTermInTheStep() throws {
        var config = Self.config()
        config.criticSteps = 0
        config.lambdaFeatureMatching = 2
        config.criticSpectralNorm = false
        let pipeline = try Tiny.pipeline()
        let run = try SCORERun(config: config, request: Self.request, pipeline: pipeline, log: { _ in })
        XCTAssertTrue(run.critics[0].critic.conv1.normalizes == false, "criticSpectralNorm false: plain layers")
        let (step, viaLeaves) = try Self.stepGradient(run)
        let entries = run.drawEntries(concept: 0)
        XCTAssertEqual(entries.reference.count, SCORERun<StableDiffusionPipeline>.referencePerSample * entries.late.count)
        let b = run.batch(concept: 0, late: entries.late, early: entries.early, retain: entries.retain, reference: entries.reference)
        let lateTimes = entries.late.map { run.targetPools[0].timesteps[$0] }
        XCTAssertEqual(b.referenceTimesteps, lateTimes.flatMap { Array(repeating: $0, count: SCORERun<StableDiffusionPipeline>.referencePerSample) })
        let terms = run.terms(b, prediction: b.prediction, concept: 0)
        XCTAssertNotEqual(terms.featureMatching.item, 0)
        (terms.erase * config.lambdaErase + terms.trajectory * config.lambdaTrajectory + terms.adversarial * config.lambdaAdversarial
            + terms.featureMatching * config.lambdaFeatureMatching).backward()
        Self.assertGradients(of: run, equal: viaLeaves)
        let recorded = Dictionary(uniqueKeysWithValues: step.recorded)
        XCTAssertTrue((recorded["grad_feature_matching"] ?? 0) > 0)

        // ∂L_fm/∂ε_θ at a few entries of the late prediction, against central differences.
        try Self.assertPredictionGradient(of: run, b, term: "feature_matching", \.featureMatching, at: [0, 17, 63, 64 + 5])
    }

    // MARK: The paired game

    static func pairedConfig() -> SCOREConfig {
        SCORETests.tinyConfig().pairedGameObjective
    }

    /// The pair logit is f([a; b]) − f([b; a]) of the network on the channel-stacked pair, so
    /// swapping the pair negates it and a pair of equal members reads 0.
    func testPairLogitsAreTheAntisymmetricDifferenceOfTheStackedPair() {
        var g = RandomGenerator(seed: 5)
        let critic = Critic(channels: 2, width: 4, spectralNorm: false, generator: &g)
        let a = g.normal([3, 1, 8, 8]), b = g.normal([3, 1, 8, 8])
        let t = [880, 600, 400]
        let logits = critic.pairLogits(a, b, timesteps: t).scalars
        let first = critic(Tensor.concat([a, b], axis: 1), timesteps: t).scalars
        let swapped = critic(Tensor.concat([b, a], axis: 1), timesteps: t).scalars
        for i in 0..<3 { XCTAssertEqual(logits[i], first[i] - swapped[i], accuracy: 1e-5) }
        XCTAssertTrue(logits.contains { abs($0) > 1e-4 }, "a random critic orders some pair: \(logits)")
        let flipped = critic.pairLogits(b, a, timesteps: t).scalars
        for i in 0..<3 { XCTAssertEqual(flipped[i], -logits[i], accuracy: 1e-6) }
        XCTAssertEqual(critic.pairLogits(a, a, timesteps: t).scalars, [0, 0, 0])
    }

    /// A pair step's loss is the mean of −log σ(ℓ(target, reference)) before its update, its
    /// accuracy the share of ℓ > 0; repeated on pairs whose target member is shifted, the critic
    /// learns to pick it.
    func testPairStepIsTheLogLossOfTheTargetFirstOrderAndLearnsIt() {
        var g = RandomGenerator(seed: 6)
        let trainer = CriticTrainer(channels: 2, width: 4, learningRate: 3e-3, betas: (0.5, 0.999), spectralNorm: false, generator: &g)
        let target = g.normal([4, 1, 8, 8]) + 1, reference = g.normal([4, 1, 8, 8])
        let t = [800, 700, 500, 400]
        let before = noGrad { trainer.critic.pairLogits(target, reference, timesteps: t) }.scalars
        let expected = before.map { Double(log1p(exp(-$0))) }.reduce(0, +) / 4
        let first = trainer.pairStep(target: target, reference: reference, timesteps: t)
        XCTAssertEqual(Double(first.loss), expected, accuracy: 1e-5)
        XCTAssertEqual(first.accuracy, Float(before.filter { $0 > 0 }.count) / 4)
        var last = first
        for _ in 0..<60 { last = trainer.pairStep(target: target, reference: reference, timesteps: t) }
        XCTAssertEqual(last.accuracy, 1)
        XCTAssertLessThan(last.loss, min(first.loss, 0.5))
    }

    /// The paired game's reference pool starts each trajectory from the target pool's noise
    /// (entry i of one pairs with entry i of the other), draws it with θ₀ on the anchor, and is
    /// resampled with every refresh of the target pool from the refreshed pool's noise.
    func testPairedReferencePoolSharesTheTargetPoolsNoiseAndFollowsItsRefreshes() throws {
        let config = Self.pairedConfig()
        let run = try SCORERun(config: config, request: Self.request, pipeline: try Tiny.pipeline(), log: { _ in })
        XCTAssertTrue(run.paired)
        XCTAssertEqual(run.critics[0].critic.conv1.weight.shape[1], 2, "the pair stacked on the channel axis")
        func checkPaired(_ target: TrajectoryPool, _ reference: TrajectoryPool, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertEqual(reference.timesteps, target.timesteps, file: file, line: line)
            XCTAssertEqual(reference.trajectories, target.trajectories, file: file, line: line)
            XCTAssertEqual(Set(reference.prompts), [run.emptyIndex], file: file, line: line)
            var laterDiffer = false
            for k in 0..<target.trajectoryCount {
                let entries = target.trajectories.indices.filter { target.trajectories[$0] == k }
                XCTAssertEqual(target.batch([entries[0]]).latents.scalars, reference.batch([entries[0]]).latents.scalars,
                               "trajectory \(k) starts from the same noise", file: file, line: line)
                let last = entries[entries.count - 1]
                laterDiffer = laterDiffer || target.batch([last]).latents.scalars != reference.batch([last]).latents.scalars
            }
            XCTAssertTrue(laterDiffer, "target prompts and \"\" part after the first step", file: file, line: line)
        }
        checkPaired(run.targetPools[0], run.referencePools[0])
        let before = run.targetPools[0].latents.scalars
        try run.afterUpdate(done: config.poolRefreshEvery)
        XCTAssertNotEqual(run.targetPools[0].latents.scalars.prefix(64), before.prefix(64), "refreshed from new noise")
        checkPaired(run.targetPools[0], run.referencePools[0])
        XCTAssertEqual(run.referenceEstimates[0].rows.count, run.targetPools[0].indices {
            (Float(config.gameMinTimestep)...Float(config.splitTimestep)).contains($0) }.count)
    }

    /// Under the paired game the adversarial term is the confusion loss BCE(ℓ, ½) of the pair
    /// logit between the model's guided x̂₀ and θ₀'s x̂₀ of "" at the paired entry (built here by
    /// hand from the reference pool); the step's gradient is still the weighted terms' gradient,
    /// and the term's gradient in θ's prediction matches central differences.
    func testPairedAdversarialTermAgainstADirectComputationAndDifferences() throws {
        var config = Self.pairedConfig()
        config.criticSteps = 0
        config.lambdaErase = 0.5
        let pipeline = try Tiny.pipeline()
        let run = try SCORERun(config: config, request: Self.request, pipeline: pipeline, log: { _ in })
        for _ in 0..<3 { run.criticStep(concept: 0) }
        let (step, viaLeaves) = try Self.stepGradient(run)
        let entries = run.drawEntries(concept: 0)
        let b = run.batch(concept: 0, late: entries.late, early: entries.early, retain: entries.retain)
        let terms = run.terms(b, prediction: b.prediction, concept: 0)
        (terms.erase * config.lambdaErase + terms.trajectory * config.lambdaTrajectory + terms.adversarial * config.lambdaAdversarial).backward()
        Self.assertGradients(of: run, equal: viaLeaves)
        XCTAssertTrue((Dictionary(uniqueKeysWithValues: step.recorded)["grad_adversarial"] ?? 0) > 0)

        // The pair's reference member: θ₀'s ε(∅) at the reference pool's entry, its x̂₀.
        let alphas = pipeline.scheduler.alphasCumprod
        let (zR, timesR, pR) = run.referencePools[0].batch(entries.late)
        XCTAssertEqual(timesR, b.tLate)
        let tR = timesR.map { Int($0) }, tLate = b.tLate.map { Int($0) }
        let statesR = run.table.batch(pR)
        let epsR = noGrad { pipeline.predictNoise(latents: zR, timesteps: tR, states: statesR.states, mask: statesR.mask, model: run.frozen) }
        let xR = cleanEstimate(latents: zR, noise: epsR, timesteps: tR, alphasCumprod: alphas)
        let paired = try XCTUnwrap(b.paired)
        for i in 0..<xR.count { XCTAssertEqual(paired.scalars[i], xR.scalars[i], accuracy: 1e-4 * max(1, abs(xR.scalars[i]))) }
        // The model's member: guided ε̂ with θ₀'s ε(∅), its x̂₀; then ℓ and BCE(ℓ, ½) = softplus(ℓ) − ℓ/2.
        let late = b.prediction.narrowed(axis: 0, start: 0, length: entries.late.count).detached()
        let eps = b.unconditional + (late - b.unconditional) * config.criticGuidance
        let x0 = cleanEstimate(latents: b.zLate, noise: eps, timesteps: tLate, alphasCumprod: alphas)
        let logits = run.critics[0].pairLogitsForModel(x0, reference: xR, timesteps: tLate).scalars
        let expected = logits.map { Double(log1p(exp($0))) - Double($0) / 2 }.reduce(0, +) / Double(logits.count)
        XCTAssertEqual(Double(terms.adversarial.item), expected, accuracy: 1e-5)
        XCTAssertGreaterThan(terms.adversarial.item, Float(log(2.0)), "above its minimum ln 2 unless ℓ = 0")

        try Self.assertPredictionGradient(of: run, b, term: "adversarial", \.adversarial, at: [3, 40, 64 + 9, 64 + 50])
    }

    /// A paired run killed after a refresh and resumed continues with the same bits (the
    /// reference pool travels in the checkpoint); the pairing is refused where it cannot act.
    func testPairedRunResumesWithTheSameBitsAndBadPairingsAreRefused() throws {
        let config = Self.pairedConfig()
        let straight = try Tiny.pipeline()
        let whole = try SCORE(config: config).erase(Self.request, pipeline: straight, context: ErasureContext(output: nil))
        let folder = Tiny.temporaryFolder("paired-resume")
        let partial = try SCORE(config: config).erase(Self.request, pipeline: try Tiny.pipeline(),
                                                      context: ErasureContext(output: folder, stopAfter: 4))
        XCTAssertTrue(partial.stoppedEarly)
        let resumed = try Tiny.pipeline()
        let outcome = try SCORE(config: config).erase(Self.request, pipeline: resumed, context: ErasureContext(output: folder, resume: true))
        XCTAssertEqual(outcome.losses["adversarial"], whole.losses["adversarial"])
        XCTAssertEqual(outcome.losses["critic"], whole.losses["critic"])
        let reference = straight.unet.stateDict()
        XCTAssertEqual(resumed.unet.namedParameters().filter { $0.1.scalars != reference[$0.0]!.scalars }.map(\.0), [])

        var bad = config
        bad.objective = .negativeGuidance
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("gamePairing"), "\($0)") }
        bad = config
        bad.lambdaFeatureMatching = 0.1
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("lambdaFeatureMatching"), "\($0)") }
        XCTAssertEqual(SCOREConfig().gamePairing, .marginal, "the marginal game stays the default")
        XCTAssertEqual(SCOREConfig().pairedGameObjective.lambdaErase, 0)
    }

    func testGradientNormsAreRecordedEveryStepAndZeroForAnOffTerm() throws {
        var config = Self.config()
        config.lambdaErase = 0
        let outcome = try SCORE(config: config).erase(Self.request, pipeline: try Tiny.pipeline(), context: ErasureContext(output: nil))
        for term in ["grad_erase", "grad_trajectory", "grad_adversarial", "critic_accuracy"] {
            XCTAssertEqual(outcome.losses[term]?.count, config.steps, term)
        }
        XCTAssertEqual(outcome.losses["grad_erase"]!, Array(repeating: 0, count: config.steps), "λ_er = 0: no erase gradient")
        XCTAssertTrue(outcome.losses["grad_adversarial"]!.allSatisfy { $0 > 0 })
    }

    func testEveryTargetPromptEntersThePoolsAndTheRefreshesContinueTheCycle() throws {
        var config = Self.config()
        config.poolTrajectories = 2
        let run = try SCORERun(config: config, request: Self.request, pipeline: try Tiny.pipeline(), log: { _ in })
        let prompts = run.targetIndices[0]
        XCTAssertEqual(prompts.count, 5)
        // The first pool holds max(n, |P_tgt|) trajectories: every prompt once.
        XCTAssertEqual(Set(run.targetPools[0].prompts), Set(prompts))
        XCTAssertEqual(run.targetPools[0].trajectoryCount, 5)
        // Refreshes of n = 2 continue from prompt 5 mod 5 = 0: (0, 1), (2, 3), (4, 0), …
        var seen: [Int] = []
        for refresh in 1...3 {
            let pool = try run.refreshedTargetPool(concept: 0, done: refresh * config.poolRefreshEvery)
            XCTAssertEqual(pool.trajectoryCount, 2)
            seen += (0..<2).map { k in pool.prompts[pool.trajectories.firstIndex(of: k)!] }
        }
        XCTAssertEqual(seen, [0, 1, 2, 3, 4, 0].map { prompts[$0] })
        XCTAssertEqual(stratified([7, 8, 9], 7, offset: 2), [9, 7, 8, 9, 7, 8, 9])
    }

    /// The game's reference is the anchors (the preset) or the retained prompts.
    func testReferencePromptsFollowTheConfig() throws {
        var config = Self.config()
        config.gameReference = .retained
        let retained = try SCORERun(config: config, request: Self.request, pipeline: try Tiny.pipeline(), log: { _ in })
        XCTAssertEqual(Set(retained.referencePools[0].prompts), Set(retained.referenceIndices[0]))
        XCTAssertEqual(retained.referenceIndices[0].count, 2, "the two retained prompts")
        config.gameReference = .anchors
        let anchors = try SCORERun(config: config, request: Self.request, pipeline: try Tiny.pipeline(), log: { _ in })
        XCTAssertEqual(anchors.referenceIndices[0], [0], "the anchor \"\"")
        var old = Self.config().negativeGuidanceObjective
        old.gameReference = .retained
        let negative = try SCORERun(config: old, request: Self.request, pipeline: try Tiny.pipeline(), log: { _ in })
        XCTAssertEqual(negative.referenceIndices[0], [0], "the negative-guidance objective plays against the anchors")
    }

    func testBenchmarkAblationRowsChangeOneKeyAndRecordTheirConfig() throws {
        let base = SCOREConfig()
        func config(_ name: String) throws -> SCOREConfig {
            let json = try XCTUnwrap(try BenchmarkMethod.named(name).configJSON(seed: 1))
            return try JSONDecoder().decode(SCOREConfig.self, from: Data(json.utf8))
        }
        XCTAssertEqual(try config("score-game"), { var c = base.independenceObjective; c.seed = 1; return c }())
        XCTAssertEqual(try config("score-game-no-adversarial").lambdaAdversarial, 0)
        XCTAssertEqual(try config("score-game-only").lambdaErase, 0)
        XCTAssertEqual(try config("score-game-only").objective, .independence)
        XCTAssertEqual(try config("score-game-eta0.5").eta, 0.5)
        let old = try config("score-negative-guidance")
        XCTAssertEqual(old.objective, .negativeGuidance)
        XCTAssertEqual(old.lambdaAdversarial, 0.1)
        XCTAssertEqual(old.adversarialForm, .confusion)
        var expected = base.negativeGuidanceObjective
        expected.seed = 1
        XCTAssertEqual(old, expected)
        func changed(_ change: (inout SCOREConfig) -> Void) -> SCOREConfig {
            var c = base
            change(&c)
            c.seed = 1
            return c
        }
        XCTAssertEqual(try config("score-adversarial"), changed { $0.lambdaAdversarial = 0.1 })
        XCTAssertEqual(try config("score-eta0"), changed { $0.eta = 0 })
        XCTAssertEqual(try config("score-eta1"), changed { $0.eta = 1 })
        XCTAssertEqual(try config("score-full-unet"), changed { $0.trainable = .full })
        XCTAssertEqual([base.trainable.rawValue, "\(base.eta)", "\(base.splitTimestep)", "\(base.steps)", "\(base.learningRate)",
                        "\(base.lambdaAdversarial)"], ["cross-attention-kv", "0.05", "980", "1000", "0.001", "0.0"],
                       "the default is the ablation's favourite (docs/RESULTS.md, \"SCORE's ablation\")")
        XCTAssertEqual([old.trainable.rawValue, "\(old.eta)", "\(old.splitTimestep)", "\(old.steps)", "\(old.learningRate)"],
                       ["full", "1.0", "940", "250", "0.0005"], "the first design's keys")
        XCTAssertThrowsError(try BenchmarkMethod.named("score-game-eta2"))
    }
}
