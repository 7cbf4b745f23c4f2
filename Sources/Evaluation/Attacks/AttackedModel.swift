import Diffusion
import Erasure
import Foundation
import NN
import Tensor

// What the attacks need of a model of either family, beyond the training pieces `ErasableModel`
// already gives (noise a sample at a training timestep, predict, x̂₀, the sampling loop). Each
// attack is written once over this protocol; the family's algebra lives in its conformance:
//
// - the loss target: the UNet predicts ε (the testbed's models are ε-prediction, and
//   `predict` converts v-prediction to ε), the flow the velocity v = ε − x₀;
// - the text layout: the UNet reads MiniLM's states of the prompt's own length with a mask;
//   the flow reads them padded to a fixed length with the padded states zeroed, plus their
//   masked mean as the pooled vector (`PooledSentenceEncoder`);
// - inversion: DDIM's on the UNet, the flow's Euler inversion on FLUX. Both are the same
//   step written in (x̂₀, ε̂) — re-noise x̂₀ with ε̂ to the next, noisier level — but the UNet's
//   runs on DDIM's integer ᾱ table from its final ᾱ and the flow's on the shifted σ schedule down
//   to σ = 0, so each keeps its own loop over its own schedule.

/// A model the attacks run on: `StableDiffusionPipeline` and `FluxPipeline` conform.
public protocol AttackedModel: ErasableModel {
    /// Its images at the default size, image k of a call from the stream (seed, first + k).
    var sampler: ImageSampler { get }
    /// The MiniLM encoder under the conditioning (the token attacks optimise its input
    /// embeddings, Ring-A-Bell searches its states); nil for another encoder.
    var attackTextEncoder: BertTextEncoder? { get }
    /// The autoencoder of a latent model; nil in pixel space (the testbed's models).
    var vae: AutoencoderKL? { get }
    /// The fixed length the family pads every prompt to (FLUX), or nil where a prompt keeps its
    /// own length (the UNet, with a mask).
    var paddedTextLength: Int? { get }
    /// The conditioning of MiniLM states [B, T, D] with mask [B, T] (T = `paddedTextLength` where
    /// set): differentiable in the states.
    func conditioning(encoderStates states: Tensor, mask: Tensor) -> PromptConditioning
    /// Samples in the denoised layout from images [B, C, H, W] (pixel-space models).
    func samples(fromImages images: Tensor) -> Tensor
    /// What `predict` is trained to return for `clean` noised with `noise`: ε, or the flow's ε − x₀.
    func predictionTarget(clean: Tensor, noise: Tensor) -> Tensor
    /// Images [B, C, H, W] from x̂₀ for a judge: unclamped, so its gradient does not vanish where
    /// a pixel overshoots [−1, 1] (decoded where the model has a VAE).
    func judgedImages(cleanEstimate: Tensor) -> Tensor
    /// The deterministic inversion of images [B, C, H, W] under `prompt` over `steps` steps: the
    /// initial noise from which the model's own sampler returns close to the images.
    func invert(images: Tensor, prompt: String, steps: Int) throws -> Tensor
    /// Images [B, C, H, W] sampled from `noise` (what `invert` returns) with `prompt`.
    func regenerate(noise: Tensor, prompt: String, steps: Int, guidance: Float, seed: UInt64) throws -> Tensor
}

extension StableDiffusionPipeline: AttackedModel {
    public var sampler: ImageSampler { ImageSampler(self) }
    public var attackTextEncoder: BertTextEncoder? { textEncoder as? BertTextEncoder }
    public var paddedTextLength: Int? { nil }

    /// The states with padded positions zeroed where the encoder does so (the mini-SD was trained that way).
    public func conditioning(encoderStates states: Tensor, mask: Tensor) -> PromptConditioning {
        let zeroed = attackTextEncoder?.zeroPaddedStates ?? false
        return PromptConditioning(states: zeroed ? states * mask.reshaped([mask.shape[0], mask.shape[1], 1]) : states, mask: mask)
    }

    public func samples(fromImages images: Tensor) -> Tensor { images }
    public func predictionTarget(clean: Tensor, noise: Tensor) -> Tensor { noise }
    public func judgedImages(cleanEstimate: Tensor) -> Tensor { vae == nil ? cleanEstimate : decode(cleanEstimate) }

    public func invert(images: Tensor, prompt: String, steps: Int) throws -> Tensor {
        try InversionAttack.invert(pipeline: self, images: images, prompt: prompt, steps: steps)
    }

    public func regenerate(noise: Tensor, prompt: String, steps: Int, guidance: Float, seed: UInt64) throws -> Tensor {
        try generate(prompts: Array(repeating: prompt, count: noise.shape[0]), steps: steps, guidance: guidance, seed: seed,
                     initialNoise: noise)
    }
}

extension FluxPipeline: AttackedModel {
    public var sampler: ImageSampler { ImageSampler(self) }
    public var attackTextEncoder: BertTextEncoder? { (textEncoder as? PooledSentenceEncoder)?.encoder }
    public var paddedTextLength: Int? { (textEncoder as? PooledSentenceEncoder)?.tokens }

    /// `PooledSentenceEncoder`'s conditioning: padded states zeroed, their masked mean pooled.
    public func conditioning(encoderStates states: Tensor, mask: Tensor) -> PromptConditioning {
        let masked = states * mask.reshaped([mask.shape[0], mask.shape[1], 1])
        return PromptConditioning(states: masked, pooled: SentencePooling.mean(masked, mask: mask))
    }

    public func samples(fromImages images: Tensor) -> Tensor { FluxTransformer2DModel.packLatents(images) }
    /// The flow's velocity target: d x_σ / dσ for x_σ = (1 − σ)x₀ + σε.
    public func predictionTarget(clean: Tensor, noise: Tensor) -> Tensor { noise - clean }
    public func judgedImages(cleanEstimate: Tensor) -> Tensor {
        vae == nil ? imageLayout(cleanEstimate) : images(fromSamples: cleanEstimate)
    }

    public func invert(images: Tensor, prompt: String, steps: Int) throws -> Tensor {
        try InversionAttack.invert(pipeline: self, images: images, prompt: prompt, steps: steps)
    }

    public func regenerate(noise: Tensor, prompt: String, steps: Int, guidance: Float, seed: UInt64) throws -> Tensor {
        try generate(prompts: Array(repeating: prompt, count: noise.shape[0]), steps: steps, guidance: guidance, seed: seed,
                     height: defaultSize, width: defaultSize, initialNoise: noise)
    }
}
