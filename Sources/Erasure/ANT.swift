import Diffusion
import Foundation
import NN
import Tensor

/// Every hyper-parameter of ANT. Defaults are the official single-concept configs'
/// (lileyang1210/ANT, `Single/configs/ant_train.yaml` and `ant_gradient.yaml`): 250 iterations of
/// Adam lr 5e-4 on the saliency-masked full UNet, η = 1, α₁ = 1, α₂ = 0.5, the split at step 7 of a
/// 50-step DDIM run with guidance 3, the mask keeping half of each tensor, intersected over prompt
/// variants × the seeds 24, 42, 98, 403, 3407, each from 10 iterations of gradients.
public struct ANTConfig: Codable, Equatable, Sendable {
    public var iterations = 250
    public var learningRate: Float = 5e-4
    /// η, the guidance of both targets: ε₀(∅) ± η(ε₀(c) − ε₀(∅)) (official `negative_guidance`).
    public var eta: Float = 1
    /// α₁, the weight of the early terms against the late ones.
    public var alpha1: Float = 1
    /// α₂, the weight of each unconditional-preservation term against its conditional one.
    public var alpha2: Float = 0.5
    /// Steps of the sampling schedule the states are drawn from (official `ddim_steps`).
    public var samplingSteps = 50
    /// The first `splitStep` steps from noise are the early (high-noise) part of the trajectory,
    /// the rest the late part (official `before_step`).
    public var splitStep = 7
    /// Classifier-free guidance of the sampling run (official `start_guidance`).
    public var samplingGuidance: Float = 3
    /// Which model draws the states: the official script samples with the model being trained.
    public var samplingModel: ESDSamplingModel = .trained
    /// The fraction of each tensor a single saliency map keeps (official `threshold`); 1 turns the
    /// mask off.
    public var saliencyRatio: Float = 0.5
    /// The seeds of the saliency maps, each with every prompt variant.
    public var saliencySeeds: [UInt64] = [24, 42, 98, 403, 3407]
    /// Target prompts used as saliency variants, spread over the concept's list (the official
    /// nudity list has four: nudity, naked, erotic, sexual).
    public var saliencyVariants = 4
    /// Iterations whose gradients one saliency map sums (official gradient run: 10).
    public var saliencyIterations = 10
    /// Which UNet weights may change (official `train_method: full`).
    public var trainable: TrainableSet = .full
    public var checkpointEvery = 50
    public var seed: UInt64 = 0

    public init() {}

    public func validate() throws {
        let check = ConfigCheck(method: "ANT")
        try check.atLeast(1, ["iterations": iterations, "checkpointEvery": checkpointEvery])
        try check.atLeast(2, ["samplingSteps": samplingSteps])
        try check.positive(["learningRate": learningRate])
        try check.nonNegative(["eta": eta, "alpha1": alpha1, "alpha2": alpha2, "samplingGuidance": samplingGuidance])
        try check.require(splitStep >= 1 && splitStep < samplingSteps,
                          "splitStep must be in 1..<samplingSteps (\(samplingSteps)), not \(splitStep)")
        try check.fraction("saliencyRatio", saliencyRatio)
        try check.require(saliencyRatio == 1 || (!saliencySeeds.isEmpty && saliencyVariants >= 1 && saliencyIterations >= 1),
                          "saliency needs at least one seed, variant and iteration (saliencyRatio 1 turns the mask off)")
    }
}

/// ANT's tuning space: the learning rate (up to 5e-3: at the official rate the testbed's classes
/// stay drawn) and the saliency threshold (official `threshold` 0.5; 1 turns the mask off).
extension ANTConfig: TunableConfig {
    public static let searchSpace = SearchSpace(["learningRate": [5e-4, 1e-4, 1e-3, 5e-3], "saliencyRatio": [0.5, 0.3, 1.0]])
}

/// ANT, "Set You Straight: Auto-Steering Denoising Trajectories to Sidestep Unwanted Concepts"
/// (Li, Lu et al., arXiv 2504.12782): fine-tuning that keeps the classifier-free-guidance
/// direction of the concept in the early, high-noise steps (where a sample's structure is laid
/// down) and reverses it in the late steps (where content is filled in), without an anchor
/// concept. Each iteration, on one target prompt c of the next concept (round robin):
/// 1. one sampling run of `samplingSteps` steps with guidance `samplingGuidance` from fresh noise
///    gives an early state z₊ (after k₊ < `splitStep` steps) and a late one z₋ (after
///    k₋ ≥ `splitStep` steps) of the same trajectory;
/// 2. the frozen θ₀ gives ε₀(c) and ε₀(∅) at both;
/// 3. the loss is
///      L = L₋ + α₂·L₋∅ + α₁(L₊ + α₂·L₊∅),
///      L₊ = ‖ε_θ(z₊,c) − [ε₀(∅) + η(ε₀(c) − ε₀(∅))]‖²,  L₋ = ‖ε_θ(z₋,c) − [ε₀(∅) − η(ε₀(c) − ε₀(∅))]‖²,
///      L±∅ = ‖ε_θ(z±,∅) − ε₀(z±,∅)‖²,
///    and one Adam step is taken on the entries the saliency mask allows.
/// The mask is computed on θ₀ before training: for every prompt variant × seed, the sum of
/// `saliencyIterations` gradients of L, its absolute value, the top `saliencyRatio` of each tensor;
/// a concept's mask keeps the entries every one of its maps keeps (several concepts: the union).
///
/// The official code differs from the paper in three places, and this follows the paper in all
/// three (docs/METHOD.md): the unconditional terms carry a gradient here (the official ones are
/// computed under `no_grad` and do nothing), the early part is the first `splitStep` steps from
/// noise (the official split anchors the last 7 steps and reverses the first 43), and the mask
/// keeps the largest gradients (the official one keeps the smallest).
public struct ANT: ErasureMethod {
    public var config: ANTConfig

    public init(config: ANTConfig = ANTConfig()) { self.config = config }

    public var name: String { "ant" }

    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try request.validate()
        try config.validate()
        try request.refuseAnchors(method: "ANT")
        return try TrainingRun.train(config: config, request: request, context: context) {
            try ANTRun(config: config, request: request, pipeline: pipeline, log: context.log)
        }
    }
}

extension ANTConfig: TrainingConfig {
    var steps: Int { iterations }
    static let resumableKeys: Set<String> = ["iterations", "checkpointEvery"]
}

/// The state of one ANT run, trained by `TrainingRun`.
final class ANTRun: FineTuning {
    let config: ANTConfig
    let request: ErasureRequest
    let pipeline: StableDiffusionPipeline
    let frozen: UNet2DConditionModel
    let table: CaptionTable
    let emptyIndex = 0
    /// Per concept: the caption indices of its target prompts.
    let targetIndices: [[Int]]
    let schedule: SamplingSchedule
    let trainable: [(name: String, tensor: Tensor)]
    private(set) var masks: [String: Tensor] = [:]
    private(set) var optimizer: any Optimizer = SGD([], learningRate: 0)
    /// Draws each iteration's prompt and steps; the sampling noise comes from the stream of the
    /// iteration (`StableDiffusionPipeline.imageGenerator`), so a resumed run needs no more state.
    var generator: RandomGenerator

    typealias Config = ANTConfig
    static let method = "ant"
    var model: Module { pipeline.unet }

    init(config: ANTConfig, request: ErasureRequest, pipeline: StableDiffusionPipeline, log: (String) -> Void) throws {
        self.config = config
        self.request = request
        self.pipeline = pipeline
        // As ESD: no dropout, so that a step is a function of its draws (the official script's
        // SD 1.4 UNet has dropout 0, so train mode changes nothing there).
        pipeline.unet.eval()
        frozen = try pipeline.unet.frozenCopy()
        schedule = try pipeline.samplingSchedule(steps: config.samplingSteps, method: "ANT")
        var captions = CaptionList()
        targetIndices = request.concepts.map { $0.targetPrompts.map { captions.index($0) } }
        table = CaptionTable(captions: captions.captions, encoder: pipeline.textEncoder)
        trainable = config.trainable.select(in: pipeline.unet)
        generator = RandomGenerator(seed: config.seed).fork(1)
        if config.saliencyRatio < 1 {
            let started = Date()
            masks = try saliencyMasks()
            let (kept, total) = Saliency.count(masks)
            log(String(format: "ANT saliency mask: %d of %d entries may change (%.1f%%; top %.0f%% per tensor, intersected over %d maps) in %.0f s",
                       kept, total, 100 * Double(kept) / Double(max(total, 1)), 100 * config.saliencyRatio,
                       saliencyVariantIndices.reduce(0) { $0 + $1.count } * config.saliencySeeds.count, Date().timeIntervalSince(started)))
        }
        optimizer = Adam(trainable, learningRate: config.learningRate, masks: masks)
    }

    // MARK: One iteration's pieces

    /// One draw of an iteration: its prompt (a caption index), early and late step.
    struct Draw: Equatable { var prompt: Int; var earlyStep: Int; var lateStep: Int }

    /// A prompt of `prompts` and the two steps, k₊ uniform in 0..<splitStep and k₋ uniform in
    /// splitStep..<samplingSteps (the official `randint(before_step)` and
    /// `randint(before_step, ddim_steps)`, counted here from noise).
    func draw(from prompts: [Int], generator g: inout RandomGenerator) -> Draw {
        let u = g.uniform([3]).scalars
        let split = config.splitStep, late = config.samplingSteps - config.splitStep
        return Draw(prompt: prompts[min(prompts.count - 1, Int(u[0] * Float(prompts.count)))],
                    earlyStep: min(split - 1, Int(u[1] * Float(split))),
                    lateStep: split + min(late - 1, Int(u[2] * Float(late))))
    }

    /// The UNet inputs of the early and late states of one trajectory of `draw.prompt` (guidance
    /// `samplingGuidance`), from the noise stream (`seed`, `stream`), sampled by `model` (nil:
    /// the pipeline's UNet): the state after `earlyStep` steps, and after `lateStep`.
    func states(_ draw: Draw, seed: UInt64, stream: Int, model: UNet2DConditionModel?) throws -> (early: Tensor, late: Tensor) {
        let x = try pipeline.partialRun(conditional: table.conditioning([draw.prompt]), unconditional: table.conditioning([emptyIndex]),
                                        guidance: config.samplingGuidance, schedule: schedule, seed: seed, streams: [stream],
                                        stops: [draw.earlyStep, draw.lateStep], model: model)
        return (pipeline.scheduler.scaleModelInput(x[0], index: draw.earlyStep, of: schedule),
                pipeline.scheduler.scaleModelInput(x[1], index: draw.lateStep, of: schedule))
    }

    /// The four terms at the early and late states of `draw` (recorded for autodiff).
    struct Terms { var early: Tensor; var late: Tensor; var earlyUnconditional: Tensor; var lateUnconditional: Tensor }

    /// The targets at one state, from θ₀ in one pass over [c; ∅]: the conditional target
    /// ε₀(∅) + sign·η(ε₀(c) − ε₀(∅)) and the unconditional one ε₀(∅).
    func targets(input: Tensor, step: Int, prompt: Int, sign: Float) -> (conditional: Tensor, unconditional: Tensor) {
        let states = table.batch([prompt, emptyIndex])
        let both = noGrad {
            pipeline.predictNoise(latents: Tensor.concat([input, input], axis: 0), timestep: schedule.timesteps[step],
                                  states: states.states, mask: states.mask, model: frozen)
        }
        let parts = both.split(sizes: [1, 1], axis: 0)
        // negativeGuidanceTarget's anchor − η'(c − ∅) with η' = −sign·η.
        return (negativeGuidanceTarget(anchor: parts[1], conditional: parts[0], unconditional: parts[1], eta: -sign * config.eta),
                parts[1])
    }

    func terms(_ draw: Draw, early: Tensor, late: Tensor) -> Terms {
        func pair(_ input: Tensor, step: Int, sign: Float) -> (Tensor, Tensor) {
            let target = targets(input: input, step: step, prompt: draw.prompt, sign: sign)
            let states = table.batch([draw.prompt, emptyIndex])
            let prediction = pipeline.predictNoise(latents: Tensor.concat([input, input], axis: 0), timestep: schedule.timesteps[step],
                                                   states: states.states, mask: states.mask)
            let parts = prediction.split(sizes: [1, 1], axis: 0)
            return (mseLoss(parts[0], target.conditional), mseLoss(parts[1], target.unconditional))
        }
        let (e, eu) = pair(early, step: draw.earlyStep, sign: 1)
        let (l, lu) = pair(late, step: draw.lateStep, sign: -1)
        return Terms(early: e, late: l, earlyUnconditional: eu, lateUnconditional: lu)
    }

    /// L = L₋ + α₂·L₋∅ + α₁(L₊ + α₂·L₊∅).
    func total(_ t: Terms) -> Tensor {
        t.late + t.lateUnconditional * config.alpha2 + (t.early + t.earlyUnconditional * config.alpha2) * config.alpha1
    }

    func losses(step: Int) throws -> StepLosses {
        let d = draw(from: targetIndices[step % request.concepts.count], generator: &generator)
        let (early, late) = try states(d, seed: config.seed &+ 1, stream: step, model: config.samplingModel == .frozen ? frozen : nil)
        let t = terms(d, early: early, late: late)
        let loss = total(t)
        return StepLosses(total: loss, checked: [("late", t.late.item), ("early", t.early.item),
                                                 ("late_unconditional", t.lateUnconditional.item),
                                                 ("early_unconditional", t.earlyUnconditional.item), ("total", loss.item)])
    }

    // MARK: Saliency

    /// Per concept: the target prompts used as saliency variants, evenly spread over its list.
    var saliencyVariantIndices: [[Int]] {
        targetIndices.map { prompts in
            let n = min(config.saliencyVariants, prompts.count)
            return (0..<n).map { prompts[$0 * prompts.count / n] }
        }
    }

    /// Per concept, the intersection over its variants × seeds of per-tensor top-ρ masks of
    /// |Σ over `saliencyIterations` draws of ∂L/∂θ| on θ₀ (the gradients summed with their sign
    /// before the absolute value, as the official gradient run accumulates them); the union of
    /// the concepts' masks, so that each concept keeps the entries salient for it.
    func saliencyMasks() throws -> [String: Tensor] {
        var union: [String: Tensor] = [:]
        for (c, variants) in saliencyVariantIndices.enumerated() {
            var maps: [[String: Tensor]] = []
            for (v, variant) in variants.enumerated() {
                for seed in config.saliencySeeds {
                    var g = RandomGenerator(seed: seed).fork(UInt64(1 + c * 1000 + v))
                    var sums: [String: Tensor] = [:]
                    for i in 0..<config.saliencyIterations {
                        let d = draw(from: [variant], generator: &g)
                        // Sampled by θ₀: the pipeline's UNet is θ₀ until training starts.
                        let (early, late) = try states(d, seed: seed, stream: (c * 1000 + v) * config.saliencyIterations + i,
                                                       model: frozen)
                        total(terms(d, early: early, late: late)).backward()
                        for (name, p) in trainable {
                            guard let grad = p.grad else { continue }
                            let sum = sums[name] ?? Tensor.zeros(p.shape)
                            for k in 0..<grad.count { sum.pointer[k] += grad.pointer[k] }
                            sums[name] = sum
                        }
                        pipeline.unet.zeroGrad()
                    }
                    for (_, sum) in sums { for k in 0..<sum.count { sum.pointer[k] = Swift.abs(sum.pointer[k]) } }
                    maps.append(Saliency.masks(scores: sums, ratio: config.saliencyRatio))
                }
            }
            for (name, mask) in Saliency.intersection(maps) {
                guard let kept = union[name] else { union[name] = mask; continue }
                for k in 0..<mask.count where mask.pointer[k] != 0 { kept.pointer[k] = 1 }
            }
        }
        return union
    }

    func begin(log: (String) -> Void) {
        log("ANT: \(trainable.reduce(0) { $0 + $1.tensor.count }) trainable parameters in \(trainable.count) tensors; early part: steps 0..<\(config.splitStep) of \(config.samplingSteps) (t ≥ \(Int(schedule.timesteps[config.splitStep - 1])))")
        if !request.retainPrompts.isEmpty {
            log("ANT has no retain term (it keeps the unconditional prediction instead): the \(request.retainPrompts.count) retain prompts are not used in training")
        }
    }

    func progress(_ losses: [String: [Float]]) -> [(String, Float)] {
        [("late", losses["late"]?.last ?? .nan), ("early", losses["early"]?.last ?? .nan), ("total", losses["total"]?.last ?? .nan)]
    }
}
