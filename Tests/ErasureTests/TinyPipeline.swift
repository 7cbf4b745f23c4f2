import Diffusion
import Erasure
import Foundation
import Tensor
import Testbed

/// A deterministic stand-in for a text encoder: each word maps to a fixed random vector (seeded
/// by its characters), prompts are padded to 4 tokens. Enough to make prompts distinguishable.
final class WordHashTextEncoder: TextEncoder {
    let hiddenSize = 8
    let length = 4

    func encode(prompts: [String]) -> (hiddenStates: Tensor, attentionMask: Tensor) {
        var states: [Float] = [], mask: [Float] = []
        for prompt in prompts {
            let words = prompt.split(separator: " ").prefix(length - 1).map(String.init)
            let tokens = ["<s>"] + words
            for position in 0..<length {
                if position < tokens.count {
                    var seed: UInt64 = 1469598103934665603
                    for byte in tokens[position].utf8 { seed = (seed ^ UInt64(byte)) &* 1099511628211 }
                    var g = RandomGenerator(seed: seed)
                    states += g.normal([hiddenSize]).scalars
                    mask.append(1)
                } else {
                    states += Array(repeating: 0, count: hiddenSize)
                    mask.append(0)
                }
            }
        }
        return (Tensor(shape: [prompts.count, length, hiddenSize], scalars: states),
                Tensor(shape: [prompts.count, length], scalars: mask))
    }
}

enum Tiny {
    static func unetConfig() -> UNet2DConditionConfig {
        var c = UNet2DConditionConfig()
        c.sampleSize = .one(8)
        c.inChannels = 1
        c.outChannels = 1
        c.blockOutChannels = [8, 16]
        c.layersPerBlock = .one(1)
        c.downBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"]
        c.upBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"]
        c.crossAttentionDim = .one(8)
        c.attentionHeadDim = .one(2)
        c.normNumGroups = 4
        return c
    }

    /// The testbed's scheduler (DDIM over a 1000-step cosine schedule, ε, clipped samples).
    static func schedulerConfig() -> SchedulerConfig { MiniSD.schedulerConfig() }

    /// A random tiny pixel-space pipeline, the same for the same seed.
    static func pipeline(seed: UInt64 = 0) throws -> StableDiffusionPipeline {
        var generator = RandomGenerator(seed: seed)
        let unet = try UNet2DConditionModel(config: unetConfig(), generator: &generator)
        var scheduler = try DDIMScheduler(config: schedulerConfig())
        scheduler.useClippedModelOutput = true
        return try StableDiffusionPipeline(textEncoder: WordHashTextEncoder(), unet: unet, vae: nil, scheduler: scheduler,
                                           passesAttentionMask: true)
    }

    /// A diffusers-layout folder of `pipeline`'s UNet and scheduler (no text encoder: tests pass it in).
    static func save(_ pipeline: StableDiffusionPipeline, to folder: URL) throws {
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("scheduler"), withIntermediateDirectories: true)
        try Data("{\"_class_name\": \"StableDiffusionPipeline\"}".utf8).write(to: folder.appendingPathComponent("model_index.json"))
        try JSONEncoder().encode(schedulerConfig()).write(to: folder.appendingPathComponent("scheduler/scheduler_config.json"))
        try pipeline.unet.save(to: folder.appendingPathComponent("unet"))
    }

    /// A leakage estimate small enough for a test: 8 trajectories of 4 steps, critics of width 4
    /// trained 5 steps, 20 bootstrap rounds.
    static func leakageOptions() -> LeakageOptions {
        var options = LeakageOptions()
        options.trajectories = 8
        options.steps = 4
        options.criticSteps = 5
        options.criticWidth = 4
        options.bootstrapRounds = 20
        return options
    }

    static func temporaryFolder(_ name: String) -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("score-erasure-tests-\(name)-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}
