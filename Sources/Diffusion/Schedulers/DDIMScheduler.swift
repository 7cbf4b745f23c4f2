import Foundation
import Tensor

/// DDIM (Song et al. 2021, eqs. 12 and 16), as diffusers' `DDIMScheduler`.
///
/// Each step estimates x̂₀ from the model output, clips it to ±`clip_sample_range` when
/// `clip_sample` is set, and moves to the previous timestep t − T div n:
/// x_prev = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σ²)·ε̂ + σ·z, with σ = η·√((1−ᾱ_prev)/(1−ᾱₜ)·(1 − ᾱₜ/ᾱ_prev)).
/// After the last step ᾱ_prev is 1 (`set_alpha_to_one`) or ᾱ₀.
///
/// Pitfall (docs/TESTBED.md): with `squaredcos_cap_v2` the top timesteps keep almost no signal
/// (ᾱ ≈ 0.004 at t = 960, the first of 25 "leading" steps; ≈ 2.4e-9 at t = 999, the first
/// "trailing" one), so x̂₀ from a guided ε is huge and clipping changes it completely. By default
/// (as in diffusers) ε̂ stays the raw model output, which no longer agrees with the clipped x̂₀,
/// and guided samples saturate. `useClippedModelOutput` recomputes ε̂ = (xₜ − √ᾱₜ·x̂₀)/√(1−ᾱₜ)
/// from the clipped x̂₀ (GLIDE's choice, diffusers' `use_clipped_model_output=True`).
public struct DDIMScheduler: NoiseScheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    /// η: 0 is deterministic DDIM, 1 gives DDPM's posterior variance.
    public var eta: Double
    /// Recompute ε̂ from the clipped x̂₀ (see the type's notes).
    public var useClippedModelOutput: Bool
    /// ᾱ after the last step.
    public let finalAlphaCumprod: Double
    public let timestepSpacing: TimestepSpacing

    public init(config: SchedulerConfig, eta: Double = 0, useClippedModelOutput: Bool = false) throws {
        try config.requireFalse(config.thresholding, key: "thresholding")
        self.config = config
        self.noiseSchedule = try NoiseSchedule(config: config)
        self.eta = eta
        self.useClippedModelOutput = useClippedModelOutput
        self.finalAlphaCumprod = config.setAlphaToOne ? 1 : noiseSchedule.alphasCumprod[0]
        self.timestepSpacing = config.spacing(default: .leading)
    }

    public func schedule(steps: Int) throws -> SamplingSchedule {
        try discreteSchedule(steps: steps, spacing: timestepSpacing)
    }

    /// The timestep DDIM steps to from `t`: t − T div n, as diffusers computes it for every
    /// spacing (so with `trailing`/`linspace` it need not be the next entry of the table).
    public func previousTimestep(_ t: Int, inferenceSteps: Int) -> Int {
        t - numTrainTimesteps / inferenceSteps
    }

    public func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool { eta > 0 }

    public func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     noise: Tensor?) -> SchedulerStepOutput {
        precondition(modelOutput.shape == sample.shape, "DDIM step: output \(modelOutput.shape) vs sample \(sample.shape)")
        let t = schedule.discreteTimestep(index)
        let prevT = previousTimestep(t, inferenceSteps: schedule.inferenceSteps)
        let alpha = noiseSchedule.alphasCumprod[t]
        let alphaPrev = noiseSchedule.alphaCumprod(prevT, final: finalAlphaCumprod)
        let beta = 1 - alpha
        let sqrtAlpha = alpha.squareRoot(), sqrtBeta = beta.squareRoot()

        var (x0, eps) = SchedulerMath.splitPrediction(modelOutput, sample: sample, sqrtAlpha: sqrtAlpha, sqrtBeta: sqrtBeta,
                                        type: config.predictionType)
        if config.clipSample {
            let r = Float(config.clipSampleRange)
            x0 = x0.clamped(-r, r)
        }
        let variance = (1 - alphaPrev) / beta * (1 - alpha / alphaPrev)
        let std = eta * variance.squareRoot()
        if useClippedModelOutput {
            eps = (sample - x0 * Float(sqrtAlpha)) * Float(1 / sqrtBeta)
        }
        let direction = eps * Float(max(0, 1 - alphaPrev - std * std).squareRoot())
        var prev = x0 * Float(alphaPrev.squareRoot()) + direction
        if eta > 0, let noise {
            precondition(noise.shape == sample.shape, "DDIM step: noise \(noise.shape) vs sample \(sample.shape)")
            prev = prev + noise * Float(std)
        }
        return SchedulerStepOutput(prevSample: prev, predictedOriginal: x0)
    }
}

extension NoiseScheduler {
    /// The DDPM/DDIM table: integral timesteps, each inside the training range.
    func discreteSchedule(steps: Int, spacing: TimestepSpacing) throws -> SamplingSchedule {
        let n = numTrainTimesteps
        guard steps >= 1 && steps <= n else { throw SchedulerError.invalidStepCount(steps: steps, numTrainTimesteps: n) }
        let table = TimestepTable.discrete(spacing: spacing, steps: steps, trainTimesteps: n, offset: config.stepsOffset)
        if let bad = table.first(where: { $0 < 0 || $0 >= n }) {
            throw SchedulerError.timestepOutOfRange(timestep: bad, steps: steps, spacing: spacing, source: config.source)
        }
        return SamplingSchedule(timesteps: table.map { Float($0) }, inferenceSteps: steps)
    }
}
