import Foundation

// What a run will need in memory, computed from configs and sizes before anything is allocated,
// so that a run that cannot fit is refused at once with the flag to lower, not killed by the
// OOM killer an hour in.
//
// Activations are counted as Float32 feature maps per module, from what each layer keeps:
// - sampling (no autograd): the skip connections the UNet carries to its up path, plus the
//   transient maps of the widest module at a time (freed as soon as the next one starts);
// - training: every map the backward pass reads (a resnet keeps ~3 maps of its input width and
//   ~6 of its output's; a transformer block ~30 of its width, attention being chunked and
//   recomputed, so no score matrix is kept), plus the gradients in flight;
// - training with gradient checkpointing: each block's input, plus the largest block's maps
//   during its recomputation.
// The counts are an estimate to refuse hopeless runs, not an allocator: the engine's own
// temporaries (im2col buffers, cached allocations) come on top. For SD 1.5 at 64² latents,
// batch 1, they give 0.11 GB sampling, 2.3 GB training and 0.37 GB with checkpointing.

/// How a model is run.
public enum ActivationMode: Sendable, Equatable {
    case sampling
    case training(gradientCheckpointing: Bool)
}

/// Bytes a run needs, by kind.
public struct MemoryEstimate: Sendable, Equatable, CustomStringConvertible {
    /// The model's Float32 weights.
    public var weights: Double
    /// Gradients and optimizer state (AdamW: two moments), and any extra copies (EMA, a frozen
    /// reference model).
    public var trainingState: Double = 0
    /// Activations and working buffers.
    public var activations: Double
    public var total: Double { weights + trainingState + activations }

    public init(weights: Double, trainingState: Double = 0, activations: Double) {
        self.weights = weights
        self.trainingState = trainingState
        self.activations = activations
    }

    public var description: String {
        var parts = ["weights \(gb(weights))"]
        if trainingState > 0 { parts.append("gradients and optimizer \(gb(trainingState))") }
        parts.append("activations \(gb(activations))")
        return "about \(gb(total)) (\(parts.joined(separator: ", ")))"
    }

    /// Throws `MemoryError` naming `what` and the flags to lower when the total exceeds
    /// `available` (default: what the machine can give now).
    public func check(_ what: String, advice: String, available: Double = availableMemoryBytes()) throws {
        guard total.isFinite, total <= available else {
            throw MemoryError(what: what, estimate: self, available: available, advice: advice)
        }
    }
}

/// A run that would not fit in memory.
public struct MemoryError: Error, CustomStringConvertible, LocalizedError, Equatable {
    public var what: String
    public var estimate: MemoryEstimate
    public var available: Double
    /// The flags to change, e.g. "lower --batch or add --gradient-checkpointing".
    public var advice: String

    public var description: String {
        "\(what) would need \(estimate), and \(gb(available)) is available: \(advice)"
    }
    public var errorDescription: String? { description }
}

private func gb(_ bytes: Double) -> String {
    bytes >= 1e15 || !bytes.isFinite ? String(format: "%.2g GB", bytes / 1e9) : String(format: "%.1f GB", bytes / 1e9)
}

extension UNet2DConditionConfig {
    /// Bytes of activations for `batch` samples of `height` × `width` latent pixels with
    /// `contextTokens` text states (see the file's notes). Pass the doubled batch for classifier-free
    /// guidance, which runs the conditional and unconditional halves together.
    public func activationBytes(batch: Int, height: Int, width: Int, contextTokens: Int, mode: ActivationMode) -> Double {
        let levels = blockCount
        let cross = Double(crossAttentionDim[0]), tokens = Double(contextTokens)
        // Floats each module keeps for backward (training) and needs at once (sampling).
        struct Module { var kept: Double; var transient: Double; var input: Double }
        func resnet(_ input: Double, _ output: Double, _ pixels: Double) -> Module {
            Module(kept: (3 * input + 6 * output) * pixels, transient: (2 * input + 3 * output) * pixels, input: input * pixels)
        }
        func transformer(_ channels: Double, _ pixels: Double, layers: Int) -> Module {
            let perLayer = 30 * channels * pixels + 2 * channels * tokens
            return Module(kept: Double(layers) * perLayer + 6 * channels * pixels,
                          transient: 14 * channels * pixels + 2 * channels * tokens + cross * tokens,
                          input: channels * pixels)
        }
        var modules: [Module] = []
        var skips = 0.0, widest = 0.0
        var pixels = [Double]()
        var h = Double(height), w = Double(width)
        for _ in 0..<levels {
            pixels.append(h * w)
            h = (h / 2).rounded(.up)
            w = (w / 2).rounded(.up)
        }
        let channels = blockOutChannels.map(Double.init)
        skips += channels[0] * pixels[0]
        var previous = channels[0]
        for i in 0..<levels {
            let c = channels[i], p = pixels[i]
            widest = max(widest, c * p)
            for layer in 0..<layersPerBlock[i] {
                modules.append(resnet(layer == 0 ? previous : c, c, p))
                if downBlockTypes[i].hasPrefix("CrossAttn") { modules.append(transformer(c, p, layers: transformerLayers(block: i, layer: layer))) }
                skips += c * p
            }
            if i < levels - 1 {
                let q = pixels[i + 1]
                modules.append(Module(kept: c * p, transient: c * (p + q), input: c * p))
                skips += c * q
            }
            previous = c
        }
        let top = channels[levels - 1], bottom = pixels[levels - 1]
        if midBlockType != nil {
            modules.append(resnet(top, top, bottom))
            modules.append(transformer(top, bottom, layers: transformerLayers(block: levels - 1, layer: 0)))
            modules.append(resnet(top, top, bottom))
        }
        for j in 0..<levels {
            let i = levels - 1 - j, c = channels[i], p = pixels[i]
            for _ in 0...layersPerBlock[i] {
                modules.append(resnet(2 * c, c, p))
                if upBlockTypes[j].hasPrefix("CrossAttn") { modules.append(transformer(c, p, layers: transformerLayers(block: i, layer: 0))) }
            }
            if i > 0 { modules.append(Module(kept: 4 * c * pixels[i - 1], transient: 5 * c * pixels[i - 1], input: c * p)) }
        }
        let floats: Double
        switch mode {
        case .sampling:
            floats = skips + (modules.map(\.transient).max() ?? 0) + 2 * widest
        case .training(gradientCheckpointing: false):
            floats = modules.map(\.kept).reduce(0, +) + skips + 4 * widest
        case .training(gradientCheckpointing: true):
            floats = modules.map(\.input).reduce(0, +) + (modules.map(\.kept).max() ?? 0) + skips + 4 * widest
        }
        return 4 * Double(batch) * floats
    }

    /// The estimate for sampling `batch` latents (the doubled batch under guidance) or for a
    /// training step with AdamW (gradients and two moments), `extraCopies` more copies of the
    /// weights (an EMA model, a frozen reference).
    public func memoryEstimate(batch: Int, height: Int, width: Int, contextTokens: Int, mode: ActivationMode,
                               extraCopies: Int = 0) -> MemoryEstimate {
        let weights = 4 * parameterCount
        let state = mode == .sampling ? Double(extraCopies) * weights : Double(3 + extraCopies) * weights
        return MemoryEstimate(weights: weights, trainingState: state,
                              activations: activationBytes(batch: batch, height: height, width: width, contextTokens: contextTokens, mode: mode))
    }
}

extension AutoencoderKLConfig {
    /// Bytes of activations to decode `batch` images of `height` × `width` pixels (sampling): the
    /// decoder's widest level holds about 4 maps of its width at full size at once.
    public func decodeActivationBytes(batch: Int, height: Int, width: Int) -> Double {
        4 * Double(batch) * 4 * Double(blockOutChannels.first ?? 1) * Double(height) * Double(width)
    }
}

extension FluxTransformer2DConfig {
    /// Bytes of activations for `batch` samples of `imageTokens` latent tokens (the packed 2×2
    /// patches: (H/16)·(W/16) for FLUX.1 images of H × W) and `textTokens` T5 states. A double
    /// block keeps ~20 maps of the inner width per token of both streams, a single block ~16
    /// (attention is chunked and recomputed); sampling holds ~12 at a time.
    public func activationBytes(batch: Int, imageTokens: Int, textTokens: Int, mode: ActivationMode) -> Double {
        let d = Double(innerDim), n = Double(imageTokens + textTokens)
        let double = 20 * d * n, single = 16 * d * n
        let input = d * n
        let floats: Double
        switch mode {
        case .sampling:
            floats = 12 * d * n + Double(inChannels + outputChannels) * Double(imageTokens) + Double(jointAttentionDim) * Double(textTokens)
        case .training(gradientCheckpointing: false):
            floats = Double(numLayers) * double + Double(numSingleLayers) * single + 4 * input
        case .training(gradientCheckpointing: true):
            floats = Double(numLayers + numSingleLayers) * input + max(double, single) + 4 * input
        }
        return 4 * Double(batch) * floats
    }

    /// Parameters of the model, counted from the config (the linear layers; norms and biases
    /// add well under 0.1%): 12.0 B for FLUX.1-dev.
    public var approximateParameterCount: Double {
        let d = Double(innerDim), patch = Double(patchSize * patchSize)
        // Per stream of a double block: adaLN (6d), q/k/v, out, a 4× MLP; a single block: adaLN
        // (3d), q/k/v with the MLP input (3d + 4d), the output from both (5d → d).
        let doubleBlock = 2 * (6 + 3 + 1 + 8) * d * d, singleBlock = (3 + 7 + 5) * d * d
        let embedders = Double(inChannels) * patch * d + Double(jointAttentionDim) * d + (256 * d + d * d) * (guidanceEmbeds ? 2 : 1)
            + Double(pooledProjectionDim) * d + d * d
        let output = 2 * d * d + d * Double(outputChannels) * patch
        return Double(numLayers) * doubleBlock + Double(numSingleLayers) * singleBlock + embedders + output
    }

    public func memoryEstimate(batch: Int, imageTokens: Int, textTokens: Int, mode: ActivationMode) -> MemoryEstimate {
        let weights = 4 * approximateParameterCount
        return MemoryEstimate(weights: weights, trainingState: mode == .sampling ? 0 : 3 * weights,
                              activations: activationBytes(batch: batch, imageTokens: imageTokens, textTokens: textTokens, mode: mode))
    }
}
