import Diffusion
import Foundation
import NN
import Tensor

/// The model families an erasure runs on.
public enum DenoiserFamily: String, Codable, Sendable {
    /// Stable Diffusion: a UNet predicting ε (or v) under a variance-preserving schedule.
    case unet
    /// FLUX: an MM-DiT predicting the rectified-flow velocity v = ε − x₀.
    case flux
}

/// The text conditioning of a batch of prompts, in whichever form the family reads it: per-token
/// states [B, T, D] with, for Stable Diffusion, the attention mask [B, T] and, for FLUX, the
/// pooled vector [B, P]. Methods pass it through without looking inside.
public struct PromptConditioning {
    public var states: Tensor
    public var mask: Tensor?
    public var pooled: Tensor?

    public init(states: Tensor, mask: Tensor? = nil, pooled: Tensor? = nil) {
        self.states = states
        self.mask = mask
        self.pooled = pooled
    }

    public var count: Int { states.shape[0] }

    /// Rows `indices`, in order (copies).
    public func rows(_ indices: [Int]) -> PromptConditioning {
        PromptConditioning(states: gather(states, indices), mask: mask.map { gather($0, indices) },
                           pooled: pooled.map { gather($0, indices) })
    }
}

/// Every text a run uses, encoded once in one batch (so every caption has the same token length)
/// with the text encoder frozen; steps gather batches by caption index.
public struct ConditioningTable {
    public let captions: [String]
    public let conditioning: PromptConditioning

    public init<Model: ErasableModel>(captions: [String], model: Model) {
        precondition(!captions.isEmpty, "ConditioningTable: no captions")
        self.captions = captions
        conditioning = noGrad { model.encodeConditioning(captions) }
    }

    /// The index of `caption` in the table.
    public func index(of caption: String) -> Int? { captions.firstIndex(of: caption) }

    /// The conditioning of the captions at `indices`, for one batch.
    public func batch(_ indices: [Int]) -> PromptConditioning { conditioning.rows(indices) }
}

/// Which text embedding a linear map reads (UCE's closed form needs one vector per text).
public enum TextInput: String, Sendable {
    /// One token's state: the last token before the end token, as UCE's official code picks it.
    case token
    /// The prompt's pooled vector (FLUX's CLIP role).
    case pooled
}

/// What an erasure method needs from a model family (docs/ARCHITECTURE.md, "What an erasure
/// method needs from a family"). `StableDiffusionPipeline` and `FluxPipeline` conform, so ESD, UCE
/// and SCORE are written once over both.
///
/// **Prediction space.** `predict` returns what the family's losses are written in: ε̂ for the
/// UNet (converted from v for v-prediction models, as the methods always did) and the velocity v̂
/// for FLUX. Every target the methods build (ESD's negative guidance, SCORE's anchored erase
/// target, classifier-free guidance) is an affine combination of predictions at one input whose
/// weights sum to 1, and at a fixed σ the flow's ε̂ = x_σ + (1 − σ)·v̂ is affine in v̂ with that
/// same x_σ for every prediction, so each target means the same in ε or in v. An MSE differs: in
/// ε it is (1 − σ)² times the MSE in v, a weight that vanishes at σ → 1, where a flow decides the
/// class. The flow family's losses are therefore MSEs on velocities, the objective the model was
/// trained with and the one EraseAnything's ESD-style loss uses.
/// `cleanEstimate` maps a prediction to x̂₀ (SD: (zₜ − √(1−ᾱ)ε̂)/√ᾱ; FLUX: x_σ − σ·v̂) for critics.
///
/// **Timesteps** are the values the sampling schedule gives the model (SD: 0…999, rounded to
/// integers for training, as the UNet was trained; FLUX: σ·1000, kept exact).
///
/// **Samples** are in the layout the loop denoises: [B, C, h, w] for the UNet, packed 2×2-patch
/// tokens [B, N, 4C] for FLUX; `imageLayout` unpacks them for image-space critics.
public protocol ErasableModel: AnyObject {
    /// The network an erasure changes: the UNet or the flow transformer.
    associatedtype Denoiser: Module

    static var family: DenoiserFamily { get }
    /// The denoiser's folder in a diffusers pipeline and its name in messages ("unet", "transformer").
    static var denoiserComponent: String { get }
    /// What `predict` returns, for messages ("ε", "velocity").
    static var predictionName: String { get }

    /// The model being erased, changed in place.
    var denoiser: Denoiser { get }
    /// An independent copy of the denoiser, frozen and in eval mode: θ₀ beside the model trained.
    func frozenDenoiser() throws -> Denoiser
    /// The text encoder's module when it is one this package trains (MiniLM, CLIP), else nil.
    var textEncoderModule: Module? { get }

    // MARK: Conditioning

    /// The conditioning of `prompts` (recorded for autodiff when the text encoder trains).
    func encodeConditioning(_ prompts: [String]) -> PromptConditioning
    /// One embedding per text for the maps that read `input` (Float64): the token rule of UCE for
    /// `.token`, the pooled vector for `.pooled`. Throws when the text encoder cannot say which
    /// positions are tokens.
    func textEmbeddings(_ texts: [String], input: TextInput) throws -> [String: [Double]]
    /// The weights whose input is a text embedding alone (no timestep, no image), by the embedding
    /// they read: what UCE's closed form edits. [out, in] matrices, by parameter name.
    func textReadingWeights() -> [(name: String, tensor: Tensor, input: TextInput)]

    // MARK: Sampling

    /// Channels of a sample in image layout (the critic's input).
    var imageChannels: Int { get }
    /// The denoising schedule of `steps` steps at the default size.
    func schedule(steps: Int) throws -> SamplingSchedule
    /// Noise to start a run from at the default size: sample k from `generators[k]`, scaled by the
    /// schedule's initial σ, in the denoised layout.
    func initialSample(schedule: SamplingSchedule, generators: inout [RandomGenerator]) throws -> Tensor
    /// The model's input at step `index` for the sample there (SD's `scaleModelInput`; FLUX: x itself).
    func modelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor
    /// The timestep the losses use for a sampled one (SD: rounded to the trained integers; FLUX: as is).
    func trainingTimestep(_ samplingTimestep: Float) -> Float
    /// The one loop (`Diffusion.denoise`) with classifier-free guidance, `model` in place of the
    /// denoiser (a frozen copy), and an observer. Not wrapped in `noGrad`.
    func denoise(_ sample: Tensor, conditional: PromptConditioning, unconditional: PromptConditioning?, guidance: Float,
                 schedule: SamplingSchedule, steps: Range<Int>?, generators: inout [RandomGenerator], model: Denoiser?,
                 observe: ((DenoisingStep) -> DenoisingControl)?) throws -> Tensor

    // MARK: Prediction

    /// The prediction (ε̂ or v̂, see above) for model inputs `x` at one `timestep` for the batch;
    /// differentiable in the denoiser's trainable parameters. `model` replaces the denoiser.
    func predict(_ x: Tensor, timestep: Float, conditioning: PromptConditioning, model: Denoiser?) -> Tensor
    /// The same with one training timestep per item.
    func predict(_ x: Tensor, timesteps: [Float], conditioning: PromptConditioning, model: Denoiser?) -> Tensor
    /// x̂₀ implied by `prediction` for `x` at per-item `timesteps`, differentiable in the prediction.
    func cleanEstimate(_ x: Tensor, prediction: Tensor, timesteps: [Float]) -> Tensor
    /// The forward process at per-item training timesteps: SD's `add_noise`, FLUX's `scale_noise`.
    func noised(_ clean: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor
    /// Samples (or x̂₀) in image layout [B, C, h, w]; differentiable.
    func imageLayout(_ x: Tensor) -> Tensor
    /// Images in [−1, 1] for finished samples in the denoised layout (unpacked and decoded).
    func images(fromSamples samples: Tensor) -> Tensor
    /// The training timesteps of the family's schedule (1000 for both).
    var trainingTimestepCount: Int { get }
}

extension ErasableModel {
    /// Names of the parameters of `set` on this family.
    public func includes(_ set: TrainableSet, _ name: String) -> Bool { set.includes(name, family: Self.family) }

    /// Marks exactly the parameters of `set` as trainable and returns them.
    @discardableResult
    public func selectTrainable(_ set: TrainableSet) -> [(name: String, tensor: Tensor)] {
        denoiser.freeze()
        denoiser.unfreeze { set.includes($0, family: Self.family) }
        return denoiser.trainableParameters()
    }
}

extension TrainableSet {
    /// Whether `name` is in the set on `family`. FLUX has no separate cross-attention: text enters
    /// through `context_embedder` and the double blocks' context stream, whose attention
    /// projections (`add_q_proj`, `add_k_proj`, `add_v_proj`, `to_add_out`) are the weights that
    /// read the text as SD's attn2 does; so cross-attention means those (ESD-x's analogue, as
    /// EraseAnything trains `add_q_proj`/`add_k_proj`), and its keys and values `add_k_proj` and
    /// `add_v_proj`. The single blocks' projections see text and image tokens alike and belong
    /// to the rest.
    public func includes(_ name: String, family: DenoiserFamily) -> Bool {
        guard family == .flux else { return includes(name) }
        let textAttention = name.hasPrefix("transformer_blocks.")
            && [".attn.add_q_proj.", ".attn.add_k_proj.", ".attn.add_v_proj.", ".attn.to_add_out."].contains { name.contains($0) }
        let keysValues = name.hasPrefix("transformer_blocks.") && (name.contains(".attn.add_k_proj.") || name.contains(".attn.add_v_proj."))
        switch self {
        case .full: return true
        case .crossAttention: return textAttention
        case .nonCrossAttention: return !textAttention
        case .crossAttentionKeysValues: return keysValues
        }
    }
}

// MARK: - Stable Diffusion

extension StableDiffusionPipeline: ErasableModel {
    public static var family: DenoiserFamily { .unet }
    public static var denoiserComponent: String { "unet" }
    public static var predictionName: String { "ε" }

    public var denoiser: UNet2DConditionModel { unet }
    public func frozenDenoiser() throws -> UNet2DConditionModel { try unet.frozenCopy() }
    public var textEncoderModule: Module? {
        (textEncoder as? BertTextEncoder)?.model ?? (textEncoder as? CLIPTextEncoder)?.model
    }

    public func encodeConditioning(_ prompts: [String]) -> PromptConditioning {
        let (states, mask) = encodePrompts(prompts)
        return PromptConditioning(states: states, mask: mask)
    }

    /// `.token` only: the state at (tokens − 2), tokens counting the mask's ones (start and end
    /// included), the official `attention_mask.sum() − 2`. Texts are encoded in one batch;
    /// padding does not change the states of real tokens.
    public func textEmbeddings(_ texts: [String], input: TextInput) throws -> [String: [Double]] {
        guard input == .token else {
            throw ErasureError.invalidRequest("a Stable Diffusion UNet reads no pooled text vector")
        }
        return UCE.tokenEmbeddings(of: texts, pipeline: self)
    }

    /// Every cross-attention key and value projection (attn2.to_k, attn2.to_v): their input is
    /// the text states themselves.
    public func textReadingWeights() -> [(name: String, tensor: Tensor, input: TextInput)] {
        unet.namedParameters().filter { UCE.edits($0.name) }.map { ($0.name, $0.tensor, .token) }
    }

    public var imageChannels: Int { latentChannels }
    public func schedule(steps: Int) throws -> SamplingSchedule { try scheduler.schedule(steps: steps) }

    public func initialSample(schedule: SamplingSchedule, generators: inout [RandomGenerator]) throws -> Tensor {
        let shape = try latentShape(batch: 1, height: defaultHeight, width: defaultWidth)
        return initialNoise(shape: shape, schedule: schedule, generators: &generators)
    }

    public func modelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor {
        scheduler.scaleModelInput(sample, index: index, of: schedule)
    }

    public func trainingTimestep(_ samplingTimestep: Float) -> Float { samplingTimestep.rounded() }

    public func denoise(_ sample: Tensor, conditional: PromptConditioning, unconditional: PromptConditioning?, guidance: Float,
                        schedule: SamplingSchedule, steps: Range<Int>?, generators: inout [RandomGenerator],
                        model: UNet2DConditionModel?, observe: ((DenoisingStep) -> DenoisingControl)?) throws -> Tensor {
        try denoise(sample, conditional: (conditional.states, conditional.mask!),
                    unconditional: unconditional.map { ($0.states, $0.mask!) }, guidance: guidance, schedule: schedule,
                    steps: steps, generators: &generators, model: model, observe: observe)
    }

    public func predict(_ x: Tensor, timestep: Float, conditioning: PromptConditioning, model: UNet2DConditionModel?) -> Tensor {
        predictNoise(latents: x, timestep: timestep, states: conditioning.states, mask: conditioning.mask, model: model)
    }

    public func predict(_ x: Tensor, timesteps: [Float], conditioning: PromptConditioning, model: UNet2DConditionModel?) -> Tensor {
        predictNoise(latents: x, timesteps: timesteps.map { Int($0) }, states: conditioning.states, mask: conditioning.mask,
                     model: model)
    }

    public func cleanEstimate(_ x: Tensor, prediction: Tensor, timesteps: [Float]) -> Tensor {
        Erasure.cleanEstimate(latents: x, noise: prediction, timesteps: timesteps.map { Int($0) },
                              alphasCumprod: scheduler.alphasCumprod)
    }

    public func noised(_ clean: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        scheduler.addNoise(original: clean, noise: noise, timesteps: timesteps.map { Int($0) })
    }

    public func imageLayout(_ x: Tensor) -> Tensor { x }
    public func images(fromSamples samples: Tensor) -> Tensor { decode(samples) }
    public var trainingTimestepCount: Int { scheduler.alphasCumprod.count }
}

/// The state at position (tokens − 2) of each text, tokens counting `mask`'s ones (UCE's rule).
func lastTokenStates(states: Tensor, mask: Tensor, texts: [String]) -> [String: [Double]] {
    let (length, width) = (states.shape[1], states.shape[2])
    var result: [String: [Double]] = [:]
    for (i, text) in texts.enumerated() {
        let tokens = (0..<length).reduce(0) { $0 + (mask.pointer[i * length + $1] != 0 ? 1 : 0) }
        let position = min(max(tokens - 2, 0), length - 1)
        let start = (i * length + position) * width
        result[text] = (0..<width).map { Double(states.pointer[start + $0]) }
    }
    return result
}
