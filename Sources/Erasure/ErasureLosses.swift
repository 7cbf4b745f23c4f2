import Diffusion
import Foundation
import Tensor

// The loss terms shared by the erasure methods, in ε̂ (the predicted noise) for every
// prediction type (docs/METHOD.md, SCORE §1–3).

/// The steering target of the erase term (ESD's negative guidance with an anchor):
/// ε_θ₀(zₜ, c_anc) − η·(ε_θ₀(zₜ, c) − ε_θ₀(zₜ, ∅)). With c_anc = ∅ it is ESD's target.
public func negativeGuidanceTarget(anchor: Tensor, conditional: Tensor, unconditional: Tensor, eta: Float) -> Tensor {
    noGrad { anchor - (conditional - unconditional) * eta }
}

/// x̂₀ = (zₜ − √(1−ᾱₜ)·ε̂)/√ᾱₜ per item, differentiable in ε̂: the one-step clean estimate the
/// critic judges.
public func cleanEstimate(latents: Tensor, noise: Tensor, timesteps: [Int], alphasCumprod: [Double]) -> Tensor {
    precondition(latents.shape == noise.shape && timesteps.count == latents.shape[0],
                 "cleanEstimate: latents \(latents.shape), noise \(noise.shape), \(timesteps.count) timesteps")
    let perItem = [latents.shape[0]] + Array(repeating: 1, count: latents.rank - 1)
    let noiseScale = Tensor(shape: perItem, scalars: timesteps.map { Float((1 - alphasCumprod[$0]).squareRoot()) })
    let inverseSignal = Tensor(shape: perItem, scalars: timesteps.map { Float(1 / alphasCumprod[$0].squareRoot()) })
    return (latents - noise * noiseScale) * inverseSignal
}

/// Classifier-free guidance's ε̂ = ε(∅) + w·(ε(c) − ε(∅)), as the sampler forms it
/// (`StableDiffusionPipeline.denoise`); w = 1 gives ε(c) itself. The same on velocities.
public func guidedNoise(conditional: Tensor, unconditional: Tensor, guidance: Float) -> Tensor {
    guidance == 1 ? conditional : unconditional + (conditional - unconditional) * guidance
}

/// x̂₀ of the guided prediction for zₜ on `prompts` (caption indices into `table`), against its
/// `unconditional` caption: one pass over [c; ∅] (just [c] when guidance is 1), with the family's
/// denoiser or `model`.
func guidedCleanEstimate<Family: ErasableModel>(pipeline: Family, model: Family.Denoiser?, table: ConditioningTable, latents: Tensor,
                                                timesteps: [Float], prompts: [Int], unconditional: Int, guidance: Float) -> Tensor {
    let guided = guidance != 1 && prompts.contains { $0 != unconditional }
    let n = prompts.count
    let conditioning = table.batch(guided ? prompts + Array(repeating: unconditional, count: n) : prompts)
    let prediction = pipeline.predict(guided ? Tensor.concat([latents, latents], axis: 0) : latents,
                                      timesteps: guided ? timesteps + timesteps : timesteps, conditioning: conditioning, model: model)
    let combined: Tensor
    if guided {
        let parts = prediction.split(sizes: [n, n], axis: 0)
        combined = guidedNoise(conditional: parts[0], unconditional: parts[1], guidance: guidance)
    } else {
        combined = prediction
    }
    return pipeline.cleanEstimate(latents, prediction: combined, timesteps: timesteps)
}

/// Draws `count` indices from `candidates`, uniformly with replacement.
func draw(_ count: Int, from candidates: [Int], generator: inout RandomGenerator) -> [Int] {
    precondition(!candidates.isEmpty, "draw: no candidates")
    return generator.uniform([count]).scalars.map { candidates[min(candidates.count - 1, Int($0 * Float(candidates.count)))] }
}

/// Saliency-driven fine-tuning (docs/METHOD.md, SCORE §5): which entries of each parameter may change.
public enum Saliency {
    /// A 0/1 mask of `scores`' shape keeping exactly ⌈ρ·n⌉ entries, those of largest score
    /// (ties: the lower index first, so the mask is deterministic).
    public static func topFraction(_ scores: Tensor, ratio: Float) -> Tensor {
        precondition(ratio > 0 && ratio <= 1, "saliency ratio must be in (0, 1], got \(ratio)")
        let n = scores.count
        let keep = min(n, Int((Double(ratio) * Double(n)).rounded(.up)))
        let values = scores.pointer
        let order = (0..<n).sorted { values[$0] != values[$1] ? values[$0] > values[$1] : $0 < $1 }
        let mask = Tensor.zeros(scores.shape)
        for i in order.prefix(keep) { mask.pointer[i] = 1 }
        return mask
    }

    /// Per-tensor top-ρ masks of accumulated |gradient| scores.
    public static func masks(scores: [String: Tensor], ratio: Float) -> [String: Tensor] {
        scores.mapValues { topFraction($0, ratio: ratio) }
    }

    /// Entries kept by every mask (ANT's intersection over prompt variants × seeds).
    public static func intersection(_ masks: [[String: Tensor]]) -> [String: Tensor] {
        guard let result = masks.first?.mapValues({ $0.copy() }) else { return [:] }
        for other in masks.dropFirst() {
            for (name, mask) in result {
                guard let m = other[name] else { continue }
                for i in 0..<mask.count where m.pointer[i] == 0 { mask.pointer[i] = 0 }
            }
        }
        return result
    }

    /// Adds |grad| of each parameter into `scores` (allocating on first use).
    public static func accumulate(_ parameters: [(name: String, tensor: Tensor)], into scores: inout [String: Tensor]) {
        for (name, p) in parameters {
            guard let g = p.grad else { continue }
            let total = scores[name] ?? Tensor.zeros(p.shape)
            for i in 0..<g.count { total.pointer[i] += Swift.abs(g.pointer[i]) }
            scores[name] = total
        }
    }

    /// Entries that may change over all masks, and in all.
    public static func count(_ masks: [String: Tensor]) -> (kept: Int, total: Int) {
        masks.values.reduce((0, 0)) { acc, m in (acc.0 + Int(m.scalars.reduce(0, +)), acc.1 + m.count) }
    }
}
