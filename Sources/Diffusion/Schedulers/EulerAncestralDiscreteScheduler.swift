import Foundation
import Tensor

/// Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`), as diffusers'
/// `EulerAncestralDiscreteScheduler`: Euler's table and x̂₀ (see `EulerDiscreteScheduler`), but
/// each step splits the move to σ_next into a deterministic part down to
/// σ_down = √(σ_next² − σ_up²) and fresh noise of standard deviation
/// σ_up = √(σ_next²·(σ² − σ_next²)/σ²):
///
///     x_next = x + (x − x̂₀)/σ·(σ_down − σ) + σ_up·z
///
/// Every step draws its noise z (the last one too, where σ_up = 0, as diffusers draws it), from
/// the run's Philox stream; `noise: nil` leaves the term out. The class takes no Karras,
/// interpolation or final-σ options: keys of other classes in the config are ignored, as
/// diffusers' `from_config` ignores them. `prediction_type` sample is refused (diffusers raises).
public struct EulerAncestralDiscreteScheduler: NoiseScheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    /// σ of each training timestep, ascending in t.
    public let trainSigmas: [Double]

    public init(config: SchedulerConfig) throws {
        try config.requireNoiseOrVelocityPrediction()
        self.config = config
        self.noiseSchedule = try NoiseSchedule(config: config)
        self.timestepSpacing = config.spacing(default: .linspace)
        self.trainSigmas = noiseSchedule.sigmas
    }

    public func schedule(steps: Int) throws -> SamplingSchedule {
        try EulerDiscreteScheduler.sigmaSchedule(steps: steps, spacing: timestepSpacing, offset: config.stepsOffset,
                                                 trainSigmas: trainSigmas, finalSigma: 0)
    }

    public func scaleModelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor {
        let sigma = schedule.sigmas[index]
        return sample * Float(1 / (sigma * sigma + 1).squareRoot())
    }

    public func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool { true }

    /// σ_up and σ_down of step `index`.
    public func noiseSplit(index: Int, of schedule: SamplingSchedule) -> (up: Double, down: Double) {
        let sigma = schedule.sigmas[index], next = schedule.sigmas[index + 1]
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).squareRoot()
        return (up, (next * next - up * up).squareRoot())
    }

    public func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     noise: Tensor?) -> SchedulerStepOutput {
        precondition(modelOutput.shape == sample.shape, "Euler ancestral step: output \(modelOutput.shape) vs sample \(sample.shape)")
        precondition(schedule.sigmas.count == schedule.count + 1, "Euler ancestral step needs a schedule made by an Euler scheduler")
        let sigma = schedule.sigmas[index]
        let x0: Tensor
        switch config.predictionType {
        case .epsilon:
            x0 = sample - modelOutput * Float(sigma)
        case .sample:  // refused by init; kept for exhaustiveness
            x0 = modelOutput
        case .vPrediction:
            x0 = modelOutput * Float(-sigma / (sigma * sigma + 1).squareRoot()) + sample * Float(1 / (sigma * sigma + 1))
        }
        let (up, down) = noiseSplit(index: index, of: schedule)
        // As Euler: the combination x·σ_down/σ + x̂₀·(1 − σ_down/σ), free of float32 cancellation.
        let ratio = down / sigma
        var prev = sample * Float(ratio) + x0 * Float(1 - ratio)
        if let noise {
            precondition(noise.shape == sample.shape, "Euler ancestral step: noise \(noise.shape) vs sample \(sample.shape)")
            prev = prev + noise * Float(up)
        }
        return SchedulerStepOutput(prevSample: prev, predictedOriginal: x0)
    }

    /// x₀ + σₜ·ε at per-sample training timesteps, as Euler's.
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) -> Tensor {
        precondition(original.shape == noise.shape, "addNoise: original \(original.shape) vs noise \(noise.shape)")
        _ = alphas(timesteps, batch: original)  // checks count and range
        return original + noise * SchedulerMath.perSample(timesteps.map { trainSigmas[$0] }, like: original)
    }
}
