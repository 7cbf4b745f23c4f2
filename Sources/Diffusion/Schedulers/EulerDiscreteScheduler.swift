import Foundation
import Tensor

/// Euler's method on the probability-flow ODE in k-diffusion's variance-exploding form (Karras
/// et al. 2022, Algorithm 2 without churn), as diffusers' `EulerDiscreteScheduler`.
///
/// The sample lives at noise level σ = √((1−ᾱ)/ᾱ): x = x₀ + σ·ε. The model sees
/// x/√(σ² + 1) (`scaleModelInput`, the variance-preserving sample) and its timestep. A step
/// estimates x̂₀ (ε: x − σ·ε̂; v: −σ/√(σ²+1)·v̂ + x/(σ²+1); sample: the output) and moves
/// x_next = x + (x − x̂₀)/σ · (σ_next − σ) = (σ_next/σ)·x + (1 − σ_next/σ)·x̂₀.
///
/// The table's σ are interpolated linearly (`interpolation_type` linear) from the training σ at
/// the float32 timesteps, then the final σ is appended: 0 (`final_sigmas_type` zero) or σ₀
/// (sigma_min). A run starts from noise of standard deviation `initNoiseSigma`: max σ for
/// linspace/trailing spacing, √(max σ² + 1) for leading (diffusers' rule). Not implemented
/// (errors when set): Karras/exponential/beta sigmas, log-linear interpolation, continuous
/// timesteps, stochastic churn.
public struct EulerDiscreteScheduler: NoiseScheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    /// σ of each training timestep, ascending in t.
    public let trainSigmas: [Double]
    let finalSigmaIsMinimum: Bool

    public init(config: SchedulerConfig) throws {
        if config.interpolationType != "linear" {
            throw SchedulerError.unsupportedValue(key: "interpolation_type", value: config.interpolationType,
                                                  supported: ["linear"], source: config.source)
        }
        if config.timestepType != "discrete" {
            throw SchedulerError.unsupportedValue(key: "timestep_type", value: config.timestepType,
                                                  supported: ["discrete"], source: config.source)
        }
        switch config.finalSigmasType {
        case "zero": finalSigmaIsMinimum = false
        case "sigma_min": finalSigmaIsMinimum = true
        default:
            throw SchedulerError.unsupportedValue(key: "final_sigmas_type", value: config.finalSigmasType,
                                                  supported: ["zero", "sigma_min"], source: config.source)
        }
        try config.requireFalse(config.useKarrasSigmas, key: "use_karras_sigmas")
        try config.requireFalse(config.useExponentialSigmas, key: "use_exponential_sigmas")
        try config.requireFalse(config.useBetaSigmas, key: "use_beta_sigmas")
        self.config = config
        self.noiseSchedule = try NoiseSchedule(config: config)
        self.timestepSpacing = config.spacing(default: .linspace)
        self.trainSigmas = noiseSchedule.sigmas
    }

    public func schedule(steps: Int) throws -> SamplingSchedule {
        return try Self.sigmaSchedule(steps: steps, spacing: timestepSpacing, offset: config.stepsOffset,
                                      trainSigmas: trainSigmas, finalSigma: finalSigmaIsMinimum ? trainSigmas[0] : 0)
    }

    /// The largest step count of the σ-parameterised (Euler) schedulers: diffusers allows more steps
    /// than training timesteps there (fractional timesteps), so the bound only keeps the table's
    /// allocation sane.
    public static let maxSteps = 100_000

    /// Euler's table (shared with Euler ancestral): float32 timesteps, σ interpolated linearly from
    /// the training σ at them, then `finalSigma`; the initial noise's standard deviation follows
    /// diffusers' rule (max σ, or √(max σ² + 1) for leading spacing).
    static func sigmaSchedule(steps: Int, spacing: TimestepSpacing, offset: Int, trainSigmas: [Double],
                              finalSigma: Double) throws -> SamplingSchedule {
        guard steps >= 1 && steps <= maxSteps else {
            throw SchedulerError.invalidStepCount(steps: steps, numTrainTimesteps: trainSigmas.count)
        }
        let timesteps = TimestepTable.continuous(spacing: spacing, steps: steps, trainTimesteps: trainSigmas.count, offset: offset)
        var sigmas = timesteps.map { NumpyReplica.interpolateOnIntegerGrid(Double($0), trainSigmas) }
        sigmas.append(finalSigma)
        let maxSigma = sigmas.max() ?? 0
        let initSigma = spacing == .leading ? (maxSigma * maxSigma + 1).squareRoot() : maxSigma
        return SamplingSchedule(timesteps: timesteps, sigmas: sigmas, initNoiseSigma: initSigma, inferenceSteps: steps)
    }

    public func scaleModelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor {
        let sigma = schedule.sigmas[index]
        return sample * Float(1 / (sigma * sigma + 1).squareRoot())
    }

    public func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool { false }

    public func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     noise: Tensor?) -> SchedulerStepOutput {
        precondition(modelOutput.shape == sample.shape, "Euler step: output \(modelOutput.shape) vs sample \(sample.shape)")
        precondition(schedule.sigmas.count == schedule.count + 1, "Euler step needs a schedule made by an Euler scheduler")
        let sigma = schedule.sigmas[index], next = schedule.sigmas[index + 1]
        let x0: Tensor
        switch config.predictionType {
        case .epsilon:
            x0 = sample - modelOutput * Float(sigma)
        case .vPrediction:
            x0 = modelOutput * Float(-sigma / (sigma * sigma + 1).squareRoot()) + sample * Float(1 / (sigma * sigma + 1))
        case .sample:
            x0 = modelOutput
        }
        // x + (x − x̂₀)/σ·(σ_next − σ), written as the combination it is, x·σ_next/σ + x̂₀·(1 − σ_next/σ):
        // no cancellation between x (≈ σ·z, up to 2e4) and the update (≈ −x) in float32.
        let ratio = next / sigma
        let prev = sample * Float(ratio) + x0 * Float(1 - ratio)
        return SchedulerStepOutput(prevSample: prev, predictedOriginal: x0)
    }

    /// x₀ + σₜ·ε at per-sample training timesteps (σ of the training table; a timestep of an
    /// Euler table that is integral has exactly this σ).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) -> Tensor {
        precondition(original.shape == noise.shape, "addNoise: original \(original.shape) vs noise \(noise.shape)")
        _ = alphas(timesteps, batch: original)  // checks count and range
        return original + noise * SchedulerMath.perSample(timesteps.map { trainSigmas[$0] }, like: original)
    }
}
