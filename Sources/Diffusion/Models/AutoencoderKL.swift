import Foundation
import NN
import Tensor

// The Stable Diffusion VAE, diffusers' `AutoencoderKL`: an encoder to a diagonal Gaussian over
// latents and a decoder back to images. Parameter names equal diffusers' state-dict keys; old
// checkpoints with `query/key/value/proj_attn` attention names load through the key rewrite in
// `loadModule` (see Checkpoint.swift).

// MARK: - Config

/// diffusers' `AutoencoderKL` config (`vae/config.json`), with diffusers' defaults.
public struct AutoencoderKLConfig: Codable, Equatable, Sendable {
    public var inChannels: Int
    public var outChannels: Int
    public var downBlockTypes: [String]
    public var upBlockTypes: [String]
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var actFn: String
    public var latentChannels: Int
    public var normNumGroups: Int
    public var sampleSize: OneOrMany<Int>
    /// Latents are multiplied by this after encoding (and divided before decoding) in pipelines.
    public var scalingFactor: Float
    public var shiftFactor: Float?
    public var latentsMean: [Float]?
    public var latentsStd: [Float]?
    public var forceUpcast: Bool
    public var useQuantConv: Bool
    public var usePostQuantConv: Bool
    public var midBlockAddAttention: Bool

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outChannels = "out_channels", downBlockTypes = "down_block_types"
        case upBlockTypes = "up_block_types", blockOutChannels = "block_out_channels", layersPerBlock = "layers_per_block"
        case actFn = "act_fn", latentChannels = "latent_channels", normNumGroups = "norm_num_groups"
        case sampleSize = "sample_size", scalingFactor = "scaling_factor", shiftFactor = "shift_factor"
        case latentsMean = "latents_mean", latentsStd = "latents_std", forceUpcast = "force_upcast"
        case useQuantConv = "use_quant_conv", usePostQuantConv = "use_post_quant_conv"
        case midBlockAddAttention = "mid_block_add_attention"
    }

    /// diffusers' defaults (a one-block model; SD's VAE config sets four blocks).
    public init() {
        inChannels = 3
        outChannels = 3
        downBlockTypes = ["DownEncoderBlock2D"]
        upBlockTypes = ["UpDecoderBlock2D"]
        blockOutChannels = [64]
        layersPerBlock = 1
        actFn = "silu"
        latentChannels = 4
        normNumGroups = 32
        sampleSize = .one(32)
        scalingFactor = 0.18215
        shiftFactor = nil
        latentsMean = nil
        latentsStd = nil
        forceUpcast = true
        useQuantConv = true
        usePostQuantConv = true
        midBlockAddAttention = true
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = AutoencoderKLConfig()
        inChannels = try c.value(.inChannels, or: d.inChannels)
        outChannels = try c.value(.outChannels, or: d.outChannels)
        downBlockTypes = try c.value(.downBlockTypes, or: d.downBlockTypes)
        upBlockTypes = try c.value(.upBlockTypes, or: d.upBlockTypes)
        blockOutChannels = try c.value(.blockOutChannels, or: d.blockOutChannels)
        layersPerBlock = try c.value(.layersPerBlock, or: d.layersPerBlock)
        actFn = try c.value(.actFn, or: d.actFn)
        latentChannels = try c.value(.latentChannels, or: d.latentChannels)
        normNumGroups = try c.value(.normNumGroups, or: d.normNumGroups)
        sampleSize = try c.value(.sampleSize, or: d.sampleSize)
        scalingFactor = try c.value(.scalingFactor, or: d.scalingFactor)
        shiftFactor = try c.decodeIfPresent(Float.self, forKey: .shiftFactor)
        latentsMean = try c.decodeIfPresent([Float].self, forKey: .latentsMean)
        latentsStd = try c.decodeIfPresent([Float].self, forKey: .latentsStd)
        forceUpcast = try c.value(.forceUpcast, or: d.forceUpcast)
        useQuantConv = try c.value(.useQuantConv, or: d.useQuantConv)
        usePostQuantConv = try c.value(.usePostQuantConv, or: d.usePostQuantConv)
        midBlockAddAttention = try c.value(.midBlockAddAttention, or: d.midBlockAddAttention)
    }

    /// Writes every field under its diffusers name, absent values as null (as diffusers does).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(inChannels, forKey: .inChannels)
        try c.encode(outChannels, forKey: .outChannels)
        try c.encode(downBlockTypes, forKey: .downBlockTypes)
        try c.encode(upBlockTypes, forKey: .upBlockTypes)
        try c.encode(blockOutChannels, forKey: .blockOutChannels)
        try c.encode(layersPerBlock, forKey: .layersPerBlock)
        try c.encode(actFn, forKey: .actFn)
        try c.encode(latentChannels, forKey: .latentChannels)
        try c.encode(normNumGroups, forKey: .normNumGroups)
        try c.encode(sampleSize, forKey: .sampleSize)
        try c.encode(scalingFactor, forKey: .scalingFactor)
        try c.encode(shiftFactor, forKey: .shiftFactor)
        try c.encode(latentsMean, forKey: .latentsMean)
        try c.encode(latentsStd, forKey: .latentsStd)
        try c.encode(forceUpcast, forKey: .forceUpcast)
        try c.encode(useQuantConv, forKey: .useQuantConv)
        try c.encode(usePostQuantConv, forKey: .usePostQuantConv)
        try c.encode(midBlockAddAttention, forKey: .midBlockAddAttention)
    }

    /// Reads `config.json` (of a diffusers `vae/` folder).
    public init(contentsOf url: URL) throws {
        self = try readConfig(AutoencoderKLConfig.self, from: url)
    }

    /// Spatial down-scaling from image to latent (8 for SD).
    public var downscaleFactor: Int { 1 << (blockOutChannels.count - 1) }

    /// Throws for configs this implementation cannot build, naming the field.
    public func validate() throws {
        let n = blockOutChannels.count
        guard n > 0 else { throw DiffusionConfigError.invalid(field: "block_out_channels", reason: "is empty") }
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
