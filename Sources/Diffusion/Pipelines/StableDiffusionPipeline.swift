import Foundation
import NN
import Tensor

/// Text-to-image generation with a latent (or pixel-space) diffusion model, as diffusers'
/// `StableDiffusionPipeline`:
///
/// 1. encode the prompts, and the negative prompt for classifier-free guidance;
/// 2. draw the initial noise, one random stream per image;
/// 3. denoise: at each step of the scheduler's table, predict the noise for the unconditional and
///    the conditional prompt in one batch, combine them as ε = ε_u + g·(ε_c − ε_u), and step;
/// 4. decode the latents with the VAE (after dividing by its scaling factor), or take them as
///    the image when the model works in pixel space.
///
/// The pieces are public so that the erasure methods can use them one at a time:
/// `encodePrompts`, `predictNoise` (recorded for autodiff when the UNet's parameters require
/// gradients), `denoise` (the one sampling loop, with a swappable model, a start step and a
/// per-step observer that can record and stop), `predictedOriginal` and `decode`.
///
/// Determinism: image k of a call is drawn from the stream `RandomGenerator(seed:).fork(firstImageIndex + k)`,
/// so it is the same image, bit for bit, whether generated alone (with `firstImageIndex: k`) or in a
/// batch, and the same seed always gives the same bits.
public final class StableDiffusionPipeline {
    public let textEncoder: any TextEncoder
    public let unet: UNet2DConditionModel
    /// nil: the UNet works in pixel space (the testbed's mini-SD); its samples are the images.
    public let vae: AutoencoderKL?
    public var scheduler: any NoiseScheduler
    /// Whether the text encoder's attention mask is given to the UNet's cross-attention.
    /// Stable Diffusion does not (its CLIP states are used at all 77 positions, padding
    /// included); the testbed's mini-SD does (MiniLM states of padded tokens are ignored).
    /// Default: false for `CLIPTextEncoder`, true for any other encoder.
    public var passesAttentionMask: Bool

    /// diffusers' default classifier-free guidance scale (`guidance_scale=7.5`), the scale users
    /// sample Stable Diffusion at.
    public static let defaultGuidance: Float = 7.5

    /// Assembles a pipeline from loaded components, checking that they fit together: the text
    /// encoder's width is the UNet's `cross_attention_dim`, the VAE's latent channels are the
    /// UNet's input and output channels.
    public init(textEncoder: any TextEncoder, unet: UNet2DConditionModel, vae: AutoencoderKL?,
                scheduler: any NoiseScheduler, passesAttentionMask: Bool? = nil) throws {
        let crossAttention = unet.config.crossAttentionDim[0]
        guard textEncoder.hiddenSize == crossAttention else {
            throw PipelineError.incompatible(
                "the text encoder's hidden size is \(textEncoder.hiddenSize), the UNet's cross_attention_dim is \(crossAttention)")
        }
        if let vae {
            guard vae.config.latentChannels == unet.config.inChannels, vae.config.latentChannels == unet.config.outChannels else {
                throw PipelineError.incompatible(
                    "the VAE has \(vae.config.latentChannels) latent channels, the UNet takes \(unet.config.inChannels) and gives \(unet.config.outChannels)")
            }
        } else if unet.config.inChannels != unet.config.outChannels {
            throw PipelineError.incompatible(
                "a pixel-space UNet (no VAE) must give as many channels as it takes, not \(unet.config.inChannels) → \(unet.config.outChannels)")
        }
        self.textEncoder = textEncoder
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.passesAttentionMask = passesAttentionMask ?? !(textEncoder is CLIPTextEncoder)
        unet.eval()
        vae?.eval()
    }

    // MARK: Sizes

    /// Image pixels per latent pixel along each side (2^(VAE blocks − 1); 1 without a VAE).
    public var vaeScaleFactor: Int { vae?.config.downscaleFactor ?? 1 }

    /// Channels of the samples the UNet denoises.
    public var latentChannels: Int { unet.config.inChannels }

    /// The image size the model was trained for: the UNet's `sample_size` × `vaeScaleFactor`
    /// (64 × 8 = 512 for SD 1.5).
    public var defaultHeight: Int { (unet.config.sampleSize?[0] ?? 64) * vaeScaleFactor }
    public var defaultWidth: Int {
        let size = unet.config.sampleSize
        if case .many(let values)? = size, values.count > 1 { return values[1] * vaeScaleFactor }
        return (size?[0] ?? 64) * vaeScaleFactor
    }

    /// The latent shape [batch, C, h, w] for images of `height` × `width` pixels; throws unless
    /// both are multiples of what the VAE and the UNet's down-sampling need.
    public func latentShape(batch: Int, height: Int, width: Int) throws -> [Int] {
        let multiple = vaeScaleFactor * (1 << unet.upsamplerCount)
        guard height > 0, width > 0, height % multiple == 0, width % multiple == 0 else {
            throw PipelineError.invalidArgument("image size \(height)×\(width) must be a positive multiple of \(multiple)")
        }
        return [batch, latentChannels, height / vaeScaleFactor, width / vaeScaleFactor]
    }

    // MARK: Pieces

    /// The text conditioning of `prompts`: hidden states [B, T, D] and the attention mask [B, T]
    /// (1 = token, 0 = padding). Recorded for autodiff when the encoder's parameters require
    /// gradients.
    public func encodePrompts(_ prompts: [String]) -> (states: Tensor, mask: Tensor) {
        precondition(!prompts.isEmpty, "encodePrompts: no prompts")
        let (states, mask) = textEncoder.encode(prompts: prompts)
        return (states, mask)
    }

    /// The UNet's raw output for `latents` (the model input, already scaled by the scheduler's
    /// `scaleModelInput` where it scales) at `timestep`: ε for ε-prediction models, v for
    /// v-prediction ones. `mask` reaches the UNet only when `passesAttentionMask`. `model`
    /// replaces the pipeline's UNet for this call (e.g. ESD's frozen copy beside the one it trains).
    public func modelOutput(latents: Tensor, timestep: Float, states: Tensor, mask: Tensor? = nil,
                            model: UNet2DConditionModel? = nil) -> Tensor {
        (model ?? unet)(latents, timestep: [timestep], encoderHiddenStates: states,
                        encoderAttentionMask: passesAttentionMask ? mask : nil)
    }

    /// The predicted noise ε̂ for `latents` xₜ (variance-preserving, the UNet's input) at
    /// `timestep`: the UNet's output for ε-prediction models, converted from v or x̂₀ otherwise
    /// (at the timestep rounded to an integer). Recorded for autodiff when the UNet's parameters
    /// require gradients (what ESD and SCORE train through). `model` as in `modelOutput`.
    public func predictNoise(latents: Tensor, timestep: Float, states: Tensor, mask: Tensor? = nil,
                             model: UNet2DConditionModel? = nil) -> Tensor {
        let output = modelOutput(latents: latents, timestep: timestep, states: states, mask: mask, model: model)
        if scheduler.predictionType == .epsilon { return output }
        return scheduler.predictedNoise(modelOutput: output, sample: latents, timesteps: [Int(timestep.rounded())])
    }

    /// ε̂ for a training batch whose items sit at different discrete timesteps (one per item),
    /// as `predictNoise`. Erasure losses are written in ε̂ for every prediction type, so a
    /// v-prediction model is trained on the same quantities.
    public func predictNoise(latents: Tensor, timesteps: [Int], states: Tensor, mask: Tensor? = nil,
                             model: UNet2DConditionModel? = nil) -> Tensor {
        precondition(timesteps.count == latents.shape[0], "predictNoise: \(timesteps.count) timesteps for \(latents.shape[0]) items")
        let output = (model ?? unet)(latents, timestep: timesteps.map(Float.init), encoderHiddenStates: states,
                                     encoderAttentionMask: passesAttentionMask ? mask : nil)
        if scheduler.predictionType == .epsilon { return output }
        return scheduler.predictedNoise(modelOutput: output, sample: latents, timesteps: timesteps)
    }

    /// x̂₀, the clean sample the model's output implies for `latents` xₜ at `timestep` (no
    /// clipping): (xₜ − √(1−ᾱₜ)·ε̂)/√ᾱₜ for ε-prediction.
    public func predictedOriginal(latents: Tensor, modelOutput: Tensor, timestep: Float) -> Tensor {
        scheduler.predictedOriginal(modelOutput: modelOutput, sample: latents, timesteps: [Int(timestep.rounded())])
    }

    /// The model output with classifier-free guidance at one step: one UNet pass over the batch
    /// [unconditional; conditional] and ε_u + g·(ε_c − ε_u); with no unconditional states, the
    /// conditional output alone. `model` as in `modelOutput`.
    public func guidedModelOutput(latents: Tensor, timestep: Float, conditional: (states: Tensor, mask: Tensor),
                                  unconditional: (states: Tensor, mask: Tensor)?, guidance: Float,
                                  model: UNet2DConditionModel? = nil) -> Tensor {
        guard let unconditional else {
            return modelOutput(latents: latents, timestep: timestep, states: conditional.states, mask: conditional.mask, model: model)
        }
        let batch = latents.shape[0]
        let output = modelOutput(latents: Tensor.concat([latents, latents], axis: 0), timestep: timestep,
                                 states: Tensor.concat([unconditional.states, conditional.states], axis: 0),
                                 mask: Tensor.concat([unconditional.mask, conditional.mask], axis: 0), model: model)
        let parts = output.split(sizes: [batch, batch], axis: 0)
        let (uncond, cond) = (parts[0], parts[1])
        return uncond + (cond - uncond) * guidance
    }

    /// The images [B, C, H, W] in [−1, 1] for samples of the denoiser: decoded by the VAE
    /// (latents ÷ scaling factor, + shift factor where the config has one), or the samples
    /// themselves for a pixel-space model; clamped to [−1, 1].
    public func decode(_ latents: Tensor) -> Tensor {
        guard let vae else { return latents.clamped(-1, 1) }
        var z = latents * (1 / vae.scalingFactor)
        if let shift = vae.config.shiftFactor { z = z + shift }
        return vae.decode(z).clamped(-1, 1)
    }

    /// The random stream of image `index` of a run with `seed`.
    public static func imageGenerator(seed: UInt64, index: Int) -> RandomGenerator {
        RandomGenerator(seed: seed).fork(UInt64(index))
    }

    // MARK: Sampling

    /// The conditioning of one run: the prompts' states and, when guidance > 1, the negative
    /// prompt's, repeated for every image. All texts are encoded in one batch, so the states
    /// share one length.
    func conditioning(prompts: [String], negativePrompt: String, guidance: Float)
        -> (conditional: (states: Tensor, mask: Tensor), unconditional: (states: Tensor, mask: Tensor)?) {
        let batch = prompts.count
        guard guidance > 1 else { return (encodePrompts(prompts), nil) }
        let (states, mask) = encodePrompts([negativePrompt] + prompts)
        let conditional = (states.narrowed(axis: 0, start: 1, length: batch), mask.narrowed(axis: 0, start: 1, length: batch))
        let negativeStates = states.narrowed(axis: 0, start: 0, length: 1), negativeMask = mask.narrowed(axis: 0, start: 0, length: 1)
        let unconditional = (negativeStates.expanded(to: [batch] + Array(states.shape.dropFirst())),
                             negativeMask.expanded(to: [batch, mask.shape[1]]))
        return (conditional, unconditional)
    }

    /// Runs steps `steps` (all when nil) of `schedule` from `latents` (already scaled by
    /// `initNoiseSigma` when starting at step 0) with guidance: the one loop (`Diffusion.denoise`)
    /// around `guidedModelOutput`. `model` replaces the pipeline's UNet (e.g. a frozen copy);
    /// `observe` as in `Diffusion.denoise`. Not wrapped in `noGrad`: the caller decides.
    public func denoise(_ latents: Tensor, conditional: (states: Tensor, mask: Tensor),
                        unconditional: (states: Tensor, mask: Tensor)?, guidance: Float,
                        schedule: SamplingSchedule, steps: Range<Int>? = nil, generators: inout [RandomGenerator],
                        model: UNet2DConditionModel? = nil,
                        observe: ((DenoisingStep) -> DenoisingControl)? = nil) throws -> Tensor {
        try Diffusion.denoise(latents, scheduler: scheduler, schedule: schedule, steps: steps, generators: &generators,
                              observe: observe) { input, t in
            guidedModelOutput(latents: input, timestep: t, conditional: conditional, unconditional: unconditional,
                              guidance: guidance, model: model)
        }
    }

    /// The initial noise of a run: image k from its own stream (see `imageGenerator`), or
    /// `initialNoise` [B, C, h, w] when given (standard normal, as diffusers' `latents=`),
    /// times the schedule's `initNoiseSigma`. Returns the generators, advanced past the draw.
    func initialLatents(batch: Int, height: Int, width: Int, seed: UInt64, firstImageIndex: Int,
                        initialNoise given: Tensor?, schedule: SamplingSchedule) throws -> (Tensor, [RandomGenerator]) {
        let shape = try latentShape(batch: batch, height: height, width: width)
        var generators = (0..<batch).map { Self.imageGenerator(seed: seed, index: firstImageIndex + $0) }
        guard let given else {
            return (initialNoise(shape: [1] + shape.dropFirst(), schedule: schedule, generators: &generators), generators)
        }
        guard given.shape == shape else {
            throw PipelineError.invalidArgument("initial noise has shape \(given.shape), expected \(shape)")
        }
        return (schedule.initNoiseSigma == 1 ? given : given * Float(schedule.initNoiseSigma), generators)
    }

    /// The samples of a run with guidance, before decoding: the scheduler's loop from fresh noise
    /// through steps 0..<`stopAtStep` (all steps when nil). A partial run returns xₜ at
    /// `timestep = schedule.timesteps[stopAtStep]`, the sample the next step would denoise
    /// (as ESD samples xₜ part-way). Runs under `noGrad`.
    ///
    /// - Parameters:
    ///   - prompts: one image per prompt.
    ///   - negativePrompt: the unconditional text of classifier-free guidance ("" as SD).
    ///   - guidance: g; at most 1 uses the conditional prediction alone, in one pass.
    ///   - seed, firstImageIndex: image k comes from the stream (seed, firstImageIndex + k).
    ///   - height, width: image pixels (default `defaultHeight` × `defaultWidth`).
    ///   - initialNoise: standard-normal noise [B, C, h, w] to start from instead of the streams'.
    public func sampleLatents(prompts: [String], negativePrompt: String = "", steps: Int, guidance: Float,
                              seed: UInt64, height: Int? = nil, width: Int? = nil, firstImageIndex: Int = 0,
                              initialNoise: Tensor? = nil, stopAtStep: Int? = nil,
                              progress: ((_ step: Int, _ total: Int) -> Void)? = nil) throws -> Tensor {
        guard !prompts.isEmpty else { throw PipelineError.invalidArgument("no prompts") }
        guard firstImageIndex >= 0 else { throw PipelineError.invalidArgument("firstImageIndex \(firstImageIndex) is negative") }
        let schedule = try scheduler.schedule(steps: steps)
        let stop = stopAtStep ?? schedule.count
        guard (0...schedule.count).contains(stop) else {
            throw PipelineError.invalidArgument("stopAtStep \(stop) outside 0...\(schedule.count)")
        }
        return try noGrad {
            var (latents, generators) = try initialLatents(
                batch: prompts.count, height: height ?? defaultHeight, width: width ?? defaultWidth, seed: seed,
                firstImageIndex: firstImageIndex, initialNoise: initialNoise, schedule: schedule)
            let (conditional, unconditional) = conditioning(prompts: prompts, negativePrompt: negativePrompt, guidance: guidance)
            return try denoise(latents, conditional: conditional, unconditional: unconditional, guidance: guidance,
                               schedule: schedule, steps: 0..<stop, generators: &generators) { step in
                progress?(step.index + 1, step.count)
                return .proceed
            }
        }
    }

    /// Generates one image per prompt: images [B, C, H, W] in [−1, 1]. See `sampleLatents` for
    /// the parameters; `progress` is called after each step with (steps done, steps in all).
    /// Same arguments, same bits.
    public func generate(prompts: [String], negativePrompt: String = "", steps: Int, guidance: Float,
                         seed: UInt64, height: Int? = nil, width: Int? = nil, firstImageIndex: Int = 0,
                         initialNoise: Tensor? = nil,
                         progress: ((_ step: Int, _ total: Int) -> Void)? = nil) throws -> Tensor {
        let latents = try sampleLatents(prompts: prompts, negativePrompt: negativePrompt, steps: steps, guidance: guidance,
                                        seed: seed, height: height, width: width, firstImageIndex: firstImageIndex,
                                        initialNoise: initialNoise, progress: progress)
        return noGrad { decode(latents) }
    }
}

/// Why a pipeline could not be built or run. Cases about files name the file.
public enum PipelineError: Error, CustomStringConvertible, Equatable {
    /// A file or folder the pipeline needs is not there.
    case missingFile(URL, what: String)
    /// A file is there but cannot be used.
    case invalidFile(URL, reason: String)
    /// `model_index.json` names a component class this package cannot build.
    case unsupportedComponent(file: URL, component: String, className: String, hint: String)
    /// `model_index.json` names a text encoder that cannot be built from the folder, and none was passed in.
    case textEncoderRequired(file: URL, className: String)
    /// Components that do not fit together.
    case incompatible(String)
    /// A bad argument to a pipeline call.
    case invalidArgument(String)
    /// The sample held NaN or infinite values after step `step` of `count` (counted from 1).
    case nonFiniteSample(step: Int, of: Int, timestep: Float)

    public var description: String {
        switch self {
        case let .missingFile(url, what): return "\(url.path): not found (\(what))"
        case let .invalidFile(url, reason): return "\(url.path): \(reason)"
        case let .unsupportedComponent(url, component, className, hint):
            return "\(url.path): \(component) is \(className), which is not supported\(hint.isEmpty ? "" : "; \(hint)")"
        case let .textEncoderRequired(url, className):
            return "\(url.path): the text encoder (\(className)) cannot be built from this folder; pass one in (textEncoder:)"
        case let .incompatible(reason): return "the pipeline's components do not fit together: \(reason)"
        case let .invalidArgument(reason): return reason
        case let .nonFiniteSample(step, count, timestep):
            return "non-finite activations detected in sampling at step \(step)/\(count) (timestep \(timestep)): the model's weights or config give NaN or infinite values"
        }
    }
}

extension PipelineError: LocalizedError {
    public var errorDescription: String? { description }
}
