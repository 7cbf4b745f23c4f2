import Tensor

/// One finished step of a denoising run, as an observer sees it.
public struct DenoisingStep {
    /// The step's index in the schedule, and the schedule's length.
    public let index: Int
    public let count: Int
    /// The timestep the model was given.
    public let timestep: Float
    /// The model's input (the sample after the scheduler's `scaleModelInput`: the
    /// variance-preserving xₜ for DDPM, DDIM and Euler alike).
    public let modelInput: Tensor
    /// The (guided) model output the scheduler stepped with: ε, v or a flow velocity.
    public let modelOutput: Tensor
    /// The sample after the step.
    public let sample: Tensor
}

/// What an observer tells the loop after a step.
public enum DenoisingControl {
    case proceed
    case stop
}

/// The denoising loop every sampler in the package runs (the pipeline's generation, ESD's partial
/// runs, SCORE's trajectory pools, the attacks): from `sample`, steps `steps` of `schedule`, each
/// one model call and one scheduler step. Stochastic steps (DDPM; DDIM with η > 0) draw image k's
/// noise from `generators[k]`.
///
/// The model sits behind `model(input, timestep)`, which returns what the scheduler steps with
/// (for Stable Diffusion, the guided UNet output of `StableDiffusionPipeline.denoise`), so a
/// velocity-predicting flow model runs the same loop with its own closure and a flow scheduler
/// (`FlowMatchEulerDiscreteScheduler`).
/// `observe` is called after every step (to record xₜ and the prediction, to report progress)
/// and may stop the run there. A sample that is no longer finite ends the run with
/// `PipelineError.nonFiniteSample` naming the step. Not wrapped in `noGrad`: the caller decides.
public func denoise(_ sample: Tensor, scheduler: any SamplingScheduler, schedule: SamplingSchedule, steps: Range<Int>? = nil,
                    generators: inout [RandomGenerator], observe: ((DenoisingStep) -> DenoisingControl)? = nil,
                    model: (_ input: Tensor, _ timestep: Float) -> Tensor) throws -> Tensor {
    let steps = steps ?? schedule.indices
    precondition(steps.lowerBound >= 0 && steps.upperBound <= schedule.count,
                 "denoise: steps \(steps) outside the schedule's \(schedule.count)")
    precondition(generators.count == sample.shape[0], "denoise: \(generators.count) generators for \(sample.shape[0]) images")
    var x = sample
    for i in steps {
        let t = schedule.timesteps[i]
        let input = scheduler.scaleModelInput(x, index: i, of: schedule)
        let output = model(input, t)
        var noise: Tensor? = nil
        if scheduler.addsNoise(index: i, of: schedule) {
            let shape = [1] + Array(x.shape.dropFirst())
            noise = Tensor.concat(generators.indices.map { generators[$0].normal(shape) }, axis: 0)
        }
        x = scheduler.step(modelOutput: output, index: i, of: schedule, sample: x, noise: noise).prevSample
        guard isFinite(x) else { throw PipelineError.nonFiniteSample(step: i + 1, of: schedule.count, timestep: t) }
        if observe?(DenoisingStep(index: i, count: schedule.count, timestep: t, modelInput: input,
                                  modelOutput: output, sample: x)) == .stop { break }
    }
    return x
}

/// The noise a run starts from: image k drawn from `generators[k]` (each advanced past its draw),
/// times the schedule's `initNoiseSigma`. `shape` is one image's, [1, C, h, w].
public func initialNoise(shape: [Int], schedule: SamplingSchedule, generators: inout [RandomGenerator]) -> Tensor {
    let noise = Tensor.concat(generators.indices.map { generators[$0].normal(shape) }, axis: 0)
    return schedule.initNoiseSigma == 1 ? noise : noise * Float(schedule.initNoiseSigma)
}

/// Whether every entry is finite; one pass, far cheaper than the model call of a step.
func isFinite(_ x: Tensor) -> Bool {
    let p = x.pointer
    for i in 0..<x.count where !p[i].isFinite { return false }
    return true
}
