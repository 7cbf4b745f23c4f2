import Foundation
import NN
import Tensor

// Building blocks shared by the UNet and the VAE, mirroring diffusers' classes of the same names.
// Stored properties carry the diffusers attribute names, so `namedParameters()` yields exactly
// the keys of a diffusers state dict (`resnets.0.time_emb_proj.weight`, `to_out.0.bias`, …).
// Everything runs in inference form: dropout is omitted (Stable Diffusion uses p = 0).

// MARK: - Timestep embedding

/// Sinusoidal timestep embedding, diffusers' `get_timestep_embedding` (DDPM / `Timesteps`):
///
///     exponent_i = −ln(maxPeriod) · i / (half − freqShift),  i = 0 ..< half,  half = dim / 2
///     arg_{b,i}  = scale · t_b · exp(exponent_i)
///     emb_b      = [sin(arg_b), cos(arg_b)]   ([cos, sin] with `flipSinToCos`), zero-padded if dim is odd
///
/// As in diffusers the arguments are formed in Float32 in the same order of operations (so that
/// `t · freq` rounds the same way for t up to 1000); exp, sin and cos are evaluated in Float64
/// and rounded. Returns [B, dim], untracked.
public func timestepEmbedding(_ timesteps: [Float], dim: Int, flipSinToCos: Bool, freqShift: Float,
                              scale: Float = 1, maxPeriod: Float = 10000) -> Tensor {
    let half = dim / 2
    let logPeriod = -Float(Foundation.log(Double(maxPeriod)))
    let denominator = Float(half) - freqShift
    let frequencies: [Float] = (0..<half).map { i in
        let exponent = (logPeriod * Float(i)) / denominator
        return Float(Foundation.exp(Double(exponent)))
    }
    return Tensor(shape: [timesteps.count, dim]) { p in
        for (b, t) in timesteps.enumerated() {
            let row = p + b * dim
            for i in 0..<half {
                let argument = Double(scale * (t * frequencies[i]))
                let (s, c) = (Float(Foundation.sin(argument)), Float(Foundation.cos(argument)))
                row[i] = flipSinToCos ? c : s
                row[half + i] = flipSinToCos ? s : c
            }
            if dim % 2 == 1 { row[dim - 1] = 0 }
        }
    }
}

/// diffusers' `TimestepEmbedding`: linear_1 → SiLU → linear_2.
public final class TimestepEmbedding: Module {
    public let linear_1: Linear
    public let linear_2: Linear

    public init(inChannels: Int, timeEmbedDim: Int, generator: inout RandomGenerator) {
        linear_1 = Linear(inChannels, timeEmbedDim, generator: &generator)
        linear_2 = Linear(timeEmbedDim, timeEmbedDim, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { linear_2(linear_1(x).silu()) }
}

// MARK: - Convolutional blocks

/// diffusers' `ResnetBlock2D` ("default" time-embedding norm, SiLU):
///
///     h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))[:, :, None, None]
///     h = conv2(silu(norm2(h)))            (dropout omitted)
///     out = (conv_shortcut?(x) ?? x + h) / output_scale_factor
///
/// `conv_shortcut` (1×1) exists when the channel count changes.
public final class ResnetBlock2D: Module {
    public let norm1: GroupNorm
    public let conv1: Conv2d
    public let time_emb_proj: Linear?
    public let norm2: GroupNorm
    public let conv2: Conv2d
    public let conv_shortcut: Conv2d?
    public let outputScaleFactor: Float

    public init(inChannels: Int, outChannels: Int? = nil, tembChannels: Int?, groups: Int, groupsOut: Int? = nil,
                eps: Float = 1e-6, outputScaleFactor: Float = 1, generator: inout RandomGenerator) {
        let outChannels = outChannels ?? inChannels
        norm1 = GroupNorm(groups: groups, channels: inChannels, eps: eps)
        conv1 = Conv2d(inChannels, outChannels, kernelSize: 3, padding: 1, generator: &generator)
        time_emb_proj = tembChannels.map { Linear($0, outChannels, generator: &generator) }
        norm2 = GroupNorm(groups: groupsOut ?? groups, channels: outChannels, eps: eps)
        conv2 = Conv2d(outChannels, outChannels, kernelSize: 3, padding: 1, generator: &generator)
        conv_shortcut = inChannels != outChannels
            ? Conv2d(inChannels, outChannels, kernelSize: 1, generator: &generator) : nil
        self.outputScaleFactor = outputScaleFactor
    }

    /// x [B, C, H, W]; temb [B, tembChannels] (nil for the VAE's blocks, which have no projection).
    public func callAsFunction(_ x: Tensor, temb: Tensor? = nil) -> Tensor {
        forward(x, timeProjection: projectTime(temb))
    }

    /// time_emb_proj(silu(temb)) as [B, C, 1, 1]; nil without a projection or a temb.
    public func projectTime(_ temb: Tensor?) -> Tensor? {
        guard let time_emb_proj, let temb else { return nil }
        let t = time_emb_proj(temb.silu())
        return t.reshaped([t.shape[0], t.shape[1], 1, 1])
    }

    /// The block given its time projection (`projectTime`). Gradient checkpointing recomputes
    /// this part only: with the projection outside, the time embedding's gradient sums the blocks'
    /// terms in the same order as without checkpointing.
    public func forward(_ x: Tensor, timeProjection t: Tensor?) -> Tensor {
        var h = conv1(norm1(x).silu())
        if let t { h = h + t }
        h = conv2(norm2(h).silu())
        var out = (conv_shortcut?(x) ?? x) + h
        if outputScaleFactor != 1 { out = out / outputScaleFactor }
        return out
    }
}

/// diffusers' `Downsample2D` with a convolution: a 3×3 stride-2 conv. With `padding` 0 (the VAE
/// encoder) the input is first padded by one zero row and column at the bottom and right, as
/// diffusers does, so the halving is exact.
public final class Downsample2D: Module {
    public let conv: Conv2d
    public let padding: Int

    public init(channels: Int, outChannels: Int? = nil, padding: Int = 1, generator: inout RandomGenerator) {
        conv = Conv2d(channels, outChannels ?? channels, kernelSize: 3, stride: 2, padding: padding, generator: &generator)
        self.padding = padding
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        guard padding == 0 else { return conv(x) }
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let right = Tensor.concat([x, Tensor.zeros([b, c, h, 1])], axis: 3)
        return conv(Tensor.concat([right, Tensor.zeros([b, c, 1, w + 1])], axis: 2))
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour ×2, then a 3×3 conv.
public final class Upsample2D: Module {
    public let conv: Conv2d

    public init(channels: Int, outChannels: Int? = nil, generator: inout RandomGenerator) {
        conv = Conv2d(channels, outChannels ?? channels, kernelSize: 3, padding: 1, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { conv(x.upsampleNearest2x()) }
}

// MARK: - Attention

/// diffusers' `Attention` with the default (scaled dot-product) processor.
///
/// Self-attention when called without `encoderHiddenStates`, cross-attention otherwise. The VAE
/// mid-block form takes [B, C, H, W], has a `group_norm`, a residual connection and a rescale
/// factor; the transformer form takes [B, N, C]. Attention runs through
/// `scaledDotProductAttention`, which is chunked over queries: no [N, N] score matrix is ever
/// held whole, so 4,096 tokens (64×64 latents) are fine.
public final class Attention: Module {
    public let group_norm: GroupNorm?
    public let to_q: Linear
    public let to_k: Linear
    public let to_v: Linear
    /// diffusers' `to_out` is [Linear, Dropout]; the dropout has no parameters and is omitted.
    public let to_out: [Linear]
    public let heads: Int
    public let residualConnection: Bool
    public let rescaleOutputFactor: Float
    /// While set, called on every forward pass with the attention probabilities
    /// softmax(q·kᵀ/√d) [B, heads, N, M], recorded for autodiff: losses on attention maps (MACE)
    /// need them, and the fused attention keeps its own out of reach. Costs one extra score matrix.
    public var probabilityObserver: ((Tensor) -> Void)?

    /// - Parameters:
    ///   - crossAttentionDim: width of `encoderHiddenStates` (nil: self-attention, keys from the query input)
    ///   - bias: whether to_q/to_k/to_v have biases (false in the UNet's transformer blocks, true in the VAE)
    ///   - normNumGroups: adds the VAE form's `group_norm` with `eps`
    public init(queryDim: Int, crossAttentionDim: Int? = nil, heads: Int, dimHead: Int, bias: Bool = false,
                outBias: Bool = true, normNumGroups: Int? = nil, eps: Float = 1e-5, residualConnection: Bool = false,
                rescaleOutputFactor: Float = 1, generator: inout RandomGenerator) {
        let inner = heads * dimHead
        let contextDim = crossAttentionDim ?? queryDim
        group_norm = normNumGroups.map { GroupNorm(groups: $0, channels: queryDim, eps: eps) }
        to_q = Linear(queryDim, inner, bias: bias, generator: &generator)
        to_k = Linear(contextDim, inner, bias: bias, generator: &generator)
        to_v = Linear(contextDim, inner, bias: bias, generator: &generator)
        to_out = [Linear(inner, queryDim, bias: outBias, generator: &generator)]
        self.heads = heads
        self.residualConnection = residualConnection
        self.rescaleOutputFactor = rescaleOutputFactor
    }

    /// [B, N, H·D] → [B, H, N, D]
    private func splitHeads(_ x: Tensor) -> Tensor {
        let (b, n, inner) = (x.shape[0], x.shape[1], x.shape[2])
        return x.reshaped([b, n, heads, inner / heads]).permuted([0, 2, 1, 3])
    }

    /// - Parameters:
    ///   - hiddenStates: [B, N, C], or [B, C, H, W] for the VAE form
    ///   - encoderHiddenStates: [B, M, crossAttentionDim] for cross-attention
    ///   - mask: broadcastable to [B, heads, N, M]; nonzero entries may be attended to
    public func callAsFunction(_ hiddenStates: Tensor, encoderHiddenStates: Tensor? = nil, mask: Tensor? = nil) -> Tensor {
        let residual = hiddenStates
        var x = hiddenStates
        let imageShape: [Int]? = x.rank == 4 ? x.shape : nil
        if let imageShape {
            // [B, C, H, W] → [B, C, HW]; group norm over channels; then tokens [B, HW, C].
            x = x.reshaped([imageShape[0], imageShape[1], imageShape[2] * imageShape[3]])
        }
        if let group_norm { x = group_norm(x) }
        if imageShape != nil { x = x.permuted([0, 2, 1]) }

        let context = encoderHiddenStates ?? x
        let q = splitHeads(to_q(x))
        let k = splitHeads(to_k(context))
        let v = splitHeads(to_v(context))
        let attended = scaledDotProductAttention(q, k, v, mask: mask)   // [B, H, N, D]
        if let probabilityObserver {
            var scores = matmul(q, k.transposed(2, 3)) * (1 / Float(q.shape[3]).squareRoot())
            // Masked keys get −1e9 before the softmax (probability 0), as the fused kernel's mask.
            if let mask { scores = scores + (mask - 1) * 1e9 }
            probabilityObserver(scores.softmax(axis: -1))
        }
        let (b, n) = (attended.shape[0], attended.shape[2])
        var out = to_out[0](attended.permuted([0, 2, 1, 3]).reshaped([b, n, -1]))

        if let imageShape { out = out.permuted([0, 2, 1]).reshaped(imageShape) }
        if residualConnection { out = out + residual }
        if rescaleOutputFactor != 1 { out = out / rescaleOutputFactor }
        return out
    }
}

// MARK: - Transformer

/// diffusers' `GEGLU`: proj to 2·inner, then hidden · gelu(gate) (exact erf GELU).
public final class GEGLU: Module {
    public let proj: Linear

    public init(dimIn: Int, dimOut: Int, generator: inout RandomGenerator) {
        proj = Linear(dimIn, 2 * dimOut, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let parts = proj(x).chunked(2, axis: -1)
        return parts[0] * parts[1].gelu()
    }
}

/// diffusers' `FeedForward` with the GEGLU activation: `net` = [GEGLU, Dropout, Linear], so the
/// keys are `net.0.proj.*` and `net.2.*`.
public final class FeedForward: Module {
    public let net: [Module]

    public init(dim: Int, mult: Int = 4, dimOut: Int? = nil, generator: inout RandomGenerator) {
        let inner = dim * mult
        net = [GEGLU(dimIn: dim, dimOut: inner, generator: &generator), Dropout(0),
               Linear(inner, dimOut ?? dim, generator: &generator)]
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        (net[2] as! Linear)((net[0] as! GEGLU)(x))
    }
}

/// diffusers' `BasicTransformerBlock` with layer norms: self-attention, cross-attention and a
/// GEGLU feed-forward, each pre-normed and residual.
public final class BasicTransformerBlock: Module {
    public let norm1: LayerNorm
    public let attn1: Attention
    public let norm2: LayerNorm
    public let attn2: Attention
    public let norm3: LayerNorm
    public let ff: FeedForward
    /// diffusers' `only_cross_attention`: attn1 also attends to the encoder hidden states.
    public let onlyCrossAttention: Bool

    public init(dim: Int, heads: Int, headDim: Int, crossAttentionDim: Int, onlyCrossAttention: Bool = false,
                normEps: Float = 1e-5, generator: inout RandomGenerator) {
        norm1 = LayerNorm(dim, eps: normEps)
        attn1 = Attention(queryDim: dim, crossAttentionDim: onlyCrossAttention ? crossAttentionDim : nil,
                          heads: heads, dimHead: headDim, generator: &generator)
        norm2 = LayerNorm(dim, eps: normEps)
        attn2 = Attention(queryDim: dim, crossAttentionDim: crossAttentionDim, heads: heads, dimHead: headDim,
                          generator: &generator)
        norm3 = LayerNorm(dim, eps: normEps)
        ff = FeedForward(dim: dim, generator: &generator)
        self.onlyCrossAttention = onlyCrossAttention
    }

    /// x [B, N, dim]; context [B, M, crossAttentionDim]; contextMask broadcastable to [B, H, N, M].
    public func callAsFunction(_ x: Tensor, context: Tensor, contextMask: Tensor? = nil) -> Tensor {
        var h = x
        h = attn1(norm1(h), encoderHiddenStates: onlyCrossAttention ? context : nil,
                  mask: onlyCrossAttention ? contextMask : nil) + h
        h = attn2(norm2(h), encoderHiddenStates: context, mask: contextMask) + h
        h = ff(norm3(h)) + h
        return h
    }
}

/// diffusers' `Transformer2DModel` over continuous input: GroupNorm (eps 1e-6), proj_in, the
/// transformer blocks over the H·W tokens, proj_out, residual. proj_in/proj_out are 1×1 convs
/// (SD1) or linear layers (SD2's `use_linear_projection`).
public final class Transformer2DModel: Module {
    public let norm: GroupNorm
    /// `Conv2d` (1×1) or `Linear`.
    public let proj_in: Module
    public let transformer_blocks: [BasicTransformerBlock]
    /// `Conv2d` (1×1) or `Linear`.
    public let proj_out: Module
    public let useLinearProjection: Bool

    public init(heads: Int, headDim: Int, inChannels: Int, layers: Int = 1, crossAttentionDim: Int, normNumGroups: Int,
                useLinearProjection: Bool, onlyCrossAttention: Bool = false, generator: inout RandomGenerator) {
        let inner = heads * headDim
        norm = GroupNorm(groups: normNumGroups, channels: inChannels, eps: 1e-6)
        proj_in = useLinearProjection
            ? Linear(inChannels, inner, generator: &generator)
            : Conv2d(inChannels, inner, kernelSize: 1, generator: &generator)
        var blocks: [BasicTransformerBlock] = []
        for _ in 0..<layers {
            blocks.append(BasicTransformerBlock(dim: inner, heads: heads, headDim: headDim, crossAttentionDim: crossAttentionDim,
                                                onlyCrossAttention: onlyCrossAttention, generator: &generator))
        }
        transformer_blocks = blocks
        proj_out = useLinearProjection
            ? Linear(inner, inChannels, generator: &generator)
            : Conv2d(inner, inChannels, kernelSize: 1, generator: &generator)
        self.useLinearProjection = useLinearProjection
    }

    /// x [B, C, H, W]; context [B, M, D]; contextMask broadcastable to [B, heads, H·W, M].
    public func callAsFunction(_ x: Tensor, context: Tensor, contextMask: Tensor? = nil) -> Tensor {
        let (b, c, height, width) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        var h = norm(x)
        if let conv = proj_in as? Conv2d {
            h = conv(h)
            h = h.permuted([0, 2, 3, 1]).reshaped([b, height * width, h.shape[1]])
        } else {
            h = (proj_in as! Linear)(h.permuted([0, 2, 3, 1]).reshaped([b, height * width, c]))
        }
        for block in transformer_blocks { h = block(h, context: context, contextMask: contextMask) }
        let inner = h.shape[2]
        if let conv = proj_out as? Conv2d {
            h = conv(h.reshaped([b, height, width, inner]).permuted([0, 3, 1, 2]))
        } else {
            h = (proj_out as! Linear)(h).reshaped([b, height, width, c]).permuted([0, 3, 1, 2])
        }
        return h + x
    }
}
