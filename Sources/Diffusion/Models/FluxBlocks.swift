import Foundation
import NN
import Tensor

// The pieces of diffusers' `FluxTransformer2DModel`, under diffusers' class and attribute names
// so that `namedParameters()` yields the keys of a diffusers FLUX state dict
// (`transformer_blocks.0.attn.norm_added_q.weight`, `single_transformer_blocks.3.proj_mlp.bias`, …).
// Dropout is omitted (FLUX uses none); everything else is the reference's arithmetic.

// MARK: - Normalisation and modulation

/// diffusers' `RMSNorm` with a learned scale (FLUX's per-head QK norm, ε = 1e-6).
public final class RMSNorm: Module {
    public let weight: Tensor
    public let eps: Float

    public init(_ dim: Int, eps: Float = 1e-6) {
        weight = Tensor.ones([dim], requiresGrad: true)
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.rmsNorm(weight: weight, eps: eps) }
}

/// Splits a modulation vector [B, k·D] into k tensors [B, 1, D] that broadcast over tokens.
private func modulationChunks(_ emb: Tensor, _ k: Int) -> [Tensor] {
    emb.reshaped([emb.shape[0], 1, emb.shape[1]]).chunked(k, axis: -1)
}

/// LayerNorm without affine parameters (ε = 1e-6), then x̂·(1 + scale) + shift.
private func modulate(_ x: Tensor, shift: Tensor, scale: Tensor) -> Tensor {
    x.layerNorm(weight: nil, bias: nil, eps: 1e-6) * (scale + 1) + shift
}

/// diffusers' `AdaLayerNormZero` (FLUX's double-stream form): six modulation vectors from
/// `linear(silu(temb))`: shift, scale, gate of the attention and shift, scale, gate of the MLP.
/// Returns the modulated attention input and the other four.
public final class AdaLayerNormZero: Module {
    public let linear: Linear

    public init(_ dim: Int, generator: inout RandomGenerator) {
        linear = Linear(dim, 6 * dim, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor, emb: Tensor)
        -> (x: Tensor, gateMSA: Tensor, shiftMLP: Tensor, scaleMLP: Tensor, gateMLP: Tensor) {
        let m = modulationChunks(linear(emb.silu()), 6)
        return (modulate(x, shift: m[0], scale: m[1]), m[2], m[3], m[4], m[5])
    }
}

/// diffusers' `AdaLayerNormZeroSingle`: shift, scale and gate for a single-stream block.
public final class AdaLayerNormZeroSingle: Module {
    public let linear: Linear

    public init(_ dim: Int, generator: inout RandomGenerator) {
        linear = Linear(dim, 3 * dim, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor, emb: Tensor) -> (x: Tensor, gate: Tensor) {
        let m = modulationChunks(linear(emb.silu()), 3)
        return (modulate(x, shift: m[0], scale: m[1]), m[2])
    }
}

/// diffusers' `AdaLayerNormContinuous` with a non-affine layer norm (FLUX's `norm_out`). Note the
/// order: the projection holds the SCALE first, then the shift (unlike AdaLayerNormZero).
public final class AdaLayerNormContinuous: Module {
    public let linear: Linear

    public init(_ dim: Int, conditioningDim: Int, generator: inout RandomGenerator) {
        linear = Linear(conditioningDim, 2 * dim, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor, conditioning: Tensor) -> Tensor {
        let m = modulationChunks(linear(conditioning.silu()), 2)
        return modulate(x, shift: m[1], scale: m[0])
    }
}

// MARK: - Embeddings

/// diffusers' `PixArtAlphaTextProjection` with SiLU (the pooled text vector's projection):
/// linear_1 → SiLU → linear_2, the same layers and keys as `TimestepEmbedding`.
public typealias PixArtAlphaTextProjection = TimestepEmbedding

/// diffusers' `CombinedTimestepTextProjEmbeddings` and, with `guidance`,
/// `CombinedTimestepGuidanceTextProjEmbeddings`: the conditioning vector
///
///     temb = timestep_embedder(proj(t)) [+ guidance_embedder(proj(g))] + text_embedder(pooled)
///
/// where proj is the 256-channel sinusoidal embedding (flip_sin_to_cos, no shift).
public final class CombinedTimestepTextProjEmbeddings: Module {
    public let timestep_embedder: TimestepEmbedding
    public let guidance_embedder: TimestepEmbedding?
    public let text_embedder: PixArtAlphaTextProjection

    /// Channels of the sinusoidal projection (`Timesteps(num_channels=256)`).
    public static let projectionChannels = 256

    public init(embeddingDim: Int, pooledProjectionDim: Int, guidance: Bool, generator: inout RandomGenerator) {
        let channels = Self.projectionChannels
        timestep_embedder = TimestepEmbedding(inChannels: channels, timeEmbedDim: embeddingDim, generator: &generator)
        guidance_embedder = guidance
            ? TimestepEmbedding(inChannels: channels, timeEmbedDim: embeddingDim, generator: &generator) : nil
        text_embedder = PixArtAlphaTextProjection(inChannels: pooledProjectionDim, timeEmbedDim: embeddingDim,
                                                  generator: &generator)
    }

    static func projection(_ values: [Float]) -> Tensor {
        timestepEmbedding(values, dim: projectionChannels, flipSinToCos: true, freqShift: 0)
    }

    /// `timestep` and `guidance` are already scaled (×1000) as the model passes them; [B] each.
    public func callAsFunction(timestep: [Float], guidance: [Float]?, pooled: Tensor) -> Tensor {
        var temb = timestep_embedder(Self.projection(timestep))
        if let guidance_embedder {
            precondition(guidance != nil, "FLUX: this model has guidance_embeds and needs a guidance value")
            temb = temb + guidance_embedder(Self.projection(guidance!))
        }
        return temb + text_embedder(pooled)
    }
}

/// diffusers' `FluxPosEmbed`: rotary tables for position ids [S, axes] (FLUX: (0, row, col) for
/// image tokens, zeros for text tokens). Axis i with `axesDims[i]` features contributes angles
/// id·θ^(−2j/dᵢ), j < dᵢ/2, each repeated for its pair; the axes are concatenated. The angles,
/// cos and sin are evaluated in Float64 and rounded, as diffusers does on the CPU.
public struct FluxPosEmbed: Sendable {
    public let theta: Double
    public let axesDims: [Int]

    public init(theta: Double = 10000, axesDims: [Int]) {
        self.theta = theta
        self.axesDims = axesDims
    }

    /// (cos, sin), each [S, Σ axesDims].
    public func callAsFunction(_ ids: Tensor) -> (cos: Tensor, sin: Tensor) {
        precondition(ids.rank == 2 && ids.shape[1] == axesDims.count,
                     "FluxPosEmbed: ids must be [S, \(axesDims.count)], got \(ids.shape)")
        let tokens = ids.shape[0], width = axesDims.reduce(0, +)
        var cosines = [Float](repeating: 0, count: tokens * width), sines = cosines
        var offset = 0
        for (axis, dim) in axesDims.enumerated() {
            // diffusers: 1 / θ^(arange(0, dim, 2)[: dim/2] / dim) in float64.
            let frequencies = (0..<(dim / 2)).map { j in 1 / Foundation.pow(theta, Double(2 * j) / Double(dim)) }
            for s in 0..<tokens {
                let position = Double(ids.pointer[s * axesDims.count + axis])
                for (j, frequency) in frequencies.enumerated() {
                    let angle = position * frequency
                    let (c, sn) = (Float(Foundation.cos(angle)), Float(Foundation.sin(angle)))
                    let at = s * width + offset + 2 * j
                    (cosines[at], cosines[at + 1], sines[at], sines[at + 1]) = (c, c, sn, sn)
                }
            }
            offset += dim
        }
        return (Tensor(shape: [tokens, width], scalars: cosines), Tensor(shape: [tokens, width], scalars: sines))
    }
}

// MARK: - Attention

/// diffusers' FLUX attention (`Attention` with `FluxAttnProcessor2_0`): per-head RMS-normed
/// queries and keys, rotary embedding, scaled dot-product attention.
///
/// The double-stream form (`add_q_proj` … `to_add_out`) attends jointly over [text; image]:
/// the text stream has its own projections and norms, the two are concatenated along the tokens
/// (text first), rotated by the rotary tables of [text ids; image ids], and split again after
/// attention. The single-stream form (`preOnly`) has no output projection: the block's
/// `proj_out` takes the attention output together with the MLP's.
public final class FluxAttention: Module {
    public let norm_q: RMSNorm
    public let norm_k: RMSNorm
    public let to_q: Linear
    public let to_k: Linear
    public let to_v: Linear
    public let add_k_proj: Linear?
    public let add_v_proj: Linear?
    public let add_q_proj: Linear?
    /// diffusers' `to_out` is [Linear, Dropout]; absent in the single-stream form.
    public let to_out: [Linear]?
    public let to_add_out: Linear?
    public let norm_added_q: RMSNorm?
    public let norm_added_k: RMSNorm?
    public let heads: Int
    /// While set, called on every forward pass with the attention probabilities
    /// softmax(q·kᵀ/√d) [B, heads, M + N, M + N] over [text; image], recorded for autodiff:
    /// losses on attention maps (EraseAnything) need them, and the fused attention keeps its own
    /// out of reach. Costs one extra score matrix.
    public var probabilityObserver: ((Tensor) -> Void)?

    public init(dim: Int, heads: Int, headDim: Int, joint: Bool, preOnly: Bool, generator: inout RandomGenerator) {
        let inner = heads * headDim
        norm_q = RMSNorm(headDim)
        norm_k = RMSNorm(headDim)
        to_q = Linear(dim, inner, generator: &generator)
        to_k = Linear(dim, inner, generator: &generator)
        to_v = Linear(dim, inner, generator: &generator)
        add_k_proj = joint ? Linear(dim, inner, generator: &generator) : nil
        add_v_proj = joint ? Linear(dim, inner, generator: &generator) : nil
        add_q_proj = joint ? Linear(dim, inner, generator: &generator) : nil
        to_out = preOnly ? nil : [Linear(inner, dim, generator: &generator)]
        to_add_out = joint ? Linear(inner, dim, generator: &generator) : nil
        norm_added_q = joint ? RMSNorm(headDim) : nil
        norm_added_k = joint ? RMSNorm(headDim) : nil
        self.heads = heads
    }

    /// [B, S, H·D] → [B, H, S, D], RMS-normed per head when `norm` is given.
    private func heads(_ x: Tensor, norm: RMSNorm? = nil) -> Tensor {
        let (b, s, inner) = (x.shape[0], x.shape[1], x.shape[2])
        var h = x.reshaped([b, s, heads, inner / heads])
        if let norm { h = norm(h) }
        return h.permuted([0, 2, 1, 3])
    }

    /// - Parameters:
    ///   - x: image tokens [B, N, dim] (all tokens in the single-stream form)
    ///   - context: text tokens [B, M, dim] (double-stream form only)
    ///   - rope: rotary tables for the M + N tokens, text first
    /// - Returns: the image tokens' output and (double-stream) the text tokens'
    public func callAsFunction(_ x: Tensor, context: Tensor? = nil, rope: (cos: Tensor, sin: Tensor)?)
        -> (x: Tensor, context: Tensor?) {
        var q = heads(to_q(x), norm: norm_q)
        var k = heads(to_k(x), norm: norm_k)
        var v = heads(to_v(x))
        let textTokens = context?.shape[1] ?? 0
        if let context, let add_q_proj, let add_k_proj, let add_v_proj {
            q = Tensor.concat([heads(add_q_proj(context), norm: norm_added_q), q], axis: 2)
            k = Tensor.concat([heads(add_k_proj(context), norm: norm_added_k), k], axis: 2)
            v = Tensor.concat([heads(add_v_proj(context)), v], axis: 2)
        } else {
            precondition(context == nil, "FluxAttention: a single-stream block takes no context")
        }
        if let rope {
            q = q.rotaryEmbedding(cos: rope.cos, sin: rope.sin)
            k = k.rotaryEmbedding(cos: rope.cos, sin: rope.sin)
        }
        let attended = scaledDotProductAttention(q, k, v)   // [B, H, M + N, D]
        if let probabilityObserver {
            probabilityObserver((matmul(q, k.transposed(2, 3)) * (1 / Float(q.shape[3]).squareRoot())).softmax(axis: -1))
        }
        let (b, total) = (attended.shape[0], attended.shape[2])
        let tokens = attended.permuted([0, 2, 1, 3]).reshaped([b, total, -1])
        guard context != nil else { return (to_out?[0](tokens) ?? tokens, nil) }
        let parts = tokens.split(sizes: [textTokens, total - textTokens], axis: 1)
        return (to_out![0](parts[1]), to_add_out!(parts[0]))
    }
}

// MARK: - Feed-forward

/// diffusers' `GELU` activation module: a projection followed by GELU (tanh approximation in FLUX).
public final class GELUProjection: Module {
    public let proj: Linear

    public init(dimIn: Int, dimOut: Int, generator: inout RandomGenerator) {
        proj = Linear(dimIn, dimOut, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { proj(x).gelu(approximation: .tanh) }
}

/// diffusers' `FeedForward(activation_fn="gelu-approximate")`: `net` = [GELU, Dropout, Linear],
/// keys `net.0.proj.*` and `net.2.*`, hidden width 4·dim.
public final class FluxFeedForward: Module {
    public let net: [Module]

    public init(dim: Int, mult: Int = 4, generator: inout RandomGenerator) {
        net = [GELUProjection(dimIn: dim, dimOut: dim * mult, generator: &generator), Dropout(0),
               Linear(dim * mult, dim, generator: &generator)]
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        (net[2] as! Linear)((net[0] as! GELUProjection)(x))
    }
}

// MARK: - Blocks

/// diffusers' `FluxTransformerBlock` (double stream): image and text tokens keep separate
/// weights (norms, projections, MLPs) and meet only in the joint attention; each stream is
/// modulated by its own 6-way AdaLN-Zero from the conditioning vector.
public final class FluxTransformerBlock: Module {
    public let norm1: AdaLayerNormZero
    public let norm1_context: AdaLayerNormZero
    public let attn: FluxAttention
    public let ff: FluxFeedForward
    public let ff_context: FluxFeedForward

    public init(dim: Int, heads: Int, headDim: Int, generator: inout RandomGenerator) {
        norm1 = AdaLayerNormZero(dim, generator: &generator)
        norm1_context = AdaLayerNormZero(dim, generator: &generator)
        attn = FluxAttention(dim: dim, heads: heads, headDim: headDim, joint: true, preOnly: false, generator: &generator)
        ff = FluxFeedForward(dim: dim, generator: &generator)
        ff_context = FluxFeedForward(dim: dim, generator: &generator)
    }

    /// Returns the updated (image, text) tokens.
    public func callAsFunction(_ x: Tensor, context: Tensor, temb: Tensor, rope: (cos: Tensor, sin: Tensor)?)
        -> (x: Tensor, context: Tensor) {
        let nx = norm1(x, emb: temb)
        let nc = norm1_context(context, emb: temb)
        let attended = attn(nx.x, context: nc.x, rope: rope)

        var x = x + nx.gateMSA * attended.x
        x = x + nx.gateMLP * ff(modulate(x, shift: nx.shiftMLP, scale: nx.scaleMLP))

        var c = context + nc.gateMSA * attended.context!
        c = c + nc.gateMLP * ff_context(modulate(c, shift: nc.shiftMLP, scale: nc.scaleMLP))
        return (x, c)
    }
}

/// diffusers' `FluxSingleTransformerBlock`: one stream over [text; image], attention and MLP in
/// parallel from the same modulated input, `proj_out` over their concatenation, gated residual.
public final class FluxSingleTransformerBlock: Module {
    public let norm: AdaLayerNormZeroSingle
    public let proj_mlp: Linear
    public let proj_out: Linear
    public let attn: FluxAttention

    public init(dim: Int, heads: Int, headDim: Int, mlpRatio: Int = 4, generator: inout RandomGenerator) {
        norm = AdaLayerNormZeroSingle(dim, generator: &generator)
        proj_mlp = Linear(dim, dim * mlpRatio, generator: &generator)
        proj_out = Linear(dim + dim * mlpRatio, dim, generator: &generator)
        attn = FluxAttention(dim: dim, heads: heads, headDim: headDim, joint: false, preOnly: true, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor, temb: Tensor, rope: (cos: Tensor, sin: Tensor)?) -> Tensor {
        let n = norm(x, emb: temb)
        let mlp = proj_mlp(n.x).gelu(approximation: .tanh)
        let attended = attn(n.x, rope: rope).x
        return x + n.gate * proj_out(Tensor.concat([attended, mlp], axis: 2))
    }
}
