import Diffusion
import Foundation
import Kernels
import NN
import Tensor

/// The testbed's miniature Stable Diffusion: a pixel-space UNet2DConditionModel on 32×32 grey
/// Fashion-MNIST, conditioned through cross-attention on frozen all-MiniLM-L6-v2 token states
/// (padded tokens zeroed, attention mask passed on), trained with DDPM on a cosine schedule.
/// Same classes and config files as the SD code path. Recipe: docs/TESTBED.md.
public enum MiniSD {
    /// block_out_channels (32, 64, 64), cross-attention at 16×16, 8×8 and the mid block, 4 heads,
    /// cross_attention_dim 384: 1.97 M parameters (diffusers counts the same). 16 GroupNorm groups:
    /// with 32, every group at the 32-channel level is one channel and the norm before conv_out
    /// removes each channel's mean, so ε̂ cannot follow the noise's mean (see `emojiUNetConfig`).
    /// Models trained with 32 keep their config.json.
    public static func unetConfig() -> UNet2DConditionConfig {
        var c = UNet2DConditionConfig()
        c.sampleSize = .one(32)
        c.inChannels = 1
        c.outChannels = 1
        c.blockOutChannels = [32, 64, 64]
        c.layersPerBlock = .one(1)
        c.downBlockTypes = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
        c.upBlockTypes = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
        c.crossAttentionDim = .one(384)
        c.attentionHeadDim = .one(4)
        c.normNumGroups = 16
        return c
    }

    /// The emoji testbed's UNet: the same family with RGB in and out (1.97 M parameters + 0.9 k
    /// for the two extra channels of conv_in/conv_out; training speed binds, see docs/EMOJI.md)
    /// and 8 GroupNorm groups, not 32. With 32 groups on the 32-channel level every group is one
    /// channel, so the last norm before conv_out removes each channel's spatial mean and ε̂ cannot
    /// follow the noise's per-channel mean: a 4,400-step model's ε̂ had 4% of its spread, and every
    /// sample came out on a random tinted background (docs/EMOJI.md, "Why the backgrounds were
    /// tinted"). Models trained with 32 groups keep them: their folders record their config.
    public static func emojiUNetConfig() -> UNet2DConditionConfig {
        var c = unetConfig()
        c.inChannels = 3
        c.outChannels = 3
        c.normNumGroups = 8
        return c
    }

    /// The UNet config of a testbed: "fashion-mnist" or "emoji".
    public static func unetConfig(testbed: String) throws -> UNet2DConditionConfig {
        switch testbed {
        case "fashion-mnist", "fashion": return unetConfig()
        case "emoji": return emojiUNetConfig()
        default: throw TrainingError.invalidOption("--testbed must be fashion or emoji, not '\(testbed)'")
        }
    }

    /// The UNet config of a training run writing to `output`. A resumed run (or an export of its
    /// checkpoint) keeps the config it recorded when it started (`<output>/unet-config.json`, or
    /// its finished `<output>/model`), so that it keeps its architecture when the testbed's
    /// default changes; a fine-tune takes the `initialModel` folder's; else the testbed's. The
    /// choice is recorded in `<output>/unet-config.json`.
    public static func trainingConfig(output: URL, resuming: Bool, initialModel: URL?, testbed: String) throws -> UNet2DConditionConfig {
        let recorded = output.appendingPathComponent("unet-config.json")
        let earlier = resuming ? [recorded, output.appendingPathComponent("model/unet/config.json")] : []
        let candidates = earlier + [initialModel?.appendingPathComponent("unet/config.json")].compactMap { $0 }
        let config = try candidates.first { FileManager.default.fileExists(atPath: $0.path) }
            .map { try UNet2DConditionConfig(contentsOf: $0) } ?? unetConfig(testbed: testbed)
        try writeJSON(config, to: recorded)
        return config
    }

    /// DDPM, 1000 steps, squaredcos_cap_v2, ε prediction, samples clipped to [-1, 1].
    public static func schedulerConfig() -> SchedulerConfig {
        var c = SchedulerConfig()
        c.className = "DDIMScheduler"
        c.numTrainTimesteps = 1000
        c.betaSchedule = .squaredcosCapV2
        c.predictionType = .epsilon
        c.timestepSpacing = .leading
        c.clipSample = true
        c.setAlphaToOne = false
        return c
    }

    /// MiniLM with padded token states zeroed, as the UNet was trained with.
    public static func textEncoder(assets: Assets) throws -> BertTextEncoder {
        let encoder = try BertTextEncoder(directory: try assets.miniLM())
        encoder.zeroPaddedStates = true
        return encoder
    }
}

public struct MiniSDTrainingOptions {
    public var steps = 800
    public var batchSize = 64
    public var learningRate: Float = 1e-3
    public var weightDecay: Float = 0.01
    public var warmupSteps = 50
    public var emptyCaptionProbability: Float = 0.1
    /// min-SNR-γ loss weighting (Hang et al. 2023); 0 turns it off.
    public var minSNRGamma: Float = 5
    /// Offset noise (Guttenberg 2023): the standard deviation of a per-image, per-channel constant
    /// added to the training noise; 0 turns it off. Without it the noise's channel means vary by
    /// only 1/side, too little signal for ε̂ to learn to follow them, and a sample's colour cast is
    /// then set by its starting noise (docs/EMOJI.md).
    public var offsetNoise: Float = 0
    public var emaMaxDecay: Float = 0.999
    public var seed: UInt64 = 0
    public var checkpointEvery = 50
    public var output: URL
    public var resume = false
    /// A model folder (diffusers layout) whose UNet weights start the run instead of a random
    /// initialisation: a fine-tuning phase (fresh optimiser, warm-up and schedule).
    public var initialModel: URL?
    public var stopAfter: Int?
    public var command = ""
    /// Recompute each block's activations in the backward pass (diffusers' `gradient_checkpointing`):
    /// less memory, the same gradients bit for bit, about one more forward pass of time.
    public var gradientCheckpointing = false

    public init(output: URL) { self.output = output }
}

/// The denoising loss of ε-prediction: per-sample MSE between predicted and true noise, weighted
/// by min(SNR, γ)/SNR (min-SNR-γ, Hang et al. 2023; γ = 0 gives plain MSE), averaged over the batch.
public func diffusionLoss(unet: UNet2DConditionModel, scheduler: any NoiseScheduler, clean: Tensor, noise: Tensor,
                          timesteps: [Int], states: Tensor, mask: Tensor?, minSNRGamma: Float) -> Tensor {
    let alphas = scheduler.alphasCumprod
    let noisy = scheduler.addNoise(original: clean, noise: noise, timesteps: timesteps)
    let prediction = unet(noisy, timestep: timesteps.map(Float.init), encoderHiddenStates: states, encoderAttentionMask: mask)
    let weights = timesteps.map { t -> Float in
        let snr = Float(alphas[t] / (1 - alphas[t]))
        return minSNRGamma > 0 ? min(snr, minSNRGamma) / snr : 1
    }
    let perSample = (prediction - noise).square().mean(axes: Array(1..<prediction.rank))
    return (perSample * Tensor(shape: [timesteps.count], scalars: weights)).mean()
}

/// What the mini-SD trainer needs of a testbed: images in [-1, 1] and, per image, the captions
/// one of which is drawn each time it is seen. Fashion-MNIST (`FashionTrainingData`) and the
/// emoji set (`EmojiTrainingData`) conform; the trainer itself is the same for both.
public protocol MiniSDTrainingData {
    /// "fashion-mnist" or "emoji": written into the model folder and the training record.
    var testbed: String { get }
    var count: Int { get }
    /// [channels, height, width] of one image.
    var imageShape: [Int] { get }
    /// Images at `indices` as [n] + imageShape in [-1, 1].
    func batch(_ indices: [Int]) -> Tensor
    /// The captions image `index` may be trained with.
    func captions(_ index: Int) -> [String]
    /// Every caption, when the set is small enough to encode once into a `CaptionTable`
    /// (Fashion-MNIST: 126); nil to encode each batch's captions as it is drawn (emoji: ~14k).
    var allCaptions: [String]? { get }
}

/// Fashion-MNIST as mini-SD training data: each image's captions are its class's training
/// captions (templates × noun and synonyms).
public struct FashionTrainingData: MiniSDTrainingData {
    public let data: LabelledImages
    public let prompts: FashionPrompts

    public init(data: LabelledImages, prompts: FashionPrompts) {
        self.data = data
        self.prompts = prompts
    }

    public var testbed: String { "fashion-mnist" }
    public var count: Int { data.count }
    public var imageShape: [Int] { [1, LabelledImages.modelSide, LabelledImages.modelSide] }
    public func batch(_ indices: [Int]) -> Tensor { data.batch(indices) }
    public func captions(_ index: Int) -> [String] { prompts.trainingCaptions(data.labels[index]) }
    public var allCaptions: [String]? { prompts.classes.flatMap { prompts.trainingCaptions($0.label) } }
}

/// Trains the mini-SD UNet on Fashion-MNIST; returns the EMA model and the training record.
public func trainMiniSD(_ options: MiniSDTrainingOptions, data: LabelledImages, prompts: FashionPrompts,
                        textEncoder: any TextEncoder, digests: [String: String] = [:],
                        config: UNet2DConditionConfig = MiniSD.unetConfig(),
                        log: @escaping (String) -> Void) throws -> (UNet2DConditionModel, TrainingRecord) {
    try trainMiniSD(options, data: FashionTrainingData(data: data, prompts: prompts), textEncoder: textEncoder,
                    digests: digests, config: config, log: log)
}

/// Trains the mini-SD UNet on a testbed's images and captions; returns the EMA model and the
/// training record. DDPM with AdamW, warm-up and cosine decay, min-SNR-γ, `emptyCaptionProbability`
/// empty captions (for classifier-free guidance), EMA; checkpoints and resumes with the same bits.
public func trainMiniSD(_ options: MiniSDTrainingOptions, data: some MiniSDTrainingData,
                        textEncoder: any TextEncoder, digests: [String: String] = [:],
                        config: UNet2DConditionConfig = MiniSD.unetConfig(),
                        log: @escaping (String) -> Void) throws -> (UNet2DConditionModel, TrainingRecord) {
    guard config.inChannels == data.imageShape[0] else {
        throw TrainingError.invalidOption("the UNet takes \(config.inChannels) channels, the \(data.testbed) images have \(data.imageShape[0]); train with the testbed's UNet config (--testbed)")
    }
    try options.validate()
    // The model, AdamW's state, the EMA copy and a step's activations, before any is allocated.
    let estimate = config.memoryEstimate(batch: options.batchSize, height: data.imageShape[1], width: data.imageShape[2],
                                         contextTokens: 77, mode: .training(gradientCheckpointing: options.gradientCheckpointing),
                                         extraCopies: 1)
    try estimate.check("training the UNet with batch \(options.batchSize)",
                       advice: options.gradientCheckpointing ? "lower --batch" : "lower --batch or add --gradient-checkpointing")
    var generator = RandomGenerator(seed: options.seed)
    let unet = try UNet2DConditionModel(config: config, generator: &generator)
    unet.gradientCheckpointing = options.gradientCheckpointing
    let ema = try UNet2DConditionModel(config: config, generator: &generator)
    if let folder = options.initialModel {
        let weights = folder.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")
        guard FileManager.default.fileExists(atPath: weights.path) else {
            throw TrainingError.invalidFile(path: folder.path, reason: "--init-from: missing unet/diffusion_pytorch_model.safetensors; pass a model folder written by `score train unet` (<out>/model)")
        }
        let initialConfig = try UNet2DConditionConfig(contentsOf: folder.appendingPathComponent("unet/config.json"))
        guard initialConfig == config else {
            throw TrainingError.invalidFile(path: folder.path, reason: "--init-from: its unet/config.json is not the config this run trains (`score train unet --init-from` reads it from unet/config.json)")
        }
        try unet.load(try TensorArchive(contentsOf: weights).allTensors(), source: weights.path)
        log("initialised from \(weights.path)")
    }
    for ((_, e), (_, p)) in zip(ema.namedParameters(), unet.namedParameters()) { e.assign(p); e.requiresGrad = false }
    let scheduler = try DDPMScheduler(config: MiniSD.schedulerConfig())
    let alphas = scheduler.alphasCumprod

    // Captions: a table of every caption then the empty one when the set is small; otherwise
    // each batch's captions are encoded as they are drawn (the encoder is frozen either way).
    var table: CaptionTable?
    var tableIndex: [String: Int] = [:]
    if let all = data.allCaptions {
        let captions = all + [""]
        for (i, c) in captions.enumerated() where tableIndex[c] == nil { tableIndex[c] = i }
        table = CaptionTable(captions: captions, encoder: textEncoder)
        log("encoded \(captions.count) captions → \(table!.states.shape)")
    }
    func encode(_ captions: [String]) -> (states: Tensor, mask: Tensor) {
        if let table { return table.batch(captions.map { tableIndex[$0]! }) }
        return noGrad { let (s, m) = textEncoder.encode(prompts: captions); return (s, m) }
    }

    let optimizer = Adam.adamW(unet.trainableParameters(), learningRate: options.learningRate, weightDecay: options.weightDecay)
    let schedule = LinearWarmup(warmupSteps: options.warmupSteps,
                                after: CosineAnnealingLR(base: options.learningRate, period: options.steps, minimum: options.learningRate * 0.05))
    let checkpointURL = options.output.appendingPathComponent("checkpoint.safetensors")
    // Options that change what is trained ride in the checkpoint, so a resume cannot mix them.
    let settings = options.offsetNoise > 0 ? ["offset_noise": String(options.offsetNoise)] : [:]
    var state = TrainingCheckpoint(step: 0, generator: generator.fork(7), losses: [], settings: settings)
    if options.resume, FileManager.default.fileExists(atPath: checkpointURL.path) {
        state = try TrainingCheckpoint.load(from: checkpointURL, model: unet, optimizer: optimizer, ema: ema)
        guard state.settings == settings else {
            let describe = { (s: [String: String]) in s["offset_noise"].map { "--offset-noise \($0)" } ?? "no --offset-noise" }
            throw TrainingError.invalidFile(path: checkpointURL.path, reason: "was written with \(describe(state.settings)), this run has \(describe(settings)); resume with the checkpoint's options, or start a new --out")
        }
        log("resumed from \(checkpointURL.path) at step \(state.step)")
    }
    let firstStep = state.step
    var progress = ProgressReporter(total: options.steps, print: log)
    let start = Date()
    let b = options.batchSize
    while state.step < options.steps {
        // Batch: images, captions (10% empty for classifier-free guidance), timesteps, noise.
        let u = state.generator.uniform([4 * b]).scalars
        let indices = (0..<b).map { min(data.count - 1, Int(u[$0] * Float(data.count))) }
        let captions = (0..<b).map { i -> String in
            if u[b + i] < options.emptyCaptionProbability { return "" }
            let choices = data.captions(indices[i])
            return choices[min(choices.count - 1, Int(u[2 * b + i] * Float(choices.count)))]
        }
        let timesteps = (0..<b).map { min(alphas.count - 1, Int(u[3 * b + $0] * Float(alphas.count))) }
        var noise = state.generator.normal([b] + data.imageShape)
        if options.offsetNoise > 0 {
            noise = noise + state.generator.normal([b, data.imageShape[0], 1, 1], std: options.offsetNoise)
        }
        let (states, mask) = encode(captions)
        optimizer.learningRate = schedule.learningRate(at: state.step)
        let loss = diffusionLoss(unet: unet, scheduler: scheduler, clean: data.batch(indices), noise: noise,
                                 timesteps: timesteps, states: states, mask: mask, minSNRGamma: options.minSNRGamma)
        let stop = try state.finishStep(loss: loss, training: "mini-SD training", model: unet, optimizer: optimizer, ema: ema,
                                        emaMaxDecay: options.emaMaxDecay, progress: &progress, firstStep: firstStep, batch: b,
                                        checkpointURL: checkpointURL, checkpointEvery: options.checkpointEvery,
                                        steps: options.steps, stopAfter: options.stopAfter)
        if stop { break }
    }
    let wall = Date().timeIntervalSince(start)
    let tail = state.losses.suffix(50)
    var record = TrainingRecord(
        model: data.testbed == "fashion-mnist" ? "mini-sd-unet" : "mini-sd-unet-\(data.testbed)", command: options.command, seed: options.seed, steps: state.step,
        batchSize: b, learningRate: options.learningRate, dataSHA256: digests, wallSeconds: wall,
        imagesPerSecond: Double((state.step - firstStep) * b) / max(wall, 1e-9),
        finalLoss: tail.reduce(0, +) / Float(max(tail.count, 1)), parameters: unet.parameterCount,
        metrics: options.offsetNoise > 0 ? ["offset_noise": Double(options.offsetNoise)] : [:], threads: Kernels.threadCount, date: ISO8601DateFormatter().string(from: Date()))
    record.gradientCheckpointing = options.gradientCheckpointing
    return (ema, record)
}

extension MiniSD {
    /// model_index.json of the testbed model: a diffusers-layout folder whose text encoder
    /// (all-MiniLM-L6-v2) is not shipped in it but installed by `score assets`.
    static func modelIndex(testbed: String) -> String {
        """
        {
          "_class_name": "StableDiffusionPipeline",
          "_score_testbed": "\(testbed)",
          "scheduler": ["diffusers", "DDIMScheduler"],
          "text_encoder": ["sentence_transformers", "all-MiniLM-L6-v2"],
          "tokenizer": ["transformers", "BertTokenizer"],
          "unet": ["diffusers", "UNet2DConditionModel"],
          "vae": [null, null]
        }
        """
    }

    /// Writes the model as a diffusers-layout folder: model_index.json, unet/, scheduler/.
    public static func save(_ unet: UNet2DConditionModel, config: UNet2DConditionConfig, to folder: URL,
                            testbed: String = "fashion-mnist") throws {
        try writeAtomically(Data(modelIndex(testbed: testbed).utf8), to: folder.appendingPathComponent("model_index.json"))
        try writeJSON(config, to: folder.appendingPathComponent("unet/config.json"))
        try Tensor.save(unet.stateDict(), to: folder.appendingPathComponent("unet/diffusion_pytorch_model.safetensors"))
        try writeJSON(schedulerConfig(), to: folder.appendingPathComponent("scheduler/scheduler_config.json"))
    }
}

extension MiniSD {
    /// Writes the EMA weights of a training checkpoint as a model folder (to look at a run
    /// before it ends, or to keep an earlier step).
    public static func export(checkpoint: URL, config: UNet2DConditionConfig = unetConfig(), to folder: URL,
                              testbed: String = "fashion-mnist") throws -> Int {
        var generator = RandomGenerator(seed: 0)
        let unet = try UNet2DConditionModel(config: config, generator: &generator)
        let archive = try TensorArchive(contentsOf: checkpoint)
        var weights: [String: Tensor] = [:]
        for name in archive.names where name.hasPrefix("ema.") { weights[String(name.dropFirst(4))] = try archive.tensor(name) }
        try unet.load(weights, source: checkpoint.path)
        try save(unet, config: config, to: folder, testbed: testbed)
        return Int(archive.metadata["step"] ?? "") ?? -1
    }
}
