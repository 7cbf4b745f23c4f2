import Foundation
import SafeTensors
import Tensor

// A Stable Diffusion pipeline from one single-file checkpoint, and back (see SingleFile.swift).

extension StableDiffusionPipeline {
    /// Loads an SD 1.x/2.x single-file checkpoint (`.safetensors`, original layout), as diffusers'
    /// `from_single_file`.
    ///
    /// - Parameters:
    ///   - config: a diffusers Stable Diffusion folder to read what the file does not hold, as
    ///     diffusers' `config=`: its `tokenizer/` (required: a single file has none), and, where
    ///     present, `unet/`, `vae/`, `text_encoder/` configs and the scheduler config. Default: the
    ///     folder holding the file, when it has `tokenizer/` (the published SD repositories ship the
    ///     single file beside the diffusers folders). Component configs it lacks are read from the
    ///     file's shapes with the family's published constants (`SingleFileCheckpoint.inferred…`).
    ///   - predictionType: overrides the scheduler's `prediction_type` (diffusers' `prediction_type`):
    ///     without a scheduler config, SD 1.x files are ε models and SD 2.x files v-prediction (the
    ///     768-px 2.x models; pass `.epsilon` for the 512-px bases).
    ///   - scheduler: a sampler class to build from the scheduler config instead of its own
    ///     (PNDM with PLMS steps for SD 1.x, DDIM for SD 2.x when no config names one).
    public convenience init(singleFile url: URL, config: URL? = nil, predictionType: PredictionType? = nil,
                            scheduler kind: SchedulerKind? = nil) throws {
        let checkpoint = try SingleFileCheckpoint(url: url)
        let beside = url.deletingLastPathComponent()
        let fileManager = FileManager.default
        guard let folder = config ?? (fileManager.fileExists(atPath: beside.appendingPathComponent("tokenizer").path) ? beside : nil) else {
            throw PipelineError.invalidFile(url, reason: "a single-file checkpoint holds no tokenizer: keep it in, or give as its config (--model-config), a diffusers Stable Diffusion folder with tokenizer/ (e.g. stable-diffusion-v1-5 or -2-1, which ship both)")
        }
        func file(_ path: String) -> URL? {
            let url = folder.appendingPathComponent(path)
            return fileManager.fileExists(atPath: url.path) ? url : nil
        }
        guard let tokenizerFolder = file("tokenizer") else {
            throw PipelineError.missingFile(folder.appendingPathComponent("tokenizer"), what: "the tokenizer of the single file \(url.lastPathComponent)")
        }

        var schedulerConfig: SchedulerConfig
        if let schedulerURL = file("scheduler/scheduler_config.json") {
            schedulerConfig = try SchedulerConfig(contentsOf: schedulerURL)
        } else {
            // diffusers' defaults for single files (SCHEDULER_DEFAULT_CONFIG) and the published repositories' classes.
            schedulerConfig = SchedulerConfig()
            schedulerConfig.className = checkpoint.family == .sd1 ? SchedulerKind.pndm.rawValue : SchedulerKind.ddim.rawValue
            schedulerConfig.betaSchedule = .scaledLinear
            schedulerConfig.betaStart = 0.00085
            schedulerConfig.betaEnd = 0.012
            schedulerConfig.stepsOffset = 1
            schedulerConfig.skipPrkSteps = true
            schedulerConfig.setAlphaToOne = false
            schedulerConfig.clipSample = false
            schedulerConfig.timestepSpacing = .leading
            schedulerConfig.predictionType = checkpoint.family == .sd1 ? .epsilon : .vPrediction
            schedulerConfig.source = "the default scheduler config of \(url.lastPathComponent) (SD \(checkpoint.family == .sd1 ? "1.x" : "2.x"))"
        }
        if let predictionType { schedulerConfig.predictionType = predictionType }

        let unetConfig = try file("unet/config.json").map { try UNet2DConditionConfig(contentsOf: $0) }
            ?? checkpoint.inferredUNetConfig(predictionType: schedulerConfig.predictionType)
        let vaeConfig = try file("vae/config.json").map { try AutoencoderKLConfig(contentsOf: $0) } ?? checkpoint.inferredVAEConfig()
        let textConfig = try file("text_encoder/config.json").map {
            try CheckpointFiles.decode(CLIPTextConfig.self, from: $0, what: "the CLIP text config")
        } ?? checkpoint.inferredTextConfig()

        let schedulerName = kind?.rawValue ?? schedulerConfig.className ?? SchedulerKind.pndm.rawValue
        guard let schedulerKind = kind ?? SchedulerKind(rawValue: schedulerName) else {
            throw PipelineError.unsupportedComponent(file: URL(fileURLWithPath: schedulerConfig.source), component: "the scheduler",
                                                     className: schedulerName, hint: "choose one with --scheduler")
        }
        let scheduler = try Self.makeScheduler(schedulerKind, config: schedulerConfig)
        let tokenizer = try CLIPTokenizer(directory: tokenizerFolder)
        let text = CLIPTextModel(config: textConfig)
        try checkpoint.load(text)
        text.eval()
        var generator = RandomGenerator(seed: 0)
        let unet = try UNet2DConditionModel(config: unetConfig, generator: &generator)
        try checkpoint.load(unet)
        let vae = try AutoencoderKL(config: vaeConfig, generator: &generator)
        try checkpoint.load(vae)
        try self.init(textEncoder: try CLIPTextEncoder(model: text, tokenizer: tokenizer), unet: unet, vae: vae, scheduler: scheduler)
    }

    /// Saves the UNet, VAE and CLIP text model as one SD 1.x/2.x single-file checkpoint
    /// (`SingleFileWriter.write`).
    public func saveSingleFile(to url: URL, dtype: DType = .f32, metadata: [String: String] = [:]) throws {
        guard let vae else { throw SavingError.mismatch("a single-file checkpoint needs a VAE; this pipeline works in pixel space") }
        guard let clip = textEncoder as? CLIPTextEncoder else {
            throw SavingError.mismatch("a single-file checkpoint holds a CLIP text encoder; this pipeline's is \(type(of: textEncoder))")
        }
        try SingleFileWriter.write(unet: unet, vae: vae, text: clip.model, to: url, dtype: dtype, metadata: metadata)
    }
}
