import Diffusion
import Foundation
import Kernels
import NN
import Tensor

/// Every hyper-parameter of SCORE (docs/METHOD.md, whose "Why these defaults" gives the runs behind
/// them). A config file may set any subset of them (JSON, these keys); flags override the file;
/// run.json records the result.
public struct SCOREConfig: Codable, Equatable, Sendable {
    // Model optimisation
    public var steps = 250
    /// Target-prompt samples with t ≤ t′ per step (erase and adversarial terms).
    public var batchSize = 4
    /// Target-prompt samples with t > t′ per step (early trajectory kept as θ₀'s).
    public var earlyBatchSize = 2
    /// Retained-prompt (and empty-prompt) samples per step.
    public var retainBatchSize = 6
    /// 2e-4 moved the testbed model too little in 150 steps.
    public var learningRate: Float = 5e-4
    /// adam, adamw or sgd.
    public var optimizer = "adam"
    /// Global gradient-norm clip of the model's update (0: off).
    public var maxGradNorm: Float = 1
    public var trainable: TrainableSet = .full

    // Loss
    public var lambdaAdversarial: Float = 0.1
    public var lambdaErase: Float = 1
    /// 3, not 1: with 1 the retained classes lost 12% of their accuracy on the testbed.
    public var lambdaTrajectory: Float = 3
    /// η of the erase target ε₀(c_anc) − η(ε₀(c) − ε₀(∅)).
    public var eta: Float = 1
    /// t′: the erase and adversarial terms act at t ≤ t′; the target keeps θ₀'s predictions above.
    /// 900, not 600: on the testbed (cosine schedule) the class is decided above
    /// t = 600, and with t′ = 600 the erased model still drew sneakers 81% of the time.
    public var splitTimestep = 900
    public var adversarialForm: AdversarialForm = .confusion

    // Critic
    public var criticWidth = 32
    /// n_D: critic steps per model step.
    public var criticSteps = 2
    public var criticWarmupSteps = 50
    public var criticLearningRate: Float = 1e-4
    public var criticBeta1: Float = 0.5
    public var criticBeta2: Float = 0.999
    /// Samples per critic step (half target, half anchor).
    public var criticBatchSize = 16

    // Saliency
    /// ρ: the fraction of each tensor that may change; 1 trains every entry.
    public var saliencyRatio: Float = 0.5
    /// Seeds (batches) per target prompt variant the saliency is summed over.
    public var saliencySeeds = 2
    /// Keep only entries salient for every variant × seed (ANT) instead of the summed top-ρ.
    public var saliencyIntersect = false

    // Trajectories
    /// Trajectories sampled per prompt set (target, anchor, retain) for the pools.
    public var poolTrajectories = 16
    public var poolSteps = 25
    /// The guidance users sample at (diffusers' default, the testbed's evaluation): the pools
    /// then visit the states the erased model will be sampled through. With pools at guidance 4
    /// SCORE left 12.5% of "sneaker" images at the default guidance, with pools at it 3.1%
    /// (docs/RESULTS.md).
    public var poolGuidance = StableDiffusionPipeline.defaultGuidance
    /// Resample the target pool from the current model every N steps (0: never).
    public var poolRefreshEvery = 50

    public var checkpointEvery = 50
    public var seed: UInt64 = 0

    public init() {}

    /// The defaults with a JSON file's keys over them; an unknown key or a value of the wrong
    /// type is an error naming the file and the key.
    public static func load(_ url: URL, over base: SCOREConfig = SCOREConfig()) throws -> SCOREConfig {
        do { return try JSONOverlay.decode(url, over: base) } catch let error as JSONOverlayError {
            throw ErasureError.invalidConfig(error.description)
        }
    }

    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw ErasureError.invalidConfig(message) } }
        try check(steps >= 1, "steps must be at least 1")
        try check(batchSize >= 1 && earlyBatchSize >= 0 && retainBatchSize >= 0, "batch sizes must be positive")
        try check(learningRate > 0, "learningRate must be positive")
        try check(["adam", "adamw", "sgd"].contains(optimizer), "optimizer must be adam, adamw or sgd, not '\(optimizer)'")
        try check(saliencyRatio > 0 && saliencyRatio <= 1, "saliencyRatio (ρ) must be in (0, 1]")
        try check(splitTimestep > 0, "splitTimestep (t′) must be positive")
        try check(criticSteps >= 0 && criticWarmupSteps >= 0 && criticBatchSize >= 2, "critic steps ≥ 0 and criticBatchSize ≥ 2")
        try check(poolTrajectories >= 1 && poolSteps >= 2, "poolTrajectories ≥ 1 and poolSteps ≥ 2")
        try check(lambdaAdversarial >= 0 && lambdaErase >= 0 && lambdaTrajectory >= 0, "λ must be ≥ 0")
        try check(checkpointEvery >= 1, "checkpointEvery must be at least 1")
        try check(criticWidth >= 1, "criticWidth must be at least 1, not \(criticWidth)")
        // With no seeds there is no gradient to rank, so no mask: every parameter would train.
        try check(saliencySeeds >= 1, "saliencySeeds must be at least 1, not \(saliencySeeds) (saliencyRatio 1 turns the mask off)")
    }
}

/// SCORE: erasure as adversarial independence (docs/METHOD.md). Per step: n_D critic steps on
/// detached x̂₀ (target prompts through the model being trained vs anchor prompts through θ₀),
/// then one masked model step on
///   λ_adv·L_adv(critic on target x̂₀, t ≤ t′) + λ_er·L_erase(t ≤ t′) + λ_tr·L_traj,
/// with L_traj keeping θ₀'s predictions on retained and empty prompts at any t and on target
/// prompts at t > t′. Inputs zₜ come from pools of sampling trajectories: anchor and retain
/// pools from θ₀, the target pool from the current model (refreshed every N steps).
public struct SCORE: ErasureMethod {
    public var config: SCOREConfig

    public init(config: SCOREConfig = SCOREConfig()) { self.config = config }

    public var name: String { "score" }


    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try request.validate()
        try config.validate()
        return try TrainingRun.train(config: config, request: request, context: context) {
            try SCORERun(config: config, request: request, pipeline: pipeline, log: context.log)
        }
    }
}

extension SCOREConfig: TrainingConfig {
    static let resumableKeys: Set<String> = ["steps", "checkpointEvery"]
}

/// The state of one SCORE run, trained by `TrainingRun`.
final class SCORERun: FineTuning {
    let config: SCOREConfig
    let request: ErasureRequest
    let pipeline: StableDiffusionPipeline
    let frozen: UNet2DConditionModel
    let table: CaptionTable
    let alphas: [Double]
    let emptyIndex = 0
    /// Per concept: caption indices of its target prompts and of its anchors (target trajectory k
    /// is steered towards anchor k mod count).
    let targetIndices: [[Int]]
    let anchorIndices: [[Int]]
    let anchorPools: [TrajectoryPool]
    /// x̂₀ of θ₀ on the anchor prompt for every late entry of the anchor pool (fixed: θ₀ is frozen).
    let anchorEstimates: [(estimates: Tensor, timesteps: [Int])]
    let retainPool: TrajectoryPool
    var targetPools: [TrajectoryPool]
    let critics: [CriticTrainer]
    let trainable: [(name: String, tensor: Tensor)]
    private(set) var masks: [String: Tensor] = [:]
    private(set) var optimizer: any Optimizer = SGD([], learningRate: 0)
    var generator: RandomGenerator

    typealias Config = SCOREConfig
    static let method = "score"
    var model: Module { pipeline.unet }

    init(config: SCOREConfig, request: ErasureRequest, pipeline: StableDiffusionPipeline, log: (String) -> Void) throws {
        self.config = config
        self.request = request
        self.pipeline = pipeline
        pipeline.unet.eval()
        let frozen = try pipeline.unet.frozenCopy()
        self.frozen = frozen
        alphas = pipeline.scheduler.alphasCumprod
        guard config.splitTimestep < alphas.count else {
            throw ErasureError.invalidConfig("splitTimestep (t′) \(config.splitTimestep) must be below the model's \(alphas.count) training timesteps")
        }

        // Every text the run uses, encoded once.
        var captions = CaptionList()
        targetIndices = request.concepts.map { $0.targetPrompts.map { captions.index($0) } }
        anchorIndices = request.concepts.map { $0.anchors.map { captions.index($0) } }
        let retainIndices = request.retainPrompts.map { captions.index($0) } + [captions.empty]
        let table = CaptionTable(captions: captions.captions, encoder: pipeline.textEncoder)
        self.table = table

        // Pools from θ₀ (the pipeline's UNet is still θ₀ here, also when resuming: the
        // checkpoint is loaded afterwards), each from its own noise streams.
        let n = config.poolTrajectories
        func cycle(_ indices: [Int], _ count: Int) -> [Int] { (0..<count).map { indices[$0 % indices.count] } }
        let started = Date()
        var anchorPools: [TrajectoryPool] = [], targetPools: [TrajectoryPool] = []
        for (c, concept) in request.concepts.enumerated() {
            anchorPools.append(try TrajectoryPool.sample(
                pipeline: pipeline, table: table, promptIndices: cycle(anchorIndices[c], n), unconditionalIndex: 0,
                steps: config.poolSteps, guidance: config.poolGuidance, seed: config.seed &+ 101 &+ UInt64(c)))
            targetPools.append(try TrajectoryPool.sample(
                pipeline: pipeline, table: table, promptIndices: cycle(targetIndices[c], n), unconditionalIndex: 0,
                steps: config.poolSteps, guidance: config.poolGuidance, seed: config.seed &+ 201 &+ UInt64(c)))
            log("sampled trajectory pools for '\(concept.name)': \(n) anchor + \(n) target trajectories × \(config.poolSteps) steps")
        }
        retainPool = try TrajectoryPool.sample(
            pipeline: pipeline, table: table, promptIndices: cycle(retainIndices, max(2 * n, retainIndices.count)),
            unconditionalIndex: 0, steps: config.poolSteps, guidance: config.poolGuidance, seed: config.seed &+ 301)
        log(String(format: "sampled the retain pool (%d prompts incl. \"\") in %.0f s", retainIndices.count, Date().timeIntervalSince(started)))
        self.anchorPools = anchorPools
        self.targetPools = targetPools
        let split = config.splitTimestep
        anchorEstimates = anchorPools.enumerated().map { c, pool in
            let late = pool.indices { $0 <= split }
            let (z, t, p) = pool.batch(late)
            let states = table.batch(p)
            let eps = noGrad { pipeline.predictNoise(latents: z, timesteps: t, states: states.states, mask: states.mask, model: frozen) }
            return (cleanEstimate(latents: z, noise: eps, timesteps: t, alphasCumprod: pipeline.scheduler.alphasCumprod), t)
        }

        let master = RandomGenerator(seed: config.seed)
        generator = master.fork(1)
        var criticGenerator = master.fork(2)
        critics = request.concepts.map { _ in
            CriticTrainer(channels: pipeline.latentChannels, width: config.criticWidth, learningRate: config.criticLearningRate,
                          betas: (config.criticBeta1, config.criticBeta2), generator: &criticGenerator)
        }

        trainable = config.trainable.select(in: pipeline.unet)
        let masks = config.saliencyRatio < 1 ? try saliencyMasks(generator: master.fork(3)) : [:]
        self.masks = masks
        switch config.optimizer {
        case "adamw": optimizer = Adam.adamW(trainable, learningRate: config.learningRate, masks: masks)
        case "sgd": optimizer = SGD(trainable, learningRate: config.learningRate, masks: masks)
        default: optimizer = Adam(trainable, learningRate: config.learningRate, masks: masks)
        }
        if !masks.isEmpty {
            let (kept, total) = Saliency.count(masks)
            log("saliency mask: \(kept) of \(total) trainable entries may change (ρ = \(config.saliencyRatio)\(config.saliencyIntersect ? ", intersected over variants × seeds" : ""))")
        }
    }

    // MARK: Loss terms

    /// The terms of one model step on concept `c` (recorded for autodiff).
    struct Terms { var erase: Tensor; var trajectory: Tensor; var adversarial: Tensor }

    func terms(concept c: Int, late: [Int], early: [Int], retain: [Int], adversarialTerm: Bool = true) -> Terms {
        let pool = targetPools[c]
        let (zL, tL, pL) = pool.batch(late)
        let (zE, tE, pE) = pool.batch(early)
        let (zR, tR, pR) = retainPool.batch(retain)
        let (nL, nE, nR) = (late.count, early.count, retain.count)
        let anchors = anchorIndices[c]
        let anchorIsEmpty = anchors == [emptyIndex]
        let anchorPrompts = late.map { anchors[pool.trajectories[$0] % anchors.count] }

        // θ₀: late items with c, ∅ (and c_anc); early items with c; retain items with theirs.
        let frozenPrompts = pL + Array(repeating: emptyIndex, count: nL) + (anchorIsEmpty ? [] : anchorPrompts) + pE + pR
        let frozenLatents = Tensor.concat([zL, zL] + (anchorIsEmpty ? [] : [zL]) + [zE, zR].filter { $0.shape[0] > 0 }, axis: 0)
        let frozenTimes = tL + tL + (anchorIsEmpty ? [] : tL) + tE + tR
        let frozenStates = table.batch(frozenPrompts)
        let reference = noGrad {
            pipeline.predictNoise(latents: frozenLatents, timesteps: frozenTimes, states: frozenStates.states,
                                  mask: frozenStates.mask, model: frozen)
        }
        let sizes = [nL, nL] + (anchorIsEmpty ? [] : [nL]) + [nE, nR]
        let parts = reference.split(sizes: sizes, axis: 0)
        let (conditional, unconditional) = (parts[0], parts[1])
        let anchor = anchorIsEmpty ? unconditional : parts[2]
        let (frozenEarly, frozenRetain) = (parts[parts.count - 2], parts[parts.count - 1])

        // θ: one pass over [late; early; retain].
        let states = table.batch(pL + pE + pR)
        let latents = Tensor.concat([zL, zE, zR].filter { $0.shape[0] > 0 }, axis: 0)
        let prediction = pipeline.predictNoise(latents: latents, timesteps: tL + tE + tR, states: states.states, mask: states.mask)
        let predicted = prediction.split(sizes: [nL, nE, nR], axis: 0)

        let target = negativeGuidanceTarget(anchor: anchor, conditional: conditional, unconditional: unconditional, eta: config.eta)
        let erase = mseLoss(predicted[0], target)
        var trajectory = Tensor(0)
        if nR > 0 { trajectory = trajectory + mseLoss(predicted[2], frozenRetain) }
        if nE > 0 { trajectory = trajectory + mseLoss(predicted[1], frozenEarly) }
        var adversarial = Tensor(0)
        if adversarialTerm, config.lambdaAdversarial > 0 {
            let estimate = cleanEstimate(latents: zL, noise: predicted[0], timesteps: tL, alphasCumprod: alphas)
            adversarial = adversarialLoss(logits: critics[c].logitsForModel(estimate, timesteps: tL), form: config.adversarialForm)
        }
        return Terms(erase: erase, trajectory: trajectory, adversarial: adversarial)
    }

    /// One critic step for concept `c`: target x̂₀ through the current model vs θ₀'s anchor x̂₀.
    @discardableResult
    func criticStep(concept c: Int) -> (loss: Float, accuracy: Float) {
        let half = config.criticBatchSize / 2
        let late = targetPools[c].indices { $0 <= config.splitTimestep }
        let (z, t, p) = targetPools[c].batch(draw(half, from: late, generator: &generator))
        let states = table.batch(p)
        let estimate = noGrad {
            cleanEstimate(latents: z, noise: pipeline.predictNoise(latents: z, timesteps: t, states: states.states, mask: states.mask),
                          timesteps: t, alphasCumprod: alphas)
        }
        let anchors = anchorEstimates[c]
        let picked = draw(half, from: Array(anchors.timesteps.indices), generator: &generator)
        let anchorBatch = gather(anchors.estimates, picked)
        return critics[c].step(target: estimate, targetTimesteps: t, anchor: anchorBatch, anchorTimesteps: picked.map { anchors.timesteps[$0] })
    }

    // MARK: Saliency

    /// Top-ρ masks of Σ |∂L_erase/∂θ| over target prompt variants × seeds, computed on θ₀.
    func saliencyMasks(generator seedGenerator: RandomGenerator) throws -> [String: Tensor] {
        var perRun: [[String: Tensor]] = []
        var summed: [String: Tensor] = [:]
        var g = seedGenerator
        for c in request.concepts.indices {
            let pool = targetPools[c]
            for variant in targetIndices[c] {
                let candidates = pool.indices { $0 <= config.splitTimestep }.filter { pool.prompts[$0] == variant }
                guard !candidates.isEmpty else { continue }
                for _ in 0..<config.saliencySeeds {
                    let batch = draw(config.batchSize, from: candidates, generator: &g)
                    let erase = terms(concept: c, late: batch, early: [], retain: [], adversarialTerm: false).erase
                    erase.backward()
                    var scores: [String: Tensor] = [:]
                    Saliency.accumulate(trainable, into: &scores)
                    Saliency.accumulate(trainable, into: &summed)
                    pipeline.unet.zeroGrad()
                    if config.saliencyIntersect { perRun.append(Saliency.masks(scores: scores, ratio: config.saliencyRatio)) }
                }
            }
        }
        return config.saliencyIntersect ? Saliency.intersection(perRun) : Saliency.masks(scores: summed, ratio: config.saliencyRatio)
    }

    // MARK: Training steps

    /// Critic warm-up before the first model step.
    func begin(log: (String) -> Void) {
        guard config.lambdaAdversarial > 0 else { return }
        for c in request.concepts.indices {
            var last = (loss: Float(0), accuracy: Float(0))
            for _ in 0..<config.criticWarmupSteps { last = criticStep(concept: c) }
            log(String(format: "critic warm-up for '%@': %d steps, loss %.3f, accuracy %.2f",
                       request.concepts[c].name, config.criticWarmupSteps, last.loss, last.accuracy))
        }
    }

    /// Step `step` on its concept (round robin): n_D critic steps, then the model's terms on
    /// batches drawn from the pools.
    func losses(step: Int) throws -> StepLosses {
        let c = step % request.concepts.count
        let adversarial = config.lambdaAdversarial > 0
        var critic = (loss: Float.nan, accuracy: Float.nan)
        if adversarial {
            for _ in 0..<config.criticSteps { critic = criticStep(concept: c) }
        }
        let pool = targetPools[c]
        let split = config.splitTimestep
        let late = draw(config.batchSize, from: pool.indices { $0 <= split }, generator: &generator)
        let earlyCandidates = pool.indices { $0 > split }
        let early = earlyCandidates.isEmpty ? [] : draw(config.earlyBatchSize, from: earlyCandidates, generator: &generator)
        let retain = config.retainBatchSize > 0 && config.lambdaTrajectory > 0
            ? draw(config.retainBatchSize, from: Array(0..<retainPool.count), generator: &generator) : []
        let t = terms(concept: c, late: late, early: early, retain: retain)
        let total = t.erase * config.lambdaErase + t.trajectory * config.lambdaTrajectory + t.adversarial * config.lambdaAdversarial
        let criticLoss = [("critic", critic.loss)]
        return StepLosses(total: total,
                          checked: [("erase", t.erase.item), ("trajectory", t.trajectory.item), ("adversarial", t.adversarial.item)]
                              + (adversarial ? criticLoss : []) + [("total", total.item)],
                          recorded: (adversarial ? [] : criticLoss) + [("critic_accuracy", critic.accuracy)])
    }

    func beforeUpdate() {
        if config.maxGradNorm > 0 { clipGradNorm(trainable.map(\.tensor), maxNorm: config.maxGradNorm) }
    }

    /// Every `poolRefreshEvery` steps the target pool of the step's concept is sampled again.
    func afterUpdate(done: Int) throws {
        if config.poolRefreshEvery > 0, done % config.poolRefreshEvery == 0, done < config.steps {
            let c = (done - 1) % request.concepts.count
            targetPools[c] = try refreshedTargetPool(concept: c, done: done)
        }
    }

    func progress(_ losses: [String: [Float]]) -> [(String, Float)] {
        let accuracy = (losses["critic_accuracy"] ?? []).suffix(20).filter { $0.isFinite }
        return [("erase", losses["erase"]?.last ?? .nan), ("traj", losses["trajectory"]?.last ?? .nan),
                ("adv", losses["adversarial"]?.last ?? .nan),
                ("critic_acc", accuracy.isEmpty ? .nan : accuracy.reduce(0, +) / Float(accuracy.count))]
    }

    /// The target pool resampled from the current model, from noise streams no earlier pool used.
    func refreshedTargetPool(concept c: Int, done: Int) throws -> TrajectoryPool {
        let n = config.poolTrajectories
        let prompts = (0..<n).map { targetIndices[c][$0 % targetIndices[c].count] }
        return try TrajectoryPool.sample(pipeline: pipeline, table: table, promptIndices: prompts, unconditionalIndex: 0,
                                         steps: config.poolSteps, guidance: config.poolGuidance,
                                         seed: config.seed &+ 201 &+ UInt64(c), firstTrajectory: n * done)
    }

    // MARK: Checkpoints

    /// The critics, their Adam state and the target pools.
    func checkpointTensors() -> [String: Tensor] {
        var extra: [String: Tensor] = [:]
        for (c, trainer) in critics.enumerated() {
            for (name, p) in trainer.critic.namedParameters() { extra["critic\(c).\(name)"] = p }
            for (name, t) in trainer.optimizer.state() { extra["critic\(c).optimizer.\(name)"] = t }
            extra.merge(targetPools[c].archived(prefix: "pool\(c)")) { a, _ in a }
        }
        return extra
    }

    func restore(from checkpoint: ErasureCheckpoint) throws {
        for (c, trainer) in critics.enumerated() {
            let prefix = "critic\(c)."
            try trainer.critic.load(checkpoint.group(prefix).filter { !$0.key.hasPrefix("optimizer.") }, source: checkpoint.url.path)
            try trainer.optimizer.loadState(checkpoint.group(prefix + "optimizer."))
            targetPools[c] = try TrajectoryPool(archive: checkpoint.tensors, prefix: "pool\(c)")
        }
    }
}
