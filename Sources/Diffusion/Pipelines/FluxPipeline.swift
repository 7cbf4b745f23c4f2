import Foundation
import NN
import Tensor

// MARK: - Text conditioning

/// What a FLUX pipeline needs of its text encoders: per-token states for the transformer's
/// `context_embedder` (T5's role in FLUX.1) and one pooled vector per prompt for the
/// conditioning vector (CLIP's pooled output in FLUX.1).
public protocol FluxTextEncoder: AnyObject {
    /// Width of the token states (the transformer's `joint_attention_dim`).
    var stateWidth: Int { get }
    /// Width of the pooled vector (the transformer's `pooled_projection_dim`).
    var pooledWidth: Int { get }
    /// States [B, T, stateWidth] (T the same for every call, as FLUX pads T5 to a fixed length)
    /// and pooled vectors [B, pooledWidth].
    func encode(prompts: [String]) -> (states: Tensor, pooled: Tensor)
}

/// One sentence-transformers encoder in both FLUX roles (the mini-FLUX testbed's MiniLM): its
/// token states, padded to `tokens` positions with the padded states zeroed, stand in for T5's;
/// their mask-weighted mean (sentence-transformers' mean pooling, not L2-normalised) stands in
/// for CLIP's pooled vector. The fixed length matters: FLUX attends over every text position
/// (no mask), so a prompt must meet the same number of padded positions in training and sampling.
public final class PooledSentenceEncoder: FluxTextEncoder {
    public let encoder: BertTextEncoder
    public let tokens: Int

    /// The mini-FLUX's text length: every Fashion-MNIST caption fits with room to spare.
    public static let defaultTokens = 16

    public init(encoder: BertTextEncoder, tokens: Int = PooledSentenceEncoder.defaultTokens) {
        precondition(tokens >= 2, "PooledSentenceEncoder: \(tokens) tokens leave no room for [CLS] and [SEP]")
        self.encoder = encoder
        self.tokens = tokens
    }

    public var stateWidth: Int { encoder.hiddenSize }
    public var pooledWidth: Int { encoder.hiddenSize }

    public func encode(prompts: [String]) -> (states: Tensor, pooled: Tensor) {
        let batch = encoder.tokenizer(prompts, padding: .maxLength, maxLength: tokens)
        let mask = batch.attentionMaskTensor
        let states = encoder.hiddenStates(batch) * mask.reshaped([batch.batchSize, tokens, 1])
        return (states, SentencePooling.mean(states, mask: mask))
    }
}

// MARK: - Pipeline

/// Text-to-image generation with a FLUX transformer and flow matching, as diffusers'
/// `FluxPipeline`:
///
/// 1. encode the prompts (token states and pooled vectors), and the negative prompt for true
///    classifier-free guidance;
/// 2. draw the initial noise [B, C, h, w] (one random stream per image, as the SD pipeline) and
///    pack it into 2×2-patch tokens; image ids (0, row, col), text ids zero;
/// 3. denoise with the same loop as Stable Diffusion (`Diffusion.denoise`): at each σ of the
///    flow-matching schedule (FLUX's linspace(1, 1/n, n) shifted by μ of the token count) predict
///    the velocity, guided as v_u + g·(v_c − v_u) when g > 1, and take an Euler step;
/// 4. unpack the tokens and decode them with the VAE, or take them as the image when the model
///    works in pixel space (the mini-FLUX).
///
/// Two guidances, as in diffusers: `guidance` is true CFG (diffusers' `true_cfg_scale`, two
/// passes per step; here batched as one), applied with the negative prompt ("" by default) when
/// above 1 — diffusers applies it only when a negative prompt is passed; `embeddedGuidance`
/// (diffusers' `guidance_scale`, default 3.5) is fed to a guidance-distilled transformer
/// (`guidance_embeds`, FLUX.1-dev) and must be nil for one without.
public final class FluxPipeline {
    public let textEncoder: any FluxTextEncoder
    public let transformer: FluxTransformer2DModel
    /// nil: the transformer works in pixel space; its unpacked samples are the images.
    public let vae: AutoencoderKL?
    public var scheduler: FlowMatchEulerDiscreteScheduler

    /// diffusers' FluxPipeline `guidance_scale` default, for guidance-distilled models.
    public static let defaultEmbeddedGuidance: Float = 3.5

    public init(textEncoder: any FluxTextEncoder, transformer: FluxTransformer2DModel, vae: AutoencoderKL?,
                scheduler: FlowMatchEulerDiscreteScheduler) throws {
        let c = transformer.config
        guard textEncoder.stateWidth == c.jointAttentionDim else {
            throw PipelineError.incompatible("the text encoder's states are \(textEncoder.stateWidth) wide, the transformer's joint_attention_dim is \(c.jointAttentionDim)")
        }
        guard textEncoder.pooledWidth == c.pooledProjectionDim else {
            throw PipelineError.incompatible("the text encoder's pooled vector is \(textEncoder.pooledWidth) wide, the transformer's pooled_projection_dim is \(c.pooledProjectionDim)")
        }
        guard c.inChannels % 4 == 0, c.outputChannels == c.inChannels else {
            throw PipelineError.incompatible("a FLUX transformer's tokens are 2×2 patches: in_channels \(c.inChannels) must be a multiple of 4 and out_channels equal to it, not \(c.outputChannels)")
        }
        if let vae, vae.config.latentChannels * 4 != c.inChannels {
            throw PipelineError.incompatible("the VAE has \(vae.config.latentChannels) latent channels, the transformer's tokens hold \(c.inChannels) = 4 × \(c.inChannels / 4)")
        }
        self.textEncoder = textEncoder
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        defaultSize = 128 * (vae?.config.downscaleFactor ?? 1)
        transformer.eval()
        vae?.eval()
    }

    // MARK: Sizes

    /// Image side used when a call gives none: diffusers' `default_sample_size` 128 × the VAE
    /// factor (1024 for FLUX.1); a pixel-space model's loader sets its own (the mini-FLUX: 32).
    public var defaultSize: Int = 128

    /// Channels of the unpacked samples (latent or pixel channels).
    public var latentChannels: Int { transformer.config.inChannels / 4 }
    public var vaeScaleFactor: Int { vae?.config.downscaleFactor ?? 1 }

    /// The sample shape [batch, C, h, w] for images of `height` × `width` pixels; throws unless
    /// both are positive multiples of 2 × the VAE factor (the 2×2 packing).
    public func latentShape(batch: Int, height: Int, width: Int) throws -> [Int] {
        let multiple = 2 * vaeScaleFactor
        guard height > 0, width > 0, height % multiple == 0, width % multiple == 0 else {
            throw PipelineError.invalidArgument("image size \(height)×\(width) must be a positive multiple of \(multiple)")
        }
        return [batch, latentChannels, height / vaeScaleFactor, width / vaeScaleFactor]
    }

    // MARK: Pieces

    /// The conditioning of a batch of packed tokens: states, pooled vectors, their position ids.
    public struct Conditioning {
        public var states: Tensor
        public var pooled: Tensor
        public var textIds: Tensor

        public init(states: Tensor, pooled: Tensor) {
            self.states = states
            self.pooled = pooled
            textIds = FluxTransformer2DModel.textIds(tokens: states.shape[1])
        }

        /// Row `index` repeated `count` times.
        func repeated(_ count: Int) -> Conditioning {
            Conditioning(states: states.expanded(to: [count] + Array(states.shape.dropFirst())),
                         pooled: pooled.expanded(to: [count, pooled.shape[1]]))
        }

        func rows(_ start: Int, _ length: Int) -> Conditioning {
            Conditioning(states: states.narrowed(axis: 0, start: start, length: length),
                         pooled: pooled.narrowed(axis: 0, start: start, length: length))
        }
    }

    public func encodePrompts(_ prompts: [String]) -> Conditioning {
        precondition(!prompts.isEmpty, "encodePrompts: no prompts")
        let (states, pooled) = textEncoder.encode(prompts: prompts)
        return Conditioning(states: states, pooled: pooled)
    }

    /// The transformer's velocity for packed `tokens` [B, N, C] of an h × w sample at the
    /// schedule's `timestep` (σ·1000; the transformer is given σ as diffusers' pipeline passes
    /// t/1000). `model` replaces the pipeline's transformer for this call.
    public func velocity(tokens: Tensor, height: Int, width: Int, timestep: Float, conditioning: Conditioning,
                         embeddedGuidance: Float? = nil, model: FluxTransformer2DModel? = nil) -> Tensor {
        let model = model ?? transformer
        return model(tokens, encoderHiddenStates: conditioning.states, pooledProjections: conditioning.pooled,
                     timestep: [timestep / 1000], imageIds: FluxTransformer2DModel.latentImageIds(height: height / 2, width: width / 2),
                     textIds: conditioning.textIds,
                     guidance: model.config.guidanceEmbeds ? [embeddedGuidance ?? Self.defaultEmbeddedGuidance] : nil)
    }

    /// The velocity with true classifier-free guidance: one pass over [unconditional;
    /// conditional] and v_u + g·(v_c − v_u); without unconditional states, the conditional alone.
    public func guidedVelocity(tokens: Tensor, height: Int, width: Int, timestep: Float, conditional: Conditioning,
                               unconditional: Conditioning?, guidance: Float, embeddedGuidance: Float? = nil,
                               model: FluxTransformer2DModel? = nil) -> Tensor {
        guard let unconditional else {
            return velocity(tokens: tokens, height: height, width: width, timestep: timestep, conditioning: conditional,
                            embeddedGuidance: embeddedGuidance, model: model)
        }
        let batch = tokens.shape[0]
        let both = Conditioning(states: Tensor.concat([unconditional.states, conditional.states], axis: 0),
                                pooled: Tensor.concat([unconditional.pooled, conditional.pooled], axis: 0))
        let output = velocity(tokens: Tensor.concat([tokens, tokens], axis: 0), height: height, width: width,
                              timestep: timestep, conditioning: both, embeddedGuidance: embeddedGuidance, model: model)
        let parts = output.split(sizes: [batch, batch], axis: 0)
        return parts[0] + (parts[1] - parts[0]) * guidance
    }

    /// FLUX's schedule for `steps` steps of an h × w sample (μ from its (h/2)·(w/2) tokens).
    public func schedule(steps: Int, height: Int, width: Int) throws -> SamplingSchedule {
        try scheduler.fluxSchedule(steps: steps, imageSequenceLength: (height / 2) * (width / 2))
    }

    /// Images [B, C, H, W] in [−1, 1] from unpacked samples: VAE-decoded (÷ scaling factor,
    /// + shift factor), or the samples themselves in pixel space; clamped to [−1, 1].
    public func decode(_ latents: Tensor) -> Tensor {
        guard let vae else { return latents.clamped(-1, 1) }
        var z = latents * (1 / vae.scalingFactor)
        if let shift = vae.config.shiftFactor { z = z + shift }
        return vae.decode(z).clamped(-1, 1)
    }

    /// Runs steps `steps` (all when nil) of `schedule` from packed `tokens` of an h × w sample:
    /// the one loop (`Diffusion.denoise`) around `guidedVelocity`. Not wrapped in `noGrad`.
    public func denoise(_ tokens: Tensor, height: Int, width: Int, conditional: Conditioning, unconditional: Conditioning?,
                        guidance: Float, embeddedGuidance: Float? = nil, schedule: SamplingSchedule, steps: Range<Int>? = nil,
                        model: FluxTransformer2DModel? = nil,
                        observe: ((DenoisingStep) -> DenoisingControl)? = nil) throws -> Tensor {
        var generators = (0..<tokens.shape[0]).map { _ in RandomGenerator(seed: 0) }  // Euler draws no noise
        return try Diffusion.denoise(tokens, scheduler: scheduler, schedule: schedule, steps: steps, generators: &generators,
                                     observe: observe) { input, t in
            guidedVelocity(tokens: input, height: height, width: width, timestep: t, conditional: conditional,
                           unconditional: unconditional, guidance: guidance, embeddedGuidance: embeddedGuidance, model: model)
        }
    }

    // MARK: Sampling

    /// The unpacked samples [B, C, h, w] of a run, before decoding. Runs under `noGrad`.
    ///
    /// - Parameters:
    ///   - prompts: one image per prompt.
    ///   - negativePrompt: the unconditional text of true CFG.
    ///   - guidance: the true-CFG scale g; at most 1 uses the conditional velocity alone.
    ///   - embeddedGuidance: the distilled guidance of a `guidance_embeds` model (default 3.5);
    ///     an error for a model without it.
    ///   - seed, firstImageIndex: image k's noise comes from the stream (seed, firstImageIndex + k),
    ///     as in `StableDiffusionPipeline`.
    ///   - initialNoise: standard-normal noise [B, C, h, w] to start from instead of the streams'.
    ///   - progress: called after each step with (steps done, steps in all); `.stop` ends the run
    ///     there and returns that step's sample.
    public func sampleLatents(prompts: [String], negativePrompt: String = "", steps: Int, guidance: Float,
                              embeddedGuidance: Float? = nil, seed: UInt64, height: Int, width: Int,
                              firstImageIndex: Int = 0, initialNoise: Tensor? = nil,
                              progress: ((_ step: Int, _ total: Int) -> DenoisingControl)? = nil) throws -> Tensor {
        guard !prompts.isEmpty else { throw PipelineError.invalidArgument("no prompts") }
        guard firstImageIndex >= 0 else { throw PipelineError.invalidArgument("firstImageIndex \(firstImageIndex) is negative") }
        if embeddedGuidance != nil && !transformer.config.guidanceEmbeds {
            throw PipelineError.invalidArgument("this transformer has no guidance embedding (guidance_embeds false); use true CFG (guidance) instead of an embedded guidance")
        }
        let shape = try latentShape(batch: prompts.count, height: height, width: width)
        let (h, w) = (shape[2], shape[3])
        let schedule = try self.schedule(steps: steps, height: h, width: w)
        return try noGrad {
            let noise: Tensor
            if let initialNoise {
                guard initialNoise.shape == shape else {
                    throw PipelineError.invalidArgument("initial noise has shape \(initialNoise.shape), expected \(shape)")
                }
                noise = initialNoise
            } else {
                var generators = (0..<prompts.count).map { StableDiffusionPipeline.imageGenerator(seed: seed, index: firstImageIndex + $0) }
                noise = Diffusion.initialNoise(shape: [1] + shape.dropFirst(), schedule: schedule, generators: &generators)
            }
            // With guidance, the negative prompt is encoded in the same batch as the prompts.
            let texts = guidance > 1 ? [negativePrompt] + prompts : prompts
            let encoded = encodePrompts(texts)
            let conditional = encoded.rows(texts.count - prompts.count, prompts.count)
            let unconditional = guidance > 1 ? encoded.rows(0, 1).repeated(prompts.count) : nil
            let tokens = try denoise(FluxTransformer2DModel.packLatents(noise), height: h, width: w, conditional: conditional,
                                     unconditional: unconditional, guidance: guidance, embeddedGuidance: embeddedGuidance,
                                     schedule: schedule) { step in
                progress?(step.index + 1, step.count) ?? .proceed
            }
            return FluxTransformer2DModel.unpackLatents(tokens, height: h, width: w)
        }
    }

    /// Generates one image per prompt: images [B, C, H, W] in [−1, 1]. See `sampleLatents`.
    /// Same arguments, same bits.
    public func generate(prompts: [String], negativePrompt: String = "", steps: Int, guidance: Float,
                         embeddedGuidance: Float? = nil, seed: UInt64, height: Int, width: Int,
                         firstImageIndex: Int = 0, initialNoise: Tensor? = nil,
                         progress: ((_ step: Int, _ total: Int) -> DenoisingControl)? = nil) throws -> Tensor {
        let latents = try sampleLatents(prompts: prompts, negativePrompt: negativePrompt, steps: steps, guidance: guidance,
                                        embeddedGuidance: embeddedGuidance, seed: seed, height: height, width: width,
                                        firstImageIndex: firstImageIndex, initialNoise: initialNoise, progress: progress)
        return noGrad { decode(latents) }
    }
}
