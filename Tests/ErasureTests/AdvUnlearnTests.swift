import Diffusion
@testable import Erasure
import Foundation
import NN
import Tensor
import XCTest

/// AdvUnlearn on the tiny model with a tiny BERT: the soft prefix layout, the losses against a
/// direct computation, the prefix gradient against finite differences, resume, what it changes,
/// and the erased text encoder saved and loaded with the model.
final class AdvUnlearnTests: XCTestCase {
    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of the cat"], anchor: "")],
        retainPrompts: ["a photo of a tree", "a house", "dog"])

    static func tinyConfig(iterations: Int = 4) -> AdvUnlearnConfig {
        var c = AdvUnlearnConfig()
        c.iterations = iterations
        c.learningRate = 1e-2
        c.warmupIterations = 1
        c.attackSteps = 2
        c.attackLearningRate = 1e-1
        c.retainBatch = 2
        c.samplingSteps = 5
        c.checkpointEvery = 2
        return c
    }

    func testSoftPrefixIsAWordEmbeddingAfterTheStartToken() throws {
        let pipeline = try TinyBert.pipeline()
        let access = try EncoderAccess(pipeline.textEncoder)
        // The embedding of "drawing" as the prefix of "a cat" is the prompt "drawing a cat".
        let word = noGrad { access.wordEmbeddings([[access.pieces("drawing")[0]]]).reshaped([1, 8]) }
        let soft = noGrad { access.conditioning(prefix: word, prompt: "a cat") }
        let plain = noGrad { pipeline.encodePrompts(["drawing a cat"]) }
        XCTAssertEqual(soft.states.shape, plain.states.shape)
        for (a, b) in zip(soft.states.scalars, plain.states.scalars) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        XCTAssertEqual(soft.mask.scalars, plain.mask.scalars)
    }

    func testLossesAreTheDirectComputation() throws {
        let pipeline = try TinyBert.pipeline()
        let reference = try TinyBert.pipeline()
        var config = Self.tinyConfig()
        config.warmupIterations = 10   // no attack: the plain prompt
        config.eta = 1.5
        let run = try AdvUnlearnRun(config: config, request: Self.request, pipeline: pipeline)
        // As if training had moved the encoder: targets must stay the original's.
        for (_, p) in run.trainable { for i in 0..<p.count { p.pointer[i] += 0.05 } }
        var g = run.generator
        let terms = try run.losses(step: 0)

        // Replay the step's draws.
        let prompts = run.targetIndices[0]
        let prompt = prompts[min(prompts.count - 1, Int(g.uniform([1]).scalars[0] * Float(prompts.count)))]
        let stop = min(config.samplingSteps - 1, Int(g.uniform([1]).scalars[0] * Float(config.samplingSteps)))
        var pool = run.retainIndices, rows: [Int] = []
        for _ in 0..<2 { rows.append(pool.remove(at: min(pool.count - 1, Int(g.uniform([1]).scalars[0] * Float(pool.count))))) }
        let text = run.table.captions[prompt], retained = rows.map { run.table.captions[$0] }

        // The run encodes every caption once, padded to one length; the replay uses those states.
        func sample(_ captionRows: [Int], stream: Int) throws -> Tensor {
            var generators = captionRows.indices.map { StableDiffusionPipeline.imageGenerator(seed: 1, index: stream * 64 + $0) }
            let shape = try pipeline.latentShape(batch: 1, height: pipeline.defaultHeight, width: pipeline.defaultWidth)
            let noise = initialNoise(shape: shape, schedule: run.schedule, generators: &generators)
            let c = run.table.batch(captionRows), u = run.table.batch(Array(repeating: run.emptyIndex, count: captionRows.count))
            return try noGrad { try reference.denoise(noise, conditional: c, unconditional: u, guidance: 3, schedule: run.schedule,
                                                      steps: 0..<stop, generators: &generators) }
        }
        func epsilon(_ p: StableDiffusionPipeline, _ texts: [String], _ x: Tensor) -> [Float] {
            let (states, mask) = p.encodePrompts(texts)
            return noGrad { p.predictNoise(latents: x, timestep: run.schedule.timesteps[stop], states: states, mask: mask).scalars }
        }
        func mse(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } / Float(a.count) }
        let x = try sample([prompt], stream: 0)
        let (c0, u0) = (epsilon(reference, [text], x), epsilon(reference, [""], x))
        let target = zip(c0, u0).map { $1 - 1.5 * ($0 - $1) }
        let unlearn = mse(epsilon(pipeline, [text], x), target)
        let xr = try sample(rows, stream: config.attackSteps + 1)
        let retain = mse(epsilon(pipeline, retained, xr), epsilon(reference, retained, xr))
        let values = Dictionary(uniqueKeysWithValues: terms.checked)
        XCTAssertEqual(values["unlearn"]!, unlearn, accuracy: 1e-5 * max(1, unlearn))
        XCTAssertEqual(values["retain"]!, retain, accuracy: 1e-5 * max(1, retain))
        XCTAssertEqual(values["total"]!, unlearn + 0.3 * retain, accuracy: 1e-5 * max(1, unlearn))
        XCTAssertGreaterThan(retain, 0)
        // Only the encoder's layers train.
        terms.total.backward()
        XCTAssertTrue(run.trainable.allSatisfy { EncoderAccess.isTransformerLayer($0.name) })
        XCTAssertTrue(run.trainable.contains { ($0.tensor.grad?.scalars.map(abs).max() ?? 0) > 0 })
        XCTAssertTrue(pipeline.unet.parameters().allSatisfy { $0.grad == nil })
    }

    func testPrefixGradientMatchesFiniteDifferences() throws {
        let pipeline = try TinyBert.pipeline()
        let run = try AdvUnlearnRun(config: Self.tinyConfig(), request: Self.request, pipeline: pipeline)
        var g = RandomGenerator(seed: 4)
        let prefix = g.normal([1, 8])
        prefix.requiresGrad = true
        let (input, step) = try run.state(prompts: [1], stream: 3)
        let target = run.original(input, step: step, rows: [1])
        run.model.freeze()
        func loss() -> Tensor { mseLoss(run.trained(input, step: step, states: run.conditioning(row: 1, prefix: prefix)), target) }
        loss().backward()
        let analytic = try XCTUnwrap(prefix.grad).scalars
        for k in [0, 3, 7] {
            let h: Float = 1e-2
            let saved = prefix.pointer[k]
            prefix.pointer[k] = saved + h
            let plus = noGrad { loss().item }
            prefix.pointer[k] = saved - h
            let minus = noGrad { loss().item }
            prefix.pointer[k] = saved
            let numeric = (plus - minus) / (2 * h)
            XCTAssertEqual(analytic[k], numeric, accuracy: 0.03 * abs(numeric) + 1e-6, "prefix[\(k)]")
        }
    }

    func testResumeGivesIdenticalBitsAndOnlyTheEncoderChanges() throws {
        let config = Self.tinyConfig(iterations: 4)
        let straight = try TinyBert.pipeline()
        let unetBefore = TinyBert.parameters(straight.unet)
        let encoderBefore = TinyBert.parameters(try EncoderAccess(straight.textEncoder).module)
        let full = try AdvUnlearn(config: config).erase(Self.request, pipeline: straight,
                                                        context: ErasureContext(output: Tiny.temporaryFolder("advunlearn-straight")))
        XCTAssertEqual(full.losses["unlearn"]?.count, 4)
        XCTAssertEqual(full.losses["attack"]?.count, 3)
        XCTAssertEqual(TinyBert.parameters(straight.unet), unetBefore)
        let encoderAfter = TinyBert.parameters(try EncoderAccess(straight.textEncoder).module)
        let changed = encoderAfter.keys.filter { encoderAfter[$0] != encoderBefore[$0] }
        XCTAssertFalse(changed.isEmpty)
        XCTAssertTrue(changed.allSatisfy(EncoderAccess.isTransformerLayer))

        let folder = Tiny.temporaryFolder("advunlearn-resumed")
        let partial = try AdvUnlearn(config: config).erase(Self.request, pipeline: try TinyBert.pipeline(),
                                                           context: ErasureContext(output: folder, stopAfter: 2))
        XCTAssertTrue(partial.stoppedEarly)
        let resumed = try TinyBert.pipeline()
        let outcome = try AdvUnlearn(config: config).erase(Self.request, pipeline: resumed, context: ErasureContext(output: folder, resume: true))
        XCTAssertEqual(outcome.losses["total"], full.losses["total"])
        XCTAssertEqual(outcome.losses["attack"], full.losses["attack"])
        XCTAssertEqual(TinyBert.parameters(try EncoderAccess(resumed.textEncoder).module), encoderAfter)

        // The cross-attention option trains the UNet's attn2 instead.
        var unetConfig = config
        unetConfig.module = .crossAttention
        unetConfig.iterations = 2
        let other = try TinyBert.pipeline()
        _ = try AdvUnlearn(config: unetConfig).erase(Self.request, pipeline: other, context: ErasureContext(output: nil))
        XCTAssertEqual(TinyBert.parameters(try EncoderAccess(other.textEncoder).module), encoderBefore)
        let unetAfter = TinyBert.parameters(other.unet)
        let moved = unetAfter.keys.filter { unetAfter[$0] != unetBefore[$0] }
        XCTAssertFalse(moved.isEmpty)
        XCTAssertTrue(moved.allSatisfy { $0.contains("attn2.") })
    }

    func testErasedEncoderIsSavedAndLoadedWithTheModel() throws {
        let base = Tiny.temporaryFolder("advunlearn-base")
        let pipeline = try TinyBert.pipeline()
        try Tiny.save(pipeline, to: base)
        let module = try XCTUnwrap(ErasedModel.textEncoderModule(of: pipeline))
        let original = try EncoderAccess(pipeline.textEncoder).snapshot()
        let reference = try pipeline.unet.copy()
        _ = try AdvUnlearn(config: Self.tinyConfig(iterations: 2)).erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
        let folder = Tiny.temporaryFolder("advunlearn-saved").appendingPathComponent("model")
        try ErasedModel.write(unet: pipeline.unet, reference: reference, baseFolder: base, baseName: base.path, method: "advunlearn",
                              concepts: ["cat"], full: false, textEncoder: (module, original), to: folder)
        let manifest = try XCTUnwrap(ErasedModel.manifest(in: folder))
        XCTAssertGreaterThan(manifest.text_encoder_tensors_changed ?? 0, 0)
        XCTAssertEqual(manifest.tensors_changed, 0)

        let fresh = try TinyBert.pipeline()
        XCTAssertNotEqual(TinyBert.parameters(ErasedModel.textEncoderModule(of: fresh)!), TinyBert.parameters(module))
        try ErasedModel.apply(folder: folder, to: fresh)
        XCTAssertEqual(TinyBert.parameters(ErasedModel.textEncoderModule(of: fresh)!), TinyBert.parameters(module))
        // Generation reads the loaded encoder: the same bits as the erased pipeline's.
        let a = try fresh.generate(prompts: ["cat"], steps: 3, guidance: 3, seed: 1)
        let b = try pipeline.generate(prompts: ["cat"], steps: 3, guidance: 3, seed: 1)
        XCTAssertEqual(a.scalars, b.scalars)

        XCTAssertThrowsError(try ErasedModel.write(unet: pipeline.unet, reference: reference, baseFolder: base, baseName: base.path,
                                                   method: "advunlearn", concepts: ["cat"], full: true, textEncoder: (module, original),
                                                   to: Tiny.temporaryFolder("advunlearn-full").appendingPathComponent("model"))) {
            XCTAssertTrue("\($0)".contains("--full"))
        }
    }

    func testBadSettingsGiveClearErrorsAndDefaultsAreTheOfficialOnes() throws {
        var c = AdvUnlearnConfig()
        XCTAssertEqual(c.module, .textEncoder); XCTAssertEqual(c.iterations, 1000); XCTAssertEqual(c.learningRate, 1e-5)
        XCTAssertEqual(c.attackSteps, 30); XCTAssertEqual(c.attackLearningRate, 1e-3); XCTAssertEqual(c.warmupIterations, 200)
        XCTAssertEqual(c.prefixTokens, 1); XCTAssertEqual(c.retainBatch, 5); XCTAssertEqual(c.retainWeight, 0.3)
        XCTAssertEqual(c.attackInit, .random)
        XCTAssertTrue(AdvUnlearn(config: c).changesTextEncoder)
        c.module = .crossAttention
        XCTAssertFalse(AdvUnlearn(config: c).changesTextEncoder)
        c.attackSteps = 0
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("attackSteps")) }
        let anchored = ErasureRequest(concepts: [Concept(name: "cat", targetPrompts: ["cat"], anchor: "dog")], retainPrompts: [])
        XCTAssertThrowsError(try AdvUnlearn(config: Self.tinyConfig()).erase(anchored, pipeline: try TinyBert.pipeline(), context: ErasureContext(output: nil))) {
            XCTAssertTrue("\($0)".contains("no anchor"))
        }
    }
}
