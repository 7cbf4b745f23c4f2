import Diffusion
import Foundation
import Kernels
import NN
import Tensor

/// Times of one UNet, the figures of `score bench unet` (tools/bench_unet_torch.py measures the
/// same with torch + diffusers).
public struct UNetBenchmarkResult: Codable, Sendable {
    public var config: String
    public var parameters: Int
    public var batch: Int
    /// Latent side (64 for SD 1.5 at 512×512).
    public var latent: Int
    public var tokens: Int
    /// Median seconds of one forward pass (no autodiff recording).
    public var forward_s: Double
    /// Median seconds of forward + backward (gradients of every parameter and the sample).
    public var forward_backward_s: Double?
    /// Peak resident memory of the process (VmHWM) after the forward passes, and at the end.
    public var forward_peak_rss_mb: Double?
    public var peak_rss_mb: Double?
    /// Whether the forward + backward ran with gradient checkpointing.
    public var gradient_checkpointing: Bool
    /// CPU seconds in user and kernel mode and minor page faults over the timed forward +
    /// backward runs (after the warm-up when runs > 1), from getrusage: time lost to faulting in
    /// fresh memory shows here.
    public var forward_backward_user_s: Double?
    public var forward_backward_sys_s: Double?
    public var forward_backward_minor_faults: Int?
    /// MB the buffer cache mapped fresh over the timed forward + backward runs (0 when the cache
    /// served every request), and the most MB of large buffers it held at once, in use plus cached.
    public var forward_backward_mapped_mb: Double?
    public var buffer_cache_peak_mb: Double?
    public var runs: Int
    public var threads: Int
    public var isa: String
}

public enum UNetBenchmark {
    /// Builds a randomly initialised UNet of `config` and times it on a batch of `batch` latents
    /// latent × latent with `tokens` text states of the config's cross-attention width, at
    /// timestep 500. `runs` timed runs each (the median), one untimed warm-up when runs > 1.
    public static func run(config: UNet2DConditionConfig, name: String, latent: Int, batch: Int = 1, tokens: Int = 77,
                           runs: Int = 1, backward: Bool = true, gradientCheckpointing: Bool = false,
                           progress: (String) -> Void = { _ in }) throws -> UNetBenchmarkResult {
        progress("building \(name) with random weights")
        var generator = RandomGenerator(seed: 0)
        let unet = try UNet2DConditionModel(config: config, generator: &generator)
        unet.eval()
        unet.gradientCheckpointing = gradientCheckpointing
        let sample = generator.normal([batch, config.inChannels, latent, latent])
        let context = generator.normal([batch, tokens, config.crossAttentionDim[0]])
        let timestep: [Float] = [500]
        let warmup = runs > 1 ? 1 : 0

        progress("forward")
        let forward = medianSeconds(runs: runs, warmup: warmup) {
            _ = noGrad { unet(sample, timestep: timestep, encoderHiddenStates: context) }
        }
        let forwardPeak = peakResidentMegabytes()

        var forwardBackward: Double? = nil
        var usage: (user: Double, sys: Double, faults: Int)? = nil
        var mappedBytes: Int? = nil
        if backward {
            progress("forward + backward")
            sample.requiresGrad = true
            let step = {
                let out = unet(sample, timestep: timestep, encoderHiddenStates: context)
                out.backward(Tensor.ones(out.shape))
                unet.zeroGrad()
                sample.grad = nil
            }
            for _ in 0..<warmup { step() }
            let before = ResourceUsage.now(), mappedBefore = BufferCache.statistics.mappedBytes
            forwardBackward = medianSeconds(runs: runs, warmup: 0, step)
            let after = ResourceUsage.now()
            mappedBytes = BufferCache.statistics.mappedBytes - mappedBefore
            usage = (after.user - before.user, after.sys - before.sys, after.minorFaults - before.minorFaults)
        }
        return UNetBenchmarkResult(
            config: name, parameters: unet.parameterCount, batch: batch, latent: latent, tokens: tokens,
            forward_s: forward, forward_backward_s: forwardBackward, forward_peak_rss_mb: forwardPeak,
            peak_rss_mb: peakResidentMegabytes(), gradient_checkpointing: gradientCheckpointing,
            forward_backward_user_s: usage?.user, forward_backward_sys_s: usage?.sys,
            forward_backward_minor_faults: usage?.faults,
            forward_backward_mapped_mb: mappedBytes.map { Double($0) / 1_048_576 },
            buffer_cache_peak_mb: Double(BufferCache.statistics.peakBytes) / 1_048_576, runs: runs, threads: Kernels.threadCount, isa: Kernels.isa)
    }
}

/// The process's CPU time and minor page faults so far (getrusage).
struct ResourceUsage {
    var user: Double, sys: Double, minorFaults: Int

    static func now() -> ResourceUsage {
        var usage = rusage()
        #if os(Linux)
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return ResourceUsage(user: seconds(usage.ru_utime), sys: seconds(usage.ru_stime), minorFaults: Int(usage.ru_minflt))
    }
}
