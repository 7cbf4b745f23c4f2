import Diffusion
@testable import Erasure
@testable import Evaluation
import Foundation
import NN
import Tensor
import Testbed
import XCTest

/// `WordHashEndTokenEncoder` in FLUX's two text roles: its padded token states (padding zero) and
/// their masked mean as the pooled vector, as `PooledSentenceEncoder` builds them from MiniLM.
final class WordHashFluxEncoder: FluxTextEncoder, FluxTokenMasking {
    let words = WordHashEndTokenEncoder()
    var stateWidth: Int { words.hiddenSize }
    var pooledWidth: Int { words.hiddenSize }

    func encode(prompts: [String]) -> (states: Tensor, pooled: Tensor) {
        let (states, mask) = words.encode(prompts: prompts)
        return (states, SentencePooling.mean(states, mask: mask))
    }

    func tokenMask(prompts: [String]) -> Tensor { words.encode(prompts: prompts).attentionMask }
}

enum TinyFlux {
    /// `doubleBlocks` double and one single block of width 16 (2 heads of 8), pixel space (one
    /// channel, 2×2 patches: 4 values a token), 8-wide text; RoPE axes 2 + 2 + 4.
    static func config(doubleBlocks: Int = 1) -> FluxTransformer2DConfig {
        var c = FluxTransformer2DConfig()
        c.inChannels = 4
        c.numLayers = doubleBlocks
        c.numSingleLayers = 1
        c.attentionHeadDim = 8
        c.numAttentionHeads = 2
        c.jointAttentionDim = 8
        c.pooledProjectionDim = 8
        c.axesDimsRope = [2, 2, 4]
        return c
    }

    /// A random tiny FLUX pipeline of 8×8 images (16 tokens), the same for the same seed, with the
    /// mini-FLUX's scheduler.
    static func pipeline(seed: UInt64 = 0) throws -> FluxPipeline {
        var generator = RandomGenerator(seed: seed)
        let transformer = try FluxTransformer2DModel(config: config(), generator: &generator)
        let pipeline = try FluxPipeline(textEncoder: WordHashFluxEncoder(), transformer: transformer, vae: nil,
                                        scheduler: try FlowMatchEulerDiscreteScheduler(config: MiniFlux.schedulerConfig()))
        pipeline.defaultSize = 8
        return pipeline
    }

    /// A diffusers-layout FLUX folder of `pipeline`'s transformer and scheduler.
    static func save(_ pipeline: FluxPipeline, to folder: URL) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: folder.appendingPathComponent("scheduler"), withIntermediateDirectories: true)
        try Data(#"{"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}"#.utf8)
            .write(to: folder.appendingPathComponent("model_index.json"))
        try Data(#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": true}"#.utf8)
            .write(to: folder.appendingPathComponent("scheduler/scheduler_config.json"))
        try pipeline.transformer.save(to: folder.appendingPathComponent("transformer"))
    }
}

/// ESD, UCE and SCORE on the flow family: the same code as on the UNet, through `ErasableModel`,
/// checked against direct computations with `FluxPipeline`'s own pieces on a tiny transformer.
final class FluxErasureTests: XCTestCase {
    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of cat"], anchor: "")],
        retainPrompts: ["dog", "a photo of car"])

    /// Moves every weight of `model`, as training would (so θ differs from θ₀).
    func perturb(_ model: Module, by delta: Float = 0.03) {
        for (_, p) in model.namedParameters() { for i in 0..<p.count { p.pointer[i] += delta * Float(i % 7 - 3) / 3 } }
    }

    func velocity(_ pipeline: FluxPipeline, _ x: Tensor, _ prompt: String, timestep: Float) -> Tensor {
        noGrad {
            pipeline.velocity(tokens: x, height: 8, width: 8, timestep: timestep,
                              conditioning: pipeline.encodePrompts(Array(repeating: prompt, count: x.shape[0])))
        }
    }

    func mse(_ a: [Float], _ b: [Float]) -> Double {
        zip(a, b).reduce(0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) } / Double(a.count)
    }

    func assertClose(_ a: [Float], _ b: [Float], _ tolerance: Float, _ message: String, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, message, line: line)
        let worst = zip(a, b).map { Swift.abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, tolerance, message, line: line)
    }

    // MARK: The family's pieces

    func testPredictionCleanEstimateAndNoisingAreTheFlowsOwn() throws {
        let pipeline = try TinyFlux.pipeline()
        var g = RandomGenerator(seed: 1)
        let x = g.normal([2, 16, 4]), clean = g.normal([2, 16, 4]), noise = g.normal([2, 16, 4])
        let table = ConditioningTable(captions: ["", "cat"], model: pipeline)
        let predicted = noGrad { pipeline.predict(x, timesteps: [700, 700], conditioning: table.batch([1, 1]), model: nil) }
        XCTAssertEqual(predicted.scalars, velocity(pipeline, x, "cat", timestep: 700).scalars)
        // Per-item timesteps: each item as it is alone.
        let mixed = noGrad { pipeline.predict(x, timesteps: [700, 300], conditioning: table.batch([1, 0]), model: nil) }
        let second = velocity(pipeline, x.narrowed(axis: 0, start: 1, length: 1), "", timestep: 300)
        assertClose(Array(mixed.scalars[64...]), second.scalars, 1e-5, "item 1 at σ 0.3")

        let estimate = pipeline.cleanEstimate(x, prediction: predicted, timesteps: [700, 250])
        let noised = pipeline.noised(clean, noise: noise, timesteps: [700, 250])
        for i in 0..<x.count {
            let sigma: Float = i < 64 ? 0.7 : 0.25
            XCTAssertEqual(estimate.scalars[i], x.scalars[i] - sigma * predicted.scalars[i], accuracy: 1e-6)
            XCTAssertEqual(noised.scalars[i], sigma * noise.scalars[i] + (1 - sigma) * clean.scalars[i], accuracy: 1e-6)
        }
        // x̂₀ of the exact velocity ε − x₀ at the noised sample is x₀.
        let exact = pipeline.cleanEstimate(noised, prediction: noise - clean, timesteps: [700, 250])
        assertClose(exact.scalars, clean.scalars, 1e-5, "x̂₀ of the true velocity")
        XCTAssertEqual(pipeline.imageLayout(x).shape, [2, 1, 8, 8])
    }

    func testTrainableSetsNameTheTextStreamOfTheDoubleBlocks() throws {
        let pipeline = try TinyFlux.pipeline()
        let names = pipeline.transformer.namedParameters().map(\.name)
        let x = Set(names.filter { pipeline.includes(.crossAttention, $0) })
        let kv = Set(names.filter { pipeline.includes(.crossAttentionKeysValues, $0) })
        XCTAssertEqual(x, Set(["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"].flatMap {
            ["transformer_blocks.0.attn.\($0).weight", "transformer_blocks.0.attn.\($0).bias"] }))
        XCTAssertEqual(kv, Set(["add_k_proj", "add_v_proj"].flatMap {
            ["transformer_blocks.0.attn.\($0).weight", "transformer_blocks.0.attn.\($0).bias"] }))
        XCTAssertEqual(Set(names.filter { pipeline.includes(.nonCrossAttention, $0) }), Set(names).subtracting(x))
        // ESD keeps to linear layers: the RMSNorms of the text stream stay frozen.
        let esdX = trainableNames(pipeline.transformer, method: .esdX, family: .flux)
        XCTAssertEqual(esdX, x)
        XCTAssertFalse(trainableNames(pipeline.transformer, method: .esdU, family: .flux).contains { $0.contains("norm_added_q") })
    }

    // MARK: ESD

    func testESDTargetOnFlowsIsNegativeGuidanceOfTheFrozenVelocities() throws {
        let pipeline = try TinyFlux.pipeline()
        let reference = try TinyFlux.pipeline()
        let run = try ESDRun(config: BaselineTests.tinyESD(), request: Self.request, pipeline: pipeline)
        perturb(pipeline.transformer)
        var g = RandomGenerator(seed: 9)
        let x = g.normal([2, 16, 4])
        let target = run.target(latents: x, timestep: 601, prompt: try XCTUnwrap(run.table.index(of: "a photo of cat")))
        let conditional = velocity(reference, x, "a photo of cat", timestep: 601), unconditional = velocity(reference, x, "", timestep: 601)
        XCTAssertNotEqual(conditional.scalars, unconditional.scalars)
        // The official target at --negative_guidance 2, written on v₀(c).
        let official = zip(conditional.scalars, unconditional.scalars).map { c, u in c - 2 * (c - u) }
        assertClose(target.scalars, official, 1e-5, "ESD target")
    }

    func testESDLossOnFlowsIsTheVelocityMSEAtThePartialSample() throws {
        let pipeline = try TinyFlux.pipeline()
        let reference = try TinyFlux.pipeline()
        let config = BaselineTests.tinyESD()
        let run = try ESDRun(config: config, request: Self.request, pipeline: pipeline)
        perturb(pipeline.transformer)
        let trained = try TinyFlux.pipeline()
        perturb(trained.transformer)

        // The draws of step 0, as the run makes them.
        var g = run.generator
        let prompts = ["cat", "a photo of cat"]
        let prompt = prompts[min(1, Int(g.uniform([1]).scalars[0] * 2))]
        let stop = min(config.samplingSteps - 1, Int(g.uniform([1]).scalars[0] * Float(config.samplingSteps)))
        let losses = try run.losses(step: 0)

        // x_σ: θ₀'s guided Euler run from the iteration's noise stream, stopped before step `stop`.
        let schedule = try reference.schedule(steps: config.samplingSteps, height: 8, width: 8)
        var stream = StableDiffusionPipeline.imageGenerator(seed: config.seed &+ 1, index: 0)
        let noise = FluxTransformer2DModel.packLatents(stream.normal([1, 1, 8, 8]))
        let x = try noGrad {
            try reference.denoise(noise, height: 8, width: 8, conditional: reference.encodePrompts([prompt]),
                                  unconditional: reference.encodePrompts([""]), guidance: config.samplingGuidance,
                                  schedule: schedule, steps: 0..<stop)
        }
        let t = schedule.timesteps[stop]
        let (c, u) = (velocity(reference, x, prompt, timestep: t), velocity(reference, x, "", timestep: t))
        let target = zip(c.scalars, u.scalars).map { c, u in u - config.eta * (c - u) }
        let direct = mse(velocity(trained, x, prompt, timestep: t).scalars, target)
        let erase = try XCTUnwrap(losses.checked.first { $0.0 == "erase" }?.1)
        XCTAssertGreaterThan(direct, 0)
        XCTAssertEqual(Double(erase), direct, accuracy: 1e-5 * direct)
    }

    func testESDResumeOnFlowsGivesIdenticalBits() throws {
        var config = BaselineTests.tinyESD(iterations: 6)
        config.samplingModel = .trained
        let straight = try TinyFlux.pipeline()
        let full = try ESD(config: config).erase(Self.request, model: straight,
                                                 context: ErasureContext(output: Tiny.temporaryFolder("flux-esd-straight")))
        let folder = Tiny.temporaryFolder("flux-esd-resumed")
        let partial = try ESD(config: config).erase(Self.request, model: try TinyFlux.pipeline(),
                                                    context: ErasureContext(output: folder, stopAfter: 3))
        XCTAssertTrue(partial.stoppedEarly)
        let resumed = try TinyFlux.pipeline()
        let outcome = try ESD(config: config).erase(Self.request, model: resumed, context: ErasureContext(output: folder, resume: true))
        XCTAssertEqual(outcome.steps, 6)
        XCTAssertEqual(outcome.losses["erase"], full.losses["erase"])
        let reference = straight.transformer.stateDict()
        let base = try TinyFlux.pipeline().transformer.stateDict()
        let changed = resumed.transformer.namedParameters().filter { $0.tensor.scalars != base[$0.name]!.scalars }
        XCTAssertFalse(changed.isEmpty, "ESD changed nothing")
        XCTAssertTrue(changed.allSatisfy { resumed.includes(.crossAttention, $0.name) }, "esd-x moved \(changed.map(\.name))")
        XCTAssertEqual(resumed.transformer.namedParameters().filter { $0.tensor.scalars != reference[$0.name]!.scalars }.map(\.name), [])
    }

    // MARK: UCE

    func testUCEOnFlowsEditsTheTextReadingMapsInClosedForm() throws {
        let pipeline = try TinyFlux.pipeline()
        let before = pipeline.transformer.stateDict().mapValues { $0.copy() }
        let outcome = try UCE().erase(Self.request, model: pipeline, context: ErasureContext(output: nil))
        let changed = pipeline.transformer.namedParameters().filter { $0.tensor.scalars != before[$0.name]!.scalars }.map(\.name)
        XCTAssertEqual(Set(changed), ["context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"])
        XCTAssertEqual(outcome.trainableParameters, 16 * 8 * 2)

        // The edit is UCE's closed form on each map's own embeddings: the same system solved here.
        let tokens = try pipeline.textEmbeddings(["cat", "a photo of cat", "", "dog", "a photo of car"], input: .token)
        let pooled = try pipeline.textEmbeddings(["cat", "a photo of cat", "", "dog", "a photo of car"], input: .pooled)
        XCTAssertEqual(tokens["cat"]!, WordHashEndTokenEncoder.vector("cat").map(Double.init), "the last token before </s>")
        for (name, embeddings) in [("context_embedder.weight", tokens), ("time_text_embed.text_embedder.linear_1.weight", pooled)] {
            let form = try UCEClosedForm(edits: [embeddings["cat"]!, embeddings["a photo of cat"]!],
                                         guides: [embeddings[""]!, embeddings[""]!],
                                         preserve: [embeddings["dog"]!, embeddings["a photo of car"]!],
                                         lambda: 0.5, eraseScale: 1, preserveScale: 1)
            let w0 = before[name]!
            let expected = form.apply(to: Matrix64(rows: w0.shape[0], columns: w0.shape[1], values: w0.scalars.map(Double.init)))
            assertClose(pipeline.transformer.stateDict()[name]!.scalars, expected.values.map { Float($0) }, 1e-6, name)
        }
    }

    /// The velocity the concept's prompt adds over the anchor's, ‖v(x,c) − v(x,∅)‖², summed
    /// over noisy samples at several σ: what an erasure must shrink or turn.
    func conceptGap(_ pipeline: FluxPipeline, reference: FluxPipeline, prompt: String) -> (gap: Double, alignment: Double) {
        var g = RandomGenerator(seed: 77)
        var gap = 0.0, along = 0.0, original = 0.0
        for t: Float in [900, 700, 500, 300] {
            let x = g.normal([4, 16, 4])
            let delta = zip(velocity(pipeline, x, prompt, timestep: t).scalars, velocity(pipeline, x, "", timestep: t).scalars).map { $0 - $1 }
            let delta0 = zip(velocity(reference, x, prompt, timestep: t).scalars, velocity(reference, x, "", timestep: t).scalars).map { $0 - $1 }
            gap += delta.reduce(0) { $0 + Double($1 * $1) }
            along += zip(delta, delta0).reduce(0) { $0 + Double($1.0 * $1.1) }
            original += delta0.reduce(0) { $0 + Double($1 * $1) }
        }
        return (gap / original, along / original)
    }

    func testEachMethodTurnsTheConceptsVelocityAwayOnAFlow() throws {
        let reference = try TinyFlux.pipeline()
        let uce = try TinyFlux.pipeline()
        _ = try UCE().erase(Self.request, model: uce, context: ErasureContext(output: nil))
        let uceGap = conceptGap(uce, reference: reference, prompt: "cat")
        XCTAssertLessThan(uceGap.gap, 0.5, "UCE: ‖v(cat) − v(∅)‖² relative to the original's")

        var esdConfig = BaselineTests.tinyESD(iterations: 60)
        esdConfig.learningRate = 1e-2
        let esd = try TinyFlux.pipeline()
        _ = try ESD(config: esdConfig).erase(Self.request, model: esd, context: ErasureContext(output: nil))
        let esdGap = conceptGap(esd, reference: reference, prompt: "cat")
        // esd-x trains the double blocks' text-stream attention only: the part of Δv the pooled
        // text adds through the timestep embedding stays (0.84 of the original after 60 steps).
        XCTAssertLessThan(esdGap.alignment, 0.9, "ESD: v(cat) − v(∅) along the original's direction")

        var scoreConfig = SCORETests.tinyConfig(steps: 40)
        scoreConfig.learningRate = 1e-2
        scoreConfig.saliencyRatio = 1
        let score = try TinyFlux.pipeline()
        _ = try SCORE(config: scoreConfig).erase(Self.request, model: score, context: ErasureContext(output: nil))
        let scoreGap = conceptGap(score, reference: reference, prompt: "cat")
        XCTAssertLessThan(scoreGap.alignment, 0.8, "SCORE: v(cat) − v(∅) along the original's direction")
        print(String(format: "flow concept gap ‖Δv‖²/‖Δv₀‖²: UCE %.3f; alignment ⟨Δv, Δv₀⟩/‖Δv₀‖²: ESD %.3f, SCORE %.3f",
                     uceGap.gap, esdGap.alignment, scoreGap.alignment))
    }

    // MARK: SCORE

    func testSCORETermsOnFlowsEqualDirectComputations() throws {
        var config = SCORETests.tinyConfig()
        config.saliencyRatio = 1
        let pipeline = try TinyFlux.pipeline()
        let reference = try TinyFlux.pipeline()
        let run = try SCORERun(config: config, request: Self.request, pipeline: pipeline, log: { _ in })
        perturb(pipeline.transformer)
        let trained = try TinyFlux.pipeline()
        perturb(trained.transformer)

        let pool = run.targetPools[0]
        let late = try XCTUnwrap(pool.indices { $0 <= 900 }.first), early = try XCTUnwrap(pool.indices { $0 > 900 }.first)
        XCTAssertNotEqual(pool.timesteps[late], pool.timesteps[late].rounded(), "σ·1000 kept exact, not rounded")
        let retain = 1
        let b = run.batch(concept: 0, late: [late], early: [early], retain: [retain])
        let terms = run.terms(b, prediction: b.prediction, concept: 0, criticTerms: ["adversarial"])

        func entry(_ p: TrajectoryPool, _ i: Int) -> (x: Tensor, t: Float, prompt: String) {
            (p.latents.narrowed(axis: 0, start: i, length: 1), p.timesteps[i], run.table.captions[p.prompts[i]])
        }
        let l = entry(pool, late), e = entry(pool, early), r = entry(run.retainPool, retain)
        let c0 = velocity(reference, l.x, l.prompt, timestep: l.t), u0 = velocity(reference, l.x, "", timestep: l.t)
        let eraseTarget = zip(c0.scalars, u0.scalars).map { c, u in u - config.eta * (c - u) }
        let vLate = velocity(trained, l.x, l.prompt, timestep: l.t)
        let erase = mse(vLate.scalars, eraseTarget)
        let trajectory = mse(velocity(trained, r.x, r.prompt, timestep: r.t).scalars, velocity(reference, r.x, r.prompt, timestep: r.t).scalars)
            + mse(velocity(trained, e.x, e.prompt, timestep: e.t).scalars, velocity(reference, e.x, e.prompt, timestep: e.t).scalars)
        XCTAssertEqual(Double(terms.erase.item), erase, accuracy: 1e-5 * erase)
        XCTAssertEqual(Double(terms.trajectory.item), trajectory, accuracy: 1e-5 * trajectory)

        // The critic reads x̂₀ = x_σ − σ·v̂ unpacked to an image.
        let estimate = run.modelEstimate(b, late: vLate)
        let direct = FluxTransformer2DModel.unpackLatents(l.x - vLate * (l.t / 1000), height: 8, width: 8)
        XCTAssertEqual(estimate.shape, [1, 1, 8, 8])
        assertClose(estimate.scalars, direct.scalars, 1e-6, "critic input")
        let logits = noGrad { run.critics[0].logitsForModel(direct, timesteps: [Int(l.t.rounded())]) }
        let adversarial = adversarialLoss(logits: logits, form: config.adversarialForm)
        XCTAssertEqual(terms.adversarial.item, adversarial.item, accuracy: 1e-5)
    }

    func testSCOREResumeOnFlowsGivesIdenticalBits() throws {
        let config = SCORETests.tinyConfig(steps: 5)
        let straight = try TinyFlux.pipeline()
        let full = try SCORE(config: config).erase(Self.request, model: straight,
                                                   context: ErasureContext(output: Tiny.temporaryFolder("flux-score-straight")))
        let folder = Tiny.temporaryFolder("flux-score-resumed")
        _ = try SCORE(config: config).erase(Self.request, model: try TinyFlux.pipeline(), context: ErasureContext(output: folder, stopAfter: 4))
        let resumed = try TinyFlux.pipeline()
        let outcome = try SCORE(config: config).erase(Self.request, model: resumed, context: ErasureContext(output: folder, resume: true))
        XCTAssertEqual(outcome.steps, 5)
        XCTAssertEqual(outcome.losses["total"], full.losses["total"])
        XCTAssertFalse(outcome.masks.isEmpty)
        let reference = straight.transformer.stateDict()
        XCTAssertEqual(resumed.transformer.namedParameters().filter { $0.tensor.scalars != reference[$0.name]!.scalars }.map(\.name), [])
        let base = try TinyFlux.pipeline().transformer.stateDict()
        XCTAssertFalse(resumed.transformer.namedParameters().allSatisfy { $0.tensor.scalars == base[$0.name]!.scalars }, "SCORE changed nothing")
    }

    // MARK: The leakage estimate

    /// The leakage estimate at a size a test affords: 4 trajectories per class of 4 steps, critics of 2 steps.
    static var tinyLeakage: LeakageOptions {
        var options = LeakageOptions()
        options.trajectories = 4
        options.steps = 4
        options.guidance = 4
        options.criticWidth = 4
        options.criticSteps = 2
        options.batchSize = 4
        options.bootstrapRounds = 20
        return options
    }

    /// `Leakage.report` on FLUX: the erased model's target trajectories against θ₀'s anchor
    /// trajectories, the critics on x̂₀ = x_σ − σ·v̂ unpacked to images; same inputs, same report.
    func testLeakageOnFlowsRunsAndIsDeterministic() throws {
        func estimate() throws -> LeakageReport {
            let pipeline = try TinyFlux.pipeline()
            let original = try pipeline.frozenDenoiser()
            perturb(pipeline.transformer)
            return try Leakage.report(concept: Self.request.concepts[0], pipeline: pipeline, original: original, options: Self.tinyLeakage)
        }
        let first = try estimate(), second = try estimate()
        XCTAssertEqual(first.critics.map(\.critic), ["x̂₀ critic w4", "x̂₀ critic w8 ×3 steps", "image critic w4"])
        XCTAssertEqual(first.trajectories_per_class, 4)
        XCTAssertEqual(first.guidance, Self.tinyLeakage.guidance)
        for critic in first.critics {
            XCTAssert(critic.leakage_nats.isFinite && critic.leakage_nats <= log(2), "\(critic.critic): \(critic.leakage_nats)")
            XCTAssert((0...1).contains(critic.accuracy), "\(critic.critic): accuracy \(critic.accuracy)")
        }
        // x̂₀ critics test one trajectory per class (a quarter) at its steps with σ ≤ 0.6; image detectors every image.
        XCTAssertEqual(first.critics[0].accuracy_samples, 2)
        XCTAssertEqual(first.critics[2].test_samples, 8)
        XCTAssertEqual(first.critics.map(\.leakage_nats), second.critics.map(\.leakage_nats))
        XCTAssertEqual(first.critics.map(\.accuracy), second.critics.map(\.accuracy))
        XCTAssertEqual(first.leakage_interval, second.leakage_interval)
    }

    /// The benchmark's erasure step on FLUX (`eraseCell` over `ErasableModel`): each method erases
    /// the transformer in place and the changed tensors, written over the base folder under
    /// `transformer/`, load back to the erased model; the original model's row changes nothing.
    func testBenchmarkCellErasesAFlowModelAndWritesItOverItsBase() throws {
        let base = Tiny.temporaryFolder("flux-cell-base")
        try TinyFlux.save(try TinyFlux.pipeline(), to: base)
        var esd = ESDConfig()
        (esd.iterations, esd.samplingSteps) = (3, 4)
        let methods = [try BenchmarkMethod.named("uce"),
                       BenchmarkMethod(name: "esd") { seed in var c = esd; c.seed = seed; return ESD(config: c) },
                       try BenchmarkMethod.named("original")]
        for method in methods {
            let pipeline = try TinyFlux.pipeline(), reference = try TinyFlux.pipeline()
            let run = Tiny.temporaryFolder("flux-cell-\(method.name)")
            let changed = try eraseCell(method: method, seed: 0, request: Self.request, model: pipeline, reference: reference.transformer,
                                        baseFolder: base, baseName: base.path, runFolder: run, timer: PhaseTimer(), log: { _ in })
            guard method.make != nil else {
                XCTAssertEqual(changed, 0)
                XCTAssertFalse(FileManager.default.fileExists(atPath: run.appendingPathComponent("model").path))
                continue
            }
            XCTAssertGreaterThan(changed, 0, method.name)
            // A trained method's loss curves are kept beside the model (UCE's closed form has none).
            let losses = run.appendingPathComponent("losses.json")
            if method.name == "esd" {
                let curves = try JSONDecoder().decode([String: [Float?]].self, from: Data(contentsOf: losses))
                XCTAssertEqual(curves["erase"]?.count, esd.iterations, "\(curves.keys.sorted())")
            } else {
                XCTAssertFalse(FileManager.default.fileExists(atPath: losses.path), method.name)
            }
            let model = run.appendingPathComponent("model")
            XCTAssertTrue(FileManager.default.fileExists(atPath: model.appendingPathComponent("transformer/erased_weights.safetensors").path))
            let reloaded = try FluxPipeline(directory: base, textEncoder: WordHashFluxEncoder())
            try ErasedModel.apply(folder: model, to: reloaded)
            let erased = pipeline.transformer.stateDict()
            XCTAssertEqual(reloaded.transformer.namedParameters().filter { $0.tensor.scalars != erased[$0.name]!.scalars }.map(\.name), [],
                           method.name)
        }
    }

    // MARK: The erased folder

    func testEraseJobWritesTheChangedTransformerTensorsOverItsBase() throws {
        let base = Tiny.temporaryFolder("flux-base")
        let pipeline = try TinyFlux.pipeline()
        try TinyFlux.save(pipeline, to: base)
        var job = EraseJob(method: UCE(), request: Self.request, baseFolder: base, baseName: base.path,
                           output: Tiny.temporaryFolder("flux-uce-job"))
        job.leakage = FluxErasureTests.tinyLeakage
        let record = try XCTUnwrap(job.run(model: pipeline) { _ in })
        XCTAssertEqual(record.tensors_changed, 2)
        // The leakage estimate runs on the flow family too, one report per concept.
        XCTAssertEqual(record.leakage?.map(\.concept), ["cat"])
        XCTAssert(record.leakage?.first?.leakage_nats.isFinite == true)
        let model = job.output.appendingPathComponent("model")
        let manifest = try XCTUnwrap(ErasedModel.manifest(in: model))
        XCTAssertEqual(manifest.base_model, base.standardizedFileURL.path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: model.appendingPathComponent("transformer/erased_weights.safetensors").path))
        XCTAssertTrue(FileManager.default.fileExists(atPath: model.appendingPathComponent("transformer/config.json").path))
        XCTAssertTrue(FluxPipeline.isFluxFolder(model))

        // The base with the changed tensors over it is the erased model.
        let reloaded = try FluxPipeline(directory: base, textEncoder: WordHashFluxEncoder())
        try ErasedModel.apply(folder: model, to: reloaded)
        let erased = pipeline.transformer.stateDict()
        XCTAssertEqual(reloaded.transformer.namedParameters().filter { $0.tensor.scalars != erased[$0.name]!.scalars }.map(\.name), [])

        // UNet-only methods refuse the family by name.
        XCTAssertThrowsError(try ANT().erase(Self.request, model: pipeline, context: ErasureContext(output: nil))) {
            XCTAssertTrue("\($0)".contains("ant") && "\($0)".contains("flux"), "\($0)")
        }
    }

    /// `score erase --model <mini-FLUX folder>` as the CLI runs it (`EraseRun`): the folder is
    /// recognised by its model_index.json, the testbed's request is built, and the erased folder
    /// names its base and loads over it (`ModelLoader.loadFlux`, what `generate --model` uses).
    func testEraseRunOnAMiniFluxFolderWritesAnErasedFolderThatLoads() throws {
        var config = TinyFlux.config()
        (config.jointAttentionDim, config.pooledProjectionDim) = (384, 384)   // MiniLM's width
        var generator = RandomGenerator(seed: 3)
        let base = Tiny.temporaryFolder("mini-flux-base")
        try MiniFlux.save(try FluxTransformer2DModel(config: config, generator: &generator), to: base)
        let original: FluxPipeline
        do { original = try ModelLoader.loadFlux(base.path) } catch { throw XCTSkip("the mini-FLUX reads MiniLM (`score assets`): \(error)") }

        var esd = BaselineTests.tinyESD(iterations: 2)
        esd.samplingSteps = 3
        for method in [UCE() as any ErasureMethod, ESD(config: esd)] {
            let out = Tiny.temporaryFolder("mini-flux-\(method.name)")
            var run = EraseRun(method: method, concepts: ["sneaker"], output: out.path)
            run.model = base.path
            run.leakage = nil
            let record = try XCTUnwrap(run.run { _ in })
            XCTAssertEqual(record.base_model, base.path)
            XCTAssertGreaterThan(record.tensors_changed, 0)
            XCTAssertGreaterThan(record.request.retainPrompts.count, 0, "the testbed's other classes are retained")
            let erased = try ModelLoader.loadFlux(out.appendingPathComponent("model").path)
            let before = original.transformer.stateDict()
            let changed = erased.transformer.namedParameters().filter { $0.tensor.scalars != before[$0.name]!.scalars }.map(\.name)
            XCTAssertEqual(changed.count, record.tensors_changed, method.name)
            if method is UCE {
                XCTAssertEqual(Set(changed), ["context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"])
            }
        }
    }
}
