import Diffusion
import Foundation
import NN
import Tensor

/// What AdvUnlearn trains (the official `--train_method`).
public enum AdvUnlearnModule: String, Codable, Sendable, CaseIterable {
    /// Every layer of the text encoder's transformer (and CLIP's final layer norm), not the
    /// embeddings: the official `text_encoder_full` and the paper's recommended module, which
    /// makes the erased encoder a plug-in for other UNets.
    case textEncoder = "text-encoder"
    /// The UNet's cross-attention (the official `xattn`, ESD-x's weights).
    case crossAttention = "cross-attention"
}

/// How the adversarial prefix starts each attack (the official `--attack_init`).
public enum AdvUnlearnAttackInit: String, Codable, Sendable, CaseIterable {
    /// The embedding of a random vocabulary token (the README's command).
    case random
    /// The previous attack's prefix.
    case latest
}

/// Every hyper-parameter of AdvUnlearn. Defaults are the official script's with its README
/// command (OPTML-Group/AdvUnlearn, `train-scripts/AdvUnlearn.py`: `--attack_init random
/// --attack_step 30 --retain_train reg --train_method text_encoder_full --retain_loss_w 0.3`):
/// 1000 iterations of Adam lr 1e-5 on the text encoder, the first 200 without attack, then every
/// iteration a 30-step attack (Adam lr 1e-3) on a one-token soft prefix, negative guidance 1,
/// the xₜ of a 50-step run with guidance 3, a retain batch of 5 prompts weighted 0.3.
public struct AdvUnlearnConfig: Codable, Equatable, Sendable {
    public var module: AdvUnlearnModule = .textEncoder
    public var iterations = 1000
    public var learningRate: Float = 1e-5
    /// η of the unlearning target ε₀(∅) − η(ε₀(c) − ε₀(∅)) (official `negative_guidance`).
    public var eta: Float = 1
    /// Iterations trained on the plain prompt before the attacks start (`warmup_iter`).
    public var warmupIterations = 200
    /// A new prompt and attack every this many iterations (`adv_prompt_update_step`).
    public var attackEvery = 1
    /// Steps of each attack (`attack_step`) and their Adam learning rate (`attack_lr`).
    public var attackSteps = 30
    public var attackLearningRate: Float = 1e-3
    /// Soft tokens placed after the start token (`adv_prompt_num`, attack type `prefix_k`).
    public var prefixTokens = 1
    public var attackInit: AdvUnlearnAttackInit = .random
    /// Retained prompts per iteration (`retain_batch`) and the weight of their term (`retain_loss_w`).
    public var retainBatch = 5
    public var retainWeight: Float = 0.3
    /// The sampling run that gives xₜ (`ddim_steps`, `start_guidance`).
    public var samplingSteps = 50
    public var samplingGuidance: Float = 3
    public var checkpointEvery = 50
    public var seed: UInt64 = 0

    public init() {}

    public func validate() throws {
        let check = ConfigCheck(method: "AdvUnlearn")
        try check.atLeast(0, ["warmupIterations": warmupIterations])
        try check.atLeast(1, ["iterations": iterations, "attackEvery": attackEvery, "attackSteps": attackSteps, "prefixTokens": prefixTokens,
                              "retainBatch": retainBatch, "samplingSteps": samplingSteps, "checkpointEvery": checkpointEvery])
        try check.positive(["learningRate": learningRate, "attackLearningRate": attackLearningRate])
        try check.nonNegative(["eta": eta, "retainWeight": retainWeight, "samplingGuidance": samplingGuidance])
    }
}

/// AdvUnlearn's tuning space: the learning rate and the retain term's weight (the official
/// README's 0.3).
extension AdvUnlearnConfig: TunableConfig {
    public static let searchSpace = SearchSpace(["learningRate": [1e-5, 5e-6, 5e-5], "retainWeight": [0.3, 1.0, 0.1]])
}

/// AdvUnlearn, "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in
/// Diffusion Models" (Zhang et al., NeurIPS 2024, arXiv 2405.15234): ESD's unlearning loss made
/// robust by adversarial training. Each iteration, on one target prompt c of the next concept
/// (round robin):
/// 1. attack (after the warm-up, every `attackEvery` iterations): a soft prefix δ of k token
///    embeddings after the start token, [start, δ, c…], minimising for `attackSteps` Adam steps
///      ‖ε_θ(xₜ, E_φ([δ; c])) − ε₀(xₜ, E₀(c))‖²
///    at a fresh xₜ each step (so the prompt regenerates the concept through the current model);
/// 2. outer step on the trained module (the text encoder E_φ by default, or the UNet's
///    cross-attention θ):
///      L = ‖ε_θ(xₜ, E_φ([δ; c])) − [ε₀(xₜ,∅) − η(ε₀(xₜ,c) − ε₀(xₜ,∅))]‖²
///          + w·‖ε_θ(x'ₜ, E_φ(r)) − ε₀(x'ₜ, E₀(r))‖²,
///    r a batch of retained prompts, x'ₜ their samples at the same step (during the warm-up, the
///    plain prompt c instead of [δ; c]).
/// xₜ comes, as in ESD, from a guided run of the current UNet on the original encoder's states of
/// the prompt, stopped at a random step; ε₀ and E₀ are the frozen originals.
public struct AdvUnlearn: ErasureMethod {
    public var config: AdvUnlearnConfig

    public init(config: AdvUnlearnConfig = AdvUnlearnConfig()) { self.config = config }

    public var name: String { "advunlearn" }

    public var changesTextEncoder: Bool { config.module == .textEncoder }

    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try request.validate()
        try config.validate()
        try request.refuseAnchors(method: "AdvUnlearn")
        return try TrainingRun.train(config: config, request: request, context: context) {
            try AdvUnlearnRun(config: config, request: request, pipeline: pipeline)
        }
    }
}

extension AdvUnlearnConfig: TrainingConfig {
    var steps: Int { iterations }
    static let resumableKeys: Set<String> = ["iterations", "checkpointEvery"]
}

/// The state of one AdvUnlearn run, trained by `TrainingRun`.
final class AdvUnlearnRun: FineTuning {
    typealias Config = AdvUnlearnConfig
    static let method = "advunlearn"

    let config: AdvUnlearnConfig
    let request: ErasureRequest
    let pipeline: StableDiffusionPipeline
    let access: EncoderAccess
    let frozen: UNet2DConditionModel
    /// The original encoder's states of every caption ("" first), computed before training.
    let table: CaptionTable
    let emptyIndex = 0
    let targetIndices: [[Int]]
    let retainIndices: [Int]
    let schedule: SamplingSchedule
    let trainable: [(name: String, tensor: Tensor)]
    let trainableNames: Set<String>
    let optimizer: any Optimizer
    var generator: RandomGenerator
    var model: Module { config.module == .textEncoder ? access.module : pipeline.unet }

    /// The prompt and prefix of the current attack period (checkpointed: an attack's result
    /// lives for `attackEvery` iterations and seeds the next with `attackInit` latest).
    var prompt = 0
    var prefix: Tensor?

    init(config: AdvUnlearnConfig, request: ErasureRequest, pipeline: StableDiffusionPipeline) throws {
        self.config = config
        self.request = request
        self.pipeline = pipeline
        access = try EncoderAccess(pipeline.textEncoder)
        // Dropout off in both models, as ESD: runs are deterministic (CLIP has none anyway).
        pipeline.unet.eval()
        access.module.eval()
        frozen = try pipeline.unet.frozenCopy()
        schedule = try pipeline.samplingSchedule(steps: config.samplingSteps, method: "AdvUnlearn")
        var captions = CaptionList()
        targetIndices = request.concepts.map { $0.targetPrompts.map { captions.index($0) } }
        retainIndices = request.retainPrompts.map { captions.index($0) }
        table = CaptionTable(captions: captions.captions, encoder: pipeline.textEncoder)

        pipeline.unet.freeze()
        access.module.freeze()
        switch config.module {
        case .textEncoder:
            trainableNames = Set(access.module.namedParameters().map(\.name).filter(EncoderAccess.isTransformerLayer))
            access.module.unfreeze(where: trainableNames.contains)
            trainable = access.module.trainableParameters()
        case .crossAttention:
            trainableNames = Erasure.trainableNames(pipeline.unet, method: .esdX, family: .unet)
            pipeline.unet.unfreeze(where: trainableNames.contains)
            trainable = pipeline.unet.trainableParameters()
        }
        guard !trainable.isEmpty else {
            throw ErasureError.invalidConfig("AdvUnlearn \(config.module.rawValue) finds no parameter to train")
        }
        optimizer = Adam(trainable, learningRate: config.learningRate)
        generator = RandomGenerator(seed: config.seed).fork(1)
    }

    // MARK: Pieces

    /// xₜ of `prompts` (caption rows, original states) from the current UNet with guidance, over
    /// steps 0..<`stop` from the noise of stream `stream`.
    func partialSample(prompts: [Int], stop: Int, stream: Int) throws -> Tensor {
        try pipeline.partialRun(conditional: table.conditioning(prompts), unconditional: table.conditioning(prompts.map { _ in emptyIndex }),
                                guidance: config.samplingGuidance, schedule: schedule, seed: config.seed &+ 1,
                                streams: prompts.indices.map { stream * 64 + $0 }, stops: [stop])[0]
    }

    /// A random step of the sampling schedule and xₜ there (the UNet's input), for `prompts`.
    func state(prompts: [Int], stream: Int) throws -> (input: Tensor, step: Int) {
        let stop = min(config.samplingSteps - 1, Int(generator.uniform([1]).scalars[0] * Float(config.samplingSteps)))
        let x = try partialSample(prompts: prompts, stop: stop, stream: stream)
        return (pipeline.scheduler.scaleModelInput(x, index: stop, of: schedule), stop)
    }

    /// ε₀ of the frozen UNet on the original states of `rows`.
    func original(_ input: Tensor, step: Int, rows: [Int]) -> Tensor {
        let states = table.batch(rows)
        return noGrad {
            pipeline.predictNoise(latents: input, timestep: schedule.timesteps[step], states: states.states, mask: states.mask, model: frozen)
        }
    }

    /// ε_θ on conditioning states (recorded for autodiff).
    func trained(_ input: Tensor, step: Int, states: (states: Tensor, mask: Tensor)) -> Tensor {
        pipeline.predictNoise(latents: input, timestep: schedule.timesteps[step], states: states.states, mask: states.mask)
    }

    /// The conditioning of caption `row` through the current encoder, with `prefix` as soft tokens.
    func conditioning(row: Int, prefix: Tensor?) -> (states: Tensor, mask: Tensor) {
        let text = table.captions[row]
        guard let prefix else { return access.states(access.tokenize([text])) }
        return access.conditioning(prefix: prefix, prompt: text)
    }

    /// The attack: `attackSteps` Adam steps on the prefix towards the original model's prediction.
    func attack(row: Int, iteration: Int) throws -> (prefix: Tensor, loss: Float) {
        let k = config.prefixTokens
        var start: Tensor
        if config.attackInit == .latest, let prefix {
            start = prefix.detachedCopy()
        } else {
            let ids = (0..<k).map { _ in min(access.vocabularySize - 1, Int(generator.uniform([1]).scalars[0] * Float(access.vocabularySize))) }
            start = noGrad { access.wordEmbeddings([ids]).reshaped([k, access.width]).detachedCopy() }
        }
        let delta = start
        delta.requiresGrad = true
        let adam = Adam([("prefix", delta)], learningRate: config.attackLearningRate)
        // The trained module stays out of the attack's graph.
        model.freeze()
        defer { model.unfreeze(where: trainableNames.contains) }
        var last: Float = .nan
        for s in 0..<config.attackSteps {
            let (input, step) = try state(prompts: [row], stream: iteration * (config.attackSteps + 1) + s + 1)
            let target = original(input, step: step, rows: [row])
            let loss = mseLoss(trained(input, step: step, states: conditioning(row: row, prefix: delta)), target)
            loss.backward()
            adam.step()
            delta.grad = nil
            last = loss.item
        }
        delta.requiresGrad = false
        return (delta, last)
    }

    func losses(step: Int) throws -> StepLosses {
        var recorded: [(String, Float)] = []
        if step % config.attackEvery == 0 {
            let prompts = targetIndices[(step / config.attackEvery) % request.concepts.count]
            prompt = prompts[min(prompts.count - 1, Int(generator.uniform([1]).scalars[0] * Float(prompts.count)))]
            if step >= config.warmupIterations {
                let result = try attack(row: prompt, iteration: step)
                prefix = result.prefix
                recorded.append(("attack", result.loss))
            }
        }
        let adversarial = step >= config.warmupIterations ? prefix : nil
        let (input, t) = try state(prompts: [prompt], stream: step * (config.attackSteps + 1))
        let both = original(Tensor.concat([input, input], axis: 0), step: t, rows: [prompt, emptyIndex]).split(sizes: [1, 1], axis: 0)
        let target = negativeGuidanceTarget(anchor: both[1], conditional: both[0], unconditional: both[1], eta: config.eta)
        let unlearn = mseLoss(trained(input, step: t, states: conditioning(row: prompt, prefix: adversarial)), target)
        var total = unlearn
        var checked = [("unlearn", unlearn.item)]
        if !retainIndices.isEmpty && config.retainWeight > 0 {
            var pool = retainIndices, rows: [Int] = []
            for _ in 0..<min(config.retainBatch, pool.count) {
                rows.append(pool.remove(at: min(pool.count - 1, Int(generator.uniform([1]).scalars[0] * Float(pool.count)))))
            }
            let x = try partialSample(prompts: rows, stop: t, stream: step * (config.attackSteps + 1) + config.attackSteps + 1)
            let retainInput = pipeline.scheduler.scaleModelInput(x, index: t, of: schedule)
            let retainTarget = original(retainInput, step: t, rows: rows)
            let states = config.module == .textEncoder ? access.states(access.tokenize(rows.map { table.captions[$0] })) : table.batch(rows)
            let retain = mseLoss(trained(retainInput, step: t, states: states), retainTarget)
            total = total + retain * config.retainWeight
            checked.append(("retain", retain.item))
        }
        checked.append(("total", total.item))
        return StepLosses(total: total, checked: checked, recorded: recorded)
    }

    func checkpointTensors() -> [String: Tensor] {
        var tensors = ["advunlearn.prompt": Tensor(Float(prompt))]
        if let prefix { tensors["advunlearn.prefix"] = prefix }
        return tensors
    }

    func restore(from checkpoint: ErasureCheckpoint) throws {
        if let row = checkpoint.tensors["advunlearn.prompt"] { prompt = Int(row.item) }
        prefix = checkpoint.tensors["advunlearn.prefix"]
    }

    func begin(log: (String) -> Void) {
        log("AdvUnlearn \(config.module.rawValue): \(trainable.reduce(0) { $0 + $1.tensor.count }) trainable parameters in \(trainable.count) tensors; attacks from iteration \(config.warmupIterations), \(config.attackSteps) steps each")
        if request.retainPrompts.isEmpty { log("AdvUnlearn: no retain prompts, so no utility term") }
    }

    func progress(_ losses: [String: [Float]]) -> [(String, Float)] {
        [("unlearn", losses["unlearn"]?.last ?? .nan), ("retain", losses["retain"]?.last ?? .nan), ("attack", losses["attack"]?.last ?? .nan)]
    }
}

/// The pipeline's text encoder as the methods that reach below prompts need it (MACE's token
/// positions, AdvUnlearn's soft prompts and trained layers): the testbed's MiniLM (BERT) or
/// Stable Diffusion's CLIP.
struct EncoderAccess {
    let encoder: any TextEncoder

    init(_ encoder: any TextEncoder) throws {
        guard encoder is BertTextEncoder || encoder is CLIPTextEncoder else {
            throw ErasureError.invalidRequest("this method needs a BERT (MiniLM) or CLIP text encoder, not \(type(of: encoder))")
        }
        self.encoder = encoder
    }

    var module: Module { (encoder as? BertTextEncoder)?.model ?? (encoder as! CLIPTextEncoder).model }
    var width: Int { encoder.hiddenSize }

    /// Whether a parameter belongs to the transformer's layers (or CLIP's final layer norm), the
    /// official `text_encoder_full` set: not the embeddings (nor BERT's unused pooler).
    static func isTransformerLayer(_ name: String) -> Bool {
        name.hasPrefix("encoder.") || name.hasPrefix("final_layer_norm.")
    }

    /// Token ids as `encode(prompts:)` feeds them (start and end tokens, padding).
    func tokenize(_ texts: [String]) -> TokenizedBatch {
        if let bert = encoder as? BertTextEncoder { return bert.tokenize(texts, padding: bert.padding) }
        let clip = encoder as! CLIPTextEncoder
        return clip.tokenizer(texts, padding: clip.padding, maxLength: min(clip.tokenizer.maxLength, clip.model.config.maxPositionEmbeddings))
    }

    /// The ids of one text with its start and end tokens, unpadded.
    func unpaddedIds(_ text: String) -> [Int] {
        let batch = tokenize([text])
        return zip(batch.inputIds[0], batch.attentionMask[0]).filter { $0.1 != 0 }.map(\.0)
    }

    /// The ids of a phrase on its own (no start or end token).
    func pieces(_ text: String) -> [Int] {
        (encoder as? BertTextEncoder)?.tokenizer.encode(text) ?? (encoder as! CLIPTextEncoder).tokenizer.encode(text)
    }

    /// The end token ([SEP] / <|endoftext|>, which SD's CLIP also pads with).
    var endTokenId: Int { (encoder as? BertTextEncoder)?.tokenizer.sepToken.id ?? (encoder as! CLIPTextEncoder).tokenizer.eosToken.id }

    var vocabularySize: Int {
        (encoder as? BertTextEncoder)?.model.config.vocabSize ?? (encoder as! CLIPTextEncoder).model.config.vocabSize
    }

    func wordEmbeddings(_ ids: [[Int]]) -> Tensor {
        (encoder as? BertTextEncoder)?.model.wordEmbeddings(ids) ?? (encoder as! CLIPTextEncoder).model.tokenEmbeddings(ids)
    }

    /// States [B, T, D] and mask [B, T] of a tokenized batch as `encode(prompts:)` gives them
    /// (BERT's padded states zeroed when the encoder does so), through the current weights.
    func states(_ batch: TokenizedBatch, inputsEmbeds: Tensor? = nil) -> (states: Tensor, mask: Tensor) {
        let mask = batch.attentionMaskTensor
        if let bert = encoder as? BertTextEncoder {
            let states = bert.hiddenStates(batch, inputsEmbeds: inputsEmbeds)
            return (bert.zeroPaddedStates ? states * mask.reshaped([batch.batchSize, batch.sequenceLength, 1]) : states, mask)
        }
        return ((encoder as! CLIPTextEncoder).hiddenStates(batch, inputsEmbeds: inputsEmbeds), mask)
    }

    /// The states of [start, prefix (k soft tokens), the prompt's tokens, end…]: the official
    /// `prefix_k` layout. With CLIP's fixed 77 positions the last k positions (padding) drop out,
    /// as the official split drops k positions after the prompt. Differentiable in `prefix` [k, D].
    func conditioning(prefix: Tensor, prompt: String) -> (states: Tensor, mask: Tensor) {
        let k = prefix.shape[0]
        let plain = tokenize([prompt])
        let fixed = encoder is CLIPTextEncoder
        var ids = plain.inputIds[0], mask = plain.attentionMask[0]
        ids.insert(contentsOf: Array(repeating: ids[0], count: k), at: 1)
        mask.insert(contentsOf: Array(repeating: 1, count: k), at: 1)
        if fixed { ids.removeLast(k); mask.removeLast(k) }
        let batch = TokenizedBatch(inputIds: [ids], attentionMask: [mask])
        let words = noGrad { wordEmbeddings([ids]).detached() }
        let embeds = Tensor.concat([words.narrowed(axis: 1, start: 0, length: 1), prefix.reshaped([1, k, width]),
                                    words.narrowed(axis: 1, start: 1 + k, length: ids.count - 1 - k)], axis: 1)
        return states(batch, inputsEmbeds: embeds)
    }

    /// A copy of every parameter's values (the reference `ErasedModel` compares a trained
    /// encoder with).
    func snapshot() -> [String: Tensor] {
        Dictionary(uniqueKeysWithValues: module.namedParameters().map { ($0.name, $0.tensor.detachedCopy()) })
    }
}
