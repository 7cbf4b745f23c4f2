import Foundation
import NN
import Tensor

/// transformers' `BertConfig`, read from `config.json`. Missing fields take transformers'
/// defaults; only absolute position embeddings are supported.
public struct BertConfig: ModelConfig, Equatable, Sendable {
    public var vocabSize = 30522
    public var hiddenSize = 768
    public var numHiddenLayers = 12
    public var numAttentionHeads = 12
    public var intermediateSize = 3072
    public var hiddenAct = HiddenActivation.gelu
    public var maxPositionEmbeddings = 512
    public var typeVocabSize = 2
    public var layerNormEps = 1e-12
    public var padTokenId: Int? = 0
    public var positionEmbeddingType = "absolute"

    public static let fields: [ConfigField<Self>] = [
        .init("vocab_size", \.vocabSize, .size),
        .init("hidden_size", \.hiddenSize, .size),
        .init("num_hidden_layers", \.numHiddenLayers, .count),
        .init("num_attention_heads", \.numAttentionHeads, .count),
        .init("intermediate_size", \.intermediateSize, .size),
        .init("hidden_act", \.hiddenAct),
        .init("max_position_embeddings", \.maxPositionEmbeddings, .size),
        .init("type_vocab_size", \.typeVocabSize, .size),
        .init("layer_norm_eps", \.layerNormEps, .positive),
        .init("pad_token_id", \.padTokenId, .integers(0...FieldRule.maxSize)),
        .init("position_embedding_type", \.positionEmbeddingType,
              FieldRule { $0.strings.first { $0 != "absolute" }.map { "is \"\($0)\"; only \"absolute\" is supported" } }),
    ]

    public init() {}

    public init(vocabSize: Int = 30522, hiddenSize: Int = 768, numHiddenLayers: Int = 12, numAttentionHeads: Int = 12,
                intermediateSize: Int = 3072, hiddenAct: HiddenActivation = .gelu, maxPositionEmbeddings: Int = 512,
                typeVocabSize: Int = 2, layerNormEps: Double = 1e-12, padTokenId: Int? = 0) {
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.intermediateSize = intermediateSize
        self.hiddenAct = hiddenAct
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.typeVocabSize = typeVocabSize
        self.layerNormEps = layerNormEps
        self.padTokenId = padTokenId
    }

    public init(from decoder: Decoder) throws {
        try self.init(fieldsFrom: decoder)
        try validate()
    }

    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    /// Throws for values out of range, heads that do not divide the width, or a model that
    /// would not fit in memory (checked when the config is read).
    public func validate() throws {
        try checkFieldRanges()
        try checkTextEncoder(hiddenSize: hiddenSize, heads: numAttentionHeads, parameters: parameterCount, model: "BERT text encoder")
    }

    /// Parameters of the model with its pooler, as a Double so that no config can overflow it.
    public var parameterCount: Double {
        let h = Double(hiddenSize), i = Double(intermediateSize)
        let embeddings = Double(vocabSize + maxPositionEmbeddings + typeVocabSize) * h + 2 * h
        let layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
        return embeddings + Double(numHiddenLayers) * layer + (h * h + h)
    }
}

// MARK: Layers (parameter names follow transformers' checkpoint keys)

public final class BertEmbeddings: Module {
    @Key("word_embeddings") public var wordEmbeddings: Embedding
    @Key("position_embeddings") public var positionEmbeddings: Embedding
    @Key("token_type_embeddings") public var tokenTypeEmbeddings: Embedding
    @Key("LayerNorm") public var layerNorm: LayerNorm

    init(_ config: BertConfig, generator: inout RandomGenerator) {
        super.init()
        wordEmbeddings = Embedding(config.vocabSize, config.hiddenSize, generator: &generator)
        positionEmbeddings = Embedding(config.maxPositionEmbeddings, config.hiddenSize, generator: &generator)
        tokenTypeEmbeddings = Embedding(config.typeVocabSize, config.hiddenSize, generator: &generator)
        layerNorm = LayerNorm(config.hiddenSize, eps: Float(config.layerNormEps))
    }
}

public final class BertSelfAttention: Module {
    public let query: Linear
    public let key: Linear
    public let value: Linear

    init(_ config: BertConfig, generator: inout RandomGenerator) {
        query = Linear(config.hiddenSize, config.hiddenSize, generator: &generator)
        key = Linear(config.hiddenSize, config.hiddenSize, generator: &generator)
        value = Linear(config.hiddenSize, config.hiddenSize, generator: &generator)
    }
}

/// A dense layer followed by dropout (inactive) and a residual layer norm.
public final class BertResidualOutput: Module {
    public let dense: Linear
    @Key("LayerNorm") public var layerNorm: LayerNorm

    init(_ inFeatures: Int, _ config: BertConfig, generator: inout RandomGenerator) {
        dense = Linear(inFeatures, config.hiddenSize, generator: &generator)
        super.init()
        layerNorm = LayerNorm(config.hiddenSize, eps: Float(config.layerNormEps))
    }

    public func callAsFunction(_ x: Tensor, residual: Tensor) -> Tensor { layerNorm(dense(x) + residual) }
}

public final class BertAttention: Module {
    @Key("self") public var selfAttention: BertSelfAttention
    public let output: BertResidualOutput
    public let heads: Int

    init(_ config: BertConfig, generator: inout RandomGenerator) {
        output = BertResidualOutput(config.hiddenSize, config, generator: &generator)
        heads = config.numAttentionHeads
        super.init()
        selfAttention = BertSelfAttention(config, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        let s = selfAttention
        let (b, t, d) = (x.shape[0], x.shape[1], x.shape[2])
        let headDim = d / heads
        func split(_ y: Tensor) -> Tensor { y.reshaped([b, t, heads, headDim]).permuted([0, 2, 1, 3]) }
        let attended = scaledDotProductAttention(split(s.query(x)), split(s.key(x)), split(s.value(x)), mask: mask,
                                                 scale: 1 / Float(headDim).squareRoot())
        return output(attended.permuted([0, 2, 1, 3]).reshaped([b, t, d]), residual: x)
    }
}

public final class BertIntermediate: Module {
    public let dense: Linear
    public let activation: HiddenActivation

    init(_ config: BertConfig, generator: inout RandomGenerator) {
        dense = Linear(config.hiddenSize, config.intermediateSize, generator: &generator)
        activation = config.hiddenAct
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { activation(dense(x)) }
}

public final class BertLayer: Module {
    public let attention: BertAttention
    public let intermediate: BertIntermediate
    public let output: BertResidualOutput

    init(_ config: BertConfig, generator: inout RandomGenerator) {
        attention = BertAttention(config, generator: &generator)
        intermediate = BertIntermediate(config, generator: &generator)
        output = BertResidualOutput(config.intermediateSize, config, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        let h = attention(x, mask: mask)
        return output(intermediate(h), residual: h)
    }
}

public final class BertEncoder: Module {
    public let layer: [BertLayer]

    init(_ config: BertConfig, generator: inout RandomGenerator) {
        layer = (0..<config.numHiddenLayers).map { _ in BertLayer(config, generator: &generator) }
    }
}

/// tanh(dense(state of the first token)).
public final class BertPooler: Module {
    public let dense: Linear

    init(_ config: BertConfig, generator: inout RandomGenerator) {
        dense = Linear(config.hiddenSize, config.hiddenSize, generator: &generator)
    }

    public func callAsFunction(_ hidden: Tensor) -> Tensor {
        let (b, d) = (hidden.shape[0], hidden.shape[2])
        return dense(hidden.sliced([0..<b, 0..<1]).reshaped([b, d])).tanh()
    }
}

/// What `BertModel` returns.
public struct BertModelOutput {
    /// [B, T, D]
    public var lastHiddenState: Tensor
    /// [B, D], when the model has a pooler.
    public var poolerOutput: Tensor?
}

/// transformers' `BertModel` (post-norm encoder; the all-MiniLM-L6-v2 layout): word + position +
/// token-type embeddings and LayerNorm, self-attention that ignores padded keys, GELU
/// feed-forward, and the optional pooler.
///
/// Parameter names are the checkpoint keys (`embeddings.word_embeddings.weight`,
/// `encoder.layer.0.attention.self.query.weight`, `pooler.dense.weight`, …); `load(from:)`
/// also accepts them under `bert.` and ignores the `position_ids` buffer.
public final class BertModel: Module {
    public let config: BertConfig
    public let embeddings: BertEmbeddings
    public let encoder: BertEncoder
    public let pooler: BertPooler?

    public init(config: BertConfig, addPoolingLayer: Bool = true, generator: inout RandomGenerator) {
        self.config = config
        embeddings = BertEmbeddings(config, generator: &generator)
        encoder = BertEncoder(config, generator: &generator)
        pooler = addPoolingLayer ? BertPooler(config, generator: &generator) : nil
    }

    public convenience init(config: BertConfig, addPoolingLayer: Bool = true) {
        var generator = RandomGenerator(seed: 0)
        self.init(config: config, addPoolingLayer: addPoolingLayer, generator: &generator)
    }

    /// Loads `config.json` and `model.safetensors` from a folder (a sentence-transformers model
    /// folder or a transformers one). The pooler is built when the checkpoint has one.
    public static func load(from directory: URL) throws -> BertModel {
        let config = try CheckpointFiles.decode(BertConfig.self, from: directory.appendingPathComponent("config.json"),
                                                what: "the BERT config")
        let url = try CheckpointFiles.weights(in: directory)
        let weights = try CheckpointFiles.tensors(at: url, optionalPrefixes: ["bert."])
        let model = BertModel(config: config, addPoolingLayer: weights["pooler.dense.weight"] != nil)
        try model.loadCheckpoint(weights, from: url)
        model.eval()
        return model
    }

    /// Loads a safetensors checkpoint (keys with or without `bert.`; buffers ignored). Throws,
    /// changing nothing, if keys or shapes differ.
    public func load(from url: URL) throws {
        try loadCheckpoint(try CheckpointFiles.tensors(at: url, optionalPrefixes: ["bert."]), from: url)
    }

    /// Word embeddings [B, T, D] of `inputIds` (the `inputsEmbeds` a caller may edit). As with
    /// PyTorch's `padding_idx`, the row of `pad_token_id` receives no gradient.
    public func wordEmbeddings(_ inputIds: [[Int]]) -> Tensor {
        let (b, t) = batchShape(inputIds, "BertModel")
        let flat = inputIds.flatMap { $0 }
        let looked = embeddings.wordEmbeddings(flat, shape: [b, t])
        guard let pad = config.padTokenId, looked.isTracked, flat.contains(pad) else { return looked }
        // Same values; the gradient reaches the weight only where the id is not the pad id.
        let keep = Tensor(shape: [b, t, 1], scalars: flat.map { $0 == pad ? 0 : 1 })
        let constant = looked.detached()
        return (looked - constant) * keep + constant
    }

    /// Runs the model.
    /// - Parameters:
    ///   - inputIds: [B][T] token ids, T ≤ `maxPositionEmbeddings`.
    ///   - attentionMask: [B][T], 1 = token, 0 = padding (keys at 0 are not attended to).
    ///   - tokenTypeIds: [B][T] segment ids; zeros when nil.
    ///   - inputsEmbeds: optional [B, T, D] replacing the word embeddings.
    public func callAsFunction(inputIds: [[Int]], attentionMask: [[Int]]? = nil, tokenTypeIds: [[Int]]? = nil,
                               inputsEmbeds: Tensor? = nil) -> BertModelOutput {
        let (b, t) = batchShape(inputIds, "BertModel")
        precondition(t <= config.maxPositionEmbeddings,
                     "BertModel: \(t) tokens, but at most \(config.maxPositionEmbeddings) positions")
        let words: Tensor
        if let inputsEmbeds {
            precondition(inputsEmbeds.shape == [b, t, config.hiddenSize],
                         "BertModel: inputsEmbeds \(inputsEmbeds.shape), expected \([b, t, config.hiddenSize])")
            words = inputsEmbeds
        } else {
            words = wordEmbeddings(inputIds)
        }
        let types: Tensor
        if let tokenTypeIds {
            precondition(tokenTypeIds.count == b && tokenTypeIds.allSatisfy { $0.count == t }, "BertModel: tokenTypeIds is not [B, T]")
            types = embeddings.tokenTypeEmbeddings(tokenTypeIds.flatMap { $0 }, shape: [b, t])
        } else {
            types = embeddings.tokenTypeEmbeddings([Int](repeating: 0, count: t), shape: [1, t])
        }
        let positions = embeddings.positionEmbeddings(Array(0..<t), shape: [1, t])
        var h = embeddings.layerNorm(words + types + positions)
        var mask: Tensor? = nil
        if let attentionMask {
            precondition(attentionMask.count == b && attentionMask.allSatisfy { $0.count == t }, "BertModel: attentionMask is not [B, T]")
            mask = Tensor(shape: [b, 1, 1, t], scalars: attentionMask.flatMap { $0.map { $0 != 0 ? 1 : 0 } })
        }
        for layer in encoder.layer { h = layer(h, mask: mask) }
        return BertModelOutput(lastHiddenState: h, poolerOutput: pooler?(h))
    }
}

/// Sentence-embedding helpers (what sentence-transformers' Pooling and Normalize modules do).
public enum SentencePooling {
    /// Mean of the token states [B, T, D] over the tokens where `mask` [B, T] is 1 → [B, D].
    public static func mean(_ hidden: Tensor, mask: Tensor) -> Tensor {
        let (b, t) = (hidden.shape[0], hidden.shape[1])
        precondition(mask.shape == [b, t], "SentencePooling.mean: mask \(mask.shape) for states \(hidden.shape)")
        let m = mask.reshaped([b, t, 1])
        let counts = mask.sum(axis: 1, keepDims: true).clamped(1e-9, .greatestFiniteMagnitude)
        return (hidden * m).sum(axis: 1) / counts
    }

    /// Each row divided by its Euclidean norm (at least 1e-12), as `F.normalize`.
    public static func l2Normalized(_ x: Tensor) -> Tensor {
        x / x.square().sum(axis: -1, keepDims: true).sqrt().clamped(1e-12, .greatestFiniteMagnitude)
    }
}

/// A sentence-transformers BERT (all-MiniLM-L6-v2 in the testbed) as a text encoder: per-token
/// states for cross-attention, and pooled sentence vectors.
public final class BertTextEncoder: TextEncoder {
    public let model: BertModel
    public let tokenizer: WordPieceTokenizer
    /// Whether `sentenceEmbeddings` L2-normalises (true when the folder's modules.json lists a
    /// Normalize module, as all-MiniLM-L6-v2's does).
    public var normalizeEmbeddings: Bool
    /// Padding of `encode(prompts:)`: to the longest prompt of the batch by default.
    public var padding: PaddingStrategy = .longest

    /// Whether `encode(prompts:)` zeroes the states of padded positions (the testbed's mini-SD
    /// does, and passes the mask on as well). Off by default: the states are transformers'.
    public var zeroPaddedStates = false

    public init(model: BertModel, tokenizer: WordPieceTokenizer, normalizeEmbeddings: Bool = true) throws {
        guard tokenizer.maxTokenId < model.config.vocabSize else {
            throw TextEncoderError.incompatible(
                "the tokenizer's vocabulary reaches id \(tokenizer.maxTokenId), the model's vocab_size is \(model.config.vocabSize)")
        }
        self.model = model
        self.tokenizer = tokenizer
        self.normalizeEmbeddings = normalizeEmbeddings
    }

    /// Tokenizes with the tokenizer's `maxLength`, capped by the model's positions.
    public func tokenize(_ texts: [String], padding: PaddingStrategy) -> TokenizedBatch {
        tokenizer(texts, padding: padding, maxLength: min(tokenizer.maxLength, model.config.maxPositionEmbeddings))
    }

    /// Loads a sentence-transformers folder: `config.json`, `model.safetensors`, `vocab.txt`,
    /// and when present `tokenizer_config.json`, `sentence_bert_config.json` (`max_seq_length`,
    /// 256 for all-MiniLM-L6-v2), `modules.json` (a Normalize module) and
    /// `1_Pooling/config.json` (only mean pooling is supported).
    public convenience init(directory: URL) throws {
        let model = try BertModel.load(from: directory)
        var maxLength: Int? = nil
        let stConfig = directory.appendingPathComponent("sentence_bert_config.json")
        if let object = try CheckpointFiles.jsonObject(at: stConfig) {
            maxLength = object["max_seq_length"] as? Int
        }
        let tokenizer = try WordPieceTokenizer(directory: directory, maxLength: maxLength)
        var normalize = false
        let modulesURL = directory.appendingPathComponent("modules.json")
        if FileManager.default.fileExists(atPath: modulesURL.path) {
            guard let modules = try? JSONSerialization.jsonObject(with: Data(contentsOf: modulesURL)) as? [[String: Any]] else {
                throw TextEncoderError.invalidFile(modulesURL, reason: "expected a JSON list of modules")
            }
            normalize = modules.contains { ($0["type"] as? String)?.hasSuffix("Normalize") == true }
        }
        let poolingURL = directory.appendingPathComponent("1_Pooling/config.json")
        if let pooling = try CheckpointFiles.jsonObject(at: poolingURL) {
            let others = ["pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens"]
            guard (pooling["pooling_mode_mean_tokens"] as? Bool) ?? true, !others.contains(where: { (pooling[$0] as? Bool) == true }) else {
                throw TextEncoderError.invalidFile(poolingURL, reason: "only mean pooling is supported")
            }
        }
        try self.init(model: model, tokenizer: tokenizer, normalizeEmbeddings: normalize)
    }

    public var hiddenSize: Int { model.config.hiddenSize }

    /// Per-token states [B, T, D] of a tokenized batch (padded positions included: they are
    /// computed but attend only to real tokens).
    public func hiddenStates(_ batch: TokenizedBatch, inputsEmbeds: Tensor? = nil) -> Tensor {
        model(inputIds: batch.inputIds, attentionMask: batch.attentionMask, inputsEmbeds: inputsEmbeds).lastHiddenState
    }

    public func encode(prompts: [String]) -> (hiddenStates: Tensor, attentionMask: Tensor) {
        let batch = tokenize(prompts, padding: padding)
        let mask = batch.attentionMaskTensor
        let states = hiddenStates(batch)
        return (zeroPaddedStates ? states * mask.reshaped([batch.batchSize, batch.sequenceLength, 1]) : states, mask)
    }

    /// Sentence vectors [B, D]: mask-weighted mean of the token states, L2-normalised when
    /// `normalize` (default: `normalizeEmbeddings`).
    public func sentenceEmbeddings(_ sentences: [String], normalize: Bool? = nil) -> Tensor {
        let batch = tokenize(sentences, padding: .longest)
        let pooled = SentencePooling.mean(hiddenStates(batch), mask: batch.attentionMaskTensor)
        return (normalize ?? normalizeEmbeddings) ? SentencePooling.l2Normalized(pooled) : pooled
    }
}
