import Diffusion
import Foundation
import Kernels
import NN
import Tensor

/// `score erase` as a function: runs a method on a model of either family, writes the erased
/// model, the saliency mask and run.json into the output folder, and estimates the leakage of
/// every concept (`Leakage.report`, the same estimator on either family).
public struct EraseJob {
    public var method: any ErasureMethod
    public var request: ErasureRequest
    /// The folder the pipeline was loaded from (configs are copied from it) and how run.json names it.
    public var baseFolder: URL
    public var baseName: String
    public var output: URL
    public var full = false
    /// The variant the base was read with (recorded so the erased folder reads its base the same way).
    public var baseVariant: String?
    /// Save a `--full` model as this variant (fp16, bf16) instead of Float32 weights.
    public var saveVariant: String?
    public var resume = false
    public var command = ""
    /// nil: skip the leakage estimate.
    public var leakage: LeakageOptions? = LeakageOptions()
    public var probes: [FeatureProbe] = []
    public var stopAfter: Int?
    /// Recompute the UNet's block activations in the backward pass (diffusers'
    /// `gradient_checkpointing`): the same weights bit for bit, less memory, more time. UNet only.
    public var gradientCheckpointing = false

    public init(method: any ErasureMethod, request: ErasureRequest, baseFolder: URL, baseName: String, output: URL) {
        self.method = method
        self.request = request
        self.baseFolder = baseFolder
        self.baseName = baseName
        self.output = output
    }

    /// Runs the job; returns the record written to `<output>/run.json` (nil when stopped early).
    /// The model, mask, config and run.json are written into a staging folder and then swapped in
    /// together (`swapIn`); leftovers of an interrupted run are removed first.
    @discardableResult
    public func run(pipeline: StableDiffusionPipeline, log: @escaping (String) -> Void) throws -> ErasureRecord? {
        pipeline.unet.gradientCheckpointing = gradientCheckpointing
        defer { pipeline.unet.gradientCheckpointing = false }
        return try run(model: pipeline, log: log)
    }

    /// Runs the job on a model of any family (see `run(pipeline:log:)`).
    @discardableResult
    public func run<Model: ErasableModel>(model pipeline: Model, log: @escaping (String) -> Void) throws -> ErasureRecord? {
        try request.validate()
        try ErasedModel.checkSaveVariant(saveVariant, full: full)
        if gradientCheckpointing && Model.family != .unet {
            throw ErasureError.invalidRequest("--gradient-checkpointing is implemented for the UNet only, not the \(Model.denoiserComponent)")
        }
        Self.removeLeftovers(in: output)
        let started = Date()
        let original = try pipeline.frozenDenoiser()
        let textEncoder = method.changesTextEncoder ? pipeline.textEncoderModule : nil
        let originalText = textEncoder.map { $0.namedParameters().reduce(into: [String: Tensor]()) { $0[$1.name] = Tensor(shape: $1.tensor.shape, scalars: $1.tensor.scalars) } }
        let context = ErasureContext(output: output, resume: resume, stopAfter: stopAfter, log: log)
        let outcome = try method.erase(request, model: pipeline, context: context)
        if outcome.stoppedEarly {
            log("stopped at step \(outcome.steps) as asked; continue with --resume")
            return nil
        }
        let trainingSeconds = Date().timeIntervalSince(started) + outcome.earlierSeconds
        let staging = output.appendingPathComponent(Self.stagingName)
        try? FileManager.default.removeItem(at: staging)
        // One id in run.json and in the model: a model/ moved into another run's folder is refused.
        let runID = UUID().uuidString.lowercased()
        let (changed, changedCount) = try ErasedModel.write(denoiser: pipeline.denoiser, reference: original,
                                            component: Model.denoiserComponent, baseFolder: baseFolder, baseName: baseName,
                                            method: method.name, concepts: request.concepts.map(\.name), full: full,
                                            runID: runID, baseVariant: baseVariant, saveVariant: saveVariant,
                                            textEncoder: textEncoder.map { ($0, originalText!) },
                                            to: staging.appendingPathComponent("model"))
        if !outcome.masks.isEmpty {
            try Tensor.save(outcome.masks, to: staging.appendingPathComponent("mask.safetensors"))
        }
        let config = try method.configJSON
        try config.write(to: staging.appendingPathComponent("config.json"), options: .atomic)
        var record = ErasureRecord(
            method: method.name, command: command, base_model: baseName, request: request,
            seed: (try? JSONInput.decode(SeedOnly.self, from: config).seed) ?? 0, steps: outcome.steps,
            losses: outcome.losses, wall_seconds: trainingSeconds, peak_memory_mb: peakResidentMegabytes(),
            trainable_parameters: outcome.trainableParameters, parameters_changed: changedCount, tensors_changed: changed.count,
            mask_kept: outcome.masks.isEmpty ? nil : Saliency.count(outcome.masks).kept, threads: Kernels.threadCount)
        record.run_id = runID
        record.gradient_checkpointing = gradientCheckpointing
        try record.write(config: config, to: staging.appendingPathComponent("run.json"))
        try Self.swapIn(staging, to: output)
        log("wrote \(output.appendingPathComponent("model").path): \(changed.count) tensors, \(changedCount) parameters changed")
        if let leakage {
            record.leakage = try request.concepts.map { concept in
                try Leakage.report(concept: concept, pipeline: pipeline, original: original, options: leakage, probes: probes, log: log)
            }
            try record.write(config: config, to: output.appendingPathComponent("run.json"))
        }
        return record
    }

    static let stagingName = ".staging"
    static let outputs = ["run.json", "model", "mask.safetensors", "config.json"]

    /// Replaces an earlier run's outputs with the staged ones, removing those the new run does not
    /// write (a mask). run.json goes first and comes back last, so a kill in between leaves a
    /// folder without a record, never a new model under an old record.
    static func swapIn(_ staging: URL, to output: URL) throws {
        let fm = FileManager.default
        for name in outputs { try? fm.removeItem(at: output.appendingPathComponent(name)) }
        for name in outputs.dropFirst() + ["run.json"] where fm.fileExists(atPath: staging.appendingPathComponent(name).path) {
            try fm.moveItem(at: staging.appendingPathComponent(name), to: output.appendingPathComponent(name))
        }
        try fm.removeItem(at: staging)
    }

    /// What an interrupted run leaves: the staging folder, the model's partial folder and the
    /// temporary files of atomic writes (".name.….tmp").
    static func removeLeftovers(in output: URL) {
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: output.path)) ?? []
        where name == stagingName || name.hasPrefix(".") && (name.hasSuffix(".tmp") || name.hasSuffix(".partial")) {
            try? fm.removeItem(at: output.appendingPathComponent(name))
        }
    }

    private struct SeedOnly: Decodable { var seed: UInt64 }
}
