import Diffusion
import Tensor

// ESD, ANT and AdvUnlearn train on the xₜ of a guided sampling run stopped part-way, as their
// official scripts do; this is that run, written once for every family.

extension ErasableModel {
    /// The family's schedule of `steps` steps, a count it refuses reported as `method`'s
    /// `samplingSteps` setting.
    func samplingSchedule(steps: Int, method: String) throws -> SamplingSchedule {
        do {
            return try schedule(steps: steps)
        } catch {
            throw ErasureError.invalidConfig("\(method) samplingSteps \(steps): \(error)")
        }
    }

    /// One run of the prompts of `conditional` with classifier-free guidance against
    /// `unconditional` (used only when `guidance` > 1), image k from the noise of stream
    /// (`seed`, `streams[k]`) as `StableDiffusionPipeline.imageGenerator` draws it, by `model`
    /// (nil: the denoiser trained), under `noGrad`: the sample after each step count of `stops`
    /// (ascending; 0 is the starting noise). One run, so later stops continue the same trajectory
    /// and its stochastic steps' noise streams.
    func partialRun(conditional: PromptConditioning, unconditional: PromptConditioning, guidance: Float, schedule: SamplingSchedule,
                    seed: UInt64, streams: [Int], stops: [Int], model: Denoiser? = nil) throws -> [Tensor] {
        precondition(conditional.count == streams.count, "partialRun: \(conditional.count) prompts for \(streams.count) noise streams")
        var generators = streams.map { StableDiffusionPipeline.imageGenerator(seed: seed, index: $0) }
        var x = try initialSample(schedule: schedule, generators: &generators)
        var states: [Tensor] = [], done = 0
        try noGrad {
            for stop in stops {
                x = try denoise(x, conditional: conditional, unconditional: guidance > 1 ? unconditional : nil, guidance: guidance,
                                schedule: schedule, steps: done..<stop, generators: &generators, model: model, observe: nil)
                states.append(x)
                done = stop
            }
        }
        return states
    }
}

extension CaptionTable {
    /// Rows `indices` in the families' conditioning form.
    func conditioning(_ indices: [Int]) -> PromptConditioning {
        let rows = batch(indices)
        return PromptConditioning(states: rows.states, mask: rows.mask)
    }
}
