import Erasure
import Foundation
import Kernels
import Tensor

/// Seconds per training step of a leakage / SCORE critic (`score bench critic`): the leakage
/// estimate trains one of width 32 for 300 steps and one of width 64 for 900, so this is most of
/// what a benchmark cell's leakage phase costs.
public struct CriticBenchmarkResult: Codable, Sendable {
    public var width: Int
    public var batch: Int
    public var image_side: Int
    public var channels: Int
    /// Median seconds of one step (forward, backward, Adam, power iteration) on a balanced batch.
    public var step_s: Double
    public var runs: Int
    public var threads: Int
    public var isa: String
}

public enum CriticBenchmark {
    public static func run(width: Int, batch: Int = 64, side: Int = 32, channels: Int = 1, runs: Int = 20) -> CriticBenchmarkResult {
        var generator = RandomGenerator(seed: 0)
        let trainer = CriticTrainer(channels: channels, width: width, learningRate: 1e-3, betas: (0.9, 0.999), generator: &generator)
        let half = batch / 2
        let target = generator.normal([half, channels, side, side]), anchor = generator.normal([batch - half, channels, side, side])
        let timesteps = (0..<batch).map { $0 * 7 % 1000 }
        let step = medianSeconds(runs: runs, warmup: 2) {
            trainer.step(target: target, targetTimesteps: Array(timesteps.prefix(half)),
                         anchor: anchor, anchorTimesteps: Array(timesteps.suffix(batch - half)))
        }
        return CriticBenchmarkResult(width: width, batch: batch, image_side: side, channels: channels, step_s: step,
                                     runs: runs, threads: Kernels.threadCount, isa: Kernels.isa)
    }
}
