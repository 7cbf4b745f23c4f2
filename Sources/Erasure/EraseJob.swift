import Diffusion
import Foundation
import Kernels
import NN
import Tensor

/// `score erase` as a function: runs a method on a pipeline, writes the erased model, the
/// saliency mask and run.json into the output folder, and estimates the leakage of every concept.
public struct EraseJob {
    public var method: any ErasureMethod
    public var request: ErasureRequest
    /// The folder the pipeline was loaded from (configs are copied from it) and how run.json names it.
    public var baseFolder: URL
    public var baseName: String
    public var output: URL
    public var full = false
    public var resume = false
    public var command = ""
    /// nil: skip the leakage estimate.
    public var leakage: LeakageOptions? = LeakageOptions()
    public var probes: [FeatureProbe] = []
    public var stopAfter: Int?

    public init(method: any ErasureMethod, request: ErasureRequest, baseFolder: URL, baseName: String, output: URL) {
        self.method = method
        self.request = request
        self.baseFolder = baseFolder
        self.baseName = baseName
        self.output = output
    }

    /// Runs the job; returns the record written to `<output>/run.json` (nil when stopped early).
    @discardableResult
    public func run(pipeline: StableDiffusionPipeline, log: @escaping (String) -> Void) throws -> ErasureRecord? {
        try request.validate()
        let started = Date()
        let original = try pipeline.unet.copy()
        original.freeze()
        let context = ErasureContext(output: output, resume: resume, stopAfter: stopAfter, log: log)
        let outcome = try method.erase(request, pipeline: pipeline, context: context)
        if outcome.stoppedEarly {
            log("stopped at step \(outcome.steps) as asked; continue with --resume")
            return nil
        }
        let trainingSeconds = Date().timeIntervalSince(started) + outcome.earlierSeconds
        let modelFolder = output.appendingPathComponent("model")
        let (changed, changedCount) = try ErasedModel.write(unet: pipeline.unet, reference: original, baseFolder: baseFolder, baseName: baseName,
                                            method: method.name, concepts: request.concepts.map(\.name), full: full, to: modelFolder)
        log("wrote \(modelFolder.path): \(changed.count) tensors, \(changedCount) parameters changed")
        if !outcome.masks.isEmpty {
            try Tensor.save(outcome.masks, to: output.appendingPathComponent("mask.safetensors"))
        }
        let config = try method.configJSON
        try config.write(to: output.appendingPathComponent("config.json"), options: .atomic)
        var record = ErasureRecord(
            method: method.name, command: command, base_model: baseName, request: request,
            seed: (try? JSONDecoder().decode(SeedOnly.self, from: config).seed) ?? 0, steps: outcome.steps,
            losses: outcome.losses, wall_seconds: trainingSeconds, peak_memory_mb: peakResidentMegabytes(),
            trainable_parameters: outcome.trainableParameters, parameters_changed: changedCount, tensors_changed: changed.count,
            mask_kept: outcome.masks.isEmpty ? nil : Saliency.count(outcome.masks).kept, threads: Kernels.threadCount)
        try record.write(config: config, to: output.appendingPathComponent("run.json"))
        if let leakage {
            record.leakage = try request.concepts.map { concept in
                try Leakage.report(concept: concept, pipeline: pipeline, original: original, options: leakage, probes: probes, log: log)
            }
            try record.write(config: config, to: output.appendingPathComponent("run.json"))
        }
        return record
    }

    private struct SeedOnly: Decodable { var seed: UInt64 }
}
