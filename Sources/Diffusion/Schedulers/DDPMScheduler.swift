import Foundation
import Tensor

/// DDPM ancestral sampling (Ho et al. 2020, eqs. 6–7), as diffusers' `DDPMScheduler`.
///
/// Each step estimates x̂₀ (clipped when `clip_sample` is set) and samples the posterior
/// q(x_prev | xₜ, x̂₀): mean √ᾱ_prev·β'ₜ/(1−ᾱₜ)·x̂₀ + √α'ₜ·(1−ᾱ_prev)/(1−ᾱₜ)·xₜ with
/// α'ₜ = ᾱₜ/ᾱ_prev and β'ₜ = 1 − α'ₜ, plus σₜ·z for t > 0. The previous timestep is the next
/// entry of the table (ᾱ = 1 after the last). `variance_type`: fixed_small (σ² = β̃ₜ =
/// (1−ᾱ_prev)/(1−ᾱₜ)·β'ₜ, clamped at 1e-20), fixed_small_log (the same through its log),
/// fixed_large (σ² = β'ₜ); learned variances are not supported.
public struct DDPMScheduler: NoiseScheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    public let varianceType: VarianceType
    public let timestepSpacing: TimestepSpacing

    public init(config: SchedulerConfig) throws {
        try config.requireFalse(config.thresholding, key: "thresholding")
        self.varianceType = try config.parse(config.varianceType, key: "variance_type", as: VarianceType.self)
        self.config = config
        self.noiseSchedule = try NoiseSchedule(config: config)
        self.timestepSpacing = config.spacing(default: .leading)
    }

    public func schedule(steps: Int) throws -> SamplingSchedule {
        try discreteSchedule(steps: steps, spacing: timestepSpacing)
    }

    /// The timestep after step `index` (the next table entry), or −1 after the last.
    public func previousTimestep(index: Int, of schedule: SamplingSchedule) -> Int {
        index + 1 < schedule.count ? schedule.discreteTimestep(index + 1) : -1
    }

    public func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool {
        schedule.discreteTimestep(index) > 0
    }

    /// The standard deviation of the noise added at step `index`.
    public func noiseStandardDeviation(index: Int, of schedule: SamplingSchedule) -> Double {
        let t = schedule.discreteTimestep(index)
        let alpha = noiseSchedule.alphasCumprod[t]
        let alphaPrev = noiseSchedule.alphaCumprod(previousTimestep(index: index, of: schedule), final: 1)
        let currentBeta = 1 - alpha / alphaPrev
        let variance = max((1 - alphaPrev) / (1 - alpha) * currentBeta, 1e-20)
        switch varianceType {
        case .fixedSmall: return variance.squareRoot()
        case .fixedSmallLog: return Foundation.exp(0.5 * Foundation.log(variance))
        case .fixedLarge: return currentBeta.squareRoot()
        }
    }

    public func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     noise: Tensor?) -> SchedulerStepOutput {
        precondition(modelOutput.shape == sample.shape, "DDPM step: output \(modelOutput.shape) vs sample \(sample.shape)")
        let t = schedule.discreteTimestep(index)
        let alpha = noiseSchedule.alphasCumprod[t]
        let alphaPrev = noiseSchedule.alphaCumprod(previousTimestep(index: index, of: schedule), final: 1)
        let beta = 1 - alpha, betaPrev = 1 - alphaPrev
        let currentAlpha = alpha / alphaPrev
        let currentBeta = 1 - currentAlpha

        var (x0, _) = SchedulerMath.splitPrediction(modelOutput, sample: sample, sqrtAlpha: alpha.squareRoot(),
                                      sqrtBeta: beta.squareRoot(), type: config.predictionType)
        if config.clipSample {
            let r = Float(config.clipSampleRange)
            x0 = x0.clamped(-r, r)
        }
        let x0Coefficient = alphaPrev.squareRoot() * currentBeta / beta
        let sampleCoefficient = currentAlpha.squareRoot() * betaPrev / beta
        var prev = x0 * Float(x0Coefficient) + sample * Float(sampleCoefficient)
        if t > 0, let noise {
            precondition(noise.shape == sample.shape, "DDPM step: noise \(noise.shape) vs sample \(sample.shape)")
            prev = prev + noise * Float(noiseStandardDeviation(index: index, of: schedule))
        }
        return SchedulerStepOutput(prevSample: prev, predictedOriginal: x0)
    }
}
