import Foundation
import Tensor

/// Pseudo numerical methods for diffusion models (Liu et al. 2022, "PNDM"), as diffusers'
/// `PNDMScheduler`, the scheduler Stable Diffusion 1.x folders ship.
///
/// Every step moves the sample with the "transfer" formula (the paper's eq. 9) from timestep t to
/// t′ with a combination ε of model outputs:
///
///     x_t′ = √(ᾱ_t′/ᾱ_t)·x_t − (ᾱ_t′ − ᾱ_t)·ε / (ᾱ_t·√(1−ᾱ_t′) + √(ᾱ_t·(1−ᾱ_t)·ᾱ_t′))
///
/// PLMS (pseudo linear multistep) combines the last four outputs with the Adams–Bashforth weights
/// (55, −59, 37, −9)/24, fewer at the start (1; (3, −1)/2; (23, −16, 5)/12). With `skip_prk_steps`
/// (SD's configs) the second step repeats the first step's timestep: it re-runs the first move with
/// the mean of the two outputs (a Heun step), so n steps evaluate the model n + 1 times. Without it,
/// three Runge–Kutta steps (4 evaluations each, at t, t − δ/2, t − δ/2, t − δ) start the run, then
/// PLMS continues: n + 9 evaluations, and at least 4 steps.
///
/// After the last step ᾱ is 1 (`set_alpha_to_one`, default false here as in diffusers) or ᾱ₀.
/// v-prediction outputs are combined first and then turned into ε (diffusers' order);
/// `prediction_type` sample is refused (diffusers raises at the first step). The step's
/// `predictedOriginal` is x̂₀ from the combined ε at the step's start (diffusers returns none).
public struct PNDMScheduler: NoiseScheduler {
    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    public let skipPrkSteps: Bool
    /// ᾱ after the last step.
    public let finalAlphaCumprod: Double

    /// Runge–Kutta steps before PLMS (3 steps of 4 evaluations), when they are not skipped.
    static let rungeKuttaEvaluations = 12

    public init(config: SchedulerConfig) throws {
        try config.requireNoiseOrVelocityPrediction()
        self.config = config
        self.noiseSchedule = try NoiseSchedule(config: config)
        self.timestepSpacing = config.spacing(default: .leading)
        self.skipPrkSteps = config.skipPrkSteps
        self.finalAlphaCumprod = (config.setAlphaToOneValue ?? false) ? 1 : noiseSchedule.alphasCumprod[0]
    }

    public func schedule(steps n: Int) throws -> SamplingSchedule {
        let total = numTrainTimesteps
        guard n >= 1 && n <= total else { throw SchedulerError.invalidStepCount(steps: n, numTrainTimesteps: total) }
        // diffusers' `_timesteps`, ascending.
        let base = Array(TimestepTable.discrete(spacing: timestepSpacing, steps: n, trainTimesteps: total,
                                                offset: config.stepsOffset).reversed())
        let table: [Int]
        if skipPrkSteps {
            // _t[:-1] + _t[-2:-1] + _t[-1:], reversed: the second-highest timestep appears twice.
            table = Array((base.dropLast() + base.dropLast().suffix(1) + base.suffix(1)).reversed())
        } else {
            guard n >= 4 else { throw SchedulerError.invalidStepCount(steps: n, numTrainTimesteps: total) }
            // The last four timesteps, each followed by its half step, as diffusers builds them.
            let half = total / n / 2
            let pairs = base.suffix(4).flatMap { [$0, $0 + half] }
            let repeated = pairs.dropLast().flatMap { [$0, $0] }
            let rungeKutta = repeated.dropFirst().dropLast().reversed()
            table = Array(rungeKutta) + Array(base.dropLast(3).reversed())
        }
        if let bad = table.first(where: { $0 < 0 || $0 >= total }) {
            throw SchedulerError.timestepOutOfRange(timestep: bad, steps: n, spacing: timestepSpacing, source: config.source)
        }
        return SamplingSchedule(timesteps: table.map(Float.init), inferenceSteps: n)
    }

    public func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool { false }

    public func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     noise: Tensor?) -> SchedulerStepOutput {
        precondition(modelOutput.shape == sample.shape, "PNDM step: output \(modelOutput.shape) vs sample \(sample.shape)")
        let run = schedule.history.record(index: index, output: modelOutput, sample: sample)
        // The step counter of diffusers: steps taken in this run before this one.
        let counter = index - run.start
        func output(_ k: Int) -> Tensor { run.steps[run.start + k]!.output }
        func startSample(_ k: Int) -> Tensor { run.steps[run.start + k]!.sample }
        let delta = numTrainTimesteps / schedule.inferenceSteps
        let t = schedule.discreteTimestep(index)

        if !skipPrkSteps && counter < Self.rungeKuttaEvaluations {
            // Runge–Kutta: each group of four evaluations moves the group's first sample from the
            // group's first timestep; the fourth uses the weights (1, 2, 2, 1)/6.
            let first = counter / 4 * 4
            let target = counter % 2 == 1 ? t : t - delta / 2
            let from = schedule.discreteTimestep(first)
            var e = modelOutput
            if counter % 4 == 3 {
                e = (output(first) + output(first + 1) * Float(2) + output(first + 2) * Float(2) + modelOutput)
                    * Float(1.0 / 6.0)
            }
            return transfer(startSample(first), from: from, to: target, output: e)
        }

        if skipPrkSteps && counter == 1 {
            // The repeated timestep: redo the first move with the mean of both outputs.
            let e = (modelOutput + output(0)) * Float(0.5)
            return transfer(startSample(0), from: t + delta, to: t, output: e)
        }
        // The outputs PLMS combines (diffusers' `ets`): the Runge–Kutta groups' first outputs, or
        // the first output without the repeated step's, then every later one; the last four.
        let earlier = skipPrkSteps ? [0] + Array(stride(from: 2, through: counter, by: 1))
            : Array(stride(from: 0, to: Self.rungeKuttaEvaluations, by: 4)) + Array(Self.rungeKuttaEvaluations...counter)
        let ets = earlier.suffix(4).map(output)
        let e: Tensor
        switch ets.count {
        case 1: e = ets[0]
        case 2: e = (ets[1] * Float(3) - ets[0]) * Float(0.5)
        case 3: e = (ets[2] * Float(23) - ets[1] * Float(16) + ets[0] * Float(5)) * Float(1.0 / 12.0)
        default:
            e = (ets[3] * Float(55) - ets[2] * Float(59) + ets[1] * Float(37) - ets[0] * Float(9)) * Float(1.0 / 24.0)
        }
        return transfer(sample, from: t, to: t - delta, output: e)
    }

    /// The paper's eq. 9 from `t` to `target` (below 0: ᾱ = `finalAlphaCumprod`).
    func transfer(_ x: Tensor, from t: Int, to target: Int, output: Tensor) -> SchedulerStepOutput {
        let alpha = noiseSchedule.alphasCumprod[t]
        let alphaPrev = noiseSchedule.alphaCumprod(target, final: finalAlphaCumprod)
        let beta = 1 - alpha, betaPrev = 1 - alphaPrev
        var eps = output
        if config.predictionType == .vPrediction {
            eps = output * Float(alpha.squareRoot()) + x * Float(beta.squareRoot())
        }
        let sampleCoefficient = (alphaPrev / alpha).squareRoot()
        let denominator = alpha * betaPrev.squareRoot() + (alpha * beta * alphaPrev).squareRoot()
        let prev = x * Float(sampleCoefficient) - eps * Float((alphaPrev - alpha) / denominator)
        let x0 = (x - eps * Float(beta.squareRoot())) * Float(1 / alpha.squareRoot())
        return SchedulerStepOutput(prevSample: prev, predictedOriginal: x0)
    }
}
