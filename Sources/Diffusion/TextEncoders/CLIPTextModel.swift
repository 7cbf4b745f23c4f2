import Foundation
import NN
import Tensor

/// transformers' `CLIPTextConfig`, read from a `config.json` (a full `CLIPConfig` with a
/// `text_config` entry works too). Missing fields take transformers' defaults.
public struct CLIPTextConfig: ModelConfig, Equatable, Sendable {
    public var vocabSize = 49408
    public var hiddenSize = 512
    public var intermediateSize = 2048
    public var numHiddenLayers = 12
    public var numAttentionHeads = 8
    public var maxPositionEmbeddings = 77
    public var hiddenAct = HiddenActivation.quickGELU
    public var layerNormEps = 1e-5
    public var bosTokenId: Int? = 49406
    /// The end token. The legacy value 2 (SD1.x/SD2 configs) means "the highest id in the
    /// sequence", which is where CLIP's tokenizer puts `<|endoftext|>`.
    public var eosTokenId: Int? = 49407
    public var padTokenId: Int? = 1
    public var projectionDim: Int? = 512

    public static let fields: [ConfigField<Self>] = [
        .init("vocab_size", \.vocabSize, .size),
        .init("hidden_size", \.hiddenSize, .size),
        .init("intermediate_size", \.intermediateSize, .size),
        .init("num_hidden_layers", \.numHiddenLayers, .count),
        .init("num_attention_heads", \.numAttentionHeads, .count),
        .init("max_position_embeddings", \.maxPositionEmbeddings, .size),
        .init("hidden_act", \.hiddenAct),
        .init("layer_norm_eps", \.layerNormEps, .positive),
        .init("bos_token_id", \.bosTokenId, .integers(0...FieldRule.maxSize), read: tokenId),
        .init("eos_token_id", \.eosTokenId, .integers(0...FieldRule.maxSize), read: tokenId),
        .init("pad_token_id", \.padTokenId, .integers(0...FieldRule.maxSize), read: tokenId),
        .init("projection_dim", \.projectionDim, .size),
    ]

    /// A token id that may be a list (the first entry is used).
    private static func tokenId(_ c: KeyedDecodingContainer<ConfigKey>, _ key: ConfigKey) throws -> Int? {
        if let list = try? c.decode([Int].self, forKey: key) { return list.first }
        return try c.decode(Int.self, forKey: key)
    }

    public init() {}

    public init(vocabSize: Int = 49408, hiddenSize: Int = 512, intermediateSize: Int = 2048,
                numHiddenLayers: Int = 12, numAttentionHeads: Int = 8, maxPositionEmbeddings: Int = 77,
                hiddenAct: HiddenActivation = .quickGELU, layerNormEps: Double = 1e-5,
                bosTokenId: Int? = 49406, eosTokenId: Int? = 49407, padTokenId: Int? = 1, projectionDim: Int? = 512) {
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.hiddenAct = hiddenAct
        self.layerNormEps = layerNormEps
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.padTokenId = padTokenId
        self.projectionDim = projectionDim
    }

    public init(from decoder: Decoder) throws {
        let c = try? decoder.container(keyedBy: ConfigKey.self)
        if let c, c.contains(ConfigKey("text_config")) {
            self = try c.decode(CLIPTextConfig.self, forKey: ConfigKey("text_config"))
            return
        }
        try self.init(fieldsFrom: decoder)
        try validate()
    }

    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    /// Throws for values out of range, heads that do not divide the width, or a model that
    /// would not fit in memory (checked when the config is read).
    public func validate() throws {
        try checkFieldRanges()
        try checkTextEncoder(hiddenSize: hiddenSize, heads: numAttentionHeads, parameters: parameterCount, model: "CLIP text encoder")
    }

    /// Parameters of the model, as a Double so that no config can overflow it.
    public var parameterCount: Double {
        let h = Double(hiddenSize), i = Double(intermediateSize)
        let layer = 2 * h + 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h)
        return Double(vocabSize + maxPositionEmbeddings) * h + Double(numHiddenLayers) * layer + 2 * h
    }

    public var headDim: Int { hiddenSize / numAttentionHeads }
}

// MARK: Layers (parameter names follow transformers' checkpoint keys)

public final class CLIPTextEmbeddings: Module {
    @Key("token_embedding") public var tokenEmbedding: Embedding
    @Key("position_embedding") public var positionEmbedding: Embedding

    init(_ config: CLIPTextConfig, generator: inout RandomGenerator) {
        super.init()
        tokenEmbedding = Embedding(config.vocabSize, config.hiddenSize, generator: &generator)
        positionEmbedding = Embedding(config.maxPositionEmbeddings, config.hiddenSize, generator: &generator)
    }
}

public final class CLIPAttention: Module {
    @Key("q_proj") public var qProj: Linear
    @Key("k_proj") public var kProj: Linear
    @Key("v_proj") public var vProj: Linear
    @Key("out_proj") public var outProj: Linear
    public let heads: Int

    init(_ config: CLIPTextConfig, generator: inout RandomGenerator) {
        heads = config.numAttentionHeads
        super.init()
        let d = config.hiddenSize
        kProj = Linear(d, d, generator: &generator)
        vProj = Linear(d, d, generator: &generator)
        qProj = Linear(d, d, generator: &generator)
        outProj = Linear(d, d, generator: &generator)
    }

    /// Self-attention of x [B, T, D]; `mask` broadcasts to [B, H, T, T] (nonzero = may attend).
    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        multiHeadAttention(x, heads: heads, query: qProj, key: kProj, value: vProj, output: outProj, mask: mask)
    }
}

/// Projects x [B, T, D] to heads, attends, and projects back.
func multiHeadAttention(_ x: Tensor, heads: Int, query: Linear, key: Linear, value: Linear, output: Linear,
                        mask: Tensor?) -> Tensor {
    let (b, t, d) = (x.shape[0], x.shape[1], x.shape[2])
    let headDim = d / heads
    func split(_ y: Tensor) -> Tensor { y.reshaped([b, t, heads, headDim]).permuted([0, 2, 1, 3]) }
    let attended = scaledDotProductAttention(split(query(x)), split(key(x)), split(value(x)), mask: mask,
                                             scale: 1 / Float(headDim).squareRoot())
    return output(attended.permuted([0, 2, 1, 3]).reshaped([b, t, d]))
}

public final class CLIPMLP: Module {
    public let fc1: Linear
    public let fc2: Linear
    public let activation: HiddenActivation

    init(_ config: CLIPTextConfig, generator: inout RandomGenerator) {
        fc1 = Linear(config.hiddenSize, config.intermediateSize, generator: &generator)
        fc2 = Linear(config.intermediateSize, config.hiddenSize, generator: &generator)
        activation = config.hiddenAct
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { fc2(activation(fc1(x))) }
}

public final class CLIPEncoderLayer: Module {
    @Key("self_attn") public var selfAttention: CLIPAttention
    @Key("layer_norm1") public var layerNorm1: LayerNorm
    public let mlp: CLIPMLP
    @Key("layer_norm2") public var layerNorm2: LayerNorm

    init(_ config: CLIPTextConfig, generator: inout RandomGenerator) {
        mlp = CLIPMLP(config, generator: &generator)
        super.init()
        selfAttention = CLIPAttention(config, generator: &generator)
        layerNorm1 = LayerNorm(config.hiddenSize, eps: Float(config.layerNormEps))
        layerNorm2 = LayerNorm(config.hiddenSize, eps: Float(config.layerNormEps))
    }

    /// Pre-norm residual block: x + attn(ln1(x)), then + mlp(ln2(·)).
    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        let h = x + selfAttention(layerNorm1(x), mask: mask)
        return h + mlp(layerNorm2(h))
    }
}

public final class CLIPEncoder: Module {
    public let layers: [CLIPEncoderLayer]

    init(_ config: CLIPTextConfig, generator: inout RandomGenerator) {
        layers = (0..<config.numHiddenLayers).map { _ in CLIPEncoderLayer(config, generator: &generator) }
    }
}

/// What `CLIPTextModel` returns.
public struct CLIPTextModelOutput {
    /// [B, T, D], after the final layer norm.
    public var lastHiddenState: Tensor
    /// [B, D]: the final states at each sequence's end token.
    public var pooledOutput: Tensor
    /// When asked for: the embeddings followed by every layer's output (before the final layer
    /// norm), as transformers' `hidden_states`; `hiddenStates[L − 1]` is the penultimate layer's.
    public var hiddenStates: [Tensor]

    /// The penultimate layer's output (no final layer norm), when hidden states were kept.
    public var penultimateHiddenState: Tensor? { hiddenStates.count >= 2 ? hiddenStates[hiddenStates.count - 2] : nil }
}

/// CLIP's text transformer (transformers' `CLIPTextModel`): token + position embeddings, a stack
/// of pre-norm causal self-attention layers, a final layer norm, and the pooled end-token state.
///
/// Parameter names are the checkpoint keys without the `text_model.` prefix
/// (`embeddings.token_embedding.weight`, `encoder.layers.0.self_attn.q_proj.weight`,
/// `final_layer_norm.weight`, …); `load(from:)` accepts keys with or without that prefix.
public final class CLIPTextModel: Module {
    public let config: CLIPTextConfig
    public let embeddings: CLIPTextEmbeddings
    public let encoder: CLIPEncoder
    @Key("final_layer_norm") public var finalLayerNorm: LayerNorm

    /// A model with random weights (PyTorch's default initialisation for each layer).
    public init(config: CLIPTextConfig, generator: inout RandomGenerator) {
        self.config = config
        embeddings = CLIPTextEmbeddings(config, generator: &generator)
        encoder = CLIPEncoder(config, generator: &generator)
        super.init()
        finalLayerNorm = LayerNorm(config.hiddenSize, eps: Float(config.layerNormEps))
    }

    public convenience init(config: CLIPTextConfig) {
        var generator = RandomGenerator(seed: 0)
        self.init(config: config, generator: &generator)
    }

    /// Loads `config.json` and `model.safetensors` (or its sharded index, or those of `variant`,
    /// see `WeightsVariant`) from a transformers model folder such as diffusers' `text_encoder/`.
    public static func load(from directory: URL, variant: String? = nil) throws -> CLIPTextModel {
        let configURL = directory.appendingPathComponent("config.json")
        let config = try CheckpointFiles.decode(CLIPTextConfig.self, from: configURL, what: "the CLIP text config")
        let model = CLIPTextModel(config: config)
        try model.load(from: try CheckpointFiles.weights(in: directory, variant: variant))
        model.eval()
        return model
    }

    /// Loads a safetensors checkpoint; keys may carry the `text_model.` prefix, and the
    /// `position_ids` buffer is ignored. Throws, changing nothing, if keys or shapes differ.
    public func load(from url: URL) throws {
        try loadCheckpoint(try CheckpointFiles.tensors(at: url, optionalPrefixes: ["text_model."]), from: url)
    }

    /// The parameters under their checkpoint keys, with `text_model.` in front when `prefixed`
    /// (the layout of SD checkpoints and of transformers 4).
    public func checkpointTensors(prefixed: Bool = true) -> [String: Tensor] {
        Dictionary(uniqueKeysWithValues: namedParameters().map { ((prefixed ? "text_model." : "") + $0.name, $0.tensor) })
    }

    /// Token embeddings [B, T, D] of `inputIds` (the `inputsEmbeds` a caller may edit).
    public func tokenEmbeddings(_ inputIds: [[Int]]) -> Tensor {
        let (b, t) = batchShape(inputIds, "CLIPTextModel")
        return embeddings.tokenEmbedding(inputIds.flatMap { $0 }, shape: [b, t])
    }

    /// Attention mask [1 or B, 1, T, T]: causal, and when given, padded keys (0 in
    /// `attentionMask`) are not attended to.
    static func causalMask(length t: Int, attentionMask: [[Int]]?) -> Tensor {
        guard let attentionMask else {
            return Tensor(shape: [1, 1, t, t]) { p in
                for i in 0..<t { for j in 0..<t { p[i * t + j] = j <= i ? 1 : 0 } }
            }
        }
        let b = attentionMask.count
        precondition(attentionMask.allSatisfy { $0.count == t }, "CLIPTextModel: attention mask is not [B, \(t)]")
        return Tensor(shape: [b, 1, t, t]) { p in
            for n in 0..<b { for i in 0..<t { for j in 0..<t {
                p[(n * t + i) * t + j] = j <= i && attentionMask[n][j] != 0 ? 1 : 0
            } } }
        }
    }

    /// Position of the end token in each sequence: the highest id for the legacy config
    /// (eos_token_id 2), else the first `eos_token_id` (0 if there is none, as in transformers).
    public func poolingPositions(_ inputIds: [[Int]]) -> [Int] {
        inputIds.map { ids in
            if config.eosTokenId == 2 || config.eosTokenId == nil {
                var best = 0
                for (i, id) in ids.enumerated() where id > ids[best] { best = i }
                return best
            }
            return ids.firstIndex(of: config.eosTokenId!) ?? 0
        }
    }

    /// Runs the model.
    /// - Parameters:
    ///   - inputIds: [B][T] token ids, T ≤ `maxPositionEmbeddings`. They pick the pooled position
    ///     and, unless `inputsEmbeds` is given, the token embeddings.
    ///   - attentionMask: optional [B][T] padding mask (1 = token) combined with the causal mask.
    ///     Stable Diffusion passes none.
    ///   - inputsEmbeds: optional [B, T, D] replacing the token embeddings (position embeddings
    ///     are still added): the handle for gradients with respect to the prompt's embeddings.
    ///   - outputHiddenStates: keep the embeddings and every layer's output.
    ///   - layerCount: run only the first `layerCount` layers (clip skip); the final layer norm
    ///     is applied to the last one run. Nil runs all of them.
    public func callAsFunction(inputIds: [[Int]], attentionMask: [[Int]]? = nil, inputsEmbeds: Tensor? = nil,
                               outputHiddenStates: Bool = false, layerCount: Int? = nil) -> CLIPTextModelOutput {
        let (b, t) = batchShape(inputIds, "CLIPTextModel")
        precondition(t <= config.maxPositionEmbeddings,
                     "CLIPTextModel: \(t) tokens, but at most \(config.maxPositionEmbeddings) positions")
        let tokens: Tensor
        if let inputsEmbeds {
            precondition(inputsEmbeds.shape == [b, t, config.hiddenSize],
                         "CLIPTextModel: inputsEmbeds \(inputsEmbeds.shape), expected \([b, t, config.hiddenSize])")
            tokens = inputsEmbeds
        } else {
            tokens = tokenEmbeddings(inputIds)
        }
        let positions = embeddings.positionEmbedding(Array(0..<t), shape: [1, t])
        var h = tokens + positions
        let mask = Self.causalMask(length: t, attentionMask: attentionMask)
        let count = layerCount ?? config.numHiddenLayers
        precondition((1...config.numHiddenLayers).contains(count), "CLIPTextModel: layerCount \(count) out of 1...\(config.numHiddenLayers)")
        var hidden: [Tensor] = outputHiddenStates ? [h] : []
        for layer in encoder.layers.prefix(count) {
            h = layer(h, mask: mask)
            if outputHiddenStates { hidden.append(h) }
        }
        let last = finalLayerNorm(h)
        let rows = poolingPositions(inputIds).enumerated().map { n, position in
            last.sliced([n..<(n + 1), position..<(position + 1)])
        }
        let pooled = Tensor.concat(rows, axis: 0).reshaped([b, config.hiddenSize])
        return CLIPTextModelOutput(lastHiddenState: last, pooledOutput: pooled, hiddenStates: hidden)
    }
}

/// Stable Diffusion's text conditioning from CLIP: the tokenizer and the text model together,
/// every prompt padded to 77 tokens.
public final class CLIPTextEncoder: TextEncoder {
    public let model: CLIPTextModel
    public let tokenizer: CLIPTokenizer
    /// 0: the last layer's states after the final layer norm (SD1.x). k > 0: the states of layer
    /// L − k, after the final layer norm, as diffusers' `clip_skip` does (1 is A1111's "clip skip
    /// 2", and what the original SD2 used: the penultimate layer).
    public var clipSkip: Int
    public var padding: PaddingStrategy = .maxLength

    public init(model: CLIPTextModel, tokenizer: CLIPTokenizer, clipSkip: Int = 0) throws {
        guard tokenizer.maxTokenId < model.config.vocabSize else {
            throw TextEncoderError.incompatible(
                "the tokenizer's vocabulary reaches id \(tokenizer.maxTokenId), the model's vocab_size is \(model.config.vocabSize)")
        }
        precondition(clipSkip >= 0 && clipSkip < model.config.numHiddenLayers, "clipSkip \(clipSkip) out of range")
        self.model = model
        self.tokenizer = tokenizer
        self.clipSkip = clipSkip
    }

    /// Loads a diffusers pipeline folder: `<directory>/text_encoder/` (config.json,
    /// model.safetensors) and `<directory>/tokenizer/` (vocab.json, merges.txt, tokenizer
    /// configs). SDXL's second encoder is `textEncoderFolder: "text_encoder_2",
    /// tokenizerFolder: "tokenizer_2"`. `variant` picks the weights variant (`WeightsVariant`).
    public convenience init(directory: URL, textEncoderFolder: String = "text_encoder",
                            tokenizerFolder: String = "tokenizer", clipSkip: Int = 0, variant: String? = nil) throws {
        let model = try CLIPTextModel.load(from: directory.appendingPathComponent(textEncoderFolder), variant: variant)
        let tokenizer = try CLIPTokenizer(directory: directory.appendingPathComponent(tokenizerFolder))
        try self.init(model: model, tokenizer: tokenizer, clipSkip: clipSkip)
    }

    public var hiddenSize: Int { model.config.hiddenSize }

    /// Hidden states of a tokenized batch (see `clipSkip`); recorded for autodiff when a
    /// parameter requires gradients.
    public func hiddenStates(_ batch: TokenizedBatch, inputsEmbeds: Tensor? = nil) -> Tensor {
        model(inputIds: batch.inputIds, inputsEmbeds: inputsEmbeds,
              layerCount: model.config.numHiddenLayers - clipSkip).lastHiddenState
    }

    public func encode(prompts: [String]) -> (hiddenStates: Tensor, attentionMask: Tensor) {
        let batch = tokenizer(prompts, padding: padding,
                              maxLength: min(tokenizer.maxLength, model.config.maxPositionEmbeddings))
        return (hiddenStates(batch), batch.attentionMaskTensor)
    }
}

extension HiddenActivation: ConfigValue {
    public static var expected: String { "one of \(allCases.map(\.rawValue).joined(separator: ", "))" }
}
