import Diffusion
import Foundation

// The settings of each `score bench` measurement with their defaults, checked before anything
// is built or timed.

/// A benchmark setting out of range; the message names the flag.
public struct BenchmarkError: Error, CustomStringConvertible, LocalizedError, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
    public var errorDescription: String? { description }
}

func check(_ ok: Bool, _ message: @autoclosure () -> String) throws {
    if !ok { throw BenchmarkError(message()) }
}

extension EngineBenchmark {
    public struct Settings: Sendable {
        /// Timed runs per measurement (the median is reported).
        public var runs = 7
        public init() {}

        public func validate() throws {
            try check(runs >= 1, "--runs must be at least 1, not \(runs)")
        }
    }

    public static func run(_ settings: Settings, progress: (String) -> Void = { _ in }) throws -> EngineBenchmarkResult {
        try settings.validate()
        return run(runs: settings.runs, progress: progress)
    }
}

extension UNetBenchmark {
    public struct Settings: Sendable {
        /// A preset name (sd15, sd21) or the path of a UNet config.json.
        public var config = "sd15"
        /// Latent side (64 = 512×512 images for SD 1.5).
        public var latent = 64
        public var batch = 1
        /// Text tokens (77 for CLIP).
        public var tokens = 77
        /// Timed runs (the median; one untimed warm-up when more than 1).
        public var runs = 1
        /// Also time forward + backward.
        public var backward = true
        /// Recompute each block's activations in the backward pass (diffusers' gradient_checkpointing).
        public var gradientCheckpointing = false
        public init() {}

        public func validate() throws {
            try check(runs >= 1, "--runs must be at least 1, not \(runs)")
            try check(latent >= 1, "--latent must be at least 1, not \(latent)")
            try check(batch >= 1, "--batch must be at least 1, not \(batch)")
            try check(tokens >= 1, "--tokens must be at least 1, not \(tokens)")
            try check(UNet2DConditionConfig.preset(config) != nil || FileManager.default.fileExists(atPath: config),
                      "--config must be sd15, sd21 or a UNet config.json, not \(config)")
        }

        /// The preset, or the config file read.
        public func unetConfig() throws -> UNet2DConditionConfig {
            try UNet2DConditionConfig.preset(config) ?? UNet2DConditionConfig(contentsOf: URL(fileURLWithPath: config))
        }
    }

    public static func run(_ settings: Settings, progress: (String) -> Void = { _ in }) throws -> UNetBenchmarkResult {
        try settings.validate()
        return try run(config: try settings.unetConfig(), name: settings.config, latent: settings.latent, batch: settings.batch,
                       tokens: settings.tokens, runs: settings.runs, backward: settings.backward,
                       gradientCheckpointing: settings.gradientCheckpointing, progress: progress)
    }
}

extension CriticBenchmark {
    public struct Settings: Sendable {
        /// Critic widths; the leakage estimate trains widths 32 and 64.
        public var widths = [32, 64]
        /// Samples per step, half target and half anchor.
        public var batch = 64
        /// Image side (the testbed's x̂₀ is 32×32×1).
        public var side = 32
        public var channels = 1
        /// Timed steps (the median is reported).
        public var runs = 20
        public init() {}

        public func validate() throws {
            try check(!widths.isEmpty, "--widths names no width")
            for width in widths { try check(width >= 1, "--widths: \(width) is not a positive width") }
            try check(batch >= 2, "--batch must be at least 2 (half target, half anchor), not \(batch)")
            try check(side >= 1, "--side must be at least 1, not \(side)")
            try check(channels >= 1, "channels must be at least 1, not \(channels)")
            try check(runs >= 1, "--runs must be at least 1, not \(runs)")
        }
    }

    public static func run(_ settings: Settings) throws -> [CriticBenchmarkResult] {
        try settings.validate()
        return settings.widths.map { run(width: $0, batch: settings.batch, side: settings.side, channels: settings.channels, runs: settings.runs) }
    }
}
