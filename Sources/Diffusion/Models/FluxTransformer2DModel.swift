import Foundation
import NN
import Tensor

// The FLUX denoiser, diffusers' `FluxTransformer2DModel` (an MM-DiT, Esser et al. 2024, as
// Black Forest Labs' FLUX.1): packed latent tokens and text tokens pass N double-stream blocks
// (separate weights per stream, joint attention), then M single-stream blocks over their
// concatenation; the image tokens are projected back. Time (and, for guidance-distilled models,
// the guidance scale) and a pooled text vector make one conditioning vector that modulates every
// block (AdaLN-Zero). Positions enter only through 3-axis rotary embeddings over (0, row, col).
// The model predicts the flow velocity v = ε − x₀ (see FlowMatchEulerDiscreteScheduler).
// Parameter names equal diffusers' state-dict keys.

// MARK: - Config

/// diffusers' `FluxTransformer2DModel` config (`transformer/config.json`). Each property carries
/// diffusers' default (FLUX.1's architecture); `fields` gives its key and the values it accepts.
public struct FluxTransformer2DConfig: ModelConfig, Equatable, Sendable {
    public var patchSize = 1
    /// Channels of a packed latent token (FLUX.1: 16 latent channels × 2 × 2 = 64).
    public var inChannels = 64
    /// nil: the same as `inChannels`.
    public var outChannels: Int? = nil
    /// Double-stream blocks.
    public var numLayers = 19
    /// Single-stream blocks.
    public var numSingleLayers = 38
    public var attentionHeadDim = 128
    public var numAttentionHeads = 24
    /// Width of the text encoder's token states (T5's 4096 in FLUX.1).
    public var jointAttentionDim = 4096
    /// Width of the pooled text vector (CLIP's 768 in FLUX.1).
    public var pooledProjectionDim = 768
    /// Whether the model embeds a guidance scale (FLUX.1-dev's distilled guidance).
    public var guidanceEmbeds = false
    /// Rotary features per position axis; they sum to `attention_head_dim`.
    public var axesDimsRope = [16, 56, 56]

    public static let fields: [ConfigField<Self>] = [
        .init("patch_size", \.patchSize, .count),
        .init("in_channels", \.inChannels, .size),
        .init("out_channels", \.outChannels, .size),
        .init("num_layers", \.numLayers, .countOrZero),
        .init("num_single_layers", \.numSingleLayers, .countOrZero),
        .init("attention_head_dim", \.attentionHeadDim, .size),
        .init("num_attention_heads", \.numAttentionHeads, .count),
        .init("joint_attention_dim", \.jointAttentionDim, .size),
        .init("pooled_projection_dim", \.pooledProjectionDim, .size),
        .init("guidance_embeds", \.guidanceEmbeds),
        .init("axes_dims_rope", \.axesDimsRope, .size),
    ]

    /// diffusers' defaults: FLUX.1's architecture.
    public init() {}

    public init(from decoder: Decoder) throws { try self.init(fieldsFrom: decoder) }

    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    /// Reads and validates `config.json` (of a diffusers `transformer/` folder); errors name the file.
    public init(contentsOf url: URL) throws {
        self = try readConfig(FluxTransformer2DConfig.self, from: url) { try $0.validate() }
    }

    /// Width of the token stream (heads × head dimension).
    public var innerDim: Int { numAttentionHeads * attentionHeadDim }

    /// Channels of an output token.
    public var outputChannels: Int { outChannels ?? inChannels }

    /// Throws for configs that cannot build a model, naming the field.
    public func validate() throws {
        try checkFieldRanges()
        guard !axesDimsRope.isEmpty else { throw DiffusionConfigError.invalid(field: "axes_dims_rope", reason: "is empty") }
        if let odd = axesDimsRope.first(where: { $0 <= 0 || $0 % 2 != 0 }) {
            throw DiffusionConfigError.invalid(field: "axes_dims_rope", reason: "has \(odd); every entry must be positive and even")
        }
        let total = axesDimsRope.reduce(0, +)
        guard total == attentionHeadDim else {
            throw DiffusionConfigError.invalid(field: "axes_dims_rope",
                                               reason: "sums to \(total), not attention_head_dim \(attentionHeadDim)")
        }
    }
}

// MARK: - Model

/// diffusers' `FluxTransformer2DModel`. Build it from a config, then load weights
/// (`FluxTransformer2DModel(directory:)` does both for a diffusers `transformer/` folder).
public final class FluxTransformer2DModel: Module {
    public let config: FluxTransformer2DConfig
    public let time_text_embed: CombinedTimestepTextProjEmbeddings
    public let context_embedder: Linear
    public let x_embedder: Linear
    public let transformer_blocks: [FluxTransformerBlock]
    public let single_transformer_blocks: [FluxSingleTransformerBlock]
    public let norm_out: AdaLayerNormContinuous
    public let proj_out: Linear
    public let posEmbed: FluxPosEmbed

    /// A randomly initialised model (PyTorch's default init; RMSNorm scales 1) of the given
    /// architecture. Throws `DiffusionConfigError` naming the field of an unusable config.
    public init(config: FluxTransformer2DConfig, generator: inout RandomGenerator) throws {
        try config.validate()
        self.config = config
        let dim = config.innerDim, heads = config.numAttentionHeads, headDim = config.attentionHeadDim
        posEmbed = FluxPosEmbed(theta: 10000, axesDims: config.axesDimsRope)
        time_text_embed = CombinedTimestepTextProjEmbeddings(
            embeddingDim: dim, pooledProjectionDim: config.pooledProjectionDim, guidance: config.guidanceEmbeds,
            generator: &generator)
        context_embedder = Linear(config.jointAttentionDim, dim, generator: &generator)
        x_embedder = Linear(config.inChannels, dim, generator: &generator)
        var doubles: [FluxTransformerBlock] = []
        for _ in 0..<config.numLayers {
            doubles.append(FluxTransformerBlock(dim: dim, heads: heads, headDim: headDim, generator: &generator))
        }
        transformer_blocks = doubles
        var singles: [FluxSingleTransformerBlock] = []
        for _ in 0..<config.numSingleLayers {
            singles.append(FluxSingleTransformerBlock(dim: dim, heads: heads, headDim: headDim, generator: &generator))
        }
        single_transformer_blocks = singles
        norm_out = AdaLayerNormContinuous(dim, conditioningDim: dim, generator: &generator)
        proj_out = Linear(dim, config.patchSize * config.patchSize * config.outputChannels, generator: &generator)
    }

    /// Builds the model from a diffusers `transformer/` folder: `config.json` and
    /// `diffusion_pytorch_model[.fp16].safetensors` (or its sharded `.safetensors.index.json`).
    public convenience init(directory: URL) throws {
        let config = try FluxTransformer2DConfig(contentsOf: directory.appendingPathComponent("config.json"))
        var generator = RandomGenerator(seed: 0)
        try self.init(config: config, generator: &generator)
        try loadModule(self, from: try diffusersWeightsFile(in: directory))
    }

    /// An independent copy with the same config and weights (a frozen reference beside a model
    /// being trained). Parameters keep their `requiresGrad`.
    public func copy() throws -> FluxTransformer2DModel {
        var generator = RandomGenerator(seed: 0)
        let clone = try FluxTransformer2DModel(config: config, generator: &generator)
        for ((_, target), (_, source)) in zip(clone.namedParameters(), namedParameters()) {
            target.assign(source)
            target.requiresGrad = source.requiresGrad
        }
        if !isTraining { clone.eval() }
        return clone
    }

    /// Predicts the flow velocity for packed latent tokens.
    ///
    /// - Parameters:
    ///   - hiddenStates: packed latents [B, N, in_channels] (`packLatents`)
    ///   - encoderHiddenStates: text token states [B, M, joint_attention_dim]
    ///   - pooledProjections: pooled text vector [B, pooled_projection_dim]
    ///   - timestep: the noise level σ ∈ [0, 1] per batch item (or one for all); the model scales
    ///     it by 1000 as diffusers does (the FLUX pipeline passes t/1000)
    ///   - imageIds: position ids of the image tokens [N, axes] (`latentImageIds`)
    ///   - textIds: position ids of the text tokens [M, axes] (zeros in FLUX)
    ///   - guidance: the embedded guidance scale per batch item (or one for all); required
    ///     exactly when the config has `guidance_embeds`
    /// - Returns: [B, N, patch_size² · out_channels]
    public func callAsFunction(_ hiddenStates: Tensor, encoderHiddenStates: Tensor, pooledProjections: Tensor,
                               timestep: [Float], imageIds: Tensor, textIds: Tensor,
                               guidance: [Float]? = nil) -> Tensor {
        let c = config
        precondition(hiddenStates.rank == 3 && hiddenStates.shape[2] == c.inChannels,
                     "FLUX: hiddenStates must be [B, N, \(c.inChannels)], got \(hiddenStates.shape)")
        let (batch, imageTokens) = (hiddenStates.shape[0], hiddenStates.shape[1])
        precondition(encoderHiddenStates.rank == 3 && encoderHiddenStates.shape[0] == batch
                     && encoderHiddenStates.shape[2] == c.jointAttentionDim,
                     "FLUX: encoderHiddenStates must be [\(batch), M, \(c.jointAttentionDim)], got \(encoderHiddenStates.shape)")
        let textTokens = encoderHiddenStates.shape[1]
        precondition(pooledProjections.shape == [batch, c.pooledProjectionDim],
                     "FLUX: pooledProjections must be [\(batch), \(c.pooledProjectionDim)], got \(pooledProjections.shape)")
        precondition(imageIds.shape == [imageTokens, c.axesDimsRope.count],
                     "FLUX: imageIds must be [\(imageTokens), \(c.axesDimsRope.count)], got \(imageIds.shape)")
        precondition(textIds.shape == [textTokens, c.axesDimsRope.count],
                     "FLUX: textIds must be [\(textTokens), \(c.axesDimsRope.count)], got \(textIds.shape)")
        precondition((guidance != nil) == c.guidanceEmbeds,
                     c.guidanceEmbeds ? "FLUX: this model has guidance_embeds and needs a guidance value"
                                      : "FLUX: this model has no guidance embedding; pass guidance nil")

        func perItem(_ values: [Float], _ what: String) -> [Float] {
            precondition(values.count == batch || values.count == 1, "FLUX: \(values.count) \(what) values for a batch of \(batch)")
            // diffusers: `timestep.to(dtype) * 1000`, one float32 rounding of the product.
            return (values.count == batch ? values : Array(repeating: values[0], count: batch)).map { $0 * 1000 }
        }
        let temb = time_text_embed(timestep: perItem(timestep, "timestep"),
                                   guidance: guidance.map { perItem($0, "guidance") }, pooled: pooledProjections)

        var x = x_embedder(hiddenStates)
        var context = context_embedder(encoderHiddenStates)
        let rope = posEmbed(Tensor.concat([textIds, imageIds], axis: 0))

        for block in transformer_blocks {
            (x, context) = block(x, context: context, temb: temb, rope: rope)
        }
        var tokens = Tensor.concat([context, x], axis: 1)
        for block in single_transformer_blocks {
            tokens = block(tokens, temb: temb, rope: rope)
        }
        x = tokens.narrowed(axis: 1, start: textTokens, length: imageTokens)
        return proj_out(norm_out(x, conditioning: temb))
    }
}

// MARK: - Latent packing

extension FluxTransformer2DModel {
    /// diffusers' `FluxPipeline._pack_latents`: latents [B, C, H, W] (H, W even) → tokens
    /// [B, (H/2)·(W/2), 4C], each token one 2×2 patch, channels outermost within the token.
    public static func packLatents(_ latents: Tensor) -> Tensor {
        precondition(latents.rank == 4 && latents.shape[2] % 2 == 0 && latents.shape[3] % 2 == 0,
                     "packLatents: latents must be [B, C, H, W] with even H and W, got \(latents.shape)")
        let (b, c, h, w) = (latents.shape[0], latents.shape[1], latents.shape[2], latents.shape[3])
        return latents.reshaped([b, c, h / 2, 2, w / 2, 2]).permuted([0, 2, 4, 1, 3, 5])
            .reshaped([b, (h / 2) * (w / 2), c * 4])
    }

    /// diffusers' `FluxPipeline._unpack_latents`, the inverse of `packLatents`. It takes the
    /// latent height and width (diffusers takes the image's and divides by the VAE factor).
    public static func unpackLatents(_ tokens: Tensor, height: Int, width: Int) -> Tensor {
        precondition(tokens.rank == 3 && height % 2 == 0 && width % 2 == 0
                     && tokens.shape[1] == (height / 2) * (width / 2) && tokens.shape[2] % 4 == 0,
                     "unpackLatents: tokens \(tokens.shape) do not fit a \(height)×\(width) latent")
        let (b, channels) = (tokens.shape[0], tokens.shape[2])
        return tokens.reshaped([b, height / 2, width / 2, channels / 4, 2, 2]).permuted([0, 3, 1, 4, 2, 5])
            .reshaped([b, channels / 4, height, width])
    }

    /// diffusers' `FluxPipeline._prepare_latent_image_ids` for a grid of `height` × `width`
    /// packed tokens (the latent's H/2 × W/2): [height·width, 3] rows (0, row, col), row-major.
    public static func latentImageIds(height: Int, width: Int) -> Tensor {
        Tensor(shape: [height * width, 3]) { p in
            for r in 0..<height {
                for c in 0..<width {
                    let at = (r * width + c) * 3
                    (p[at], p[at + 1], p[at + 2]) = (0, Float(r), Float(c))
                }
            }
        }
    }

    /// FLUX's text position ids: [tokens, 3] zeros.
    public static func textIds(tokens: Int) -> Tensor { Tensor.zeros([tokens, 3]) }
}
