import Diffusion
import Foundation
import NN
import Tensor

/// The flow family behind the erasure interface. Samples are packed tokens [B, N, 4C] of a
/// `defaultSize` square image; the model is given σ = t/1000 as the FLUX pipeline gives it, and
/// the losses are MSEs on velocities (see `ErasableModel` for why not on ε̂ = x_σ + (1 − σ)·v̂).
extension FluxPipeline: ErasableModel {
    public static var family: DenoiserFamily { .flux }
    public static var denoiserComponent: String { "transformer" }
    public static var predictionName: String { "velocity" }

    public var denoiser: FluxTransformer2DModel { transformer }

    public func frozenDenoiser() throws -> FluxTransformer2DModel {
        let frozen = try transformer.copy()
        frozen.freeze()
        frozen.eval()
        return frozen
    }

    public var textEncoderModule: Module? { (textEncoder as? PooledSentenceEncoder)?.encoder.model }

    public func encodeConditioning(_ prompts: [String]) -> PromptConditioning {
        let encoded = encodePrompts(prompts)
        return PromptConditioning(states: encoded.states, pooled: encoded.pooled)
    }

    /// `.token`: UCE's token (the last before the end token) of the padded states, located with
    /// the encoder's token mask (`FluxTokenMasking`); `.pooled`: the pooled vector.
    public func textEmbeddings(_ texts: [String], input: TextInput) throws -> [String: [Double]] {
        var unique: [String] = []
        for text in texts where !unique.contains(text) { unique.append(text) }
        let encoded = noGrad { encodePrompts(unique) }
        switch input {
        case .pooled:
            let width = encoded.pooled.shape[1]
            var result: [String: [Double]] = [:]
            for (i, text) in unique.enumerated() {
                result[text] = (0..<width).map { Double(encoded.pooled.pointer[i * width + $0]) }
            }
            return result
        case .token:
            guard let masking = textEncoder as? FluxTokenMasking else {
                throw ErasureError.invalidRequest("UCE on FLUX needs to know which text positions are tokens; \(type(of: textEncoder)) does not say (it is not FluxTokenMasking)")
            }
            return lastTokenStates(states: encoded.states, mask: masking.tokenMask(prompts: unique), texts: unique)
        }
    }

    /// `context_embedder` (reads each token state, before any timestep modulation) and the pooled
    /// vector's first projection `time_text_embed.text_embedder.linear_1`. Not the double blocks'
    /// `add_k_proj`/`add_v_proj`: their input is the context stream after AdaLN, whose scale and
    /// shift depend on the timestep and the pooled text, and, past the first block, on the image;
    /// a closed form there would hold at one conditioning only.
    public func textReadingWeights() -> [(name: String, tensor: Tensor, input: TextInput)] {
        [("context_embedder.weight", transformer.context_embedder.weight, .token),
         ("time_text_embed.text_embedder.linear_1.weight", transformer.time_text_embed.text_embedder.linear_1.weight, .pooled)]
    }

    public var imageChannels: Int { latentChannels }

    /// The latent side of a default-size image.
    var latentSide: Int { defaultSize / vaeScaleFactor }

    public func schedule(steps: Int) throws -> SamplingSchedule {
        try schedule(steps: steps, height: latentSide, width: latentSide)
    }

    public func initialSample(schedule: SamplingSchedule, generators: inout [RandomGenerator]) throws -> Tensor {
        let shape = try latentShape(batch: 1, height: defaultSize, width: defaultSize)
        return FluxTransformer2DModel.packLatents(initialNoise(shape: shape, schedule: schedule, generators: &generators))
    }

    public func modelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor {
        scheduler.scaleModelInput(sample, index: index, of: schedule)
    }

    public func trainingTimestep(_ samplingTimestep: Float) -> Float { samplingTimestep }

    public func denoise(_ sample: Tensor, conditional: PromptConditioning, unconditional: PromptConditioning?, guidance: Float,
                        schedule: SamplingSchedule, steps: Range<Int>?, generators: inout [RandomGenerator],
                        model: FluxTransformer2DModel?, observe: ((DenoisingStep) -> DenoisingControl)?) throws -> Tensor {
        try denoise(sample, height: latentSide, width: latentSide, conditional: Self.conditioning(conditional),
                    unconditional: unconditional.map(Self.conditioning), guidance: guidance, schedule: schedule, steps: steps,
                    model: model, observe: observe)
    }

    static func conditioning(_ c: PromptConditioning) -> Conditioning {
        Conditioning(states: c.states, pooled: c.pooled!)
    }

    public func predict(_ x: Tensor, timestep: Float, conditioning: PromptConditioning, model: FluxTransformer2DModel?) -> Tensor {
        velocity(tokens: x, height: latentSide, width: latentSide, timestep: timestep,
                 conditioning: Self.conditioning(conditioning), model: model)
    }

    public func predict(_ x: Tensor, timesteps: [Float], conditioning: PromptConditioning, model: FluxTransformer2DModel?) -> Tensor {
        precondition(timesteps.count == x.shape[0], "predict: \(timesteps.count) timesteps for \(x.shape[0]) items")
        let model = model ?? transformer
        let c = conditioning
        return model(x, encoderHiddenStates: c.states, pooledProjections: c.pooled!, timestep: timesteps.map { $0 / 1000 },
                     imageIds: FluxTransformer2DModel.latentImageIds(height: latentSide / 2, width: latentSide / 2),
                     textIds: FluxTransformer2DModel.textIds(tokens: c.states.shape[1]),
                     guidance: model.config.guidanceEmbeds ? [Self.defaultEmbeddedGuidance] : nil)
    }

    /// x̂₀ = x_σ − σ·v̂ with σ = t/1000, the value the transformer is given.
    public func cleanEstimate(_ x: Tensor, prediction: Tensor, timesteps: [Float]) -> Tensor {
        scheduler.predictedOriginal(velocity: prediction, sample: x, sigmas: timesteps.map { $0 / 1000 })
    }

    public func noised(_ clean: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        scheduler.scaleNoise(sample: clean, noise: noise, sigmas: timesteps.map { $0 / 1000 })
    }

    public func imageLayout(_ x: Tensor) -> Tensor {
        FluxTransformer2DModel.unpackLatents(x, height: latentSide, width: latentSide)
    }

    public func images(fromSamples samples: Tensor) -> Tensor { decode(imageLayout(samples)) }

    public var trainingTimestepCount: Int { scheduler.config.numTrainTimesteps }
}

/// A FLUX text encoder that says which of its padded positions hold tokens: FLUX attends to every
/// position without a mask, but UCE's token rule (the last token before the end token) needs it.
public protocol FluxTokenMasking {
    /// [B, T]: 1 at tokens (start and end tokens included), 0 at padding; T as the states'.
    func tokenMask(prompts: [String]) -> Tensor
}

extension PooledSentenceEncoder: FluxTokenMasking {
    public func tokenMask(prompts: [String]) -> Tensor {
        encoder.tokenizer(prompts, padding: .maxLength, maxLength: tokens).attentionMaskTensor
    }
}
