import Foundation
import SafeTensors
import NN
import Tensor

/// A text encoder as the diffusion pipeline sees it: prompts in, per-token states out. Each
/// encoder owns its tokenizer, so a pipeline never tokenizes by itself.
///
/// - `CLIPTextEncoder`: Stable Diffusion's CLIP text model (diffusers `text_encoder/` +
///   `tokenizer/`), every prompt padded to 77 tokens.
/// - `BertTextEncoder`: a sentence-transformers BERT such as all-MiniLM-L6-v2 (the testbed's
///   encoder), prompts padded to the longest in the batch unless told otherwise.
public protocol TextEncoder: AnyObject {
    /// D, the width of the hidden states (the UNet's `cross_attention_dim`).
    var hiddenSize: Int { get }

    /// Tokenizes and encodes `prompts`: hidden states [B, T, D] and the attention mask [B, T]
    /// (1 = a token of the prompt, including the start/end tokens; 0 = padding).
    func encode(prompts: [String]) -> (hiddenStates: Tensor, attentionMask: Tensor)
}

/// Why a text encoder or tokenizer could not be loaded. Every case names the file.
public enum TextEncoderError: Error, CustomStringConvertible, Equatable {
    /// A file the encoder needs is not there.
    case missingFile(URL, what: String)
    /// A file is there but cannot be used.
    case invalidFile(URL, reason: String)
    /// A tokenizer and a model that do not fit together.
    case incompatible(String)

    public var description: String {
        switch self {
        case let .missingFile(url, what): return "\(url.path): not found (\(what))"
        case let .invalidFile(url, reason): return "\(url.lastPathComponent) (\(url.path)): \(reason)"
        case let .incompatible(reason): return reason
        }
    }
}

extension TextEncoderError: LocalizedError {
    public var errorDescription: String? { description }
}

/// How a batch of token sequences is padded.
public enum PaddingStrategy: Sendable, Equatable {
    /// Every sequence padded to the tokenizer's `maxLength` (what Stable Diffusion does with 77).
    case maxLength
    /// Sequences padded to the longest one in the batch (never beyond `maxLength`).
    case longest
}

/// Token ids of a batch, padded to one length, with the attention mask (1 = token, 0 = padding).
public struct TokenizedBatch: Equatable, Sendable {
    public var inputIds: [[Int]]
    public var attentionMask: [[Int]]

    public init(inputIds: [[Int]], attentionMask: [[Int]]) {
        precondition(inputIds.count == attentionMask.count
                     && zip(inputIds, attentionMask).allSatisfy { $0.count == $1.count },
                     "TokenizedBatch: ids and mask differ in shape")
        self.inputIds = inputIds
        self.attentionMask = attentionMask
    }

    public var batchSize: Int { inputIds.count }
    public var sequenceLength: Int { inputIds.first?.count ?? 0 }

    /// The attention mask as a [B, T] tensor of 0 and 1.
    public var attentionMaskTensor: Tensor {
        Tensor(shape: [batchSize, sequenceLength], scalars: attentionMask.flatMap { $0.map(Float.init) })
    }

    /// Adds `bos`/`eos` around each sequence (truncated so the whole fits in `maxLength`) and pads.
    static func assemble(_ sequences: [[Int]], bos: Int, eos: Int, pad: Int, maxLength: Int,
                         padding: PaddingStrategy) -> TokenizedBatch {
        precondition(maxLength >= 2, "maxLength \(maxLength) leaves no room for the start and end tokens")
        let framed = sequences.map { [bos] + $0.prefix(maxLength - 2) + [eos] }
        let length = padding == .maxLength ? maxLength : (framed.map(\.count).max() ?? 2)
        return TokenizedBatch(
            inputIds: framed.map { $0 + Array(repeating: pad, count: length - $0.count) },
            attentionMask: framed.map { Array(repeating: 1, count: $0.count) + Array(repeating: 0, count: length - $0.count) })
    }
}

/// The activations named by `hidden_act` in transformers configs.
public enum HiddenActivation: String, Codable, Sendable, CaseIterable {
    case quickGELU = "quick_gelu"
    case gelu
    case geluNew = "gelu_new"
    case geluPytorchTanh = "gelu_pytorch_tanh"
    case geluFast = "gelu_fast"
    case relu
    case silu
    case swish

    public init(from decoder: Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let value = HiddenActivation(rawValue: name) else {
            throw DecodingError.dataCorrupted(.init(
                codingPath: decoder.codingPath,
                debugDescription: "unsupported hidden_act '\(name)' (supported: \(HiddenActivation.allCases.map(\.rawValue).joined(separator: ", ")))"))
        }
        self = value
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        switch self {
        case .quickGELU: return x.quickGELU()
        case .gelu: return x.gelu()
        case .geluNew, .geluPytorchTanh, .geluFast: return x.gelu(approximation: .tanh)
        case .relu: return x.relu()
        case .silu, .swish: return x.silu()
        }
    }
}

/// Rows × columns of a batch of id sequences, which must all have one length.
func batchShape(_ inputIds: [[Int]], _ who: String) -> (Int, Int) {
    precondition(!inputIds.isEmpty, "\(who): empty batch")
    let t = inputIds[0].count
    precondition(inputIds.allSatisfy { $0.count == t }, "\(who): sequences of different lengths")
    return (inputIds.count, t)
}

// MARK: Loading helpers shared by the encoders

enum CheckpointFiles {
    /// The weights file of a transformers model folder: `model.safetensors` or its sharded index,
    /// or those of `variant` (`model.fp16.safetensors`; see `WeightsVariant`).
    static func weights(in directory: URL, variant: String? = nil) throws -> URL {
        if variant != nil || !WeightsVariant.variants(in: directory, prefix: "model").isEmpty {
            return try WeightsVariant.file(in: directory, prefix: "model", variant: variant)
        }
        for name in ["model.safetensors", "model.safetensors.index.json"] {
            let url = directory.appendingPathComponent(name)
            if FileManager.default.fileExists(atPath: url.path) { return url }
        }
        let hint = FileManager.default.fileExists(atPath: directory.appendingPathComponent("pytorch_model.bin").path)
            ? "; pytorch_model.bin is not read: convert it to safetensors" : ""
        throw TextEncoderError.missingFile(directory.appendingPathComponent("model.safetensors"),
                                           what: "the model weights\(hint)")
    }

    /// Tensors of a checkpoint with the given optional key prefixes removed and buffers
    /// (`position_ids`, `token_type_ids`) left out.
    static func tensors(at url: URL, optionalPrefixes: [String]) throws -> [String: Tensor] {
        let archive: TensorArchive
        do { archive = try TensorArchive(contentsOf: url) } catch {
            throw TextEncoderError.invalidFile(url, reason: "not a readable safetensors checkpoint: \(error)")
        }
        var result: [String: Tensor] = [:]
        for name in archive.names {
            let last = name.split(separator: ".").last.map(String.init) ?? name
            if last == "position_ids" || last == "token_type_ids" { continue }
            var key = name
            if let prefix = optionalPrefixes.first(where: { name.hasPrefix($0) }) { key.removeFirst(prefix.count) }
            guard result[key] == nil else {
                throw TextEncoderError.invalidFile(url, reason: "holds '\(key)' both with and without a prefix")
            }
            do { result[key] = try archive.tensor(name) } catch {
                throw TextEncoderError.invalidFile(url, reason: "cannot read tensor '\(name)': \(error)")
            }
        }
        return result
    }

    /// Decodes a JSON file into `T`, naming the file in any error.
    static func decode<T: Decodable>(_ type: T.Type, from url: URL, what: String) throws -> T {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw TextEncoderError.missingFile(url, what: what)
        }
        do {
            return try JSONInput.decode(T.self, from: Data(contentsOf: url))
        } catch let error as DecodingError {
            throw TextEncoderError.invalidFile(url, reason: error.readableDescription)
        } catch {
            throw TextEncoderError.invalidFile(url, reason: "\(error)")
        }
    }

    /// A JSON object from `url`, or nil when the file does not exist.
    static func jsonObject(at url: URL) throws -> [String: Any]? {
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        guard let object = try? JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any] else {
            throw TextEncoderError.invalidFile(url, reason: "expected a JSON object")
        }
        return object
    }
}

extension Module {
    /// Loads a checkpoint into this module, naming `url` in the error when keys or shapes differ.
    func loadCheckpoint(_ weights: [String: Tensor], from url: URL) throws {
        for (name, tensor) in weights.sorted(by: { $0.key < $1.key }) {
            let raw = UnsafeRawBufferPointer(start: tensor.pointer, count: tensor.count * MemoryLayout<Float>.stride)
            if let reason = unusableWeightReason(in: raw, dtype: .f32) {
                throw TextEncoderError.invalidFile(url, reason: "tensor '\(name)' \(reason)")
            }
        }
        do { try load(weights, source: url.path, strict: true) } catch let error as WeightLoadingError {
            throw TextEncoderError.invalidFile(url, reason: error.description)
        }
    }
}
