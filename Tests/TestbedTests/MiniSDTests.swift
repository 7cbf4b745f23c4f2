import Diffusion
import Foundation
import NN
import Tensor
import XCTest
@testable import Testbed

/// A stand-in for MiniLM: each word's vector is a fixed random row picked by a hash of the word.
final class HashingTextEncoder: TextEncoder {
    let hiddenSize = 8
    let table: Tensor

    init() {
        var g = RandomGenerator(seed: 11)
        table = g.normal([64, 8])
    }

    func encode(prompts: [String]) -> (hiddenStates: Tensor, attentionMask: Tensor) {
        let words = prompts.map { $0.split(separator: " ").map(String.init) }
        let length = max(1, words.map(\.count).max() ?? 1)
        let states = Tensor.zeros([prompts.count, length, hiddenSize])
        let mask = Tensor.zeros([prompts.count, length])
        for (b, ws) in words.enumerated() {
            for (t, w) in ws.enumerated() {
                let row = Int(w.utf8.reduce(UInt32(5381)) { ($0 &* 33) ^ UInt32($1) } % 64)
                (states.pointer + (b * length + t) * hiddenSize).update(from: table.pointer + row * hiddenSize, count: hiddenSize)
                mask.pointer[b * length + t] = 1
            }
        }
        return (states, mask)
    }
}

func tinyUNetConfig() -> UNet2DConditionConfig {
    var c = MiniSD.unetConfig()
    c.blockOutChannels = [8, 16]
    c.downBlockTypes = ["DownBlock2D", "CrossAttnDownBlock2D"]
    c.upBlockTypes = ["CrossAttnUpBlock2D", "UpBlock2D"]
    c.crossAttentionDim = .one(8)
    c.attentionHeadDim = .one(2)
    c.normNumGroups = 4
    return c
}

/// One Adam step on a batch of 8 images lowers the min-SNR diffusion loss on that same batch.
func assertOneStepLowersTheLoss(unet: UNet2DConditionModel, scheduler: DDPMScheduler, clean: Tensor, states: Tensor, mask: Tensor,
                                generator g: inout RandomGenerator, file: StaticString = #filePath, line: UInt = #line) {
    let noise = g.normal(clean.shape)
    let timesteps = [10, 100, 200, 300, 400, 500, 600, 700]
    func loss() -> Tensor {
        diffusionLoss(unet: unet, scheduler: scheduler, clean: clean, noise: noise,
                      timesteps: timesteps, states: states, mask: mask, minSNRGamma: 5)
    }
    let optimizer = Adam(unet.trainableParameters(), learningRate: 1e-3)
    let before = loss()
    before.backward()
    optimizer.step()
    let after = noGrad { loss() }
    XCTAssertLessThan(after.item, before.item, file: file, line: line)
}

final class MiniSDTests: XCTestCase {
    func testTheTestbedUNetHasTheReferenceParameterCount() throws {
        var g = RandomGenerator(seed: 0)
        let unet = try UNet2DConditionModel(config: MiniSD.unetConfig(), generator: &g)
        XCTAssertEqual(unet.parameterCount, 1_972_641, "diffusers counts 1,972,641 for this config")
    }

    /// The embedded model is what the code builds: the testbed's config (16 GroupNorm groups),
    /// every tensor loaded and finite, and a training record of one uninterrupted run.
    func testTheEmbeddedModelHasTheTestbedConfigAndLoads() throws {
        let unetFolder = try DefaultModel.folder().appendingPathComponent("unet")
        let config = try UNet2DConditionConfig(contentsOf: unetFolder.appendingPathComponent("config.json"))
        XCTAssertEqual(config, MiniSD.unetConfig(), "the embedded unet/config.json is MiniSD.unetConfig()")
        let unet = try UNet2DConditionModel(directory: unetFolder)
        XCTAssertEqual(unet.parameterCount, 1_972_641)
        for (name, p) in unet.namedParameters() {
            XCTAssert(p.scalars.allSatisfy(\.isFinite), "\(name) holds a non-finite value")
        }
        let record = try JSONDecoder().decode(TrainingRecord.self,
                                              from: Data(contentsOf: try DefaultModel.folder().appendingPathComponent("training.json")))
        XCTAssertEqual(record.model, "mini-sd-unet")
        XCTAssertEqual(record.parameters, unet.parameterCount)
        XCTAssertFalse(record.command.contains("--resume"), "one run from scratch: \(record.command)")
    }

    func testOneStepLowersTheLossOnItsBatch() throws {
        var g = RandomGenerator(seed: 1)
        let unet = try UNet2DConditionModel(config: tinyUNetConfig(), generator: &g)
        let scheduler = try DDPMScheduler(config: MiniSD.schedulerConfig())
        let data = syntheticData(count: 8, seed: 5)
        let (states, mask) = HashingTextEncoder().encode(prompts: (0..<8).map { "a photo of \($0 % 2)" })
        assertOneStepLowersTheLoss(unet: unet, scheduler: scheduler, clean: data.batch(Array(0..<8)),
                                   states: states, mask: mask, generator: &g)
    }

    func testTrainingResumesToIdenticalWeightsAndSavesALoadableFolder() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("minisd-\(UUID())")
        defer { try? FileManager.default.removeItem(at: folder) }
        let prompts = try FashionPrompts.bundled()
        let data = syntheticData(count: 16, seed: 6)
        var options = MiniSDTrainingOptions(output: folder.appendingPathComponent("full"))
        options.steps = 4
        options.batchSize = 4
        options.checkpointEvery = 2
        options.warmupSteps = 1
        let encoder = HashingTextEncoder()
        let (full, record) = try trainMiniSD(options, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }
        XCTAssertEqual(record.steps, 4)
        XCTAssert(record.finalLoss.isFinite)

        var partial = options
        partial.output = folder.appendingPathComponent("split")
        partial.stopAfter = 3
        let (_, partialRecord) = try trainMiniSD(partial, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }
        XCTAssertEqual(partialRecord.steps, 3, "a stopped run's record counts the steps it reached")
        var beyond = partial
        beyond.stopAfter = options.steps + 1
        XCTAssertThrowsError(try trainMiniSD(beyond, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }) {
            XCTAssert("\($0)".contains("--stop-after 5"), "\($0)")
        }
        var resumed = partial
        resumed.stopAfter = nil
        resumed.resume = true
        let (continued, _) = try trainMiniSD(resumed, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }
        XCTAssertEqual(full.parameters().map(\.scalars), continued.parameters().map(\.scalars))

        // The saved folder loads as a pipeline and samples deterministically.
        let model = folder.appendingPathComponent("model")
        try MiniSD.save(full, config: tinyUNetConfig(), to: model)
        let pipeline = try StableDiffusionPipeline(directory: model, textEncoder: encoder)
        let a = try pipeline.generate(prompts: ["a photo of a sneaker"], steps: 3, guidance: 4, seed: 9)
        let b = try pipeline.generate(prompts: ["a photo of a sneaker"], steps: 3, guidance: 4, seed: 9)
        XCTAssertEqual(a.shape, [1, 1, 32, 32])
        XCTAssertEqual(a.scalars, b.scalars)
    }

    func testOffsetNoiseRidesInTheCheckpointAndAResumeMustMatchIt() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("minisd-offset-\(UUID())")
        defer { try? FileManager.default.removeItem(at: folder) }
        let prompts = try FashionPrompts.bundled()
        let data = syntheticData(count: 16, seed: 6)
        let encoder = HashingTextEncoder()
        var options = MiniSDTrainingOptions(output: folder.appendingPathComponent("full"))
        options.steps = 3
        options.batchSize = 4
        options.checkpointEvery = 1
        options.warmupSteps = 1
        options.offsetNoise = 0.1
        let (full, record) = try trainMiniSD(options, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }
        XCTAssertEqual(record.metrics["offset_noise"] ?? 0, 0.1, accuracy: 1e-6)

        var plain = options
        plain.output = folder.appendingPathComponent("plain")
        plain.offsetNoise = 0
        let (withoutOffset, _) = try trainMiniSD(plain, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }
        XCTAssertNotEqual(full.parameters().map(\.scalars), withoutOffset.parameters().map(\.scalars), "the offset changes the noise trained on")

        var partial = options
        partial.output = folder.appendingPathComponent("split")
        partial.stopAfter = 2
        _ = try trainMiniSD(partial, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }
        var mismatched = partial
        mismatched.stopAfter = nil
        mismatched.resume = true
        mismatched.offsetNoise = 0
        XCTAssertThrowsError(try trainMiniSD(mismatched, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }) {
            XCTAssert("\($0)".contains("--offset-noise 0.1"), "\($0)")
        }
        var resumed = mismatched
        resumed.offsetNoise = 0.1
        let (continued, _) = try trainMiniSD(resumed, data: data, prompts: prompts, textEncoder: encoder, config: tinyUNetConfig()) { _ in }
        XCTAssertEqual(full.parameters().map(\.scalars), continued.parameters().map(\.scalars))
    }
}
