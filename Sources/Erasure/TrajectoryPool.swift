import Diffusion
import Foundation
import Tensor

/// Noisy samples zₜ recorded along sampling trajectories of a model, with the prompt that drew
/// each. Erasure losses are evaluated on zₜ the model actually visits when it draws a prompt (as
/// ESD samples xₜ part-way), and a pool of whole trajectories is far cheaper than one partial run
/// per training step: a 25-step run of 16 prompts gives 400 training inputs.
public struct TrajectoryPool {
    /// Every recorded zₜ, [N, …] in the family's denoised layout: the model input of the step at
    /// `timesteps[i]` (for the UNet the sample scaled to the variance-preserving form, which is
    /// what DDIM and DDPM sample directly; for FLUX the packed tokens x_σ).
    public var latents: Tensor
    /// The training timestep of each entry (`ErasableModel.trainingTimestep`: the UNet's integer
    /// timestep, FLUX's σ·1000).
    public var timesteps: [Float]
    /// The caption-table index of the prompt that drew each entry.
    public var prompts: [Int]
    /// Which trajectory each entry belongs to (0..<trajectoryCount).
    public var trajectories: [Int]
    /// The finished samples of each trajectory, [trajectoryCount, …].
    public var finals: Tensor

    public var count: Int { timesteps.count }
    public var trajectoryCount: Int { finals.shape[0] }

    /// Samples one trajectory per entry of `promptIndices` (indices into `table`) with
    /// classifier-free guidance against the table's `unconditionalIndex` caption, with the
    /// family's loop and its denoiser (or `model`), under `noGrad`. Trajectory k starts from the
    /// noise stream (seed, firstTrajectory + k), as `StableDiffusionPipeline` draws image k.
    public static func sample<Model: ErasableModel>(
        pipeline: Model, table: ConditioningTable, promptIndices: [Int], unconditionalIndex: Int, steps: Int, guidance: Float,
        seed: UInt64, firstTrajectory: Int = 0, batchSize: Int = 16, model: Model.Denoiser? = nil) throws -> TrajectoryPool {
        precondition(!promptIndices.isEmpty, "TrajectoryPool.sample: no prompts")
        let schedule = try pipeline.schedule(steps: steps)
        var recorded: [Tensor] = [], timesteps: [Float] = [], prompts: [Int] = [], trajectories: [Int] = []
        var finals: [Tensor] = []
        for start in stride(from: 0, to: promptIndices.count, by: batchSize) {
            let chunk = Array(promptIndices[start..<min(promptIndices.count, start + batchSize)])
            var generators = chunk.indices.map { StableDiffusionPipeline.imageGenerator(seed: seed, index: firstTrajectory + start + $0) }
            let noise = try pipeline.initialSample(schedule: schedule, generators: &generators)
            let unconditional = guidance > 1 ? table.batch(Array(repeating: unconditionalIndex, count: chunk.count)) : nil
            // The model inputs: the variance-preserving zₜ every UNet loss here is written in
            // (Euler's σ-scaled samples are rescaled; DDIM's are already zₜ), FLUX's x_σ.
            var perStep: [(Tensor, Float)] = []
            finals.append(try noGrad {
                try pipeline.denoise(noise, conditional: table.batch(chunk), unconditional: unconditional, guidance: guidance,
                                     schedule: schedule, steps: nil, generators: &generators, model: model) { step in
                    perStep.append((step.modelInput, pipeline.trainingTimestep(step.timestep)))
                    return .proceed
                }
            })
            // Entries ordered trajectory by trajectory, steps in sampling order.
            for k in chunk.indices {
                for (z, t) in perStep {
                    recorded.append(z.narrowed(axis: 0, start: k, length: 1))
                    timesteps.append(t)
                    prompts.append(chunk[k])
                    trajectories.append(start + k)
                }
            }
        }
        return TrajectoryPool(latents: Tensor.concat(recorded, axis: 0), timesteps: timesteps, prompts: prompts,
                              trajectories: trajectories, finals: Tensor.concat(finals, axis: 0))
    }

    /// Entry indices whose timestep satisfies `predicate`.
    public func indices(where predicate: (Float) -> Bool) -> [Int] {
        timesteps.indices.filter { predicate(timesteps[$0]) }
    }

    /// zₜ [n, C, h, w], timesteps and prompt indices of the entries at `indices`.
    public func batch(_ indices: [Int]) -> (latents: Tensor, timesteps: [Float], prompts: [Int]) {
        let gathered = gather(latents, indices)
        return (gathered, indices.map { timesteps[$0] }, indices.map { prompts[$0] })
    }

    /// The tensors and lists of the pool under `prefix`, for a checkpoint.
    public func archived(prefix: String) -> [String: Tensor] {
        func list(_ values: [Int]) -> Tensor { Tensor(shape: [values.count], scalars: values.map(Float.init)) }
        return ["\(prefix).latents": latents, "\(prefix).finals": finals,
                "\(prefix).timesteps": Tensor(shape: [timesteps.count], scalars: timesteps),
                "\(prefix).prompts": list(prompts), "\(prefix).trajectories": list(trajectories)]
    }

    /// The pool stored by `archived(prefix:)`.
    public init(archive: [String: Tensor], prefix: String) throws {
        func tensor(_ name: String) throws -> Tensor {
            guard let t = archive["\(prefix).\(name)"] else {
                throw ErasureError.invalidConfig("checkpoint has no \(prefix).\(name)")
            }
            return t
        }
        func list(_ name: String) throws -> [Int] { try tensor(name).scalars.map { Int($0) } }
        self.init(latents: try tensor("latents"), timesteps: try tensor("timesteps").scalars, prompts: try list("prompts"),
                  trajectories: try list("trajectories"), finals: try tensor("finals"))
    }

    public init(latents: Tensor, timesteps: [Float], prompts: [Int], trajectories: [Int], finals: Tensor) {
        self.latents = latents
        self.timesteps = timesteps
        self.prompts = prompts
        self.trajectories = trajectories
        self.finals = finals
    }
}
