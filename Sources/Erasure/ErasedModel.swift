import Diffusion
import Foundation
import NN
import SafeTensors
import Tensor

/// An erased model on disk, in diffusers layout: `model_index.json`, `scheduler/`, the denoiser's
/// `config.json` (`unet/` for Stable Diffusion, `transformer/` for FLUX) and either its full
/// weights (`--full`: `unet/diffusion_pytorch_model.safetensors`, plus copies of the base's other
/// components, so the folder stands alone) or only the tensors the erasure changed
/// (`unet/erased_weights.safetensors`, `transformer/erased_weights.safetensors`) with
/// `erasure.json` naming the base model they apply to.
public enum ErasedModel {
    public static let changedWeightsName = "erased_weights.safetensors"
    public static let manifestName = "erasure.json"
    /// The safetensors metadata key of the run id in a `--full` model's UNet weights.
    public static let runIDKey = "score_run_id"
    /// The variants a `--full` model can be saved in (`--save-variant`), with the dtype each
    /// stores, as diffusers' `save_pretrained(variant=)` of a model cast to that dtype.
    public static let saveVariants: [String: DType] = ["fp16": .f16, "bf16": .bf16]

    /// `erasure.json`: what the changed-weights file applies to.
    public struct Manifest: Codable, Sendable {
        /// The base model folder, or "embedded" for the tool's default model.
        public var base_model: String
        public var method: String
        public var concepts: [String]
        public var tensors_changed: Int
        public var parameters_changed: Int
        /// The run.json of the same run carries the same id (nil in folders written before run ids).
        public var run_id: String? = nil
        /// The weights variant the base was read with (`--variant`); loading reads it again.
        public var base_variant: String? = nil
        /// Text-encoder tensors the erasure changed (in `text_encoder/erased_weights.safetensors`;
        /// nil when it left the encoder alone).
        public var text_encoder_tensors_changed: Int? = nil

        /// The base as written: "embedded", or an absolute path, so that the erased folder works
        /// from any working directory.
        static func storedBase(_ base: String) -> String {
            base == "embedded" ? base : URL(fileURLWithPath: base).standardizedFileURL.path
        }

        /// The base model folder of the manifest in `folder`, nil for the embedded model. A
        /// relative path is resolved against `folder` (where a manifest may put it), else against
        /// the working directory (what older versions wrote) when a model is there.
        public func baseFolder(relativeTo folder: URL) -> URL? {
            if base_model == "embedded" { return nil }
            if base_model.hasPrefix("/") { return URL(fileURLWithPath: base_model).standardizedFileURL }
            let besideManifest = folder.appendingPathComponent(base_model).standardizedFileURL
            let fromWorkingDirectory = URL(fileURLWithPath: base_model).standardizedFileURL
            let hasModel = { (url: URL) in FileManager.default.fileExists(atPath: url.appendingPathComponent("model_index.json").path) }
            return !hasModel(besideManifest) && hasModel(fromWorkingDirectory) ? fromWorkingDirectory : besideManifest
        }
    }

    /// `--save-variant` names one of `saveVariants` and needs `--full`.
    public static func checkSaveVariant(_ saveVariant: String?, full: Bool) throws {
        guard let saveVariant else { return }
        guard saveVariants[saveVariant] != nil else {
            throw ErasureError.invalidRequest("--save-variant '\(saveVariant)' is not a variant a model is saved in; use \(saveVariants.keys.sorted().joined(separator: " or "))")
        }
        guard full else {
            throw ErasureError.invalidRequest("--save-variant writes the whole UNet; give --full (the changed tensors alone are always Float32)")
        }
    }

    /// How many erased folders may stack (an erasure of an erased model of an erased model, …).
    public static let maximumBaseDepth = 8

    /// Writes `unet` (erased from `reference`) into `folder`; see `write(denoiser:…)`.
    @discardableResult
    public static func write(unet: UNet2DConditionModel, reference: UNet2DConditionModel, baseFolder: URL, baseName: String,
                             method: String, concepts: [String], full: Bool, runID: String? = nil,
                             baseVariant: String? = nil, saveVariant: String? = nil,
                             textEncoder: (model: Module, original: [String: Tensor])? = nil,
                             to folder: URL) throws -> (tensors: [String], entries: Int) {
        try write(denoiser: unet, reference: reference, component: "unet", baseFolder: baseFolder, baseName: baseName,
                  method: method, concepts: concepts, full: full, runID: runID, baseVariant: baseVariant,
                  saveVariant: saveVariant, textEncoder: textEncoder, to: folder)
    }

    /// Writes `denoiser` (erased from `reference`), the pipeline folder's `component` ("unet",
    /// "transformer"), into `folder`; returns the changed tensor names and how many entries
    /// differ. Small files (model_index.json, scheduler/, configs) are copied from `baseFolder`.
    @discardableResult
    public static func write(denoiser: Module, reference: Module, component: String, baseFolder: URL, baseName: String,
                             method: String, concepts: [String], full: Bool, runID: String? = nil,
                             baseVariant: String? = nil, saveVariant: String? = nil,
                             textEncoder: (model: Module, original: [String: Tensor])? = nil,
                             to folder: URL) throws -> (tensors: [String], entries: Int) {
        try checkSaveVariant(saveVariant, full: full)
        let textChanged = textEncoder.map { changedNames($0.model, original: $0.original) } ?? []
        if full, !textChanged.isEmpty {
            throw ErasureError.invalidRequest("--full does not write a changed text encoder yet; save without --full (the changed UNet and text-encoder tensors over the base)")
        }
        let fm = FileManager.default
        try checkReplaceable(folder, directory: true)
        let staging = folder.deletingLastPathComponent().appendingPathComponent(".\(folder.lastPathComponent).partial")
        try? fm.removeItem(at: staging)
        try fm.createDirectory(at: staging.appendingPathComponent(component), withIntermediateDirectories: true)
        if SingleFileCheckpoint.isSingleFile(baseFolder.path) {
            // A single-file base has no configs to copy: the UNet's is written, the rest is read
            // from the base when the folder is loaded.
            guard !full, let unet = denoiser as? UNet2DConditionModel else {
                try? fm.removeItem(at: staging)
                throw ErasureError.invalidRequest("--full copies a base folder's files; \(baseFolder.path) is a single file: save the changed weights, then `score convert` them to a single file")
            }
            try writeJSONAtomically(unet.config, to: staging.appendingPathComponent("unet/config.json"))
        } else {
            try fm.copyItem(at: baseFolder.appendingPathComponent("model_index.json"), to: staging.appendingPathComponent("model_index.json"))
            try fm.copyItem(at: baseFolder.appendingPathComponent("scheduler"), to: staging.appendingPathComponent("scheduler"))
            try fm.copyItem(at: baseFolder.appendingPathComponent("\(component)/config.json"),
                            to: staging.appendingPathComponent("\(component)/config.json"))
        }
        let changed = try changedParameterNames(denoiser, reference: reference)
        let count = changedEntryCount(denoiser, reference: reference)
        if full {
            for other in try fm.contentsOfDirectory(atPath: baseFolder.path)
            where ![component, "scheduler", "model_index.json"].contains(other) && !other.hasPrefix(".") {
                try fm.copyItem(at: baseFolder.appendingPathComponent(other), to: staging.appendingPathComponent(other))
            }
            let name = "diffusion_pytorch_model\(saveVariant.map { ".\($0)" } ?? "").safetensors"
            try Tensor.save(denoiser.stateDict(), to: staging.appendingPathComponent("\(component)/\(name)"),
                            dtype: saveVariant.flatMap { saveVariants[$0] } ?? .f32,
                            metadata: ["format": "pt"].merging(runID.map { [runIDKey: $0] } ?? [:]) { a, _ in a })
        } else {
            try saveWeights(of: denoiser, names: changed, to: staging.appendingPathComponent("\(component)/\(changedWeightsName)"),
                            metadata: ["score_method": method].merging(runID.map { [runIDKey: $0] } ?? [:]) { a, _ in a })
            var manifest = Manifest(base_model: Manifest.storedBase(baseName), method: method, concepts: concepts,
                                    tensors_changed: changed.count, parameters_changed: count, run_id: runID,
                                    base_variant: baseVariant)
            if let textEncoder, !textChanged.isEmpty {
                try fm.createDirectory(at: staging.appendingPathComponent("text_encoder"), withIntermediateDirectories: true)
                try saveWeights(of: textEncoder.model, names: textChanged,
                                to: staging.appendingPathComponent("text_encoder/\(changedWeightsName)"),
                                metadata: ["score_method": method].merging(runID.map { [runIDKey: $0] } ?? [:]) { a, _ in a })
                manifest.text_encoder_tensors_changed = textChanged.count
            }
            try writeJSONAtomically(manifest, to: staging.appendingPathComponent(manifestName))
        }
        try? fm.removeItem(at: folder)
        try fm.moveItem(at: staging, to: folder)
        return (changed, count)
    }

    /// The parameters of `module` whose values differ from `original` (a snapshot by name).
    static func changedNames(_ module: Module, original: [String: Tensor]) -> [String] {
        module.namedParameters().filter { name, tensor in
            guard let other = original[name], other.count == tensor.count else { return true }
            return memcmp(tensor.pointer, other.pointer, tensor.count * MemoryLayout<Float>.stride) != 0
        }.map(\.name)
    }

    /// The module of a pipeline's text encoder (MiniLM or CLIP), nil for other encoders.
    public static func textEncoderModule(of pipeline: StableDiffusionPipeline) -> Module? { pipeline.textEncoderModule }

    /// How many parameter entries of `module` differ from `reference`'s (same names and shapes).
    public static func changedEntryCount(_ module: Module, reference: Module) -> Int {
        let base = reference.stateDict()
        var count = 0
        for (name, tensor) in module.namedParameters() {
            guard let other = base[name], other.count == tensor.count else { continue }
            for i in 0..<tensor.count where tensor.pointer[i] != other.pointer[i] { count += 1 }
        }
        return count
    }

    /// The manifest of a changed-weights folder, or nil for a standalone model folder.
    public static func manifest(in folder: URL) throws -> Manifest? {
        let url = folder.appendingPathComponent(manifestName)
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        do {
            return try JSONInput.decode(Manifest.self, from: Data(contentsOf: url))
        } catch let error as DecodingError where !error.keyPath().isEmpty {
            throw PipelineError.invalidFile(url, reason: "not an erasure manifest: \(error.keyPath()): \(error.reason)")
        } catch {
            throw PipelineError.invalidFile(url, reason: "not an erasure manifest (not valid JSON, or not an object)")
        }
    }

    /// The run id an erased folder carries, and the file it is in: erasure.json's, else the
    /// `--full` UNet weights' metadata; nil for a model not written by `score erase`.
    public static func runID(in folder: URL) throws -> (id: String, file: URL)? {
        if let manifest = try manifest(in: folder) {
            return manifest.run_id.map { ($0, folder.appendingPathComponent(manifestName)) }
        }
        // A --full model: its denoiser's weights (UNet or transformer), of whichever variant it was saved in.
        for component in ["unet", "transformer"] {
            let denoiser = folder.appendingPathComponent(component)
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: denoiser.path)) ?? []).sorted()
            where name.hasSuffix(".safetensors") && WeightsVariant.weightsFile(named: name, prefix: "diffusion_pytorch_model") != nil {
                let weights = denoiser.appendingPathComponent(name)
                if let id = try? SafeTensorsArchive(url: weights).metadata[runIDKey] { return (id, weights) }
            }
        }
        return nil
    }

    /// The run.json beside a run's `model/` folder, nil when there is none (or it is not an
    /// erasure's); an error naming both files when the model and the record come from different
    /// runs (a model/ copied into another run's folder).
    public static func record(beside folder: URL) throws -> ErasureRecord? {
        let url = folder.deletingLastPathComponent().appendingPathComponent("run.json")
        guard FileManager.default.fileExists(atPath: url.path), let record = try? ErasureRecord.read(from: url) else { return nil }
        let model = try runID(in: folder)
        guard record.run_id != model?.id else { return record }
        let modelFile = model?.file ?? folder
        throw PipelineError.invalidFile(url, reason: """
            run id \(record.run_id ?? "(none)") does not match \(modelFile.path)'s \(model?.id ?? "(none)"): \
            the model and run.json come from different runs; evaluate the model from its own run folder
            """)
    }

    /// Loads a changed-weights folder's tensors over `pipeline`'s UNet (the base model's).
    public static func apply(folder: URL, to pipeline: StableDiffusionPipeline) throws {
        try apply(folder: folder, model: pipeline)
    }

    /// Loads a changed-weights folder's tensors over `pipeline`'s transformer (the base model's).
    public static func apply(folder: URL, to pipeline: FluxPipeline) throws {
        try apply(folder: folder, model: pipeline)
    }

    /// Loads a changed-weights folder's tensors over `model`'s denoiser and, when the folder has
    /// them, its text encoder.
    static func apply<Model: ErasableModel>(folder: URL, model: Model) throws {
        let weights = folder.appendingPathComponent("\(Model.denoiserComponent)/\(changedWeightsName)")
        guard FileManager.default.fileExists(atPath: weights.path) else {
            throw PipelineError.missingFile(weights, what: "the erased \(Model.denoiserComponent) tensors")
        }
        try loadChangedWeights(into: model.denoiser, from: weights)
        let text = folder.appendingPathComponent("text_encoder/\(changedWeightsName)")
        if FileManager.default.fileExists(atPath: text.path) {
            guard let module = model.textEncoderModule else {
                throw PipelineError.incompatible("\(text.path) changes a text encoder, but the base's is neither MiniLM nor CLIP")
            }
            try loadChangedWeights(into: module, from: text)
        }
    }
}

/// Encodes `value` as pretty, key-sorted JSON and writes it atomically.
public func writeJSONAtomically<T: Encodable>(_ value: T, to url: URL) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try writeAtomically(encoder.encode(value), to: url)
}

/// `run.json`: everything needed to reproduce and judge a run.
public struct ErasureRecord: Codable, Sendable {
    public var method: String
    public var command: String
    public var base_model: String
    public var request: ErasureRequest
    public var seed: UInt64
    public var steps: Int
    /// Loss terms per step (null where a term was not computed).
    public var losses: [String: [Float?]]
    public var wall_seconds: Double
    public var peak_memory_mb: Double?
    public var trainable_parameters: Int
    public var parameters_changed: Int
    public var tensors_changed: Int
    public var mask_kept: Int?
    public var threads: Int
    public var date: String
    public var leakage: [LeakageReport]?
    /// The id the run's model/ carries too (nil in records written before run ids).
    public var run_id: String? = nil
    /// Whether the UNet recomputed its activations in the backward pass (`--gradient-checkpointing`).
    public var gradient_checkpointing: Bool? = nil

    public init(method: String, command: String, base_model: String, request: ErasureRequest, seed: UInt64, steps: Int,
                losses: [String: [Float]], wall_seconds: Double, peak_memory_mb: Double?, trainable_parameters: Int,
                parameters_changed: Int, tensors_changed: Int, mask_kept: Int?, threads: Int) {
        self.method = method
        self.command = command
        self.base_model = base_model
        self.request = request
        self.seed = seed
        self.steps = steps
        self.losses = losses.mapValues { $0.map { $0.isFinite ? $0 : nil } }
        self.wall_seconds = wall_seconds
        self.peak_memory_mb = peak_memory_mb
        self.trainable_parameters = trainable_parameters
        self.parameters_changed = parameters_changed
        self.tensors_changed = tensors_changed
        self.mask_kept = mask_kept
        self.threads = threads
        self.date = ISO8601DateFormatter().string(from: Date())
    }

    /// Writes run.json with the method's config object under "config".
    public func write(config: Data, to url: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var object = try JSONSerialization.jsonObject(with: encoder.encode(self)) as! [String: Any]
        object["config"] = try JSONSerialization.jsonObject(with: config)
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try writeAtomically(data, to: url)
    }

    public static func read(from url: URL) throws -> ErasureRecord {
        do { return try JSONInput.decode(ErasureRecord.self, from: Data(contentsOf: url)) } catch {
            throw PipelineError.invalidFile(url, reason: "not a run.json of `score erase` (\(error))")
        }
    }
}
