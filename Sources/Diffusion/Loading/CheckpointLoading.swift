import Foundation
import NN
import SafeTensors
import Tensor

// Loading diffusers-layout safetensors checkpoints into modules: a dictionary walk over the
// module's dotted parameter names with a short list of key rewrite rules.
//
// Everything is checked before anything is written: every shard is opened, every key mapped,
// every shape and dtype compared. Then each tensor is converted straight into its parameter's
// storage, one at a time, so loading a 3.4 GB UNet never holds a second copy of the model.

/// One way a checkpoint key may differ from the model's key. A rule is only used for a key the
/// model does not have verbatim, and only when it produces a key the model does have (or says
/// the key is to be ignored), so rules never hide a key that matches as it is.
public struct KeyRewriteRule: Sendable {
    public enum Outcome: Sendable, Equatable {
        /// The rule does not apply.
        case noMatch
        /// Use the tensor for this model key instead.
        case rename(String)
        /// The key carries no parameter (e.g. a buffer such as `position_ids`); skip it.
        case ignore
    }

    public let name: String
    public let apply: @Sendable (String) -> Outcome

    public init(name: String, apply: @escaping @Sendable (String) -> Outcome) {
        self.name = name
        self.apply = apply
    }

    /// Checkpoints that put every key under `prefix` (`text_model.` in some CLIP exports).
    public static func stripPrefix(_ prefix: String) -> KeyRewriteRule {
        KeyRewriteRule(name: "strip \(prefix)") { key in
            key.hasPrefix(prefix) ? .rename(String(key.dropFirst(prefix.count))) : .noMatch
        }
    }

    /// Keys ending in `suffix` are buffers, not parameters (`position_ids`).
    public static func ignoreSuffix(_ suffix: String) -> KeyRewriteRule {
        KeyRewriteRule(name: "ignore *\(suffix)") { key in key.hasSuffix(suffix) ? .ignore : .noMatch }
    }

    /// The attention names of diffusers before 0.14 (still in many VAE checkpoints):
    /// `attentions.N.query/key/value/proj_attn` → `attentions.N.to_q/to_k/to_v/to_out.0`.
    /// Their weights may be 1×1-conv shaped [O, I, 1, 1]; the loader accepts that shape for these
    /// linear weights (the values are laid out identically).
    public static let legacyAttentionNames = KeyRewriteRule(name: "legacy attention names") { key in
        var parts = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        let renames = ["query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"]
        for i in parts.indices.dropFirst(2) where parts[i - 2] == "attentions" && Int(parts[i - 1]) != nil {
            if let new = renames[parts[i]] {
                parts[i] = new
                return .rename(parts.joined(separator: "."))
            }
        }
        return .noMatch
    }

    /// The rules `loadModule` uses unless told otherwise.
    public static let defaults: [KeyRewriteRule] = [
        .legacyAttentionNames, .stripPrefix("text_model."), .ignoreSuffix("position_ids"),
    ]
}

/// Why a checkpoint could not be loaded into a module. Nothing in the module is changed.
public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    /// The checkpoint file (the `.safetensors` file or the sharded index).
    public var file: String
    /// Model keys the checkpoint does not provide.
    public var missing: [String] = []
    /// Checkpoint keys that match no model key (after the rewrite rules).
    public var unexpected: [String] = []
    /// "key: checkpoint [shape], model [shape]" per mis-shaped tensor.
    public var mismatched: [String] = []
    /// "key: reason" per tensor that cannot be read as floats (dtype) or that two checkpoint keys provide.
    public var unusable: [String] = []

    public init(file: String) { self.file = file }

    var isEmpty: Bool { missing.isEmpty && unexpected.isEmpty && mismatched.isEmpty && unusable.isEmpty }

    public var description: String {
        var parts = ["cannot load \(file):"]
        if !missing.isEmpty { parts.append("missing keys: \(missing.joined(separator: ", "))") }
        if !unexpected.isEmpty { parts.append("unexpected keys: \(unexpected.joined(separator: ", "))") }
        if !mismatched.isEmpty { parts.append("shape mismatches: \(mismatched.joined(separator: "; "))") }
        if !unusable.isEmpty { parts.append("unusable tensors: \(unusable.joined(separator: "; "))") }
        return parts.joined(separator: "\n  ")
    }
}

/// Whether a checkpoint shape may fill a model parameter of another shape: equal shapes, or a
/// 1×1-conv weight [O, I, 1, 1] for a linear attention projection [O, I] (legacy VAE checkpoints).
private func compatible(checkpoint: [Int], model: [Int], key: String) -> Bool {
    if checkpoint == model { return true }
    let projections = [".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"]
    return model.count == 2 && checkpoint == model + [1, 1] && projections.contains(where: key.hasSuffix)
}

/// Loads a safetensors checkpoint — one `.safetensors` file or a sharded
/// `*.safetensors.index.json` — into `module`, mapping checkpoint keys to the module's dotted
/// parameter names through `rules`. F32, F16, BF16 and F64 tensors are converted to Float32.
///
/// Everything is validated first, including every value (NaN, ±Inf and magnitudes whose square
/// overflows are refused: they would make every output NaN); on any problem a `CheckpointError`
/// naming the file and every offending key is thrown (or the `SafeTensorsError` of a malformed file, which also names file
/// and key) and the module is left unchanged. With `strict: false`, missing and unexpected keys
/// are tolerated (shape and dtype problems never are).
public func loadModule(_ module: Module, from url: URL, rules: [KeyRewriteRule] = KeyRewriteRule.defaults,
                       strict: Bool = true) throws {
    let archive = try SafeTensorsArchive(url: url)
    try archive.validateAllShards()
    let parameters = module.namedParameters()
    let modelShapes = Dictionary(parameters.map { ($0.name, $0.tensor.shape) }, uniquingKeysWith: { a, _ in a })
    var error = CheckpointError(file: url.path)

    // Checkpoint key for each model key.
    var source: [String: String] = [:]
    for key in archive.names {
        var target: String? = modelShapes[key] != nil ? key : nil
        var ignored = false
        if target == nil {
            for rule in rules {
                switch rule.apply(key) {
                case .noMatch: continue
                case .ignore: ignored = true
                case .rename(let name): if modelShapes[name] != nil { target = name } else { continue }
                }
                break
            }
        }
        if ignored { continue }
        guard let target else { error.unexpected.append(key); continue }
        if let other = source[target] {
            error.unusable.append("\(key): provides \(target), as does \(other)")
            continue
        }
        source[target] = key
    }

    for (name, shape) in modelShapes.sorted(by: { $0.key < $1.key }) {
        guard let key = source[name] else { error.missing.append(name); continue }
        let info = try archive.info(key)
        if !compatible(checkpoint: info.shape, model: shape, key: name) {
            let label = key == name ? name : "\(key) (for \(name))"
            error.mismatched.append("\(label): checkpoint \(info.shape), model \(shape)")
        }
        if ![.f32, .f16, .bf16, .f64].contains(info.dtype) {
            error.unusable.append("\(key): dtype \(info.dtype) is not a float type")
        } else if let reason = try archive.withRawBytes(key, { unusableWeightReason(in: $0, dtype: info.dtype) }) {
            error.unusable.append("\(key): \(reason)")
        }
    }
    error.missing.sort()
    error.unexpected.sort()
    error.unusable.sort()
    let fatal = !error.mismatched.isEmpty || !error.unusable.isEmpty
    if fatal || (strict && !error.isEmpty) { throw error }

    for (name, tensor) in parameters {
        guard let key = source[name] else { continue }
        let values = try archive.floats(key)
        precondition(values.count == tensor.count, "internal: \(key) has \(values.count) values for \(tensor.shape)")
        values.withUnsafeBufferPointer { tensor.pointer.update(from: $0.baseAddress!, count: tensor.count) }
    }
}

// MARK: Variants

/// Weights variants as diffusers and transformers name them (`variant="fp16"`):
/// `<prefix>.<variant>.safetensors`, sharded as `<prefix>.<variant>-00001-of-00002.safetensors`
/// with the index `<prefix>.safetensors.index.<variant>.json` (or the older
/// `<prefix>.safetensors.<variant>.index.json`). `prefix` is `diffusion_pytorch_model` for
/// diffusers models, `model` for transformers ones.
///
/// The rules are diffusers' `from_pretrained` for a local folder:
/// - a model folder read with a variant uses that variant's index or file and nothing else (no
///   fallback to the plain weights);
/// - read without one, it uses `<prefix>.safetensors.index.json` or `<prefix>.safetensors` only: a
///   folder holding only `…bf16.safetensors` is an error, which here names the variants present;
/// - a pipeline read with a variant loads it for each component folder that has a file of it
///   (`_identify_model_variants`) and the plain weights for the others, and fails when no
///   component has it (`WeightsVariant.components`).
public enum WeightsVariant {
    /// The weights file (or sharded index) of `directory` for `variant` (nil: the plain weights).
    public static func file(in directory: URL, prefix: String, variant: String?) throws -> URL {
        if let variant { try validate(variant) }
        let candidates: [String]
        if let variant {
            candidates = ["\(prefix).safetensors.index.\(variant).json", "\(prefix).safetensors.\(variant).index.json",
                          "\(prefix).\(variant).safetensors"]
        } else {
            candidates = ["\(prefix).safetensors.index.json", "\(prefix).safetensors"]
        }
        for name in candidates {
            let url = directory.appendingPathComponent(name)
            if FileManager.default.fileExists(atPath: url.path) { return url }
        }
        let present = variants(in: directory, prefix: prefix)
        var reason = "no \(variant.map { "\($0) variant of the " } ?? "")weights (\(candidates.joined(separator: ", "))) in the folder"
        if !present.isEmpty {
            reason += "; it holds the variant\(present.count == 1 ? "" : "s") \(present.joined(separator: ", ")): "
                + "choose one (variant: \"\(present[0])\", --variant \(present[0]))"
        } else if variant != nil && FileManager.default.fileExists(atPath: directory.appendingPathComponent("\(prefix).safetensors").path) {
            reason += "; it holds only the plain weights: read it without a variant"
        }
        throw SafeTensorsError.cannotOpen(file: directory.appendingPathComponent(candidates.last!).path, reason: reason)
    }

    /// The variants whose weights `directory` holds, sorted (`fp16`, `bf16`, `ema`, …).
    public static func variants(in directory: URL, prefix: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return Set(names.compactMap { weightsFile(named: $0, prefix: prefix) ?? nil }).sorted()
    }

    /// Whether `name` is a weights file (or index) of `prefix`: nil when not, `.some(nil)` for the
    /// plain weights, `.some(variant)` for a variant's.
    public static func weightsFile(named name: String, prefix: String) -> String?? {
        if name == "\(prefix).safetensors" || name == "\(prefix).safetensors.index.json" { return .some(nil) }
        if name.range(of: "^\(prefix)-\\d{5}-of-\\d{5}\\.safetensors$", options: .regularExpression) != nil { return .some(nil) }
        guard name.hasPrefix(prefix + ".") else {
            // The older sharded variant names: <prefix>-00001-of-00002.<variant>.safetensors.
            if name.hasPrefix(prefix + "-"), name.hasSuffix(".safetensors") {
                let parts = name.split(separator: ".")
                if parts.count == 3 { return .some(String(parts[1])) }
            }
            return nil
        }
        let parts = name.dropFirst(prefix.count + 1).split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if parts.count == 2, parts[1] == "safetensors", parts[0] != "safetensors", !parts[0].isEmpty {
            // <prefix>.<variant>.safetensors or <prefix>.<variant>-0000k-of-0000n.safetensors
            return .some(parts[0].replacingOccurrences(of: #"-\d{5}-of-\d{5}$"#, with: "", options: .regularExpression))
        }
        if parts.count == 4, parts[0] == "safetensors", parts[1] == "index", parts[3] == "json" { return .some(parts[2]) }
        if parts.count == 4, parts[0] == "safetensors", parts[2] == "index", parts[3] == "json" { return .some(parts[1]) }
        return nil
    }

    /// Whether a component folder takes `variant` in a pipeline read with it: diffusers'
    /// `_identify_model_variants`, a file whose second dot-separated part starts with the variant.
    public static func folder(_ directory: URL, has variant: String) -> Bool {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.contains { name in
            let parts = name.split(separator: ".", omittingEmptySubsequences: false)
            return parts.count > 1 && parts[1].hasPrefix(variant)
        }
    }

    /// The variant each component folder of a pipeline loads for `variant`: the variant where the
    /// folder has it, nil (the plain weights) elsewhere. Fails, as diffusers does, when no
    /// component has it.
    public static func components(_ folders: [String: URL], variant: String?, pipeline: URL) throws -> [String: String?] {
        guard let variant else { return folders.mapValues { _ in nil } }
        try validate(variant)
        let chosen = folders.mapValues { folder($0, has: variant) ? variant : nil }
        if !chosen.values.contains(where: { $0 != nil }) {
            throw SafeTensorsError.cannotOpen(
                file: pipeline.path,
                reason: "no component (\(folders.keys.sorted().joined(separator: ", "))) has weights of the variant \(variant)")
        }
        return chosen
    }

    /// A variant is one file-name part: letters, digits, `_` and `-`.
    static func validate(_ variant: String) throws {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "_-"))
        guard !variant.isEmpty, variant.unicodeScalars.allSatisfy(allowed.contains) else {
            throw SafeTensorsError.cannotOpen(file: variant, reason: "a weights variant is a name such as fp16 or bf16 (letters, digits, _ and -)")
        }
    }
}

/// The weights file of a diffusers model folder (`unet/`, `vae/`) for `variant` (see
/// `WeightsVariant`): the sharded index if there is one, else `diffusion_pytorch_model[.variant].safetensors`.
public func diffusersWeightsFile(in directory: URL, variant: String? = nil) throws -> URL {
    try WeightsVariant.file(in: directory, prefix: "diffusion_pytorch_model", variant: variant)
}
