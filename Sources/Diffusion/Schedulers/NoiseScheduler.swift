import Foundation
import Tensor

/// The timesteps (and, for Euler, noise levels) of one sampling run: what diffusers'
/// `set_timesteps(n)` leaves in the scheduler, as a value. Schedulers are stateless: each step is
/// addressed by its index into this table, so one scheduler serves any number of concurrent runs.
/// Multistep schedulers (PNDM, DPM-Solver) also need the model outputs of the run's earlier steps;
/// they keep them in the schedule's `history`, so a schedule serves one run at a time (runs in
/// parallel each make their own; runs one after another may share one).
///
/// ```swift
/// let schedule = try scheduler.schedule(steps: 25)
/// var x = scheduler.initialNoise(shape: [1, 4, 64, 64], schedule: schedule, generator: &rng)
/// for i in schedule.indices {
///     let eps = unet(scheduler.scaleModelInput(x, index: i, of: schedule), schedule.timesteps[i])
///     x = scheduler.step(modelOutput: eps, index: i, of: schedule, sample: x, generator: &rng).prevSample
/// }
/// ```
public struct SamplingSchedule: Sendable, Equatable {
    /// The timestep given to the model at each step, descending. Integral for DDPM/DDIM; Euler's
    /// `linspace` spacing gives fractional float32 values, exactly as diffusers' float32 table.
    public let timesteps: [Float]
    /// Euler: the noise level σ at each step plus the final one (`timesteps.count + 1` values).
    /// Empty for DDPM/DDIM.
    public let sigmas: [Double]
    /// The standard deviation of the noise a run starts from (1 for DDPM/DDIM).
    public let initNoiseSigma: Double
    /// The step count asked for (DDIM's step size is num_train_timesteps div this; diffusers uses
    /// it even where the table has another length).
    public let inferenceSteps: Int
    /// The earlier steps of the run in progress (multistep schedulers only; not part of the value).
    public let history: SamplingHistory

    public init(timesteps: [Float], sigmas: [Double] = [], initNoiseSigma: Double = 1, inferenceSteps: Int) {
        self.timesteps = timesteps
        self.sigmas = sigmas
        self.initNoiseSigma = initNoiseSigma
        self.inferenceSteps = inferenceSteps
        self.history = SamplingHistory()
    }

    public var count: Int { timesteps.count }
    public var indices: Range<Int> { 0..<timesteps.count }

    /// The timestep at `index` as an integer training timestep (DDPM/DDIM tables are integral).
    public func discreteTimestep(_ index: Int) -> Int { Int(timesteps[index]) }
}

/// What a multistep scheduler remembers of a run: per step index, the (converted) model output and
/// the sample the step started from. diffusers keeps this in the scheduler object and resets it in
/// `set_timesteps`; here it lives in the schedule.
///
/// A step continues the run when its index follows the last recorded one; index 0, or any other
/// index, starts a new run (as diffusers' counters after `set_timesteps`, also for a run that
/// starts part-way down the table). So sequential runs may share a schedule, and repeating a step
/// restarts the history there.
public final class SamplingHistory: @unchecked Sendable, Equatable {
    public struct Step {
        /// The model output as the scheduler keeps it (PNDM: raw; DPM-Solver: converted to x̂₀ or ε̂).
        public var output: Tensor
        /// The sample the step started from.
        public var sample: Tensor
    }

    private let lock = NSLock()
    private var steps: [Int: Step] = [:]
    private var start = 0
    private var last: Int?

    public init() {}

    /// Records step `index` and returns the run so far: the index the run started at and its steps
    /// by index (`index` included).
    public func record(index: Int, output: Tensor, sample: Tensor) -> (start: Int, steps: [Int: Step]) {
        lock.lock()
        defer { lock.unlock() }
        if index == 0 || last != index - 1 {
            steps = [:]
            start = index
        }
        steps[index] = Step(output: output, sample: sample)
        last = index
        return (start, steps)
    }

    /// Run state, not part of a schedule's value.
    public static func == (lhs: SamplingHistory, rhs: SamplingHistory) -> Bool { true }
}

/// One denoising step's result.
public struct SchedulerStepOutput {
    /// The sample at the next (less noisy) timestep.
    public var prevSample: Tensor
    /// The model's estimate of the clean sample x̂₀ (after clipping, where the scheduler clips).
    public var predictedOriginal: Tensor

    public init(prevSample: Tensor, predictedOriginal: Tensor) {
        self.prevSample = prevSample
        self.predictedOriginal = predictedOriginal
    }
}

/// A diffusion noise scheduler in diffusers' sense: the forward (noising) process used in training
/// and the reverse update used in sampling, over a table of timesteps.
///
/// Tensors are batched along axis 0. The training helpers take one timestep per sample (or a
/// single timestep for the whole batch). Every method is made of tensor ops, so gradients flow
/// through them when their inputs are tracked. Coefficients are computed in Float64 from the
/// Float64 ᾱ table and applied to Float32 tensors.
public protocol NoiseScheduler: SamplingScheduler {
    var config: SchedulerConfig { get }
    /// βₜ and ᾱₜ of the training timesteps.
    var noiseSchedule: NoiseSchedule { get }

    /// The sampling table for `steps` inference steps (diffusers' `set_timesteps`).
    func schedule(steps: Int) throws -> SamplingSchedule

    /// The model's input at step `index` (Euler divides by √(σ² + 1); DDPM/DDIM pass it through).
    func scaleModelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor

    /// Whether step `index` adds fresh noise (DDPM for t > 0, DDIM with η > 0).
    func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool

    /// One reverse step from `sample` at step `index`. `noise` is the standard-normal draw the
    /// step uses where `addsNoise` is true (same shape as the sample); nil leaves the noise term
    /// out (the posterior mean). Use `step(…, generator:)` to draw it.
    func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
              noise: Tensor?) -> SchedulerStepOutput

    /// The forward process: noised samples at per-sample training timesteps (diffusers'
    /// `add_noise`). DDPM/DDIM: √ᾱ·x₀ + √(1−ᾱ)·ε; Euler: x₀ + σ·ε.
    func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) -> Tensor
}

extension NoiseScheduler {
    /// ᾱₜ for t in 0..<num_train_timesteps, Float64.
    public var alphasCumprod: [Double] { noiseSchedule.alphasCumprod }

    public var numTrainTimesteps: Int { noiseSchedule.count }

    public var predictionType: PredictionType { config.predictionType }

    /// The timestep table for `steps` inference steps.
    public func timesteps(steps: Int) throws -> [Float] { try schedule(steps: steps).timesteps }

    public func scaleModelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor { sample }

    /// Standard-normal noise scaled by the schedule's `initNoiseSigma`: the sample a run starts from.
    public func initialNoise(shape: [Int], schedule: SamplingSchedule, generator: inout RandomGenerator) -> Tensor {
        let noise = generator.normal(shape)
        return schedule.initNoiseSigma == 1 ? noise : noise * Float(schedule.initNoiseSigma)
    }

    /// One reverse step, drawing its noise (if the step adds any) from `generator`. Deterministic
    /// steps leave the generator untouched.
    public func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     generator: inout RandomGenerator) -> SchedulerStepOutput {
        let noise = addsNoise(index: index, of: schedule) ? generator.normal(sample.shape) : nil
        return step(modelOutput: modelOutput, index: index, of: schedule, sample: sample, noise: noise)
    }

    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) -> Tensor {
        precondition(original.shape == noise.shape, "addNoise: original \(original.shape) vs noise \(noise.shape)")
        let a = alphas(timesteps, batch: original)
        return original * SchedulerMath.perSample(a.map { $0.squareRoot() }, like: original)
            + noise * SchedulerMath.perSample(a.map { (1 - $0).squareRoot() }, like: original)
    }

    /// The v-prediction target √ᾱ·ε − √(1−ᾱ)·x₀ at per-sample training timesteps (diffusers'
    /// `get_velocity`).
    public func velocity(sample: Tensor, noise: Tensor, timesteps: [Int]) -> Tensor {
        precondition(sample.shape == noise.shape, "velocity: sample \(sample.shape) vs noise \(noise.shape)")
        let a = alphas(timesteps, batch: sample)
        return noise * SchedulerMath.perSample(a.map { $0.squareRoot() }, like: sample)
            - sample * SchedulerMath.perSample(a.map { (1 - $0).squareRoot() }, like: sample)
    }

    /// x̂₀ from the model's output at per-sample training timesteps, in the variance-preserving
    /// parameterisation xₜ = √ᾱ·x₀ + √(1−ᾱ)·ε (the model's input for every scheduler here):
    /// ε: (xₜ − √(1−ᾱ)·ε̂)/√ᾱ; v: √ᾱ·xₜ − √(1−ᾱ)·v̂; sample: the output itself. No clipping.
    public func predictedOriginal(modelOutput: Tensor, sample: Tensor, timesteps: [Int]) -> Tensor {
        precondition(modelOutput.shape == sample.shape, "predictedOriginal: output \(modelOutput.shape) vs sample \(sample.shape)")
        let a = alphas(timesteps, batch: sample)
        switch predictionType {
        case .epsilon:
            return (sample - modelOutput * SchedulerMath.perSample(a.map { (1 - $0).squareRoot() }, like: sample))
                * SchedulerMath.perSample(a.map { 1 / $0.squareRoot() }, like: sample)
        case .vPrediction:
            return sample * SchedulerMath.perSample(a.map { $0.squareRoot() }, like: sample)
                - modelOutput * SchedulerMath.perSample(a.map { (1 - $0).squareRoot() }, like: sample)
        case .sample:
            return modelOutput
        }
    }

    /// ε̂ from the model's output at per-sample training timesteps (the counterpart of
    /// `predictedOriginal`): ε: the output; v: √ᾱ·v̂ + √(1−ᾱ)·xₜ; sample: (xₜ − √ᾱ·x̂₀)/√(1−ᾱ).
    public func predictedNoise(modelOutput: Tensor, sample: Tensor, timesteps: [Int]) -> Tensor {
        precondition(modelOutput.shape == sample.shape, "predictedNoise: output \(modelOutput.shape) vs sample \(sample.shape)")
        let a = alphas(timesteps, batch: sample)
        switch predictionType {
        case .epsilon:
            return modelOutput
        case .vPrediction:
            return modelOutput * SchedulerMath.perSample(a.map { $0.squareRoot() }, like: sample)
                + sample * SchedulerMath.perSample(a.map { (1 - $0).squareRoot() }, like: sample)
        case .sample:
            return (sample - modelOutput * SchedulerMath.perSample(a.map { $0.squareRoot() }, like: sample))
                * SchedulerMath.perSample(a.map { 1 / (1 - $0).squareRoot() }, like: sample)
        }
    }

    /// ᾱ at each sample's timestep, checking the count against the batch.
    func alphas(_ timesteps: [Int], batch x: Tensor) -> [Double] {
        precondition(x.rank >= 1, "batched tensors need a batch axis, shape is \(x.shape)")
        precondition(timesteps.count == 1 || timesteps.count == x.shape[0],
                     "\(timesteps.count) timesteps for a batch of \(x.shape[0])")
        let table = noiseSchedule.alphasCumprod
        return timesteps.map { t in
            precondition(t >= 0 && t < table.count, "timestep \(t) outside 0..<\(table.count)")
            return table[t]
        }
    }
}

enum SchedulerMath {
    /// Per-sample coefficients as a [B, 1, …, 1] tensor that broadcasts against `x` ([1, …] for one).
    static func perSample(_ values: [Double], like x: Tensor) -> Tensor {
        var shape = [Int](repeating: 1, count: max(x.rank, 1))
        shape[0] = values.count
        return Tensor(shape: shape, scalars: values.map { Float($0) })
    }

    /// x̂₀ and ε̂ from a model output at one timestep (variance-preserving parameterisation).
    static func splitPrediction(_ output: Tensor, sample: Tensor, sqrtAlpha: Double, sqrtBeta: Double,
                                type: PredictionType) -> (x0: Tensor, eps: Tensor) {
        switch type {
        case .epsilon:
            return ((sample - output * Float(sqrtBeta)) * Float(1 / sqrtAlpha), output)
        case .sample:
            return (output, (sample - output * Float(sqrtAlpha)) * Float(1 / sqrtBeta))
        case .vPrediction:
            return (sample * Float(sqrtAlpha) - output * Float(sqrtBeta),
                    output * Float(sqrtAlpha) + sample * Float(sqrtBeta))
        }
    }
}

/// The scheduler classes implemented here, by diffusers class name.
public enum SchedulerKind: String, Sendable, CaseIterable {
    case ddpm = "DDPMScheduler"
    case ddim = "DDIMScheduler"
    case eulerDiscrete = "EulerDiscreteScheduler"
    case eulerAncestralDiscrete = "EulerAncestralDiscreteScheduler"
    case pndm = "PNDMScheduler"
    case dpmSolverMultistep = "DPMSolverMultistepScheduler"

    /// Builds this kind of scheduler from a config (any scheduler's config, as diffusers'
    /// `from_config`: keys the config lacks take this class's defaults).
    public func make(config: SchedulerConfig) throws -> any NoiseScheduler {
        switch self {
        case .ddpm: return try DDPMScheduler(config: config)
        case .ddim: return try DDIMScheduler(config: config)
        case .eulerDiscrete: return try EulerDiscreteScheduler(config: config)
        case .eulerAncestralDiscrete: return try EulerAncestralDiscreteScheduler(config: config)
        case .pndm: return try PNDMScheduler(config: config)
        case .dpmSolverMultistep: return try DPMSolverMultistepScheduler(config: config)
        }
    }
}
