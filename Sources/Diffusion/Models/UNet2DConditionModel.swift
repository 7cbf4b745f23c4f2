import Foundation
import NN
import Tensor

// The Stable Diffusion denoiser, diffusers' `UNet2DConditionModel`, in the variants SD 1.x and
// 2.x use: positional (sinusoidal) time embedding, CrossAttnDownBlock2D / DownBlock2D,
// UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D, conv or linear transformer
// projections. Parameter names equal diffusers' state-dict keys.

// MARK: - Config

/// diffusers' `UNet2DConditionModel` config (`unet/config.json`). Each property carries
/// diffusers' default; `fields` gives its key and the values it accepts. Fields of variants that
/// are not implemented (class / addition embeddings, other block types, scale-shift resnets, …)
/// are read, and rejected by `validate()` with the field's name.
public struct UNet2DConditionConfig: ModelConfig, Equatable, Sendable {
    public var sampleSize: OneOrMany<Int>? = nil
    public var inChannels = 4
    public var outChannels = 4
    public var centerInputSample = false
    public var flipSinToCos = true
    public var freqShift: Float = 0
    public var downBlockTypes = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    /// An explicit null means "no mid block".
    public var midBlockType: String? = "UNetMidBlock2DCrossAttn"
    public var upBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    public var onlyCrossAttention: OneOrMany<Bool> = .one(false)
    public var blockOutChannels = [320, 640, 1280, 1280]
    public var layersPerBlock: OneOrMany<Int> = .one(2)
    public var downsamplePadding = 1
    public var midBlockScaleFactor: Float = 1
    public var dropout: Float = 0
    public var actFn = "silu"
    /// nil (an explicit null) selects diffusers' norm-free variant, which is not implemented.
    public var normNumGroups: Int? = 32
    public var normEps: Float = 1e-5
    public var crossAttentionDim: OneOrMany<Int> = .one(1280)
    /// Transformer blocks per attention: one count for all, one per block, or one per layer of each block.
    public var transformerLayersPerBlock: OneOrMany<OneOrMany<Int>> = .one(.one(1))
    public var reverseTransformerLayersPerBlock: [[Int]]? = nil
    /// In SD 1.x/2.x configs this is the number of HEADS (diffusers' naming bug, issue #2011);
    /// it is used as such when `numAttentionHeads` is absent.
    public var attentionHeadDim: OneOrMany<Int> = .one(8)
    public var numAttentionHeads: OneOrMany<Int>? = nil
    public var dualCrossAttention = false
    public var useLinearProjection = false
    public var upcastAttention = false
    public var resnetTimeScaleShift = "default"
    public var resnetSkipTimeAct = false
    public var resnetOutScaleFactor: Float = 1
    public var timeEmbeddingType = "positional"
    public var timeEmbeddingDim: Int? = nil
    public var timeEmbeddingActFn: String? = nil
    public var timestepPostAct: String? = nil
    public var timeCondProjDim: Int? = nil
    public var convInKernel = 3
    public var convOutKernel = 3
    public var classEmbedType: String? = nil
    public var numClassEmbeds: Int? = nil
    public var additionEmbedType: String? = nil
    public var encoderHidDimType: String? = nil
    public var encoderHidDim: Int? = nil
    public var attentionType = "default"
    public var classEmbeddingsConcat = false
    public var midBlockOnlyCrossAttention: Bool? = nil
    public var crossAttentionNorm: String? = nil

    public static let fields: [ConfigField<Self>] = [
        .init("sample_size", \.sampleSize, .size),
        .init("in_channels", \.inChannels, .size),
        .init("out_channels", \.outChannels, .size),
        .init("center_input_sample", \.centerInputSample),
        .init("flip_sin_to_cos", \.flipSinToCos),
        .init("freq_shift", \.freqShift, .finite),
        .init("down_block_types", \.downBlockTypes),
        .init("mid_block_type", \.midBlockType),
        .init("up_block_types", \.upBlockTypes),
        .init("only_cross_attention", \.onlyCrossAttention),
        .init("block_out_channels", \.blockOutChannels, .size),
        .init("layers_per_block", \.layersPerBlock, .count),
        .init("downsample_padding", \.downsamplePadding, .integers(0...16)),
        .init("mid_block_scale_factor", \.midBlockScaleFactor, .positive),
        .init("dropout", \.dropout, .dropout),
        .init("act_fn", \.actFn),
        .init("norm_num_groups", \.normNumGroups, .count),
        .init("norm_eps", \.normEps, .positive),
        .init("cross_attention_dim", \.crossAttentionDim, .size),
        .init("transformer_layers_per_block", \.transformerLayersPerBlock, .countOrZero),
        .init("reverse_transformer_layers_per_block", \.reverseTransformerLayersPerBlock, .countOrZero),
        .init("attention_head_dim", \.attentionHeadDim, .count),
        .init("num_attention_heads", \.numAttentionHeads, .count),
        .init("dual_cross_attention", \.dualCrossAttention),
        .init("use_linear_projection", \.useLinearProjection),
        .init("upcast_attention", \.upcastAttention),
        .init("resnet_time_scale_shift", \.resnetTimeScaleShift),
        .init("resnet_skip_time_act", \.resnetSkipTimeAct),
        .init("resnet_out_scale_factor", \.resnetOutScaleFactor, .positive),
        .init("time_embedding_type", \.timeEmbeddingType),
        .init("time_embedding_dim", \.timeEmbeddingDim, .size),
        .init("time_embedding_act_fn", \.timeEmbeddingActFn),
        .init("timestep_post_act", \.timestepPostAct),
        .init("time_cond_proj_dim", \.timeCondProjDim, .size),
        .init("conv_in_kernel", \.convInKernel, .integers(1...15)),
        .init("conv_out_kernel", \.convOutKernel, .integers(1...15)),
        .init("class_embed_type", \.classEmbedType),
        .init("num_class_embeds", \.numClassEmbeds, .size),
        .init("addition_embed_type", \.additionEmbedType),
        .init("encoder_hid_dim_type", \.encoderHidDimType),
        .init("encoder_hid_dim", \.encoderHidDim, .size),
        .init("attention_type", \.attentionType),
        .init("class_embeddings_concat", \.classEmbeddingsConcat),
        .init("mid_block_only_cross_attention", \.midBlockOnlyCrossAttention),
        .init("cross_attention_norm", \.crossAttentionNorm),
    ]

    /// diffusers' defaults: the SD 1.x architecture.
    public init() {}

    public init(from decoder: Decoder) throws { try self.init(fieldsFrom: decoder) }

    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    /// Reads and validates `config.json` (of a diffusers `unet/` folder); errors name the file.
    public init(contentsOf url: URL) throws {
        self = try readConfig(UNet2DConditionConfig.self, from: url) { try $0.validate(); try $0.checkMemory() }
    }

    public var blockCount: Int { blockOutChannels.count }

    /// Attention heads of block `i` (`num_attention_heads`, else `attention_head_dim`, see above).
    public func heads(block i: Int) -> Int { (numAttentionHeads ?? attentionHeadDim)[i] }

    /// Transformer blocks in layer `layer` of down block `block`.
    public func transformerLayers(block: Int, layer: Int) -> Int { transformerLayersPerBlock[block][layer] }

    /// Transformer blocks in layer `layer` of up block `upBlock` (counted from the bottom).
    public func upTransformerLayers(upBlock: Int, layer: Int) -> Int {
        if let reverse = reverseTransformerLayersPerBlock { return reverse[upBlock][layer] }
        return transformerLayersPerBlock[blockCount - 1 - upBlock][layer]
    }

    /// Width of the time embedding fed to the resnets.
    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }

    /// Throws for configs this implementation cannot build, naming the field.
    public func validate() throws {
        func unsupported(_ field: String, _ value: Any?) -> DiffusionConfigError {
            .unsupported(field: field, value: value.map { "\($0)" } ?? "null")
        }
        try checkFieldRanges()
        let n = blockCount
        guard n > 0 else { throw DiffusionConfigError.invalid(field: "block_out_channels", reason: "is empty") }
        // Each block halves the sample; more than 10 would need latents over 2¹⁰ wide.
        guard n <= 10 else { throw DiffusionConfigError.invalid(field: "block_out_channels", reason: "has \(n) blocks; at most 10 are supported") }
        guard downBlockTypes.count == n else {
            throw DiffusionConfigError.invalid(field: "down_block_types", reason: "has \(downBlockTypes.count) entries for \(n) blocks")
        }
        guard upBlockTypes.count == n else {
            throw DiffusionConfigError.invalid(field: "up_block_types", reason: "has \(upBlockTypes.count) entries for \(n) blocks")
        }
        for type in downBlockTypes where !["CrossAttnDownBlock2D", "DownBlock2D"].contains(type) {
            throw unsupported("down_block_types", type)
        }
        for type in upBlockTypes where !["CrossAttnUpBlock2D", "UpBlock2D"].contains(type) {
            throw unsupported("up_block_types", type)
        }
        if let midBlockType, midBlockType != "UNetMidBlock2DCrossAttn" { throw unsupported("mid_block_type", midBlockType) }
        try onlyCrossAttention.validate(count: n, field: "only_cross_attention")
        try layersPerBlock.validate(count: n, field: "layers_per_block")
        try crossAttentionDim.validate(count: n, field: "cross_attention_dim")
        try attentionHeadDim.validate(count: n, field: "attention_head_dim")
        try numAttentionHeads?.validate(count: n, field: "num_attention_heads")
        try transformerLayersPerBlock.validate(count: n, field: "transformer_layers_per_block")
        for i in 0..<n {
            if case .many(let perLayer) = transformerLayersPerBlock[i], perLayer.count != layersPerBlock[i] {
                throw DiffusionConfigError.invalid(field: "transformer_layers_per_block",
                                                   reason: "block \(i) has \(perLayer.count) entries for \(layersPerBlock[i]) layers")
            }
        }
        for i in 0..<n where reverseTransformerLayersPerBlock == nil && upBlockTypes[n - 1 - i].hasPrefix("CrossAttn") {
            if case .many = transformerLayersPerBlock[i] {
                throw DiffusionConfigError.invalid(field: "reverse_transformer_layers_per_block",
                                                   reason: "is needed when transformer_layers_per_block gives counts per layer")
            }
        }
        if let reverse = reverseTransformerLayersPerBlock {
            guard reverse.count == n, (0..<n).allSatisfy({ reverse[$0].count == layersPerBlock[n - 1 - $0] + 1 }) else {
                throw DiffusionConfigError.invalid(field: "reverse_transformer_layers_per_block",
                                                   reason: "needs one entry per layer of each up block")
            }
        }
        guard let groups = normNumGroups else { throw unsupported("norm_num_groups", nil) }
        for (i, channels) in blockOutChannels.enumerated() where channels % groups != 0 {
            throw DiffusionConfigError.invalid(field: "block_out_channels", reason: "[\(i)] = \(channels) is not divisible by norm_num_groups \(groups)")
        }
        for i in 0..<n where downBlockTypes[i].hasPrefix("CrossAttn") || upBlockTypes[n - 1 - i].hasPrefix("CrossAttn")
            || (i == n - 1 && midBlockType != nil) {
            let heads = heads(block: i)
            guard heads > 0, blockOutChannels[i] % heads == 0 else {
                throw DiffusionConfigError.invalid(field: numAttentionHeads == nil ? "attention_head_dim" : "num_attention_heads",
                                                   reason: "[\(i)] = \(heads) heads do not divide \(blockOutChannels[i]) channels")
            }
        }
        if !["silu", "swish"].contains(actFn) { throw unsupported("act_fn", actFn) }
        if timeEmbeddingType != "positional" { throw unsupported("time_embedding_type", timeEmbeddingType) }
        if resnetTimeScaleShift != "default" { throw unsupported("resnet_time_scale_shift", resnetTimeScaleShift) }
        if resnetSkipTimeAct { throw unsupported("resnet_skip_time_act", true) }
        if dualCrossAttention { throw unsupported("dual_cross_attention", true) }
        if attentionType != "default" { throw unsupported("attention_type", attentionType) }
        if let classEmbedType { throw unsupported("class_embed_type", classEmbedType) }
        if let numClassEmbeds { throw unsupported("num_class_embeds", numClassEmbeds) }
        if let additionEmbedType { throw unsupported("addition_embed_type", additionEmbedType) }
        if let encoderHidDimType { throw unsupported("encoder_hid_dim_type", encoderHidDimType) }
        if let encoderHidDim { throw unsupported("encoder_hid_dim", encoderHidDim) }
        if let timeEmbeddingActFn { throw unsupported("time_embedding_act_fn", timeEmbeddingActFn) }
        if let timestepPostAct { throw unsupported("timestep_post_act", timestepPostAct) }
        if let timeCondProjDim { throw unsupported("time_cond_proj_dim", timeCondProjDim) }
        if let crossAttentionNorm { throw unsupported("cross_attention_norm", crossAttentionNorm) }
        if classEmbeddingsConcat { throw unsupported("class_embeddings_concat", true) }
        if convInKernel % 2 == 0 { throw unsupported("conv_in_kernel", convInKernel) }
        if convOutKernel % 2 == 0 { throw unsupported("conv_out_kernel", convOutKernel) }
    }

    /// Throws when the model's Float32 weights would not fit in the memory available now. Kept
    /// apart from `validate()`, whose answer must not depend on the machine; the model's
    /// initializer and `init(contentsOf:)` call both.
    public func checkMemory() throws {
        try checkFitsInMemory(parameters: parameterCount, model: "UNet")
    }

    /// The number of parameters the model of this (valid) config has, computed without building
    /// it, as a Double so that no config can overflow it.
    public var parameterCount: Double {
        let n = blockCount
        let c = blockOutChannels.map(Double.init)
        let temb = Double(timeEmbedDim)
        let groupsNorm = { (channels: Double) in 2 * channels }
        func conv(_ i: Double, _ o: Double, _ k: Int) -> Double { i * o * Double(k * k) + o }
        func resnet(_ i: Double, _ o: Double) -> Double {
            groupsNorm(i) + conv(i, o, 3) + (temb * o + o) + groupsNorm(o) + conv(o, o, 3) + (i != o ? conv(i, o, 1) : 0)
        }
        func transformer(_ ch: Double, layers: Int, cross: Double, onlyCross: Bool) -> Double {
            let attention1 = ch * ch + 2 * (onlyCross ? cross : ch) * ch + ch * ch + ch
            let attention2 = ch * ch + 2 * cross * ch + ch * ch + ch
            let feedForward = (ch * 8 * ch + 8 * ch) + (4 * ch * ch + ch)
            let block = 3 * 2 * ch + attention1 + attention2 + feedForward
            return groupsNorm(ch) + 2 * (ch * ch + ch) + Double(layers) * block
        }
        var total = conv(Double(inChannels), c[0], convInKernel) + (c[0] * temb + temb) + (temb * temb + temb)
        for i in 0..<n {
            let input = i == 0 ? c[0] : c[i - 1]
            let layers = layersPerBlock[i]
            for layer in 0..<layers {
                total += resnet(layer == 0 ? input : c[i], c[i])
                if downBlockTypes[i].hasPrefix("CrossAttn") {
                    total += transformer(c[i], layers: transformerLayers(block: i, layer: layer),
                                         cross: Double(crossAttentionDim[i]), onlyCross: onlyCrossAttention[i])
                }
            }
            if i < n - 1 { total += conv(c[i], c[i], 3) }
        }
        if midBlockType != nil {
            var midOnlyCross = midBlockOnlyCrossAttention ?? false
            if case .one(let value) = onlyCrossAttention { midOnlyCross = midBlockOnlyCrossAttention ?? value }
            total += 2 * resnet(c[n - 1], c[n - 1])
                + transformer(c[n - 1], layers: transformerLayers(block: n - 1, layer: 0),
                              cross: Double(crossAttentionDim[n - 1]), onlyCross: midOnlyCross)
        }
        var output = c[n - 1]
        for i in 0..<n {
            let block = n - 1 - i
            let previous = output
            output = c[block]
            let input = c[max(block - 1, 0)]
            let layers = layersPerBlock[block] + 1
            for layer in 0..<layers {
                let skip = layer == layers - 1 ? input : output
                total += resnet((layer == 0 ? previous : output) + skip, output)
                if upBlockTypes[i].hasPrefix("CrossAttn") {
                    total += transformer(output, layers: upTransformerLayers(upBlock: i, layer: layer),
                                         cross: Double(crossAttentionDim[block]), onlyCross: onlyCrossAttention[block])
                }
            }
            if i < n - 1 { total += conv(output, output, 3) }
        }
        return total + groupsNorm(c[0]) + conv(c[0], Double(outChannels), convOutKernel)
    }
}

// MARK: - Blocks

/// What a UNet block needs besides its input: the time embedding and the text conditioning.
public struct UNetConditioning {
    /// [B, timeEmbedDim], after time_embedding.
    public let temb: Tensor
    /// [B, M, crossAttentionDim]
    public let context: Tensor
    /// Broadcastable to [B, heads, N, M] (nonzero = may attend), or nil.
    public let contextMask: Tensor?

    /// Recompute each resnet's and transformer's activations in the backward pass instead of
    /// keeping them (`UNet2DConditionModel.enableGradientCheckpointing`).
    public var gradientCheckpointing: Bool

    public init(temb: Tensor, context: Tensor, contextMask: Tensor? = nil, gradientCheckpointing: Bool = false) {
        self.temb = temb
        self.context = context
        self.contextMask = contextMask
        self.gradientCheckpointing = gradientCheckpointing
    }

    /// `resnet(x, temb)`, checkpointed when asked. `skip` (an up block's skip state) is
    /// concatenated onto x inside, so the concatenation is not kept either.
    func run(_ resnet: ResnetBlock2D, _ x: Tensor, skip: Tensor? = nil) -> Tensor {
        guard gradientCheckpointing else {
            return resnet(skip.map { Tensor.concat([x, $0], axis: 1) } ?? x, temb: temb)
        }
        let time = resnet.projectTime(temb)
        let inputs = [x] + (skip.map { [$0] } ?? []) + (time.map { [$0] } ?? [])
        return checkpoint(inputs) { t in
            let h = skip == nil ? t[0] : Tensor.concat([t[0], t[1]], axis: 1)
            return resnet.forward(h, timeProjection: time == nil ? nil : t[t.count - 1])
        }
    }

    /// `attention(x, context)`, checkpointed when asked.
    func run(_ attention: Transformer2DModel, _ x: Tensor) -> Tensor {
        let mask = contextMask
        guard gradientCheckpointing else { return attention(x, context: context, contextMask: mask) }
        return checkpoint([x, context]) { t in attention(t[0], context: t[1], contextMask: mask) }
    }
}

/// A down block: returns the downsampled output and the states kept for the skip connections.
public class UNetDownBlock: Module {
    public func forward(_ x: Tensor, _ cond: UNetConditioning) -> (Tensor, [Tensor]) {
        fatalError("UNetDownBlock.forward is abstract")
    }
}

/// An up block: consumes skip states from the end of `skips`.
public class UNetUpBlock: Module {
    /// Number of skip states this block consumes (one per resnet).
    public var skipCount: Int { fatalError("UNetUpBlock.skipCount is abstract") }
    public func forward(_ x: Tensor, skips: ArraySlice<Tensor>, _ cond: UNetConditioning) -> Tensor {
        fatalError("UNetUpBlock.forward is abstract")
    }
}

/// diffusers' `DownBlock2D`: resnets, then an optional stride-2 conv downsampler.
public final class DownBlock2D: UNetDownBlock {
    public let resnets: [ResnetBlock2D]
    public let downsamplers: [Downsample2D]?

    public init(inChannels: Int, outChannels: Int, tembChannels: Int, layers: Int, groups: Int, eps: Float,
                outputScaleFactor: Float = 1, addDownsample: Bool, downsamplePadding: Int = 1,
                generator: inout RandomGenerator) {
        var resnets: [ResnetBlock2D] = []
        for i in 0..<layers {
            resnets.append(ResnetBlock2D(inChannels: i == 0 ? inChannels : outChannels, outChannels: outChannels,
                                         tembChannels: tembChannels, groups: groups, eps: eps,
                                         outputScaleFactor: outputScaleFactor, generator: &generator))
        }
        self.resnets = resnets
        downsamplers = addDownsample
            ? [Downsample2D(channels: outChannels, padding: downsamplePadding, generator: &generator)] : nil
    }

    public override func forward(_ x: Tensor, _ cond: UNetConditioning) -> (Tensor, [Tensor]) {
        var h = x
        var states: [Tensor] = []
        for resnet in resnets {
            h = cond.run(resnet, h)
            states.append(h)
        }
        if let down = downsamplers?.first {
            h = down(h)
            states.append(h)
        }
        return (h, states)
    }
}

/// diffusers' `CrossAttnDownBlock2D`: (resnet, transformer) pairs, then an optional downsampler.
public final class CrossAttnDownBlock2D: UNetDownBlock {
    public let attentions: [Transformer2DModel]
    public let resnets: [ResnetBlock2D]
    public let downsamplers: [Downsample2D]?

    public init(inChannels: Int, outChannels: Int, tembChannels: Int, layers: Int, transformerLayers: [Int],
                groups: Int, eps: Float, heads: Int, crossAttentionDim: Int, useLinearProjection: Bool,
                onlyCrossAttention: Bool, outputScaleFactor: Float = 1, addDownsample: Bool, downsamplePadding: Int = 1,
                generator: inout RandomGenerator) {
        var resnets: [ResnetBlock2D] = [], attentions: [Transformer2DModel] = []
        for i in 0..<layers {
            resnets.append(ResnetBlock2D(inChannels: i == 0 ? inChannels : outChannels, outChannels: outChannels,
                                         tembChannels: tembChannels, groups: groups, eps: eps,
                                         outputScaleFactor: outputScaleFactor, generator: &generator))
            attentions.append(Transformer2DModel(heads: heads, headDim: outChannels / heads, inChannels: outChannels,
                                                 layers: transformerLayers[i], crossAttentionDim: crossAttentionDim,
                                                 normNumGroups: groups, useLinearProjection: useLinearProjection,
                                                 onlyCrossAttention: onlyCrossAttention, generator: &generator))
        }
        self.resnets = resnets
        self.attentions = attentions
        downsamplers = addDownsample
            ? [Downsample2D(channels: outChannels, padding: downsamplePadding, generator: &generator)] : nil
    }

    public override func forward(_ x: Tensor, _ cond: UNetConditioning) -> (Tensor, [Tensor]) {
        var h = x
        var states: [Tensor] = []
        for (resnet, attention) in zip(resnets, attentions) {
            h = cond.run(resnet, h)
            h = cond.run(attention, h)
            states.append(h)
        }
        if let down = downsamplers?.first {
            h = down(h)
            states.append(h)
        }
        return (h, states)
    }
}

/// diffusers' `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
public final class UNetMidBlock2DCrossAttn: Module {
    public let attentions: [Transformer2DModel]
    public let resnets: [ResnetBlock2D]

    public init(channels: Int, tembChannels: Int, layers: Int = 1, transformerLayers: [Int], groups: Int, eps: Float,
                heads: Int, crossAttentionDim: Int, useLinearProjection: Bool, onlyCrossAttention: Bool = false,
                outputScaleFactor: Float = 1, generator: inout RandomGenerator) {
        var resnets = [ResnetBlock2D(inChannels: channels, tembChannels: tembChannels, groups: groups, eps: eps,
                                     outputScaleFactor: outputScaleFactor, generator: &generator)]
        var attentions: [Transformer2DModel] = []
        for i in 0..<layers {
            attentions.append(Transformer2DModel(heads: heads, headDim: channels / heads, inChannels: channels,
                                                 layers: transformerLayers[i], crossAttentionDim: crossAttentionDim,
                                                 normNumGroups: groups, useLinearProjection: useLinearProjection,
                                                 onlyCrossAttention: onlyCrossAttention, generator: &generator))
            resnets.append(ResnetBlock2D(inChannels: channels, tembChannels: tembChannels, groups: groups, eps: eps,
                                         outputScaleFactor: outputScaleFactor, generator: &generator))
        }
        self.attentions = attentions
        self.resnets = resnets
    }

    public func callAsFunction(_ x: Tensor, _ cond: UNetConditioning) -> Tensor {
        var h = cond.run(resnets[0], x)
        for (attention, resnet) in zip(attentions, resnets.dropFirst()) {
            h = cond.run(attention, h)
            h = cond.run(resnet, h)
        }
        return h
    }
}

/// Input channels of resnet `i` of an up block: the previous output (or the block's own output
/// after the first resnet) plus the skip state it concatenates.
private func upResnetInputChannels(_ i: Int, layers: Int, inChannels: Int, outChannels: Int, prevOutputChannels: Int) -> Int {
    let skip = i == layers - 1 ? inChannels : outChannels
    return (i == 0 ? prevOutputChannels : outChannels) + skip
}

/// diffusers' `UpBlock2D`: resnets over [h, skip] concatenations, then an optional upsampler.
public final class UpBlock2D: UNetUpBlock {
    public let resnets: [ResnetBlock2D]
    public let upsamplers: [Upsample2D]?

    public init(inChannels: Int, prevOutputChannels: Int, outChannels: Int, tembChannels: Int, layers: Int,
                groups: Int, eps: Float, outputScaleFactor: Float = 1, addUpsample: Bool, generator: inout RandomGenerator) {
        var resnets: [ResnetBlock2D] = []
        for i in 0..<layers {
            let input = upResnetInputChannels(i, layers: layers, inChannels: inChannels, outChannels: outChannels,
                                              prevOutputChannels: prevOutputChannels)
            resnets.append(ResnetBlock2D(inChannels: input, outChannels: outChannels, tembChannels: tembChannels,
                                         groups: groups, eps: eps, outputScaleFactor: outputScaleFactor, generator: &generator))
        }
        self.resnets = resnets
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels, generator: &generator)] : nil
    }

    public override var skipCount: Int { resnets.count }

    public override func forward(_ x: Tensor, skips: ArraySlice<Tensor>, _ cond: UNetConditioning) -> Tensor {
        var h = x
        var remaining = skips
        for resnet in resnets {
            h = cond.run(resnet, h, skip: remaining.removeLast())
        }
        if let up = upsamplers?.first { h = up(h) }
        return h
    }
}

/// diffusers' `CrossAttnUpBlock2D`: (resnet over [h, skip], transformer) pairs, then an optional upsampler.
public final class CrossAttnUpBlock2D: UNetUpBlock {
    public let attentions: [Transformer2DModel]
    public let resnets: [ResnetBlock2D]
    public let upsamplers: [Upsample2D]?

    public init(inChannels: Int, prevOutputChannels: Int, outChannels: Int, tembChannels: Int, layers: Int,
                transformerLayers: [Int], groups: Int, eps: Float, heads: Int, crossAttentionDim: Int,
                useLinearProjection: Bool, onlyCrossAttention: Bool, outputScaleFactor: Float = 1, addUpsample: Bool,
                generator: inout RandomGenerator) {
        var resnets: [ResnetBlock2D] = [], attentions: [Transformer2DModel] = []
        for i in 0..<layers {
            let input = upResnetInputChannels(i, layers: layers, inChannels: inChannels, outChannels: outChannels,
                                              prevOutputChannels: prevOutputChannels)
            resnets.append(ResnetBlock2D(inChannels: input, outChannels: outChannels, tembChannels: tembChannels,
                                         groups: groups, eps: eps, outputScaleFactor: outputScaleFactor, generator: &generator))
            attentions.append(Transformer2DModel(heads: heads, headDim: outChannels / heads, inChannels: outChannels,
                                                 layers: transformerLayers[i], crossAttentionDim: crossAttentionDim,
                                                 normNumGroups: groups, useLinearProjection: useLinearProjection,
                                                 onlyCrossAttention: onlyCrossAttention, generator: &generator))
        }
        self.attentions = attentions
        self.resnets = resnets
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels, generator: &generator)] : nil
    }

    public override var skipCount: Int { resnets.count }

    public override func forward(_ x: Tensor, skips: ArraySlice<Tensor>, _ cond: UNetConditioning) -> Tensor {
        var h = x
        var remaining = skips
        for (resnet, attention) in zip(resnets, attentions) {
            h = cond.run(resnet, h, skip: remaining.removeLast())
            h = cond.run(attention, h)
        }
        if let up = upsamplers?.first { h = up(h) }
        return h
    }
}

// MARK: - Model

/// diffusers' `UNet2DConditionModel` (Stable Diffusion 1.x / 2.x). Build it from a config, then
/// load weights (`UNet2DConditionModel(directory:)` does both for a diffusers `unet/` folder).
public final class UNet2DConditionModel: Module {
    public let config: UNet2DConditionConfig
    public let conv_in: Conv2d
    public let time_embedding: TimestepEmbedding
    public let down_blocks: [UNetDownBlock]
    public let up_blocks: [UNetUpBlock]
    public let mid_block: UNetMidBlock2DCrossAttn?
    public let conv_norm_out: GroupNorm
    public let conv_out: Conv2d
    /// diffusers' `gradient_checkpointing`: each resnet and transformer recomputes its
    /// activations in the backward pass instead of keeping them (`checkpoint` in the Tensor
    /// layer): far less memory for a training step, about one more forward pass of time, the
    /// same gradients to the bit.
    public var gradientCheckpointing = false

    /// diffusers' `enable_gradient_checkpointing()`.
    public func enableGradientCheckpointing() { gradientCheckpointing = true }
    /// diffusers' `disable_gradient_checkpointing()`.
    public func disableGradientCheckpointing() { gradientCheckpointing = false }

    /// A randomly initialised model (PyTorch's default init) of the given architecture.
    /// Throws `DiffusionConfigError` for configs that are inconsistent or not implemented.
    public init(config: UNet2DConditionConfig, generator: inout RandomGenerator) throws {
        try config.validate()
        try config.checkMemory()
        self.config = config
        let c = config
        let n = c.blockCount
        let channels = c.blockOutChannels
        let groups = c.normNumGroups!
        let eps = c.normEps
        let temb = c.timeEmbedDim
        let onlyCross = c.onlyCrossAttention

        conv_in = Conv2d(c.inChannels, channels[0], kernelSize: c.convInKernel, padding: (c.convInKernel - 1) / 2,
                         generator: &generator)
        time_embedding = TimestepEmbedding(inChannels: channels[0], timeEmbedDim: temb, generator: &generator)

        var downs: [UNetDownBlock] = []
        var output = channels[0]
        for i in 0..<n {
            let input = output
            output = channels[i]
            let isFinal = i == n - 1
            let layers = c.layersPerBlock[i]
            if c.downBlockTypes[i] == "CrossAttnDownBlock2D" {
                downs.append(CrossAttnDownBlock2D(
                    inChannels: input, outChannels: output, tembChannels: temb, layers: layers,
                    transformerLayers: (0..<layers).map { c.transformerLayers(block: i, layer: $0) },
                    groups: groups, eps: eps, heads: c.heads(block: i), crossAttentionDim: c.crossAttentionDim[i],
                    useLinearProjection: c.useLinearProjection, onlyCrossAttention: onlyCross[i],
                    outputScaleFactor: c.resnetOutScaleFactor, addDownsample: !isFinal,
                    downsamplePadding: c.downsamplePadding, generator: &generator))
            } else {
                downs.append(DownBlock2D(
                    inChannels: input, outChannels: output, tembChannels: temb, layers: layers, groups: groups, eps: eps,
                    outputScaleFactor: c.resnetOutScaleFactor, addDownsample: !isFinal,
                    downsamplePadding: c.downsamplePadding, generator: &generator))
            }
        }
        down_blocks = downs

        // diffusers builds the mid block before the up blocks (the order matters for the random init only).
        if c.midBlockType != nil {
            let midOnlyCross: Bool
            if case .one(let value) = onlyCross { midOnlyCross = c.midBlockOnlyCrossAttention ?? value }
            else { midOnlyCross = c.midBlockOnlyCrossAttention ?? false }
            mid_block = UNetMidBlock2DCrossAttn(
                channels: channels[n - 1], tembChannels: temb,
                transformerLayers: [c.transformerLayers(block: n - 1, layer: 0)],
                groups: groups, eps: eps, heads: c.heads(block: n - 1), crossAttentionDim: c.crossAttentionDim[n - 1],
                useLinearProjection: c.useLinearProjection, onlyCrossAttention: midOnlyCross,
                outputScaleFactor: c.midBlockScaleFactor, generator: &generator)
        } else {
            mid_block = nil
        }

        var ups: [UNetUpBlock] = []
        output = channels[n - 1]
        for i in 0..<n {
            let block = n - 1 - i  // the down block this up block mirrors
            let isFinal = i == n - 1
            let prevOutput = output
            output = channels[block]
            let input = channels[max(block - 1, 0)]
            let layers = c.layersPerBlock[block] + 1
            if c.upBlockTypes[i] == "CrossAttnUpBlock2D" {
                ups.append(CrossAttnUpBlock2D(
                    inChannels: input, prevOutputChannels: prevOutput, outChannels: output, tembChannels: temb,
                    layers: layers, transformerLayers: (0..<layers).map { c.upTransformerLayers(upBlock: i, layer: $0) },
                    groups: groups, eps: eps, heads: c.heads(block: block), crossAttentionDim: c.crossAttentionDim[block],
                    useLinearProjection: c.useLinearProjection, onlyCrossAttention: onlyCross[block],
                    outputScaleFactor: c.resnetOutScaleFactor, addUpsample: !isFinal, generator: &generator))
            } else {
                ups.append(UpBlock2D(
                    inChannels: input, prevOutputChannels: prevOutput, outChannels: output, tembChannels: temb,
                    layers: layers, groups: groups, eps: eps, outputScaleFactor: c.resnetOutScaleFactor,
                    addUpsample: !isFinal, generator: &generator))
            }
        }
        up_blocks = ups

        conv_norm_out = GroupNorm(groups: groups, channels: channels[0], eps: eps)
        conv_out = Conv2d(channels[0], c.outChannels, kernelSize: c.convOutKernel, padding: (c.convOutKernel - 1) / 2,
                          generator: &generator)
    }

    /// Builds the model from a diffusers `unet/` folder: `config.json` and
    /// `diffusion_pytorch_model.safetensors` (or its sharded index), or those of `variant`
    /// (`diffusion_pytorch_model.fp16.safetensors`; see `WeightsVariant`).
    public convenience init(directory: URL, variant: String? = nil) throws {
        let config = try UNet2DConditionConfig(contentsOf: directory.appendingPathComponent("config.json"))
        var generator = RandomGenerator(seed: 0)
        try self.init(config: config, generator: &generator)
        try loadModule(self, from: try diffusersWeightsFile(in: directory, variant: variant))
    }

    /// An independent copy with the same config and weights, for a frozen reference model beside
    /// the one being trained (erasure keeps θ₀ this way). Parameters keep their `requiresGrad`.
    public func copy() throws -> UNet2DConditionModel {
        var generator = RandomGenerator(seed: 0)
        let clone = try UNet2DConditionModel(config: config, generator: &generator)
        for ((_, target), (_, source)) in zip(clone.namedParameters(), namedParameters()) {
            target.assign(source)
            target.requiresGrad = source.requiresGrad
        }
        if !isTraining { clone.eval() }
        return clone
    }

    /// How many ×2 upsamplers the model has; sample height and width must be multiples of 2^this.
    public var upsamplerCount: Int { config.blockCount - 1 }

    /// The sinusoidal `time_proj` output for `timestep` (one value per batch item), [B, block_out_channels[0]].
    public func timeProjection(_ timestep: [Float]) -> Tensor {
        timestepEmbedding(timestep, dim: config.blockOutChannels[0], flipSinToCos: config.flipSinToCos,
                          freqShift: config.freqShift)
    }

    /// Predicts the noise (or v) for `sample`.
    ///
    /// - Parameters:
    ///   - sample: latents [B, inChannels, H, W]; H and W multiples of 2^(blocks − 1)
    ///   - timestep: one timestep per batch item (a single value is used for the whole batch)
    ///   - encoderHiddenStates: text conditioning [B, M, crossAttentionDim]
    ///   - encoderAttentionMask: [B, M], 1 = attend, 0 = ignore (diffusers' `encoder_attention_mask`).
    ///     As in diffusers (which adds −10000 to masked scores), an item whose mask is all zeros
    ///     attends to every token.
    /// - Returns: [B, outChannels, H, W]
    public func callAsFunction(_ sample: Tensor, timestep: [Float], encoderHiddenStates: Tensor,
                               encoderAttentionMask: Tensor? = nil) -> Tensor {
        precondition(sample.rank == 4 && sample.shape[1] == config.inChannels,
                     "UNet: sample must be [B, \(config.inChannels), H, W], got \(sample.shape)")
        let batch = sample.shape[0]
        precondition(encoderHiddenStates.rank == 3 && encoderHiddenStates.shape[0] == batch,
                     "UNet: encoderHiddenStates must be [\(batch), M, D], got \(encoderHiddenStates.shape)")
        precondition(timestep.count == batch || timestep.count == 1,
                     "UNet: \(timestep.count) timesteps for a batch of \(batch)")
        let factor = 1 << upsamplerCount
        precondition(sample.shape[2] % factor == 0 && sample.shape[3] % factor == 0,
                     "UNet: sample height and width must be multiples of \(factor), got \(sample.shape)")

        let timesteps = timestep.count == batch ? timestep : Array(repeating: timestep[0], count: batch)
        let temb = time_embedding(timeProjection(timesteps))
        let mask = encoderAttentionMask.map { contextMask($0, batch: batch, tokens: encoderHiddenStates.shape[1]) }
        let cond = UNetConditioning(temb: temb, context: encoderHiddenStates, contextMask: mask,
                                    gradientCheckpointing: gradientCheckpointing)

        var h = config.centerInputSample ? sample * 2 - 1 : sample
        h = conv_in(h)
        var skips: [Tensor] = [h]
        for block in down_blocks {
            let (out, states) = block.forward(h, cond)
            h = out
            skips += states
        }
        if let mid_block { h = mid_block(h, cond) }
        for block in up_blocks {
            let count = block.skipCount
            h = block.forward(h, skips: skips.suffix(count), cond)
            skips.removeLast(count)  // release the skip states as soon as they are used
        }
        return conv_out(conv_norm_out(h).silu())
    }

    /// [B, M] keep-mask → [B, 1, 1, M] attention mask; an all-zero row attends to everything.
    private func contextMask(_ mask: Tensor, batch: Int, tokens: Int) -> Tensor {
        precondition(mask.shape == [batch, tokens], "UNet: encoderAttentionMask must be [\(batch), \(tokens)], got \(mask.shape)")
        let src = mask.pointer
        return Tensor(shape: [batch, 1, 1, tokens]) { p in
            for b in 0..<batch {
                let row = src + b * tokens
                let any = (0..<tokens).contains { row[$0] != 0 }
                for j in 0..<tokens { p[b * tokens + j] = !any || row[j] != 0 ? 1 : 0 }
            }
        }
    }
}
