import Diffusion
import Erasure
import Foundation
import Testbed

/// A pipeline and where it came from.
public struct LoadedModel {
    public var pipeline: StableDiffusionPipeline
    /// The folder whose configs describe it (the embedded folder for the default model).
    public var folder: URL
    /// How records name it: "embedded" or the path given.
    public var name: String
    /// The erasure manifest when the folder holds changed weights over a base model.
    public var manifest: ErasedModel.Manifest?
    /// The run.json of the `score erase` run whose model/ this is (checked to carry its run id).
    public var record: ErasureRecord? = nil

    /// Merges `loras` into the pipeline's weights (`--lora`), and names them in `name`.
    public mutating func merge(_ loras: [LoRAFile]) throws {
        guard !loras.isEmpty else { return }
        try pipeline.merge(loras)
        name += loras.map { " + LoRA \($0.path)" + ($0.scale == 1 ? "" : " × \($0.scale)") }.joined()
    }
}

/// Resolves every `--model` the tool accepts: nothing (the embedded mini-SD), a testbed folder
/// (MiniLM from the asset cache), an erased folder of changed weights (loaded over its base) or
/// a diffusers Stable Diffusion folder, or an SD 1.x/2.x single-file checkpoint (`.safetensors`;
/// its tokenizer and configs from the folder holding it, see `StableDiffusionPipeline(singleFile:)`).
public enum ModelLoader {
    /// `variant`: the weights variant to read (`--variant fp16`), with diffusers' rules
    /// (`WeightsVariant`); for an erased folder, its base's.
    public static func load(_ path: String?, variant: String? = nil, assets: Assets = Assets()) throws -> LoadedModel {
        try checkVariant(variant, model: path)
        // A model/ moved into another run's folder is refused before any weight is read.
        let record = try path.flatMap { try ErasedModel.record(beside: URL(fileURLWithPath: $0)) }
        var loaded = try load(path, variant: variant, assets: assets, chain: [])
        loaded.record = record
        return loaded
    }

    /// The testbed a model was trained as ("fashion-mnist", "emoji": model_index.json's
    /// `_score_testbed`), following an erased folder to its base; "fashion-mnist" for the
    /// embedded model, nil for any other model or a folder that cannot be read (loading says why).
    public static func testbed(of path: String?) -> String? {
        guard var folder = path.map({ URL(fileURLWithPath: $0) }) else { return "fashion-mnist" }
        for _ in 0...ErasedModel.maximumBaseDepth {
            guard let manifest = try? ErasedModel.manifest(in: folder) else { break }
            guard let base = manifest.baseFolder(relativeTo: folder) else { return "fashion-mnist" }
            folder = base
        }
        let index = try? JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("model_index.json")))
        return (index as? [String: Any])?["_score_testbed"] as? String
    }

    /// `--variant` reads a `--model` folder's weights; the embedded model has one set.
    public static func checkVariant(_ variant: String?, model: String?) throws {
        if variant != nil, model == nil {
            throw EvaluationError.invalidSetting("--variant reads a --model folder's weights; give --model")
        }
    }

    /// A FLUX `--model` folder (the mini-FLUX's layout, `MiniFlux.pipeline`) or the model/ folder
    /// of `score erase` over one: its base, followed through every erased folder, with each
    /// folder's changed transformer tensors loaded over it in turn.
    public static func loadFlux(_ path: String, variant: String? = nil, assets: Assets = Assets()) throws -> FluxPipeline {
        var folders = [URL(fileURLWithPath: path)]
        var baseVariant = variant
        while let manifest = try ErasedModel.manifest(in: folders[folders.count - 1]) {
            let file = folders[folders.count - 1].appendingPathComponent(ErasedModel.manifestName)
            guard let base = manifest.baseFolder(relativeTo: folders[folders.count - 1]) else {
                throw PipelineError.invalidFile(file, reason: "base_model is the embedded mini-SD, not a FLUX folder")
            }
            guard folders.count <= ErasedModel.maximumBaseDepth else {
                throw PipelineError.invalidFile(file, reason: "base_model chains through more than \(ErasedModel.maximumBaseDepth) erased folders")
            }
            baseVariant = baseVariant ?? manifest.base_variant
            folders.append(base)
        }
        let pipeline = try MiniFlux.pipeline(folder: folders[folders.count - 1], assets: assets, variant: baseVariant)
        for erased in folders.dropLast().reversed() { try ErasedModel.apply(folder: erased, to: pipeline) }
        return pipeline
    }

    /// `chain`: the erased folders whose `base_model` led here, outermost first, to refuse cycles.
    private static func load(_ path: String?, variant: String?, assets: Assets, chain: [URL]) throws -> LoadedModel {
        guard let path else {
            return LoadedModel(pipeline: try DefaultModel.pipeline(assets: assets), folder: try DefaultModel.folder(),
                               name: "embedded", manifest: nil)
        }
        if SingleFileCheckpoint.isSingleFile(path) {
            guard variant == nil else {
                throw EvaluationError.invalidSetting("--variant picks among a folder's weights files; \(path) is a single file")
            }
            let pipeline = try StableDiffusionPipeline(singleFile: URL(fileURLWithPath: path))
            return LoadedModel(pipeline: pipeline, folder: URL(fileURLWithPath: path), name: path, manifest: nil)
        }
        let folder = URL(fileURLWithPath: path)
        let index = folder.appendingPathComponent("model_index.json")
        let manifest = try ErasedModel.manifest(in: folder)
        guard manifest != nil || FileManager.default.fileExists(atPath: index.path) else {
            throw PipelineError.missingFile(index, what: "--model must be a diffusers pipeline folder, the model/ folder of `score erase`, or a single-file .safetensors checkpoint")
        }
        if let manifest {
            let here = folder.standardizedFileURL.resolvingSymlinksInPath()
            let manifestFile = folder.appendingPathComponent(ErasedModel.manifestName)
            let route = (chain + [here]).map(\.path).joined(separator: " → ")
            if chain.contains(here) {
                throw PipelineError.invalidFile(manifestFile, reason: "base_model leads back to this folder (\(route)); an erased model's base must be another model")
            }
            guard chain.count < ErasedModel.maximumBaseDepth else {
                throw PipelineError.invalidFile(manifestFile, reason: "base_model chains through more than \(ErasedModel.maximumBaseDepth) erased folders (\(route))")
            }
            let baseFolder = manifest.baseFolder(relativeTo: folder)
            let base = try load(baseFolder?.path, variant: variant ?? manifest.base_variant, assets: assets, chain: chain + [here])
            try ErasedModel.apply(folder: folder, to: base.pipeline)
            return LoadedModel(pipeline: base.pipeline, folder: folder, name: path, manifest: manifest)
        }
        let isTestbed = (try? JSONSerialization.jsonObject(with: Data(contentsOf: index)) as? [String: Any])?["_score_testbed"] != nil
        let pipeline = isTestbed ? try DefaultModel.pipeline(folder: folder, assets: assets, variant: variant)
                                 : try StableDiffusionPipeline(directory: folder, variant: variant)
        return LoadedModel(pipeline: pipeline, folder: folder, name: path, manifest: nil)
    }
}
