import Diffusion
import Foundation
import NN
import Tensor

/// Every hyper-parameter of EraseAnything. Defaults are the official code's
/// (tomguluson92/EraseAnything, `config/config.yaml` read by `train_flux_lora.py`): LoRA rank 8
/// (alpha 8) on the double blocks' `add_q_proj` and `add_k_proj`, AdamW lr 1e-3 with weight
/// decay 1e-5, 200 steps, λ = (1, 1e-3, 0.1, 0.1), negative guidance 1, start guidance 3,
/// guidance 3.5, 28 sampling steps, K = 3 irrelevant concepts, temperature 0.07.
public struct EraseAnythingConfig: Codable, Equatable, Sendable {
    /// `max_train_steps`: the steps alternate between the two levels (see `EraseAnything`).
    public var steps = 200
    public var learningRate: Float = 1e-3
    /// AdamW's decoupled weight decay (`adam_weight_decay`).
    public var weightDecay: Float = 1e-5
    /// LoRA rank r (alpha = r, so the update is B·A unscaled; PEFT's gaussian init: A ~ N(0, 1/r²), B = 0).
    public var rank = 8
    /// The double blocks' attention projections that get a LoRA (`attn.<name>`).
    public var targetModules = ["add_q_proj", "add_k_proj"]
    /// η (`negative_guidance`): the ESD target v(x, anchor) − η(v(x, c) − v(x, anchor)).
    public var eta: Float = 1
    /// λ₁ (`lamb1`): the ESD velocity loss.
    public var lambdaESD: Float = 1
    /// λ₂ (`lamb2`): the attention-map regulariser.
    public var lambdaAttention: Float = 1e-3
    /// λ₃ (`lamb3`): the flow-matching (LoRA) loss on the concept's images.
    public var lambdaLoRA: Float = 0.1
    /// λ₄ (`lamb4`): the reverse self-contrastive (InfoNCE) term on attention maps.
    public var lambdaContrastive: Float = 0.1
    /// The InfoNCE temperature (`calculate_steer_loss`).
    public var temperature: Float = 0.07
    /// K: irrelevant concepts per contrastive step, drawn from the request's retain prompts.
    public var irrelevantConcepts = 3
    /// Steps of the sampling runs (`ddim_steps`).
    public var samplingSteps = 28
    /// Guidance of the sampling runs and the ESD predictions (`start_guidance`): the embedded
    /// guidance of a guidance-distilled transformer, true CFG of the sampling runs otherwise.
    public var startGuidance: Float = 3
    /// Embedded guidance of the attention and flow-matching passes (`guidance_scale`); used only by
    /// a guidance-distilled transformer.
    public var guidance: Float = 3.5
    /// Probability that a step's prompt has its words shuffled (the official dataset's 0.9).
    public var shuffleProbability: Float = 0.9
    /// Images of each concept the original model draws before training (the official reads a
    /// folder of them, `instance_data_dir`), the data of the flow-matching loss and the attention
    /// regulariser.
    public var instanceImages = 4
    /// Image side in pixels; nil: the pipeline's default size.
    public var imageSize: Int? = nil
    public var checkpointEvery = 50
    public var seed: UInt64 = 0

    public init() {}

    /// The double blocks' attention projections a LoRA may go on.
    public static let projections = ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "to_q", "to_k", "to_v", "to_out.0"]

    public func validate() throws {
        let check = ConfigCheck(method: "EraseAnything")
        try check.atLeast(1, ["steps": steps, "rank": rank, "irrelevantConcepts": irrelevantConcepts, "samplingSteps": samplingSteps,
                              "instanceImages": instanceImages, "checkpointEvery": checkpointEvery])
        try check.positive(["learningRate": learningRate, "temperature": temperature])
        try check.nonNegative(["weightDecay": weightDecay, "eta": eta, "lambdaESD": lambdaESD, "lambdaAttention": lambdaAttention,
                               "lambdaLoRA": lambdaLoRA, "lambdaContrastive": lambdaContrastive,
                               "startGuidance": startGuidance, "guidance": guidance])
        try check.require(!targetModules.isEmpty, "targetModules is empty")
        let unknown = targetModules.first { !Self.projections.contains($0) }
        try check.require(unknown == nil, "targetModules has '\(unknown ?? "")'; a double block's attention has \(Self.projections.joined(separator: ", "))")
        try check.require((0...1).contains(shuffleProbability), "shuffleProbability must be in [0, 1], not \(shuffleProbability)")
        try check.require(imageSize.map { $0 > 0 } ?? true, "imageSize must be positive")
    }
}

extension EraseAnythingConfig: TrainingConfig {
    static let resumableKeys: Set<String> = ["steps", "checkpointEvery"]
}

/// EraseAnything (Gao et al., ICML 2025, arXiv 2412.20413): concept erasure on FLUX by a LoRA on
/// the double blocks' text-stream query and key projections, trained by a bi-level schedule
/// that alternates, one AdamW step each, between
///
/// - **erasure** (even steps): λ₁·L_esd + λ₂·L_attn on a target prompt c —
///   L_esd = MSE(v_θ(x_t, c), v(x_t, a) − η(v(x_t, c) − v(x_t, a))), the ESD target on
///   velocities with the concept's anchor a ("" by default) in the unconditional role, x_t a
///   partial sampling run of c stopped at a random step t; L_attn = Σ_q Σ_{k ∈ concept tokens}
///   ‖A[·, ·, q, k]‖₂ over batch and heads, A the last double block's joint attention
///   probabilities for a noised image of the concept at t;
/// - **preservation** (odd steps, at the same t): λ₃·L_lora + λ₄·L_nce — L_lora the
///   flow-matching loss ‖v_θ(x_t, c) − (ε − x₀)‖² on a concept image x₀, and L_nce the
///   reverse self-contrastive term: head 0's attention to the concept tokens (a vector over the
///   M + N queries, averaged over the tokens) for c (the centre), a synonym (the anchor of the
///   contrast) and K irrelevant concepts, compared by cosine similarity / τ; the loss is the
///   log-probability of the centre among the centre and the irrelevant ones, seen from the
///   synonym, so minimising it moves c's attention away from its synonym's.
///
/// With λ₃ = λ₄ = 0 every step is an erasure step, as in the official loop. The output is a LoRA
/// (`train` returns it; `erase` merges it into the pipeline's transformer and writes
/// `pytorch_lora_weights.safetensors` under diffusers' FLUX key names, `transformer.<module>.lora_A.weight`).
///
/// **Where the official code and the paper differ, and what this port follows.**
/// - The paper calls erasure the lower level and preservation the upper; `train_flux_lora.py`
///   names them the other way round and realises the bi-level problem as the alternation of
///   single steps above (no inner loop). Followed: the code's alternation.
/// - The paper presents L_lora as preserving generation quality; the code computes it on the
///   instance images of the concept with the (shuffled) concept prompt. Followed: the code; the
///   instance images are drawn by the original model from the target prompts, since the method
///   is given a pipeline and prompts rather than a folder of images.
/// - The paper's contrastive term is an InfoNCE that keeps irrelevant concepts apart from the
///   erased one; the code's `calculate_steer_loss` returns logsumexp(positive) − logsumexp(all)
///   (its comments note the standard sign is the reverse), with gradient only through the
///   centre. Followed: the code's sign and terms.
/// - ESD's own code takes the targets from a frozen copy; EraseAnything's takes v(x_t, a) and
///   v(x_t, c) from the model being trained (without gradient). Followed: EraseAnything's.
/// - The code's x_t comes from `latent_sample`, which runs all 28 steps of a random (logit-normal,
///   sorted) timestep set through ai-toolkit's custom scheduler and then evaluates the model at
///   an unrelated random timestep. Not followed: as ESD, x_t is the pipeline's own FLUX schedule
///   stopped at a random step, and every velocity of the pair is taken at that step's σ.
/// - The code applies the instance prompt's concept-token indices to the synonym and irrelevant
///   prompts too. Followed for the irrelevant prompts (the same template puts their class word
///   in the same slot); not for the synonym, which the code passes as a bare word so its indices
///   would land on padding: the synonym's own token positions are used.
/// - Irrelevant concepts come from GPT-4o and synonyms from WordNet in the code; here the K
///   irrelevant concepts are drawn from the request's retain prompts and the synonyms are the
///   concept's phrases in its target prompts (its name and the words its other target prompts
///   put in its place). The code's 50% synonym replacement is covered by drawing among all target
///   prompts.
/// - FLUX.1-dev is guidance-distilled: the code feeds start guidance 3 (sampling, ESD) and 3.5
///   (attention and flow-matching passes) as embedded guidance. A transformer without a guidance
///   embedding (the mini-FLUX) gets true CFG at the start guidance in its sampling runs instead.
/// - The code parses `max_grad_norm` but never clips; neither does this.
/// Losses are recorded unweighted ("esd", "attention", "lora", "contrastive").
public struct EraseAnything: ErasureMethod {
    public var config: EraseAnythingConfig

    public init(config: EraseAnythingConfig = EraseAnythingConfig()) { self.config = config }

    public var name: String { "eraseanything" }

    /// The interface's entry point: FLUX pipelines only (the method is defined on MM-DiT blocks).
    public func erase<Model: ErasableModel>(_ request: ErasureRequest, model: Model, context: ErasureContext) throws -> ErasureOutcome {
        guard let pipeline = model as? FluxPipeline else {
            throw ErasureError.invalidRequest("--method eraseanything runs on FLUX (flow) models only, not on \(Model.family.rawValue) models: it trains LoRA on the double blocks' text-stream projections")
        }
        return try erase(request, pipeline: pipeline, context: context)
    }

    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try erase(request, model: pipeline, context: context)
    }

    /// Trains the LoRA and leaves it merged into `pipeline.transformer`; with an output folder,
    /// also writes it there as `pytorch_lora_weights.safetensors` (after a complete run).
    public func erase(_ request: ErasureRequest, pipeline: FluxPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try train(request, pipeline: pipeline, context: context).outcome
    }

    /// The file name `erase` writes the LoRA under (diffusers' `save_lora_weights` default).
    public static let loraFileName = "pytorch_lora_weights.safetensors"

    /// `erase`, also returning the trained LoRA (transformer component, module paths as the
    /// transformer names them).
    public func train(_ request: ErasureRequest, pipeline: FluxPipeline, context: ErasureContext) throws
        -> (outcome: ErasureOutcome, lora: LoRA) {
        try request.validate()
        try config.validate()
        var made: EraseAnythingRun?
        let outcome = try TrainingRun.train(config: config, request: request, context: context) {
            let run = try EraseAnythingRun(config: config, request: request, pipeline: pipeline)
            made = run
            return run
        }
        guard let run = made else { throw ErasureError.invalidConfig("EraseAnything: the run was not set up") }
        run.applyFactors()
        let lora = run.lora()
        if let output = context.output, !outcome.stoppedEarly {
            try lora.write(to: output.appendingPathComponent(Self.loraFileName), layout: .peft,
                           metadata: ["score_method": name])
        }
        return (outcome, lora)
    }
}

// MARK: - Loss terms

extension EraseAnything {
    /// Attention probabilities [B, H, S, S] to the key columns `positions`: [B, H, S, |positions|].
    static func columns(_ maps: Tensor, _ positions: [Int]) -> Tensor {
        Tensor.concat(positions.map { maps.narrowed(axis: 3, start: $0, length: 1) }, axis: 3)
    }

    /// The attention-map regulariser: Σ_q Σ_{k ∈ positions} ‖A[:, :, q, k]‖₂, the norm over batch
    /// and heads (the code's `sum(torch.norm(mask * attn_maps, dim=(0, 1))).sum()`; columns
    /// outside the mask add 0 there and are left out here, where √0 has no gradient).
    public static func attentionLoss(_ maps: Tensor, positions: [Int]) -> Tensor {
        columns(maps, positions).square().sum(axes: [0, 1]).sqrt().sum()
    }

    /// Head 0's attention to the concept tokens, averaged over them: [B, S], a vector over all
    /// queries (`attn_maps[..., idx][:, 0].permute(0, 2, 1)` then the steer loss's mean).
    public static func conceptAttention(_ maps: Tensor, positions: [Int]) -> Tensor {
        columns(maps.narrowed(axis: 1, start: 0, length: 1), positions).mean(axes: [1, 3])
    }

    /// The official `calculate_steer_loss` ("mean" method): with n̂ the synonym's normalised
    /// vector and ĉ, î_k the centre's and the irrelevant concepts', logits s = n̂·[ĉ, î₁…î_K]/τ;
    /// the loss is the batch mean of s₀ − logsumexp(s). All inputs [B, S].
    public static func contrastiveLoss(center: Tensor, synonym: Tensor, irrelevant: [Tensor], temperature: Float) -> Tensor {
        func normalised(_ v: Tensor) -> Tensor {
            v / v.square().sum(axis: 1, keepDims: true).sqrt().clamped(1e-12, .greatestFiniteMagnitude)
        }
        let anchor = normalised(synonym)
        let logits = Tensor.concat(([center] + irrelevant).map { (anchor * normalised($0)).sum(axis: 1, keepDims: true) },
                                   axis: 1) * (1 / temperature)
        // A per-row constant shift keeps exp in range and leaves logsumexp's gradient unchanged.
        let (rows, count) = (logits.shape[0], logits.shape[1])
        let values = logits.scalars
        let shift = Tensor(shape: [rows, 1], scalars: (0..<rows).map { r in values[(r * count)..<((r + 1) * count)].max()! })
        let logSumExp = (logits - shift).exp().sum(axis: 1, keepDims: true).log() + shift
        return (logits.narrowed(axis: 1, start: 0, length: 1) - logSumExp).mean()
    }

    /// The concept's phrase in each of its target prompts: its name where the prompt holds its
    /// words; otherwise the prompt's words that no prompt holding the name uses (the synonym in a shared
    /// template), articles aside; the whole prompt when nothing is left.
    static func phrases(of concept: Concept) -> [(prompt: String, phrase: String)] {
        func words(_ text: String) -> [String] {
            text.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber && $0 != "'" && $0 != "-" }).map(String.init)
        }
        let name = words(concept.name)
        func named(_ prompt: String) -> Bool {
            let w = words(prompt)
            return !name.isEmpty && w.count >= name.count && (0...(w.count - name.count)).contains { Array(w[$0..<($0 + name.count)]) == name }
        }
        let template = Set(concept.targetPrompts.filter(named).flatMap(words))
        return concept.targetPrompts.map { prompt in
            if named(prompt) { return (prompt, concept.name) }
            let rest = words(prompt).filter { !template.contains($0) && !["a", "an", "the"].contains($0) }
            return (prompt, rest.isEmpty ? prompt : rest.joined(separator: " "))
        }
    }
}

// MARK: - Token positions

/// A FLUX text encoder that shows its tokens, so that EraseAnything can find a phrase's
/// positions among a prompt's text tokens (the official `get_word_index`).
public protocol FluxTokenPositions: FluxTextEncoder {
    /// The token ids at each text position of `prompt`, as `encode` lays them out.
    func tokenIds(_ prompt: String) -> [Int]
    /// The ids of `phrase`'s tokens alone, without special or padding tokens.
    func phraseTokenIds(_ phrase: String) -> [Int]
}

extension FluxTokenPositions {
    /// The positions in `prompt` of any token of `phrase` (the official matching by token id).
    func positions(of phrase: String, in prompt: String) -> [Int] {
        let wanted = Set(phraseTokenIds(phrase))
        return tokenIds(prompt).enumerated().filter { wanted.contains($0.element) }.map(\.offset)
    }
}

extension PooledSentenceEncoder: FluxTokenPositions {
    public func tokenIds(_ prompt: String) -> [Int] {
        encoder.tokenizer([prompt], padding: .maxLength, maxLength: tokens).inputIds[0]
    }

    public func phraseTokenIds(_ phrase: String) -> [Int] { encoder.tokenizer.encode(phrase) }
}

// MARK: - The run

/// The state of one EraseAnything run, trained by `TrainingRun`.
final class EraseAnythingRun: FineTuning {
    typealias Config = EraseAnythingConfig
    static let method = "eraseanything"

    let config: EraseAnythingConfig
    let request: ErasureRequest
    let pipeline: FluxPipeline
    let encoder: any FluxTokenPositions
    let adapters: [LinearLoRA]
    let trainable: [(name: String, tensor: Tensor)]
    let optimizer: any Optimizer
    var generator: RandomGenerator
    var model: Module { pipeline.transformer }

    /// The sample's latent height and width, and the sampling schedule.
    let height: Int, width: Int
    let latentShape: [Int]
    let schedule: SamplingSchedule
    /// Per concept: its instance images as packed tokens [1, N, 4C].
    let instances: [[Tensor]]
    /// Per concept: its target prompts with the concept's phrase in each.
    let targets: [[(prompt: String, phrase: String)]]
    /// The last double block's attention, whose probabilities the losses read.
    let attention: FluxAttention
    let distilled: Bool
    let empty: FluxPipeline.Conditioning
    /// The stop step of the current pair's erasure step, which its preservation step reuses.
    var pairStopStep = 0

    init(config: EraseAnythingConfig, request: ErasureRequest, pipeline: FluxPipeline) throws {
        guard let encoder = pipeline.textEncoder as? any FluxTokenPositions else {
            throw ErasureError.invalidRequest("EraseAnything needs the concept's token positions; the text encoder \(type(of: pipeline.textEncoder)) does not show its tokens (FluxTokenPositions)")
        }
        guard let last = pipeline.transformer.transformer_blocks.last else {
            throw ErasureError.invalidRequest("EraseAnything trains the double blocks' text stream, and this transformer has none (num_layers 0)")
        }
        if config.lambdaContrastive > 0 && request.retainPrompts.isEmpty {
            throw ErasureError.invalidRequest("EraseAnything's contrastive term draws its \(config.irrelevantConcepts) irrelevant concepts from the retain prompts: give --retain prompts or set lambdaContrastive 0")
        }
        self.config = config
        self.request = request
        self.pipeline = pipeline
        self.encoder = encoder
        attention = last.attn
        distilled = pipeline.transformer.config.guidanceEmbeds
        pipeline.transformer.eval()
        let side = config.imageSize ?? pipeline.defaultSize
        let shape: [Int], schedule: SamplingSchedule
        do {
            shape = try pipeline.latentShape(batch: 1, height: side, width: side)
            schedule = try pipeline.schedule(steps: config.samplingSteps, height: shape[2], width: shape[3])
        } catch {
            throw ErasureError.invalidConfig("EraseAnything imageSize \(side): \(error)")
        }
        (latentShape, self.schedule, height, width) = (shape, schedule, shape[2], shape[3])
        let empty = noGrad { pipeline.encodePrompts([""]) }
        self.empty = empty
        generator = RandomGenerator(seed: config.seed).fork(1)

        let targets = request.concepts.map(EraseAnything.phrases)
        for (concept, list) in zip(request.concepts, targets) {
            for (prompt, phrase) in list where encoder.positions(of: phrase, in: prompt).isEmpty {
                throw ErasureError.invalidRequest("EraseAnything: no token of '\(phrase)' (concept '\(concept.name)') is among the text tokens of '\(prompt)'")
            }
        }
        self.targets = targets

        // The instance images, drawn by the original model before any factor exists.
        var images = RandomGenerator(seed: config.seed).fork(2)
        var instances: [[Tensor]] = []
        for concept in request.concepts {
            var list: [Tensor] = []
            for k in 0..<config.instanceImages {
                let prompt = concept.targetPrompts[k % concept.targetPrompts.count]
                let noise = FluxTransformer2DModel.packLatents(images.normal(shape))
                list.append(try EraseAnythingRun.sample(pipeline, noise, conditioning: noGrad { pipeline.encodePrompts([prompt]) },
                                                        steps: schedule.indices, config: config, empty: empty, schedule: schedule,
                                                        height: shape[2], width: shape[3]))
            }
            instances.append(list)
        }
        self.instances = instances

        var initial = RandomGenerator(seed: config.seed).fork(3)
        let parameters = Dictionary(pipeline.transformer.namedParameters().map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
        var adapters: [LinearLoRA] = []
        for block in pipeline.transformer.transformer_blocks.indices {
            for module in config.targetModules {
                let path = "transformer_blocks.\(block).attn.\(module)"
                guard let weight = parameters[path + ".weight"] else {
                    throw ErasureError.invalidConfig("EraseAnything targetModules: the transformer has no \(path).weight")
                }
                adapters.append(LinearLoRA(path: path, weight: weight, rank: config.rank, generator: &initial))
            }
        }
        self.adapters = adapters
        let names = Set(adapters.map { $0.path + ".weight" })
        pipeline.transformer.freeze()
        pipeline.transformer.unfreeze(where: names.contains)
        let trainable = adapters.flatMap { [(name: "\($0.path).lora_A", tensor: $0.down), (name: "\($0.path).lora_B", tensor: $0.up)] }
        self.trainable = trainable
        optimizer = Adam.adamW(trainable, learningRate: config.learningRate, weightDecay: config.weightDecay)
    }

    // MARK: Pieces

    /// Runs `steps` of the schedule from packed `tokens` under `conditioning`, without gradient:
    /// embedded start guidance for a distilled transformer, true CFG at it otherwise.
    static func sample(_ pipeline: FluxPipeline, _ tokens: Tensor, conditioning: FluxPipeline.Conditioning, steps: Range<Int>,
                       config: EraseAnythingConfig, empty: FluxPipeline.Conditioning, schedule: SamplingSchedule,
                       height: Int, width: Int) throws -> Tensor {
        let distilled = pipeline.transformer.config.guidanceEmbeds
        let cfg = !distilled && config.startGuidance > 1
        return try noGrad {
            try pipeline.denoise(tokens, height: height, width: width, conditional: conditioning,
                                 unconditional: cfg ? empty : nil, guidance: config.startGuidance,
                                 embeddedGuidance: distilled ? config.startGuidance : nil, schedule: schedule, steps: steps)
        }
    }

    func sample(_ tokens: Tensor, conditioning: FluxPipeline.Conditioning, steps: Range<Int>) throws -> Tensor {
        try Self.sample(pipeline, tokens, conditioning: conditioning, steps: steps, config: config, empty: empty,
                        schedule: schedule, height: height, width: width)
    }

    func encode(_ prompts: [String]) -> FluxPipeline.Conditioning { noGrad { pipeline.encodePrompts(prompts) } }

    func velocity(_ tokens: Tensor, step: Int, _ conditioning: FluxPipeline.Conditioning, embedded: Float) -> Tensor {
        pipeline.velocity(tokens: tokens, height: height, width: width, timestep: schedule.timesteps[step],
                          conditioning: conditioning, embeddedGuidance: distilled ? embedded : nil)
    }

    /// `body`'s value and the last double block's attention probabilities of its last pass.
    func observingAttention<T>(_ body: () throws -> T) rethrows -> (T, Tensor?) {
        var maps: Tensor?
        attention.probabilityObserver = { maps = $0 }
        defer { attention.probabilityObserver = nil }
        let value = try body()
        return (value, maps)
    }

    func index(_ count: Int) -> Int { min(count - 1, Int(generator.uniform([1]).scalars[0] * Float(count))) }

    /// One of concept `c`'s target prompts, its words shuffled with the configured probability,
    /// and the positions of the concept's tokens in it.
    func drawPrompt(concept c: Int) throws -> (text: String, positions: [Int]) {
        let (prompt, phrase) = targets[c][index(targets[c].count)]
        var words = prompt.split(separator: " ").map(String.init)
        if generator.uniform([1]).scalars[0] < config.shuffleProbability {
            for i in stride(from: words.count - 1, to: 0, by: -1) { words.swapAt(i, index(i + 1)) }
        }
        let text = words.joined(separator: " ")
        let positions = encoder.positions(of: phrase, in: text)
        guard !positions.isEmpty else {
            throw ErasureError.invalidRequest("EraseAnything: no token of '\(phrase)' is among the text tokens of '\(text)'")
        }
        return (text, positions)
    }

    /// A concept image noised to the schedule's σ at `step` (packed), and the flow's velocity ε − x₀.
    func noisedInstance(concept c: Int, step: Int) -> (input: Tensor, velocity: Tensor) {
        let clean = instances[c][index(instances[c].count)]
        let noise = generator.normal(clean.shape)
        let sigma = Float(schedule.sigmas[step])
        return (clean * (1 - sigma) + noise * sigma, noise - clean)
    }

    func applyFactors() { for adapter in adapters { adapter.apply() } }

    func lora() -> LoRA {
        LoRA([.transformer: Dictionary(uniqueKeysWithValues: adapters.map { ($0.path, $0.factors) })])
    }

    func isErasureStep(_ step: Int) -> Bool { step % 2 == 0 || config.lambdaLoRA + config.lambdaContrastive == 0 }

    func concept(at step: Int) -> Int {
        (config.lambdaLoRA + config.lambdaContrastive == 0 ? step : step / 2) % request.concepts.count
    }

    // MARK: Steps

    /// λ₁·L_esd + λ₂·L_attn on a target prompt of concept `c` at a random stop step.
    func erasureLosses(concept c: Int) throws -> StepLosses {
        let prompt = try drawPrompt(concept: c)
        let stop = index(config.samplingSteps)
        pairStopStep = stop
        let conditioning = encode([prompt.text])
        let anchor = encode([request.concepts[c].anchor])
        let start = FluxTransformer2DModel.packLatents(generator.normal(latentShape))
        let x = try sample(start, conditioning: conditioning, steps: 0..<stop)
        let both = noGrad {
            velocity(Tensor.concat([x, x], axis: 0), step: stop,
                     FluxPipeline.Conditioning(states: Tensor.concat([anchor.states, conditioning.states], axis: 0),
                                               pooled: Tensor.concat([anchor.pooled, conditioning.pooled], axis: 0)),
                     embedded: config.startGuidance)
        }.split(sizes: [1, 1], axis: 0)
        let target = negativeGuidanceTarget(anchor: both[0], conditional: both[1], unconditional: both[0], eta: config.eta)
        let esd = mseLoss(velocity(x, step: stop, conditioning, embedded: config.startGuidance), target)

        let noised = noisedInstance(concept: c, step: stop)
        let (_, maps) = observingAttention { velocity(noised.input, step: stop, conditioning, embedded: config.guidance) }
        let attention = EraseAnything.attentionLoss(maps!, positions: prompt.positions)
        return StepLosses(total: esd * config.lambdaESD + attention * config.lambdaAttention,
                          checked: [("esd", esd.item), ("attention", attention.item)])
    }

    /// λ₃·L_lora + λ₄·L_nce on a target prompt of concept `c` at the pair's stop step.
    func preservationLosses(concept c: Int) throws -> StepLosses {
        let stop = pairStopStep
        let prompt = try drawPrompt(concept: c)
        let conditioning = encode([prompt.text])
        let noised = noisedInstance(concept: c, step: stop)
        let (prediction, maps) = observingAttention { velocity(noised.input, step: stop, conditioning, embedded: config.guidance) }
        let lora = mseLoss(prediction, noised.velocity)
        guard config.lambdaContrastive > 0 else {
            return StepLosses(total: lora * config.lambdaLoRA, checked: [("lora", lora.item)])
        }

        // One synonym and K irrelevant concepts, each sampled from the same start to a random
        // step, whose attention map there is compared with the centre's.
        let start = FluxTransformer2DModel.packLatents(generator.normal(latentShape))
        let at = index(config.samplingSteps)
        func attentionAt(_ text: String) throws -> Tensor {
            let (_, maps) = try observingAttention { try sample(start, conditioning: encode([text]), steps: 0..<(at + 1)) }
            // With true CFG the pass is [unconditional; conditional]: keep the conditional half.
            return maps!.narrowed(axis: 0, start: maps!.shape[0] - 1, length: 1)
        }
        let phrases = Array(Set(targets[c].map(\.phrase))).sorted()
        let synonym = phrases[index(phrases.count)]
        let synonymMap = try attentionAt(synonym)
        var pool = request.retainPrompts
        var irrelevant: [Tensor] = []
        for _ in 0..<min(config.irrelevantConcepts, pool.count) {
            let text = pool.remove(at: index(pool.count))
            irrelevant.append(EraseAnything.conceptAttention(try attentionAt(text), positions: prompt.positions))
        }
        let contrastive = EraseAnything.contrastiveLoss(
            center: EraseAnything.conceptAttention(maps!, positions: prompt.positions),
            synonym: EraseAnything.conceptAttention(synonymMap, positions: encoder.positions(of: synonym, in: synonym)),
            irrelevant: irrelevant, temperature: config.temperature)
        return StepLosses(total: lora * config.lambdaLoRA + contrastive * config.lambdaContrastive,
                          checked: [("lora", lora.item), ("contrastive", contrastive.item)])
    }

    func losses(step: Int) throws -> StepLosses {
        applyFactors()
        let c = concept(at: step)
        return try isErasureStep(step) ? erasureLosses(concept: c) : preservationLosses(concept: c)
    }

    func beforeUpdate() { for adapter in adapters { adapter.backpropagate() } }

    func begin(log: (String) -> Void) {
        log("EraseAnything: rank-\(config.rank) LoRA on \(adapters.count) projections (\(trainable.reduce(0) { $0 + $1.tensor.count }) parameters); \(config.instanceImages) instance image(s) per concept; steps alternate erasure (ESD + attention) and preservation (flow matching + contrastive)")
    }

    func progress(_ losses: [String: [Float]]) -> [(String, Float)] {
        ["esd", "attention", "lora", "contrastive"].compactMap { name in losses[name]?.last.map { (name, $0) } }
    }

    func checkpointTensors() -> [String: Tensor] {
        ["eraseanything.pairStopStep": Tensor(shape: [1], scalars: [Float(pairStopStep)])]
    }

    func restore(from checkpoint: ErasureCheckpoint) throws {
        guard let saved = checkpoint.tensors["eraseanything.pairStopStep"], saved.count == 1 else {
            throw ErasureError.invalidConfig("\(checkpoint.url.path): no eraseanything.pairStopStep")
        }
        pairStopStep = Int(saved.scalars[0])
    }
}
