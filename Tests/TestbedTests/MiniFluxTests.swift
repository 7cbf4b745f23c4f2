import Diffusion
import Foundation
import NN
import Tensor
import XCTest
@testable import Testbed

/// `HashingTextEncoder` in both FLUX roles: its states padded to 6 positions, their mean pooled.
final class HashingFluxEncoder: FluxTextEncoder {
    let words = HashingTextEncoder()
    let tokens = 6
    var stateWidth: Int { words.hiddenSize }
    var pooledWidth: Int { words.hiddenSize }

    func encode(prompts: [String]) -> (states: Tensor, pooled: Tensor) {
        let (s, m) = words.encode(prompts: prompts)
        let (b, t, d) = (s.shape[0], s.shape[1], s.shape[2])
        let states = Tensor.zeros([b, tokens, d]), mask = Tensor.zeros([b, tokens])
        for i in 0..<b {
            for j in 0..<min(t, tokens) {
                (states.pointer + (i * tokens + j) * d).update(from: s.pointer + (i * t + j) * d, count: d)
                mask.pointer[i * tokens + j] = m.pointer[i * t + j]
            }
        }
        return (states, SentencePooling.mean(states, mask: mask))
    }
}

func tinyFluxConfig() -> FluxTransformer2DConfig {
    var c = MiniFlux.transformerConfig()
    c.numLayers = 1
    c.numSingleLayers = 1
    c.attentionHeadDim = 8
    c.numAttentionHeads = 2
    c.axesDimsRope = [2, 2, 4]
    c.jointAttentionDim = 8
    c.pooledProjectionDim = 8
    return c
}

final class MiniFluxTests: XCTestCase {
    func testTheTestbedTransformerHasTheReferenceParameterCount() throws {
        var g = RandomGenerator(seed: 0)
        let model = try FluxTransformer2DModel(config: MiniFlux.transformerConfig(), generator: &g)
        XCTAssertEqual(model.parameterCount, 2_375_172, "diffusers counts 2,375,172 for this config")
    }

    func testTheAdaLNZeroStartPredictsZeroVelocity() throws {
        var g = RandomGenerator(seed: 0)
        let model = try MiniFlux.initialModel(config: tinyFluxConfig(), generator: &g)
        let (states, pooled) = HashingFluxEncoder().encode(prompts: ["a photo of a bag"])
        let v = model(g.normal([1, 16, 4]), encoderHiddenStates: states, pooledProjections: pooled, timestep: [0.5],
                      imageIds: FluxTransformer2DModel.latentImageIds(height: 4, width: 4),
                      textIds: FluxTransformer2DModel.textIds(tokens: states.shape[1]))
        XCTAssertEqual(Set(v.scalars), [0])
    }

    func testOneStepLowersTheFlowLossOnItsBatch() throws {
        var g = RandomGenerator(seed: 1)
        var generator = RandomGenerator(seed: 2)
        let model = try FluxTransformer2DModel(config: tinyFluxConfig(), generator: &generator)
        let clean = syntheticData(count: 4, seed: 5).batch(Array(0..<4))
        let noise = g.normal(clean.shape)
        let (states, pooled) = HashingFluxEncoder().encode(prompts: (0..<4).map { "a photo of \($0 % 2)" })
        func loss() -> Tensor {
            flowMatchingLoss(model: model, clean: clean, noise: noise, sigmas: [0.1, 0.4, 0.7, 0.95], states: states, pooled: pooled)
        }
        let optimizer = Adam(model.trainableParameters(), learningRate: 1e-3)
        let before = loss()
        before.backward()
        optimizer.step()
        XCTAssertLessThan(noGrad { loss() }.item, before.item)
    }

    func testTrainingResumesToIdenticalWeightsAndSavesALoadableFolder() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("miniflux-\(UUID())")
        defer { try? FileManager.default.removeItem(at: folder) }
        let data = FashionTrainingData(data: syntheticData(count: 16, seed: 6), prompts: try FashionPrompts.bundled())
        var options = MiniFluxTrainingOptions(output: folder.appendingPathComponent("full"))
        options.steps = 4
        options.batchSize = 3
        options.checkpointEvery = 2
        options.warmupSteps = 1
        let encoder = HashingFluxEncoder()
        let (full, record) = try trainMiniFlux(options, data: data, textEncoder: encoder, config: tinyFluxConfig()) { _ in }
        XCTAssertEqual(record.steps, 4)
        XCTAssert(record.finalLoss.isFinite)
        XCTAssertNotEqual(Set(full.proj_out.weight.scalars), [0], "training moved the zero-initialised output projection")

        var partial = options
        partial.output = folder.appendingPathComponent("split")
        partial.stopAfter = 3
        let (_, partialRecord) = try trainMiniFlux(partial, data: data, textEncoder: encoder, config: tinyFluxConfig()) { _ in }
        XCTAssertEqual(partialRecord.steps, 3)
        var resumed = partial
        resumed.stopAfter = nil
        resumed.resume = true
        var otherSampling = resumed
        otherSampling.timeSampling = "uniform"
        XCTAssertThrowsError(try trainMiniFlux(otherSampling, data: data, textEncoder: encoder, config: tinyFluxConfig()) { _ in }) {
            XCTAssert("\($0)".contains("--time-sampling logit-normal"), "\($0)")
        }
        let (continued, _) = try trainMiniFlux(resumed, data: data, textEncoder: encoder, config: tinyFluxConfig()) { _ in }
        XCTAssertEqual(full.parameters().map(\.scalars), continued.parameters().map(\.scalars))

        // The saved folder (and the checkpoint's export) load as a FLUX pipeline and sample the same bits.
        let model = folder.appendingPathComponent("model")
        try MiniFlux.save(full, to: model)
        XCTAssertEqual(try MiniFlux.export(checkpoint: folder.appendingPathComponent("full/checkpoint.safetensors"),
                                           config: tinyFluxConfig(), to: folder.appendingPathComponent("export")), 4)
        let pipeline = try FluxPipeline(directory: model, textEncoder: encoder)
        let exported = try FluxPipeline(directory: folder.appendingPathComponent("export"), textEncoder: encoder)
        let a = try pipeline.generate(prompts: ["a photo of a sneaker"], steps: 3, guidance: 4, seed: 9, height: 32, width: 32)
        let b = try exported.generate(prompts: ["a photo of a sneaker"], steps: 3, guidance: 4, seed: 9, height: 32, width: 32)
        XCTAssertEqual(a.shape, [1, 1, 32, 32])
        XCTAssertEqual(a.scalars, b.scalars)
    }

    func testBadOptionsAreRefusedNamingTheFlag() {
        var options = MiniFluxTrainingOptions(output: URL(fileURLWithPath: "/tmp/unused"))
        options.timeSampling = "cosine"
        XCTAssertThrowsError(try options.validate()) { XCTAssert("\($0)".contains("--time-sampling"), "\($0)") }
        options.timeSampling = "uniform"
        options.stopAfter = 0
        XCTAssertThrowsError(try options.validate()) { XCTAssert("\($0)".contains("--stop-after"), "\($0)") }
    }

    func testCheckModelFamilyArguments() {
        var run = ModelCheckRun()
        run.family = "flux"
        XCTAssertNoThrow(try run.validate(), "no --model: the embedded mini-FLUX")
        run.model = URL(fileURLWithPath: "/tmp/some-flux")
        XCTAssertNoThrow(try run.validate())
        run.testbed = TestbedData(kind: .emoji)
        XCTAssertThrowsError(try run.validate()) { XCTAssert("\($0)".contains("Fashion-MNIST"), "\($0)") }
        run.testbed = TestbedData()
        run.family = "sdxl"
        XCTAssertThrowsError(try run.validate()) { XCTAssert("\($0)".contains("--family must be sd or flux"), "\($0)") }
        XCTAssertEqual(ModelCheckRun.defaultSampling(family: "flux").guidance, MiniFlux.guidance)
        XCTAssertEqual(ModelCheckRun.defaultSampling(family: "sd").guidance, DefaultModel.guidance)
    }
}
