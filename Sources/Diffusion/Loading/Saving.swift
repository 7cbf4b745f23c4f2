import Foundation
import NN
import SafeTensors
import Tensor

// Writing models back in the layouts other tools read:
//
// - a full UNet folder (`config.json` + `diffusion_pytorch_model.safetensors`), as diffusers'
//   `save_pretrained`, or a full CLIP text-encoder folder (`config.json` + `model.safetensors`,
//   keys under `text_model.`), as transformers';
// - only some tensors (those that differ from a reference model, or named ones) in one
//   safetensors file under the same keys, to be loaded over the base model
//   (`loadChangedWeights`);
// - LoRA factors in diffusers' PEFT layout (`unet.<module>.lora_A.weight` [r, in] and
//   `unet.<module>.lora_B.weight` [out, r]; `text_encoder.text_model.<module>…` for CLIP), with
//   the adapter config (rank, alpha, per-module patterns) in the `lora_adapter_metadata` entry
//   of the file's metadata, as diffusers' `save_lora_weights` writes it;
// - and `mergeLoRA`, which folds LoRA factors into a model's weights.
//
// Every file is written atomically (a temporary file in the same folder, then a rename), and
// everything is checked before the first file is written. Files are never deleted: a folder
// that already holds other weights files (a sharded index, an fp16 variant) that loaders would
// pick instead is an error, not something to clean up silently.

/// Why weights could not be saved or merged. Each case names the file or key.
public enum SavingError: Error, CustomStringConvertible, Equatable {
    /// The destination already holds another weights file that loaders would read instead.
    case conflictingFile(URL, reason: String)
    /// A reference model or name that does not fit the model being saved.
    case mismatch(String)
    /// LoRA factors that do not fit (shape, rank, unknown module).
    case invalidLoRA(String)
    /// A LoRA file that cannot be read back.
    case invalidFile(URL, reason: String)

    public var description: String {
        switch self {
        case let .conflictingFile(url, reason): return "\(url.path): \(reason)"
        case let .mismatch(reason): return "cannot save: \(reason)"
        case let .invalidLoRA(reason): return "LoRA: \(reason)"
        case let .invalidFile(url, reason): return "\(url.path): \(reason)"
        }
    }
}

extension SavingError: LocalizedError {
    public var errorDescription: String? { description }
}

/// The diffusers version whose layout the saved folders follow (what tools/verify_saving.py checked).
public let savedDiffusersVersion = "0.42.1"

/// Dtypes the savers write (F32, F16 or BF16).
private func checkWritable(_ dtype: DType) throws {
    guard [.f32, .f16, .bf16].contains(dtype) else {
        throw SavingError.mismatch("weights are written as F32, F16 or BF16, not \(dtype)")
    }
}

/// Entries for `writeSafeTensors`, converting each tensor once.
private func entries(_ tensors: [(name: String, tensor: Tensor)], dtype: DType) -> [TensorToWrite] {
    tensors.map { TensorToWrite(name: $0.name, shape: $0.tensor.shape, data: .floats($0.tensor.scalars, storedAs: dtype)) }
}

/// Writes JSON atomically with sorted keys, 2-space indentation and a final newline.
private func writeJSON(_ object: Any, to url: URL) throws {
    var data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    data.append(0x0A)
    try writeAtomically(data, to: url)
}

/// A Codable config as a JSON object, with extra entries added.
private func configObject<C: Encodable>(_ config: C, adding extra: [String: Any]) throws -> [String: Any] {
    let data = try JSONEncoder().encode(config)
    guard var object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        throw SavingError.mismatch("the config does not encode as a JSON object")
    }
    for (key, value) in extra { object[key] = value }
    return object
}

/// Creates `directory` and checks that no other weights file of the same variant (nil: the plain
/// weights) in it would be read instead of `keep`; other variants' files may stay beside it.
private func prepareFolder(_ directory: URL, keep: String, stem: String, variant: String?) throws {
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let present = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
    for name in present where name != keep {
        guard let fileVariant = WeightsVariant.weightsFile(named: name, prefix: stem), fileVariant == variant else { continue }
        throw SavingError.conflictingFile(directory.appendingPathComponent(name),
                                          reason: "another weights file is in the folder, and loaders may read it instead of \(keep); remove it or save elsewhere")
    }
}

/// Writes a diffusers model folder: `config.json` (every field, with `_class_name` and
/// `_diffusers_version`) and `diffusion_pytorch_model.safetensors` (`dtype` F32, F16 or BF16;
/// metadata `format: pt`). The weights are written before the config. `variant` names the file
/// `diffusion_pytorch_model.<variant>.safetensors`, as diffusers' `save_pretrained(variant=)`
/// (other variants' files may stay in the folder).
private func saveDiffusersModel<Config: Encodable>(_ module: Module, config: Config, className: String,
                                                   to directory: URL, dtype: DType, variant: String?) throws {
    try checkWritable(dtype)
    if let variant { try WeightsVariant.validate(variant) }
    let weightsName = "diffusion_pytorch_model\(variant.map { ".\($0)" } ?? "").safetensors"
    try prepareFolder(directory, keep: weightsName, stem: "diffusion_pytorch_model", variant: variant)
    let object = try configObject(config, adding: ["_class_name": className, "_diffusers_version": savedDiffusersVersion])
    try writeSafeTensors(entries(module.namedParameters(), dtype: dtype), metadata: ["format": "pt"],
                         to: directory.appendingPathComponent(weightsName))
    try writeJSON(object, to: directory.appendingPathComponent("config.json"))
}

extension UNet2DConditionModel {
    /// Saves the model as a diffusers `unet/` folder (see `saveDiffusersModel`).
    public func save(to directory: URL, dtype: DType = .f32, variant: String? = nil) throws {
        try saveDiffusersModel(self, config: config, className: "UNet2DConditionModel", to: directory, dtype: dtype,
                               variant: variant)
    }
}

extension FluxTransformer2DModel {
    /// Saves the model as a diffusers `transformer/` folder (see `saveDiffusersModel`).
    public func save(to directory: URL, dtype: DType = .f32, variant: String? = nil) throws {
        try saveDiffusersModel(self, config: config, className: "FluxTransformer2DModel", to: directory, dtype: dtype,
                               variant: variant)
    }
}

extension CLIPTextModel {
    /// Saves the model as a transformers `text_encoder/` folder: `config.json` (with
    /// `model_type` clip_text_model and `architectures` [CLIPTextModel]) and `model.safetensors`
    /// with every key under `text_model.` (the SD checkpoints' layout; `dtype` F32, F16 or BF16).
    /// `variant` names the file `model.<variant>.safetensors`, as transformers' `save_pretrained(variant=)`.
    public func save(to directory: URL, dtype: DType = .f32, variant: String? = nil) throws {
        try checkWritable(dtype)
        if let variant { try WeightsVariant.validate(variant) }
        let weightsName = "model\(variant.map { ".\($0)" } ?? "").safetensors"
        try prepareFolder(directory, keep: weightsName, stem: "model", variant: variant)
        var extra: [String: Any] = ["model_type": "clip_text_model", "architectures": ["CLIPTextModel"]]
        extra["torch_dtype"] = dtype == .f16 ? "float16" : dtype == .bf16 ? "bfloat16" : "float32"
        let config = try configObject(self.config, adding: extra)
        let tensors = namedParameters().map { (name: "text_model." + $0.name, tensor: $0.tensor) }
        try writeSafeTensors(entries(tensors, dtype: dtype), metadata: ["format": "pt"],
                             to: directory.appendingPathComponent(weightsName))
        try writeJSON(config, to: directory.appendingPathComponent("config.json"))
    }
}

// MARK: - Changed tensors only

/// The parameters of `module` whose values differ (in any bit) from `reference`'s, in
/// declaration order. Throws when the two models do not have the same names and shapes.
public func changedParameterNames(_ module: Module, reference: Module) throws -> [String] {
    let base = reference.stateDict()
    var changed: [String] = []
    let parameters = module.namedParameters()
    guard parameters.count == base.count else {
        throw SavingError.mismatch("the reference model has \(base.count) parameters, the model \(parameters.count)")
    }
    for (name, tensor) in parameters {
        guard let other = base[name] else { throw SavingError.mismatch("the reference model has no parameter \(name)") }
        guard other.shape == tensor.shape else {
            throw SavingError.mismatch("\(name) is \(tensor.shape) in the model, \(other.shape) in the reference")
        }
        if memcmp(tensor.pointer, other.pointer, tensor.count * MemoryLayout<Float>.stride) != 0 { changed.append(name) }
    }
    return changed
}

/// Saves the parameters of `module` named in `names` to one safetensors file under their
/// checkpoint keys (`keyPrefix` + name: pass "text_model." for a CLIP text model to match its
/// full checkpoint). Metadata: `format: pt` and `score_content: partial` plus `metadata`.
/// Load it over the base model with `loadChangedWeights`.
public func saveWeights(of module: Module, names: [String], to url: URL, dtype: DType = .f32, keyPrefix: String = "",
                        metadata: [String: String] = [:]) throws {
    try checkWritable(dtype)
    let parameters = module.stateDict()
    var selected: [(name: String, tensor: Tensor)] = []
    for name in Set(names).sorted() {
        guard let tensor = parameters[name] else { throw SavingError.mismatch("the model has no parameter \(name)") }
        selected.append((keyPrefix + name, tensor))
    }
    var fields = metadata
    fields["format"] = "pt"
    fields["score_content"] = "partial"
    try writeSafeTensors(entries(selected, dtype: dtype), metadata: fields, to: url)
}

/// Saves only the parameters of `module` that differ from `reference` (see `saveWeights`);
/// returns their names. An unchanged model gives a file with no tensors.
@discardableResult
public func saveChangedWeights(of module: Module, reference: Module, to url: URL, dtype: DType = .f32,
                               keyPrefix: String = "", metadata: [String: String] = [:]) throws -> [String] {
    let names = try changedParameterNames(module, reference: reference)
    try saveWeights(of: module, names: names, to: url, dtype: dtype, keyPrefix: keyPrefix, metadata: metadata)
    return names
}

/// Loads a file of some of `module`'s tensors (as `saveWeights` writes) over its current weights.
/// Every key must be one of the module's (after the usual rewrite rules, e.g. the optional
/// `text_model.` prefix) with the right shape; nothing is changed otherwise.
public func loadChangedWeights(into module: Module, from url: URL) throws {
    do {
        try loadModule(module, from: url)
    } catch let error as CheckpointError where error.unexpected.isEmpty && error.mismatched.isEmpty && error.unusable.isEmpty {
        // Only missing keys: what a partial file is.
        try loadModule(module, from: url, strict: false)
    }
}

// MARK: - LoRA

/// One module's LoRA factors: the update is (alpha / r)·B·A, with A = `down` [r, in] (or
/// [r, in, kh, kw] for a convolution) and B = `up` [out, r] (or [out, r, 1, 1]).
public struct LoRAFactors {
    /// A, PEFT's `lora_A` (kohya's `lora_down`).
    public var down: Tensor
    /// B, PEFT's `lora_B` (kohya's `lora_up`).
    public var up: Tensor
    public var alpha: Float

    public init(down: Tensor, up: Tensor, alpha: Float) {
        self.down = down
        self.up = up
        self.alpha = alpha
    }

    public var rank: Int { down.shape[0] }
    /// alpha / r, the factor PEFT applies to B·A.
    public var scale: Float { alpha / Float(rank) }

    /// Checks the shapes against each other; returns (out, in-shape) of the weight they update.
    func check(_ path: String) throws -> (out: Int, inShape: [Int]) {
        guard down.rank >= 2, up.rank >= 2, up.shape[1] == rank, up.shape.dropFirst(2).allSatisfy({ $0 == 1 }),
              down.rank == up.rank else {
            throw SavingError.invalidLoRA("\(path): A \(down.shape) and B \(up.shape) are not [r, in…] and [out, r, 1…]")
        }
        guard rank > 0, alpha.isFinite else { throw SavingError.invalidLoRA("\(path): rank \(rank), alpha \(alpha)") }
        return (up.shape[0], Array(down.shape.dropFirst()))
    }

    /// B·A as a tensor of the updated weight's shape [out, in…] (without the scale).
    public func product() -> Tensor {
        let out = up.shape[0]
        let inShape = Array(down.shape.dropFirst())
        let flatIn = inShape.reduce(1, *)
        return matmul(up.reshaped([out, rank]), down.reshaped([rank, flatIn])).reshaped([out] + inShape)
    }
}

/// The model a LoRA's modules belong to, and its key prefix in diffusers' files.
public enum LoRAComponent: String, Sendable, CaseIterable {
    case unet
    /// CLIP: module paths as this package names them (`encoder.layers.0.self_attn.q_proj`); the
    /// file spells them as transformers does, under `text_model.`.
    case textEncoder = "text_encoder"

    var modulePrefix: String { self == .textEncoder ? "text_model." : "" }
}

/// Adds (alpha/r)·B·A × `scale` to the weight `<path>.weight` of `module` for every entry of
/// `factors` (module path → factors). Every path and shape is checked before any weight changes.
public func mergeLoRA(_ factors: [String: LoRAFactors], into module: Module, scale: Float = 1) throws {
    let parameters = module.stateDict()
    var updates: [(Tensor, LoRAFactors)] = []
    for (path, lora) in factors.sorted(by: { $0.key < $1.key }) {
        let (out, inShape) = try lora.check(path)
        guard let weight = parameters[path + ".weight"] else {
            throw SavingError.invalidLoRA("the model has no weight \(path).weight")
        }
        guard weight.shape == [out] + inShape else {
            throw SavingError.invalidLoRA("\(path).weight is \(weight.shape), the factors make \([out] + inShape)")
        }
        updates.append((weight, lora))
    }
    noGrad {
        for (weight, lora) in updates {
            let delta = lora.product() * (lora.scale * scale)
            let w = weight.pointer, d = delta.pointer
            for i in 0..<weight.count { w[i] += d[i] }
        }
    }
}

/// PEFT's `LoraConfig` fields for a set of modules, as diffusers stores them: the most common
/// rank and alpha, and per-module exceptions.
private func loraConfig(_ factors: [String: LoRAFactors]) -> [String: Any] {
    func mostCommon<T: Hashable & Comparable>(_ values: [T]) -> T {
        var counts: [T: Int] = [:]
        for v in values { counts[v, default: 0] += 1 }
        return counts.max { a, b in a.value != b.value ? a.value < b.value : a.key > b.key }!.key
    }
    func number(_ value: Float) -> Any { value == value.rounded() && abs(value) < 1e9 ? Int(value) as Any : Double(value) as Any }
    let rank = mostCommon(factors.values.map(\.rank))
    let alpha = mostCommon(factors.values.map(\.alpha))
    var rankPattern: [String: Any] = [:], alphaPattern: [String: Any] = [:]
    for (path, lora) in factors {
        if lora.rank != rank { rankPattern[path] = lora.rank }
        if lora.alpha != alpha { alphaPattern[path] = number(lora.alpha) }
    }
    return ["r": rank, "lora_alpha": number(alpha), "rank_pattern": rankPattern, "alpha_pattern": alphaPattern,
            "target_modules": factors.keys.sorted(), "use_dora": false, "lora_bias": false]
}

/// Writes LoRA factors in diffusers' PEFT layout: `unet.<module>.lora_A.weight` /
/// `unet.<module>.lora_B.weight` (and `text_encoder.text_model.<module>…`), metadata `format: pt`
/// and `lora_adapter_metadata`, a JSON object of each component's LoraConfig under
/// `<component>.` keys (`unet.r`, `unet.lora_alpha`, `unet.rank_pattern`, `unet.alpha_pattern`,
/// `unet.target_modules`, …), as `save_lora_weights(…, unet_lora_adapter_metadata=…)` writes.
/// Alpha is per module: the config holds the most common rank and alpha, and the others in
/// `rank_pattern` / `alpha_pattern`.
/// Loadable by `pipe.load_lora_weights` (tools/verify_saving.py).
public func saveLoRA(_ factors: [LoRAComponent: [String: LoRAFactors]], to url: URL, dtype: DType = .f32) throws {
    try checkWritable(dtype)
    var tensors: [(name: String, tensor: Tensor)] = []
    var adapterMetadata: [String: Any] = [:]
    for component in LoRAComponent.allCases {
        guard let modules = factors[component], !modules.isEmpty else { continue }
        for (path, lora) in modules.sorted(by: { $0.key < $1.key }) {
            _ = try lora.check(path)
            let key = "\(component.rawValue).\(component.modulePrefix)\(path)"
            tensors.append(("\(key).lora_A.weight", lora.down))
            tensors.append(("\(key).lora_B.weight", lora.up))
        }
        // Module names in the config go without `text_model.`: PEFT matches them as suffixes, so
        // they fit transformers 4's CLIPTextModel (modules under text_model.) and transformers 5's
        // flattened one, whose loader drops `text_model.` from the keys but not from the config.
        for (key, value) in loraConfig(modules) {
            adapterMetadata["\(component.rawValue).\(key)"] = value
        }
    }
    guard !tensors.isEmpty else { throw SavingError.invalidLoRA("no LoRA factors to save") }
    let json = try JSONSerialization.data(withJSONObject: adapterMetadata, options: [.prettyPrinted, .sortedKeys])
    try writeSafeTensors(entries(tensors, dtype: dtype),
                         metadata: ["format": "pt", "lora_adapter_metadata": String(decoding: json, as: UTF8.self)],
                         to: url)
}

/// Reads a LoRA file in diffusers' PEFT layout (as `saveLoRA` writes): factors per component and
/// module path, alphas from `lora_adapter_metadata` (alpha = rank where the file has none, PEFT's
/// default scale of 1).
public func loadLoRA(from url: URL) throws -> [LoRAComponent: [String: LoRAFactors]] {
    let archive = try TensorArchive(contentsOf: url)
    var config: [String: Any] = [:]
    if let text = archive.metadata["lora_adapter_metadata"] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw SavingError.invalidFile(url, reason: "lora_adapter_metadata is not a JSON object")
        }
        config = object
    }
    var result: [LoRAComponent: [String: LoRAFactors]] = [:]
    for name in archive.names where name.hasSuffix(".lora_A.weight") {
        let key = String(name.dropLast(".lora_A.weight".count))
        guard let dot = key.firstIndex(of: "."), let component = LoRAComponent(rawValue: String(key[..<dot])) else {
            throw SavingError.invalidFile(url, reason: "\(name): not under unet. or text_encoder.")
        }
        let modulePath = String(key[key.index(after: dot)...])
        let upName = key + ".lora_B.weight"
        guard archive.contains(upName) else { throw SavingError.invalidFile(url, reason: "\(name) has no \(upName)") }
        let down = try archive.tensor(name), up = try archive.tensor(upName)
        let prefix = component.rawValue + "."
        var path = modulePath
        if path.hasPrefix(component.modulePrefix) { path.removeFirst(component.modulePrefix.count) }
        let alphaPattern = config[prefix + "alpha_pattern"] as? [String: Any] ?? [:]
        let alphaValue = alphaPattern[path] ?? alphaPattern[modulePath] ?? config[prefix + "lora_alpha"]
        let alpha = (alphaValue as? NSNumber)?.floatValue ?? Float(down.shape[0])
        let factors = LoRAFactors(down: down, up: up, alpha: alpha)
        _ = try factors.check(path)
        result[component, default: [:]][path] = factors
    }
    let paired = Set(result.flatMap { c, m in m.keys.map { "\(c.rawValue).\(c.modulePrefix)\($0).lora_B.weight" } })
    if let stray = archive.names.first(where: { $0.hasSuffix(".lora_B.weight") && !paired.contains($0) }) {
        throw SavingError.invalidFile(url, reason: "\(stray) has no lora_A partner")
    }
    return result
}
