import Foundation
import NN
import Tensor

// The Stable Diffusion VAE, diffusers' `AutoencoderKL`: an encoder to a diagonal Gaussian over
// latents and a decoder back to images. Parameter names equal diffusers' state-dict keys; old
// checkpoints with `query/key/value/proj_attn` attention names load through the key rewrite in
// `loadModule` (see Checkpoint.swift).

// MARK: - Config

/// diffusers' `AutoencoderKL` config (`vae/config.json`). Each property carries diffusers'
/// default (a one-block model; SD's VAE config sets four blocks); `fields` gives its key and the
/// values it accepts.
public struct AutoencoderKLConfig: ModelConfig, Equatable, Sendable {
    public var inChannels = 3
    public var outChannels = 3
    public var downBlockTypes = ["DownEncoderBlock2D"]
    public var upBlockTypes = ["UpDecoderBlock2D"]
    public var blockOutChannels = [64]
    public var layersPerBlock = 1
    public var actFn = "silu"
    public var latentChannels = 4
    public var normNumGroups = 32
    public var sampleSize: OneOrMany<Int> = .one(32)
    /// Latents are multiplied by this after encoding (and divided before decoding) in pipelines.
    public var scalingFactor: Float = 0.18215
    public var shiftFactor: Float? = nil
    public var latentsMean: [Float]? = nil
    public var latentsStd: [Float]? = nil
    public var forceUpcast = true
    public var useQuantConv = true
    public var usePostQuantConv = true
    public var midBlockAddAttention = true

    public static let fields: [ConfigField<Self>] = [
        .init("in_channels", \.inChannels, .size),
        .init("out_channels", \.outChannels, .size),
        .init("down_block_types", \.downBlockTypes),
        .init("up_block_types", \.upBlockTypes),
        .init("block_out_channels", \.blockOutChannels, .size),
        .init("layers_per_block", \.layersPerBlock, .count),
        .init("act_fn", \.actFn),
        .init("latent_channels", \.latentChannels, .size),
        .init("norm_num_groups", \.normNumGroups, .count),
        .init("sample_size", \.sampleSize, .size),
        .init("scaling_factor", \.scalingFactor, .positive),
        .init("shift_factor", \.shiftFactor, .finite),
        .init("latents_mean", \.latentsMean, .finite),
        .init("latents_std", \.latentsStd, .positive),
        .init("force_upcast", \.forceUpcast),
        .init("use_quant_conv", \.useQuantConv),
        .init("use_post_quant_conv", \.usePostQuantConv),
        .init("mid_block_add_attention", \.midBlockAddAttention),
    ]

    public init() {}

    public init(from decoder: Decoder) throws { try self.init(fieldsFrom: decoder) }

    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    /// Reads and validates `config.json` (of a diffusers `vae/` folder); errors name the file.
    public init(contentsOf url: URL) throws {
        self = try readConfig(AutoencoderKLConfig.self, from: url) { try $0.validate(); try $0.checkMemory() }
    }

    /// Spatial down-scaling from image to latent (8 for SD).
    public var downscaleFactor: Int { 1 << (blockOutChannels.count - 1) }

    /// Throws for configs this implementation cannot build, naming the field.
    public func validate() throws {
        try checkFieldRanges()
        let n = blockOutChannels.count
        guard n > 0 else { throw DiffusionConfigError.invalid(field: "block_out_channels", reason: "is empty") }
        // Each block halves the image; more than 10 would need images over 2¹⁰ wide.
        guard n <= 10 else { throw DiffusionConfigError.invalid(field: "block_out_channels", reason: "has \(n) blocks; at most 10 are supported") }
        guard downBlockTypes.count == n else {
            throw DiffusionConfigError.invalid(field: "down_block_types", reason: "has \(downBlockTypes.count) entries for \(n) blocks")
        }
        guard upBlockTypes.count == n else {
            throw DiffusionConfigError.invalid(field: "up_block_types", reason: "has \(upBlockTypes.count) entries for \(n) blocks")
        }
        for type in downBlockTypes where type != "DownEncoderBlock2D" {
            throw DiffusionConfigError.unsupported(field: "down_block_types", value: type)
        }
        for type in upBlockTypes where type != "UpDecoderBlock2D" {
            throw DiffusionConfigError.unsupported(field: "up_block_types", value: type)
        }
        for (i, channels) in blockOutChannels.enumerated() where channels % normNumGroups != 0 {
            throw DiffusionConfigError.invalid(field: "block_out_channels",
                                               reason: "[\(i)] = \(channels) is not divisible by norm_num_groups \(normNumGroups)")
        }
        if !["silu", "swish"].contains(actFn) { throw DiffusionConfigError.unsupported(field: "act_fn", value: actFn) }
    }

    /// Throws when the model's Float32 weights would not fit in the memory available now. Kept
    /// apart from `validate()`, whose answer must not depend on the machine; the model's
    /// initializer and `init(contentsOf:)` call both.
    public func checkMemory() throws {
        try checkFitsInMemory(parameters: parameterCount, model: "VAE")
    }

    /// The number of parameters the model of this (valid) config has, computed without building
    /// it, as a Double so that no config can overflow it.
    public var parameterCount: Double {
        let c = blockOutChannels.map(Double.init)
        let top = c[c.count - 1], latent = Double(latentChannels)
        func conv(_ i: Double, _ o: Double, _ k: Double = 3) -> Double { i * o * k * k + o }
        func resnet(_ i: Double, _ o: Double) -> Double { 2 * i + conv(i, o) + 2 * o + conv(o, o) + (i != o ? conv(i, o, 1) : 0) }
        let attention = midBlockAddAttention ? 2 * top + 4 * (top * top + top) : 0
        let mid = 2 * resnet(top, top) + attention
        var encoder = conv(Double(inChannels), c[0]) + mid + 2 * top + conv(top, 2 * latent)
        var decoder = conv(latent, top) + mid + 2 * c[0] + conv(c[0], Double(outChannels))
        for i in c.indices {
            let input = i == 0 ? c[0] : c[i - 1]
            encoder += resnet(input, c[i]) + Double(layersPerBlock - 1) * resnet(c[i], c[i])
            let up = c.count - 1 - i
            let previous = i == 0 ? top : c[up + 1]
            decoder += resnet(previous, c[up]) + Double(layersPerBlock) * resnet(c[up], c[up])
            if i < c.count - 1 { encoder += conv(c[i], c[i]); decoder += conv(c[up], c[up]) }
        }
        let quant = (useQuantConv ? conv(2 * latent, 2 * latent, 1) : 0) + (usePostQuantConv ? conv(latent, latent, 1) : 0)
        return encoder + decoder + quant
    }
}

// MARK: - Blocks

/// diffusers' `UNetMidBlock2D` as the VAE uses it: resnet, (attention, resnet), no time embedding.
/// The attention is the single-head, group-normed, residual `Attention` over H·W tokens.
public final class UNetMidBlock2D: Module {
    public let attentions: [Attention]
    public let resnets: [ResnetBlock2D]

    public init(channels: Int, groups: Int, eps: Float = 1e-6, addAttention: Bool = true, attentionHeadDim: Int? = nil,
                generator: inout RandomGenerator) {
        var resnets = [ResnetBlock2D(inChannels: channels, tembChannels: nil, groups: groups, eps: eps, generator: &generator)]
        let headDim = attentionHeadDim ?? channels
        attentions = addAttention
            ? [Attention(queryDim: channels, heads: channels / headDim, dimHead: headDim, bias: true,
                         normNumGroups: groups, eps: eps, residualConnection: true, generator: &generator)]
            : []
        resnets.append(ResnetBlock2D(inChannels: channels, tembChannels: nil, groups: groups, eps: eps, generator: &generator))
        self.resnets = resnets
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = resnets[0](x)
        if let attention = attentions.first { h = attention(h) }
        return resnets[1](h)
    }
}

/// diffusers' `DownEncoderBlock2D`: resnets without time embedding, then a downsampler that
/// pads bottom/right (padding 0).
public final class DownEncoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let downsamplers: [Downsample2D]?

    public init(inChannels: Int, outChannels: Int, layers: Int, groups: Int, eps: Float = 1e-6, addDownsample: Bool,
                generator: inout RandomGenerator) {
        var resnets: [ResnetBlock2D] = []
        for i in 0..<layers {
            resnets.append(ResnetBlock2D(inChannels: i == 0 ? inChannels : outChannels, outChannels: outChannels,
                                         tembChannels: nil, groups: groups, eps: eps, generator: &generator))
        }
        self.resnets = resnets
        downsamplers = addDownsample ? [Downsample2D(channels: outChannels, padding: 0, generator: &generator)] : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for resnet in resnets { h = resnet(h) }
        if let down = downsamplers?.first { h = down(h) }
        return h
    }
}

/// diffusers' `UpDecoderBlock2D`: resnets without time embedding, then an optional upsampler.
public final class UpDecoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    public let upsamplers: [Upsample2D]?

    public init(inChannels: Int, outChannels: Int, layers: Int, groups: Int, eps: Float = 1e-6, addUpsample: Bool,
                generator: inout RandomGenerator) {
        var resnets: [ResnetBlock2D] = []
        for i in 0..<layers {
            resnets.append(ResnetBlock2D(inChannels: i == 0 ? inChannels : outChannels, outChannels: outChannels,
                                         tembChannels: nil, groups: groups, eps: eps, generator: &generator))
        }
        self.resnets = resnets
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels, generator: &generator)] : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for resnet in resnets { h = resnet(h) }
        if let up = upsamplers?.first { h = up(h) }
        return h
    }
}

/// diffusers' VAE `Encoder` (double_z): image [B, 3, H, W] → moments [B, 2·latent, H/f, W/f].
public final class VAEEncoder: Module {
    public let conv_in: Conv2d
    public let down_blocks: [DownEncoderBlock2D]
    public let mid_block: UNetMidBlock2D
    public let conv_norm_out: GroupNorm
    public let conv_out: Conv2d

    public init(config c: AutoencoderKLConfig, generator: inout RandomGenerator) {
        let channels = c.blockOutChannels, groups = c.normNumGroups
        conv_in = Conv2d(c.inChannels, channels[0], kernelSize: 3, padding: 1, generator: &generator)
        var blocks: [DownEncoderBlock2D] = []
        var output = channels[0]
        for i in channels.indices {
            let input = output
            output = channels[i]
            blocks.append(DownEncoderBlock2D(inChannels: input, outChannels: output, layers: c.layersPerBlock, groups: groups,
                                             addDownsample: i != channels.count - 1, generator: &generator))
        }
        down_blocks = blocks
        mid_block = UNetMidBlock2D(channels: channels[channels.count - 1], groups: groups,
                                   addAttention: c.midBlockAddAttention, generator: &generator)
        conv_norm_out = GroupNorm(groups: groups, channels: channels[channels.count - 1], eps: 1e-6)
        conv_out = Conv2d(channels[channels.count - 1], 2 * c.latentChannels, kernelSize: 3, padding: 1, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = conv_in(x)
        for block in down_blocks { h = block(h) }
        h = mid_block(h)
        return conv_out(conv_norm_out(h).silu())
    }
}

/// diffusers' VAE `Decoder`: latents [B, latent, h, w] → image [B, 3, h·f, w·f].
public final class VAEDecoder: Module {
    public let conv_in: Conv2d
    public let up_blocks: [UpDecoderBlock2D]
    public let mid_block: UNetMidBlock2D
    public let conv_norm_out: GroupNorm
    public let conv_out: Conv2d

    public init(config c: AutoencoderKLConfig, generator: inout RandomGenerator) {
        let channels = c.blockOutChannels, groups = c.normNumGroups
        let top = channels[channels.count - 1]
        conv_in = Conv2d(c.latentChannels, top, kernelSize: 3, padding: 1, generator: &generator)
        mid_block = UNetMidBlock2D(channels: top, groups: groups, addAttention: c.midBlockAddAttention, generator: &generator)
        var blocks: [UpDecoderBlock2D] = []
        var output = top
        for (i, channelCount) in channels.reversed().enumerated() {
            let prevOutput = output
            output = channelCount
            blocks.append(UpDecoderBlock2D(inChannels: prevOutput, outChannels: output, layers: c.layersPerBlock + 1,
                                           groups: groups, addUpsample: i != channels.count - 1, generator: &generator))
        }
        up_blocks = blocks
        conv_norm_out = GroupNorm(groups: groups, channels: channels[0], eps: 1e-6)
        conv_out = Conv2d(channels[0], c.outChannels, kernelSize: 3, padding: 1, generator: &generator)
    }

    public func callAsFunction(_ z: Tensor) -> Tensor {
        var h = conv_in(z)
        h = mid_block(h)
        for block in up_blocks { h = block(h) }
        return conv_out(conv_norm_out(h).silu())
    }
}

// MARK: - Model

/// The encoder's output distribution over latents: a Gaussian with diagonal covariance
/// (diffusers' `DiagonalGaussianDistribution`). `logvar` is clamped to [−30, 20] as in diffusers.
public struct DiagonalGaussianDistribution {
    public let mean: Tensor
    public let logvar: Tensor

    /// Splits `moments` [B, 2·C, h, w] into mean and (clamped) log-variance along channels.
    public init(moments: Tensor) {
        let parts = moments.chunked(2, axis: 1)
        mean = parts[0]
        logvar = parts[1].clamped(-30, 20)
    }

    public var std: Tensor { (logvar * 0.5).exp() }
    public var variance: Tensor { logvar.exp() }
    /// The most likely latent: the mean.
    public var mode: Tensor { mean }

    /// mean + std · ε with ε ~ N(0, I) drawn from `generator`.
    public func sample(generator: inout RandomGenerator) -> Tensor {
        mean + std * generator.normal(mean.shape)
    }

    /// KL divergence to N(0, I) per batch item, [B]: ½ Σ (μ² + σ² − 1 − log σ²).
    public func klToStandardNormal() -> Tensor {
        ((mean.square() + variance - 1 - logvar) * 0.5).sum(axes: Array(1..<mean.rank))
    }
}

/// diffusers' `AutoencoderKL` (the Stable Diffusion VAE).
public final class AutoencoderKL: Module {
    public let config: AutoencoderKLConfig
    public let encoder: VAEEncoder
    public let decoder: VAEDecoder
    public let quant_conv: Conv2d?
    public let post_quant_conv: Conv2d?

    /// A randomly initialised model of the given architecture.
    public init(config: AutoencoderKLConfig, generator: inout RandomGenerator) throws {
        try config.validate()
        try config.checkMemory()
        self.config = config
        encoder = VAEEncoder(config: config, generator: &generator)
        decoder = VAEDecoder(config: config, generator: &generator)
        let latent = config.latentChannels
        quant_conv = config.useQuantConv ? Conv2d(2 * latent, 2 * latent, kernelSize: 1, generator: &generator) : nil
        post_quant_conv = config.usePostQuantConv ? Conv2d(latent, latent, kernelSize: 1, generator: &generator) : nil
    }

    /// Builds the model from a diffusers `vae/` folder: `config.json` and
    /// `diffusion_pytorch_model.safetensors` or that of `variant` (see `WeightsVariant`; legacy
    /// attention key names are accepted).
    public convenience init(directory: URL, variant: String? = nil) throws {
        let config = try AutoencoderKLConfig(contentsOf: directory.appendingPathComponent("config.json"))
        var generator = RandomGenerator(seed: 0)
        try self.init(config: config, generator: &generator)
        try loadModule(self, from: try diffusersWeightsFile(in: directory, variant: variant))
    }

    /// Latents are multiplied by this after encoding and divided by it before decoding (0.18215 for SD 1.x/2.x).
    public var scalingFactor: Float { config.scalingFactor }

    /// Encodes images [B, inChannels, H, W] (values in [−1, 1]; H, W multiples of the downscale
    /// factor) into the latent distribution. Latents for the UNet are `sample(…) · scalingFactor`.
    public func encode(_ image: Tensor) -> DiagonalGaussianDistribution {
        let factor = config.downscaleFactor
        precondition(image.rank == 4 && image.shape[1] == config.inChannels && image.shape[2] % factor == 0
                     && image.shape[3] % factor == 0,
                     "AutoencoderKL.encode: image must be [B, \(config.inChannels), H, W] with H, W multiples of \(factor), got \(image.shape)")
        var moments = encoder(image)
        if let quant_conv { moments = quant_conv(moments) }
        return DiagonalGaussianDistribution(moments: moments)
    }

    /// Decodes latents [B, latentChannels, h, w] (already divided by `scalingFactor`) into images.
    public func decode(_ latents: Tensor) -> Tensor {
        precondition(latents.rank == 4 && latents.shape[1] == config.latentChannels,
                     "AutoencoderKL.decode: latents must be [B, \(config.latentChannels), h, w], got \(latents.shape)")
        var z = latents
        if let post_quant_conv { z = post_quant_conv(z) }
        return decoder(z)
    }
}
