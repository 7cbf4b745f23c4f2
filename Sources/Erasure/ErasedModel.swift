import Diffusion
import Foundation
import NN
import SafeTensors
import Tensor

/// An erased model on disk, in diffusers layout: `model_index.json`, `scheduler/`, `unet/config.json`
/// and either the full UNet weights (`--full`: `unet/diffusion_pytorch_model.safetensors`, plus
/// copies of the base's other components, so the folder stands alone) or only the tensors the
/// erasure changed (`unet/erased_weights.safetensors`) with `erasure.json` naming the base model
/// they apply to.
public enum ErasedModel {
    public static let changedWeightsName = "erased_weights.safetensors"
    public static let manifestName = "erasure.json"

    /// `erasure.json`: what the changed-weights file applies to.
    public struct Manifest: Codable, Sendable {
        /// The base model folder, or "embedded" for the tool's default model.
        public var base_model: String
        public var method: String
        public var concepts: [String]
        public var tensors_changed: Int
        public var parameters_changed: Int

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

    /// How many erased folders may stack (an erasure of an erased model of an erased model, …).
    public static let maximumBaseDepth = 8

    /// Writes `unet` (erased from `reference`) into `folder`; returns the changed tensor names and
    /// how many entries differ. Small files (model_index.json, scheduler/, configs) are copied
    /// from `baseFolder`.
    @discardableResult
    public static func write(unet: UNet2DConditionModel, reference: UNet2DConditionModel, baseFolder: URL, baseName: String,
                             method: String, concepts: [String], full: Bool, to folder: URL) throws -> (tensors: [String], entries: Int) {
        let fm = FileManager.default
        try checkReplaceable(folder, directory: true)
        let staging = folder.deletingLastPathComponent().appendingPathComponent(".\(folder.lastPathComponent).partial")
        try? fm.removeItem(at: staging)
        try fm.createDirectory(at: staging.appendingPathComponent("unet"), withIntermediateDirectories: true)
        try fm.copyItem(at: baseFolder.appendingPathComponent("model_index.json"), to: staging.appendingPathComponent("model_index.json"))
        try fm.copyItem(at: baseFolder.appendingPathComponent("scheduler"), to: staging.appendingPathComponent("scheduler"))
        try fm.copyItem(at: baseFolder.appendingPathComponent("unet/config.json"), to: staging.appendingPathComponent("unet/config.json"))
        let changed = try changedParameterNames(unet, reference: reference)
        let count = changedEntryCount(unet, reference: reference)
        if full {
            for component in try fm.contentsOfDirectory(atPath: baseFolder.path)
            where !["unet", "scheduler", "model_index.json"].contains(component) && !component.hasPrefix(".") {
                try fm.copyItem(at: baseFolder.appendingPathComponent(component), to: staging.appendingPathComponent(component))
            }
            try Tensor.save(unet.stateDict(), to: staging.appendingPathComponent("unet/diffusion_pytorch_model.safetensors"))
        } else {
            try saveWeights(of: unet, names: changed, to: staging.appendingPathComponent("unet/\(changedWeightsName)"),
                            metadata: ["score_method": method])
            let manifest = Manifest(base_model: Manifest.storedBase(baseName), method: method, concepts: concepts,
                                    tensors_changed: changed.count, parameters_changed: count)
            try writeJSONAtomically(manifest, to: staging.appendingPathComponent(manifestName))
        }
        try? fm.removeItem(at: folder)
        try fm.moveItem(at: staging, to: folder)
        return (changed, count)
    }

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
            return try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: url))
        } catch let error as DecodingError where !error.keyPath().isEmpty {
            throw PipelineError.invalidFile(url, reason: "not an erasure manifest: \(error.keyPath()): \(error.reason)")
        } catch {
            throw PipelineError.invalidFile(url, reason: "not an erasure manifest (not valid JSON, or not an object)")
        }
    }

    /// Loads a changed-weights folder's tensors over `pipeline`'s UNet (the base model's).
    public static func apply(folder: URL, to pipeline: StableDiffusionPipeline) throws {
        let weights = folder.appendingPathComponent("unet/\(changedWeightsName)")
        guard FileManager.default.fileExists(atPath: weights.path) else {
            throw PipelineError.missingFile(weights, what: "the erased UNet tensors")
        }
        try loadChangedWeights(into: pipeline.unet, from: weights)
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
        do { return try JSONDecoder().decode(ErasureRecord.self, from: Data(contentsOf: url)) } catch {
            throw PipelineError.invalidFile(url, reason: "not a run.json of `score erase` (\(error))")
        }
    }
}
