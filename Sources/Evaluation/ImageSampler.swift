import Diffusion
import Erasure
import Foundation
import Tensor
import Testbed

/// How an evaluation draws images from a model of either family: one image per prompt, image k
/// of a call from the noise stream (seed, firstImageIndex + k), so two models of one family get
/// the same noise for the same list. Everything after sampling (judges, KID, attacks' scoring)
/// reads only the images, so it is written once for both families.
public struct ImageSampler {
    public let family: DenoiserFamily
    /// (prompts, steps, guidance, seed, firstImageIndex) → images [B, C, H, W] in [−1, 1].
    let draw: ([String], Int, Float, UInt64, Int) throws -> Tensor

    /// Stable Diffusion: `generate` with classifier-free guidance against "".
    public init(_ pipeline: StableDiffusionPipeline) {
        family = .unet
        draw = { prompts, steps, guidance, seed, first in
            try pipeline.generate(prompts: prompts, steps: steps, guidance: guidance, seed: seed, firstImageIndex: first)
        }
    }

    /// FLUX: `generate` at the pipeline's default size with true CFG against "".
    public init(_ pipeline: FluxPipeline) {
        family = .flux
        draw = { prompts, steps, guidance, seed, first in
            try pipeline.generate(prompts: prompts, steps: steps, guidance: guidance, seed: seed,
                                  height: pipeline.defaultSize, width: pipeline.defaultSize, firstImageIndex: first)
        }
    }

    public func callAsFunction(prompts: [String], steps: Int, guidance: Float, seed: UInt64, firstImageIndex: Int = 0) throws -> Tensor {
        try draw(prompts, steps, guidance, seed, firstImageIndex)
    }
}

extension EvaluationSettings {
    /// The flow family's settings: the mini-FLUX's sampler (25 Euler steps, true CFG 4), the
    /// rest as the UNet family's.
    public static var flux: EvaluationSettings {
        var settings = EvaluationSettings()
        settings.steps = MiniFlux.steps
        settings.guidance = MiniFlux.guidance
        return settings
    }
}

extension LeakageOptions {
    /// The estimate's trajectories sampled as users sample the mini-FLUX (true CFG 4).
    public static var flux: LeakageOptions { LeakageOptions().sampledAsFlux }

    /// These options with the mini-FLUX's guidance in place of Stable Diffusion's.
    public var sampledAsFlux: LeakageOptions {
        var options = self
        options.guidance = MiniFlux.guidance
        return options
    }
}

extension ParaphraseAttackSettings {
    /// These settings with the mini-FLUX's sampler (25 Euler steps, true CFG 4).
    public var sampledAsFlux: ParaphraseAttackSettings {
        var settings = self
        settings.steps = MiniFlux.steps
        settings.guidance = MiniFlux.guidance
        return settings
    }
}
