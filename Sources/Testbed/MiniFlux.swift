import Diffusion
import Foundation
import Kernels
import NN
import Tensor

/// The testbed's miniature FLUX: a `FluxTransformer2DModel` on 32×32 grey Fashion-MNIST in pixel
/// space (FLUX's 2×2 packing of the image itself: 256 tokens of 4 values), conditioned on frozen
/// all-MiniLM-L6-v2 — its token states as T5's, their mean as CLIP's pooled vector
/// (`PooledSentenceEncoder`) — and trained with the rectified-flow objective. Same classes,
/// config files and sampling loop as FLUX. Recipe and reasons: docs/TESTBED.md, "Mini-FLUX".
public enum MiniFlux {
    /// 2 double-stream and 4 single-stream blocks of width 128 (4 heads of 32; RoPE axes
    /// 8 + 12 + 12), MiniLM's 384-wide states and pooled vector, no guidance embedding (the
    /// model is sampled with true CFG, as an undistilled FLUX): 2,375,172 parameters (diffusers
    /// counts the same).
    public static func transformerConfig() -> FluxTransformer2DConfig {
        var c = FluxTransformer2DConfig()
        c.inChannels = 4
        c.numLayers = 2
        c.numSingleLayers = 4
        c.attentionHeadDim = 32
        c.numAttentionHeads = 4
        c.jointAttentionDim = 384
        c.pooledProjectionDim = 384
        c.axesDimsRope = [8, 12, 12]
        return c
    }

    /// FLUX.1's scheduler config: dynamic shift from the token count (256 tokens: μ = 0.5).
    public static func schedulerConfig() -> FlowMatchEulerDiscreteScheduler.Config {
        var c = FlowMatchEulerDiscreteScheduler.Config()
        c.shift = 3
        c.useDynamicShifting = true
        return c
    }

    /// MiniLM in both of FLUX's text roles.
    public static func textEncoder(assets: Assets) throws -> PooledSentenceEncoder {
        PooledSentenceEncoder(encoder: try BertTextEncoder(directory: try assets.miniLM()))
    }

    /// A FLUX pipeline over a mini-FLUX folder (any FluxPipeline folder whose text encoder is
    /// MiniLM): MiniLM from the asset cache, padded to the folder's `_score_text_tokens`.
    public static func pipeline(folder: URL, assets: Assets = Assets(), variant: String? = nil) throws -> FluxPipeline {
        let index = folder.appendingPathComponent("model_index.json")
        let object = try? JSONSerialization.jsonObject(with: Data(contentsOf: index)) as? [String: Any]
        let names = ["text_encoder", "text_encoder_2"].compactMap { (object?[$0] as? [Any])?.last as? String }
        guard !names.isEmpty, names.allSatisfy({ $0 == "all-MiniLM-L6-v2" }) else {
            throw TrainingError.invalidFile(path: index.path, reason: "its text encoders are \(names.isEmpty ? "not named" : names.joined(separator: ", ")); a FLUX folder needs MiniLM (all-MiniLM-L6-v2) here, as `score train flux` writes — T5 and CLIP are not implemented")
        }
        let tokens = object?["_score_text_tokens"] as? Int ?? PooledSentenceEncoder.defaultTokens
        guard tokens >= 2 else {
            throw TrainingError.invalidFile(path: index.path, reason: "_score_text_tokens is \(tokens); it must be at least 2")
        }
        let encoder = PooledSentenceEncoder(encoder: try BertTextEncoder(directory: try assets.miniLM()), tokens: tokens)
        let pipeline = try FluxPipeline(directory: folder, textEncoder: encoder, variant: variant)
        pipeline.defaultSize = LabelledImages.modelSide
        return pipeline
    }

    /// Sampler settings the mini-FLUX is measured at: 25 Euler steps, true CFG 4.
    public static let steps = 25
    public static let guidance: Float = 4

    /// A new model with DiT's AdaLN-Zero start (Peebles & Xie 2023): every modulation projection
    /// and the output projection zero, so each block starts as the identity and the model as
    /// v̂ = 0. diffusers' own init (PyTorch's default) trains, but slower and less stably.
    public static func initialModel(config: FluxTransformer2DConfig, generator: inout RandomGenerator) throws -> FluxTransformer2DModel {
        let model = try FluxTransformer2DModel(config: config, generator: &generator)
        var zeroed = [model.norm_out.linear, model.proj_out]
        for block in model.transformer_blocks { zeroed += [block.norm1.linear, block.norm1_context.linear] }
        for block in model.single_transformer_blocks { zeroed.append(block.norm.linear) }
        for linear in zeroed {
            for (_, p) in linear.namedParameters() { p.assign(Tensor.zeros(p.shape)) }
        }
        return model
    }
}

public struct MiniFluxTrainingOptions {
    public var steps = 3000
    public var batchSize = 64
    public var learningRate: Float = 5e-4
    public var weightDecay: Float = 0.01
    public var warmupSteps = 100
    public var emptyCaptionProbability: Float = 0.1
    /// σ sampling: "logit-normal" (SD3's logit-normal(0, 1), Esser et al. 2024) or "uniform".
    public var timeSampling = "logit-normal"
    public var emaMaxDecay: Float = 0.999
    public var seed: UInt64 = 0
    public var checkpointEvery = 50
    public var output: URL
    public var resume = false
    public var stopAfter: Int?
    public var command = ""

    public init(output: URL) { self.output = output }

    public func validate() throws {
        try checkTrainingOptions(steps: steps, batchSize: batchSize, learningRate: learningRate, checkpointEvery: checkpointEvery,
                                 stopAfter: stopAfter, more: (["logit-normal", "uniform"].contains(timeSampling),
                                                              "--time-sampling must be logit-normal or uniform, not '\(timeSampling)'"))
    }
}

/// The rectified-flow loss: x_σ = (1 − σ)·x₀ + σ·ε, MSE between the predicted velocity and
/// ε − x₀ over packed tokens, averaged over the batch.
public func flowMatchingLoss(model: FluxTransformer2DModel, clean: Tensor, noise: Tensor, sigmas: [Float],
                             states: Tensor, pooled: Tensor) -> Tensor {
    let (h, w) = (clean.shape[2], clean.shape[3])
    let x0 = FluxTransformer2DModel.packLatents(clean), eps = FluxTransformer2DModel.packLatents(noise)
    let s = Tensor(shape: [sigmas.count, 1, 1], scalars: sigmas)
    let noisy = eps * s + x0 * (1 - s)
    let prediction = model(noisy, encoderHiddenStates: states, pooledProjections: pooled, timestep: sigmas,
                           imageIds: FluxTransformer2DModel.latentImageIds(height: h / 2, width: w / 2),
                           textIds: FluxTransformer2DModel.textIds(tokens: states.shape[1]))
    return (prediction - (eps - x0)).square().mean()
}

/// Trains the mini-FLUX on a testbed's images and captions; returns the EMA model and the
/// training record. AdamW with warm-up and cosine decay, `emptyCaptionProbability` empty captions
/// (for true CFG), EMA; checkpoints and resumes with the same bits (the mini-SD's
/// `TrainingCheckpoint`, `EMA`, schedule and progress), stops on a non-finite loss.
public func trainMiniFlux(_ options: MiniFluxTrainingOptions, data: some MiniSDTrainingData, textEncoder: any FluxTextEncoder,
                          digests: [String: String] = [:], config: FluxTransformer2DConfig = MiniFlux.transformerConfig(),
                          log: @escaping (String) -> Void) throws -> (FluxTransformer2DModel, TrainingRecord) {
    guard config.inChannels == 4 * data.imageShape[0] else {
        throw TrainingError.invalidOption("the transformer's tokens hold \(config.inChannels) values, 2×2 patches of the \(data.testbed) images hold \(4 * data.imageShape[0])")
    }
    guard let captions = data.allCaptions else {
        throw TrainingError.invalidOption("the mini-FLUX trainer encodes every caption once; \(data.testbed) has too many")
    }
    try options.validate()
    var generator = RandomGenerator(seed: options.seed)
    let model = try MiniFlux.initialModel(config: config, generator: &generator)
    let ema = try MiniFlux.initialModel(config: config, generator: &generator)
    for ((_, e), (_, p)) in zip(ema.namedParameters(), model.namedParameters()) { e.assign(p); e.requiresGrad = false }

    // Every caption then the empty one, encoded once (the encoder is frozen).
    let table = captions + [""]
    var tableIndex: [String: Int] = [:]
    for (i, c) in table.enumerated() where tableIndex[c] == nil { tableIndex[c] = i }
    let (allStates, allPooled) = noGrad { textEncoder.encode(prompts: table) }
    log("encoded \(table.count) captions → \(allStates.shape), pooled \(allPooled.shape)")
    func rows(_ t: Tensor, _ indices: [Int]) -> Tensor {
        let width = t.count / t.shape[0]
        return Tensor(shape: [indices.count] + Array(t.shape.dropFirst())) { out in
            for (i, c) in indices.enumerated() { (out + i * width).update(from: t.pointer + c * width, count: width) }
        }
    }

    let optimizer = Adam.adamW(model.trainableParameters(), learningRate: options.learningRate, weightDecay: options.weightDecay)
    let schedule = LinearWarmup(warmupSteps: options.warmupSteps,
                                after: CosineAnnealingLR(base: options.learningRate, period: options.steps, minimum: options.learningRate * 0.05))
    let checkpointURL = options.output.appendingPathComponent("checkpoint.safetensors")
    let settings = ["time_sampling": options.timeSampling]
    var state = TrainingCheckpoint(step: 0, generator: generator.fork(7), losses: [], settings: settings)
    if options.resume, FileManager.default.fileExists(atPath: checkpointURL.path) {
        state = try TrainingCheckpoint.load(from: checkpointURL, model: model, optimizer: optimizer, ema: ema)
        guard state.settings == settings else {
            throw TrainingError.invalidFile(path: checkpointURL.path, reason: "was written with --time-sampling \(state.settings["time_sampling"] ?? "?"), this run has \(options.timeSampling); resume with the checkpoint's options, or start a new --out")
        }
        log("resumed from \(checkpointURL.path) at step \(state.step)")
    }
    let firstStep = state.step
    var progress = ProgressReporter(total: options.steps, print: log)
    let start = Date()
    let b = options.batchSize
    while state.step < options.steps {
        // Batch: images, captions (10% empty for classifier-free guidance), σ, noise.
        let u = state.generator.uniform([3 * b]).scalars
        let indices = (0..<b).map { min(data.count - 1, Int(u[$0] * Float(data.count))) }
        let captionRows = (0..<b).map { i -> Int in
            if u[b + i] < options.emptyCaptionProbability { return tableIndex[""]! }
            let choices = data.captions(indices[i])
            return tableIndex[choices[min(choices.count - 1, Int(u[2 * b + i] * Float(choices.count)))]]!
        }
        // Logit-normal puts most σ mid-way, where the velocity is hardest to predict; σ near 0
        // or 1 (copy the input, or predict the data mean) is learnt from few samples.
        let sigmas: [Float] = options.timeSampling == "uniform"
            ? state.generator.uniform([b]).scalars
            : state.generator.normal([b]).scalars.map { 1 / (1 + Foundation.exp(-$0)) }
        let noise = state.generator.normal([b] + data.imageShape)
        optimizer.learningRate = schedule.learningRate(at: state.step)
        let loss = flowMatchingLoss(model: model, clean: data.batch(indices), noise: noise, sigmas: sigmas,
                                    states: rows(allStates, captionRows), pooled: rows(allPooled, captionRows))
        let stop = try state.finishStep(loss: loss, training: "mini-FLUX training", model: model, optimizer: optimizer, ema: ema,
                                        emaMaxDecay: options.emaMaxDecay, progress: &progress, firstStep: firstStep, batch: b,
                                        checkpointURL: checkpointURL, checkpointEvery: options.checkpointEvery,
                                        steps: options.steps, stopAfter: options.stopAfter)
        if stop { break }
    }
    let wall = Date().timeIntervalSince(start)
    let tail = state.losses.suffix(50)
    let record = TrainingRecord(
        model: "mini-flux-transformer", command: options.command, seed: options.seed, steps: state.step,
        batchSize: b, learningRate: options.learningRate, dataSHA256: digests, wallSeconds: wall,
        imagesPerSecond: Double((state.step - firstStep) * b) / max(wall, 1e-9),
        finalLoss: tail.reduce(0, +) / Float(max(tail.count, 1)), parameters: model.parameterCount,
        metrics: [:], threads: Kernels.threadCount, date: ISO8601DateFormatter().string(from: Date()))
    return (ema, record)
}

extension MiniFlux {
    /// model_index.json of a mini-FLUX folder. FLUX.1 names two text encoders (CLIP and T5);
    /// here one sentence-transformers model fills both roles, recorded as the same
    /// ["sentence_transformers", "all-MiniLM-L6-v2"] under `text_encoder` and `text_encoder_2`
    /// (installed by `score assets`, not shipped in the folder), with `_score_text_tokens` the
    /// fixed token length its states are padded to.
    static func modelIndex() -> String {
        """
        {
          "_class_name": "FluxPipeline",
          "_score_testbed": "fashion-mnist",
          "_score_text_tokens": \(PooledSentenceEncoder.defaultTokens),
          "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
          "text_encoder": ["sentence_transformers", "all-MiniLM-L6-v2"],
          "text_encoder_2": ["sentence_transformers", "all-MiniLM-L6-v2"],
          "tokenizer": ["transformers", "BertTokenizer"],
          "tokenizer_2": ["transformers", "BertTokenizer"],
          "transformer": ["diffusers", "FluxTransformer2DModel"],
          "vae": [null, null]
        }
        """
    }

    /// Writes the model as a diffusers-layout folder: model_index.json, transformer/, scheduler/.
    public static func save(_ model: FluxTransformer2DModel, to folder: URL) throws {
        try writeAtomically(Data(modelIndex().utf8), to: folder.appendingPathComponent("model_index.json"))
        try writeJSON(model.config, to: folder.appendingPathComponent("transformer/config.json"))
        try Tensor.save(model.stateDict(), to: folder.appendingPathComponent("transformer/diffusion_pytorch_model.safetensors"))
        try writeJSON(schedulerConfig(), to: folder.appendingPathComponent("scheduler/scheduler_config.json"))
    }

    /// Writes the EMA weights of a training checkpoint as a model folder. Returns its step.
    public static func export(checkpoint: URL, config: FluxTransformer2DConfig = transformerConfig(), to folder: URL) throws -> Int {
        var generator = RandomGenerator(seed: 0)
        let model = try FluxTransformer2DModel(config: config, generator: &generator)
        let archive = try TensorArchive(contentsOf: checkpoint)
        var weights: [String: Tensor] = [:]
        for name in archive.names where name.hasPrefix("ema.") { weights[String(name.dropFirst(4))] = try archive.tensor(name) }
        try model.load(weights, source: checkpoint.path)
        try save(model, to: folder)
        return Int(archive.metadata["step"] ?? "") ?? -1
    }
}

/// `score train flux`: trains (or resumes) the mini-FLUX on Fashion-MNIST and writes it as a
/// model folder (`<output>/model` with its training.json).
public struct FluxTrainingRun {
    public var options: MiniFluxTrainingOptions

    public init(options: MiniFluxTrainingOptions) { self.options = options }

    public static let defaultOutput = URL(fileURLWithPath: "runs/mini-flux")

    public func validate() throws { try options.validate() }

    public func run(assets: Assets, log: @escaping (String) -> Void) throws -> URL {
        try validate()
        let data = try FashionMNIST(assets: assets)
        let (model, record) = try trainMiniFlux(options, data: FashionTrainingData(data: data.train, prompts: try FashionPrompts.bundled()),
                                                textEncoder: try MiniFlux.textEncoder(assets: assets), digests: data.digests, log: log)
        let folder = options.output.appendingPathComponent("model")
        try MiniFlux.save(model, to: folder)
        try record.write(to: folder.appendingPathComponent("training.json"))
        return folder
    }

    /// Writes the EMA weights of `<output>/checkpoint.safetensors` as `<output>/model-step<N>`.
    public func exportCheckpoint() throws -> URL {
        let checkpoint = options.output.appendingPathComponent("checkpoint.safetensors")
        guard FileManager.default.fileExists(atPath: checkpoint.path) else {
            throw TrainingError.invalidFile(path: checkpoint.path, reason: "no checkpoint to export (--export-checkpoint reads the one in --out)")
        }
        let staging = options.output.appendingPathComponent("model-export")
        try? FileManager.default.removeItem(at: staging)
        let step = try MiniFlux.export(checkpoint: checkpoint, to: staging)
        let folder = options.output.appendingPathComponent("model-step\(step)")
        try? FileManager.default.removeItem(at: folder)
        try FileManager.default.moveItem(at: staging, to: folder)
        return folder
    }
}
