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
//   (`loadChangedWeights`).
// (LoRA files: LoRA.swift.)
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

    public var description: String {
        switch self {
        case let .conflictingFile(url, reason): return "\(url.path): \(reason)"
        case let .mismatch(reason): return "cannot save: \(reason)"
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
