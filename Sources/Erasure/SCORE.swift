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
    /// 1000: guidance multiplies what is left of the concept's prediction gap by w, so the
    /// anchor-matching fit has to close far; at 250 steps it left 37–52% of the gap's RMS.
    public var steps = 1000
    /// Target-prompt samples with t ≤ t′ per step (erase and adversarial terms).
    public var batchSize = 4
    /// Target-prompt samples with t > t′ per step (early trajectory kept as θ₀'s).
    public var earlyBatchSize = 2
    /// Retained-prompt (and empty-prompt) samples per step.
    public var retainBatchSize = 6
    /// 1e-3: with 5e-4 the same 1000 steps left more leakage (0.046 nats against 0.013 on one
    /// of two seeds, at η 0).
    public var learningRate: Float = 1e-3
    /// adam, adamw or sgd.
    public var optimizer = "adam"
    /// constant, or cosine: annealed from `learningRate` to 0 over `steps` (PyTorch's
    /// CosineAnnealingLR), so the last updates move the model less than the first.
    public var learningRateSchedule = "constant"
    /// Global gradient-norm clip of the model's update (0: off).
    public var maxGradNorm: Float = 1
    /// The cross-attention keys and values: the weights that read the text, so the edit follows
    /// the prompt. The whole masked UNet erased sneaker too, but sent its prompt to ankle boots
    /// and bags, which every leakage detector told from the anchor's images.
    public var trainable: TrainableSet = .crossAttentionKeysValues

    // Loss
    /// Which game the critic and the adversarial term play (docs/METHOD.md, SCORE §1).
    public var objective: SCOREObjective = .negativeGuidance
    /// What the critic's class 0 is drawn from under the independence objective: the request's
    /// anchors ("" by default, what the leakage estimate compares with) or the retained prompts
    /// (a mixture without the concept).
    public var gameReference: GameReference = .anchors
    /// What the independence game's critic sees: one x̂₀ at a time (`marginal`), or the model's
    /// x̂₀ beside θ₀'s on the reference prompt from the same initial noise at the same step
    /// (`shared-noise`: a trajectory that collapses onto one class is told apart pair by pair).
    public var gamePairing: GamePairing = .marginal
    /// The guidance of the critic's x̂₀ under the independence objective: the user's.
    public var criticGuidance = StableDiffusionPipeline.defaultGuidance
    /// The independence objective plays (and erases) at gameMinTimestep ≤ t ≤ t′ only: below it
    /// x̂₀ is mostly zₜ itself, which the model cannot move (docs/METHOD.md gives the measurement).
    public var gameMinTimestep = 400
    /// 0: the critic's term measurably works against the anchor-matching fit (at λ_adv 0.1 the
    /// sneaker estimate rose from 0.010 and 0.001 nats to 0.30 and 0.043 on two seeds). The
    /// critic's question is asked after training instead, by the leakage estimate's detectors.
    public var lambdaAdversarial: Float = 0
    /// λ_fm of the feature-matching term: the mean of the critic's features over the model's
    /// late batch against their mean over θ₀'s reference estimates at the same timesteps
    /// (`featureMatchingLoss`). A per-sample critic is fooled by one mode of the reference (the
    /// game alone drew bags for every sneaker prompt); a batch's mean is not.
    public var lambdaFeatureMatching: Float = 0
    public var lambdaErase: Float = 1
    /// 3, not 1: with 1 the retained classes lost 12% of their accuracy on the testbed.
    public var lambdaTrajectory: Float = 3
    /// η of the erase target ε₀(c_anc) − η(ε₀(c) − ε₀(∅)). 0 is independence from the anchor
    /// itself, but leaves the concept at or above its unconditional rate; 0.05 takes it below
    /// at the same leakage; 0.1 overshoots into a mix the detectors tell apart.
    public var eta: Float = 0.05
    /// t′: the erase and adversarial terms act at t ≤ t′; the target keeps θ₀'s predictions above.
    /// 980: the testbed's model (cosine schedule) decides the class above t = 900 (with t′ = 900
    /// the erased model still drew sneakers 91% of the time, with 940 3%); an edit of the text
    /// path alone has to act from the first sampled step (docs/METHOD.md, "Why these defaults").
    public var splitTimestep = 980
    public var adversarialForm: AdversarialForm = .confusion

    // Critic
    public var criticWidth = 32
    /// Spectral normalisation of the training critic's layers. Without it the critic is a far
    /// stronger detector (docs/RESULTS.md, the leakage estimate's plain critics).
    public var criticSpectralNorm = true
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

    public var checkpointEvery = 100
    public var seed: UInt64 = 0

    public init() {}

    /// The independence game (docs/METHOD.md, SCORE §1) with the settings the sneaker runs
    /// chose: the critic on the guided x̂₀ at 400 ≤ t ≤ t′ against θ₀ on the anchors (what the
    /// leakage estimate compares with),
    /// the non-saturating loss at λ_adv 1, a critic at lr 2e-4, and the erase term at λ_er 1,
    /// η 1; every other key as `self`.
    public var independenceObjective: SCOREConfig {
        var c = self
        c.objective = .independence
        c.gameReference = .anchors
        c.criticGuidance = StableDiffusionPipeline.defaultGuidance
        c.gameMinTimestep = 400
        c.lambdaAdversarial = 1
        c.adversarialForm = .nonSaturating
        c.criticLearningRate = 2e-4
        c.criticSteps = 2
        c.criticWidth = 32
        c.lambdaErase = 1
        c.eta = 1
        return c
    }

    /// The paired game alone (docs/METHOD.md, SCORE §1): the independence objective's critic on
    /// pairs that share their noise (`gamePairing = shared-noise`), the confusion loss (its
    /// minimum is a critic that cannot order the pair) and no erase term (λ_er 0); every other
    /// key as `independenceObjective`.
    public var pairedGameObjective: SCOREConfig {
        var c = independenceObjective
        c.gamePairing = .sharedNoise
        c.adversarialForm = .confusion
        c.lambdaErase = 0
        return c
    }

    /// The first design, the default until the ablation (docs/METHOD.md, SCORE §1, and
    /// docs/RESULTS.md, "SCORE's ablation"): the whole UNet under the saliency mask, 250 steps at
    /// lr 5e-4, the negative-guidance erase term at η 1 from t′ 940, and the critic on the
    /// unguided x̂₀ at every t ≤ t′ against the anchors with the confusion loss at λ_adv 0.1.
    /// It erased sneaker as well (Acc_e 0–3%) but sent the prompt to ankle boots and bags, which
    /// every leakage detector tells from the anchor's images (0.42–0.44 nats). Every other key as
    /// `self`.
    public var negativeGuidanceObjective: SCOREConfig {
        var c = self
        c.objective = .negativeGuidance
        c.trainable = .full
        c.steps = 250
        c.learningRate = 5e-4
        c.splitTimestep = 940
        c.checkpointEvery = 50
        // What the independence keys read as for this game (they do not act under it), pinned so
        // that the preset is the same whatever their defaults.
        c.gameReference = .anchors
        c.gamePairing = .marginal
        c.criticGuidance = 1
        c.gameMinTimestep = 0
        c.lambdaAdversarial = 0.1
        c.lambdaErase = 1
        c.eta = 1
        c.adversarialForm = .confusion
        c.criticLearningRate = 1e-4
        c.criticSteps = 2
        c.criticWidth = 32
        return c
    }

    /// The defaults with a JSON file's keys over them; an unknown key or a value of the wrong
    /// type is an error naming the file and the key.
    public static func load(_ url: URL, over base: SCOREConfig = SCOREConfig()) throws -> SCOREConfig {
        do { return try JSONOverlay.decode(url, over: base) } catch let error as JSONOverlayError {
            throw ErasureError.invalidConfig(error.description)
        }
    }

    public func validate() throws {
        let check = ConfigCheck(method: "SCORE")
        try check.atLeast(0, ["earlyBatchSize": earlyBatchSize, "retainBatchSize": retainBatchSize, "criticSteps": criticSteps,
                              "criticWarmupSteps": criticWarmupSteps])
        try check.atLeast(1, ["steps": steps, "batchSize": batchSize, "splitTimestep (t′)": splitTimestep, "criticWidth": criticWidth,
                              "poolTrajectories": poolTrajectories, "checkpointEvery": checkpointEvery])
        try check.atLeast(2, ["criticBatchSize": criticBatchSize, "poolSteps": poolSteps])
        try check.positive(["learningRate": learningRate])
        try check.require(["adam", "adamw", "sgd"].contains(optimizer), "optimizer must be adam, adamw or sgd, not '\(optimizer)'")
        try check.require(["constant", "cosine"].contains(learningRateSchedule),
                          "learningRateSchedule must be constant or cosine, not '\(learningRateSchedule)'")
        try check.fraction("saliencyRatio (ρ)", saliencyRatio)
        try check.nonNegative(["lambdaAdversarial": lambdaAdversarial, "lambdaErase": lambdaErase, "lambdaTrajectory": lambdaTrajectory,
                               "lambdaFeatureMatching": lambdaFeatureMatching])
        try check.require(lambdaFeatureMatching == 0 || batchSize >= 2, "feature matching (lambdaFeatureMatching > 0) needs batchSize ≥ 2, not \(batchSize)")
        try check.require(criticGuidance >= 1, "criticGuidance must be at least 1, not \(criticGuidance)")
        try check.require(objective == .negativeGuidance || (gameMinTimestep >= 0 && gameMinTimestep < splitTimestep),
                          "gameMinTimestep (\(gameMinTimestep)) must be in [0, splitTimestep (\(splitTimestep)))")
        try check.require(gamePairing == .marginal || objective == .independence,
                          "gamePairing shared-noise needs the independence objective, not \(objective.rawValue)")
        try check.require(gamePairing == .marginal || lambdaFeatureMatching == 0,
                          "feature matching (lambdaFeatureMatching > 0) reads a per-sample critic: use gamePairing marginal")
        // With no seeds there is no gradient to rank, so no mask: every parameter would train.
        try check.require(saliencySeeds >= 1, "saliencySeeds must be at least 1, not \(saliencySeeds) (saliencyRatio 1 turns the mask off)")
    }
}

/// SCORE's tuning space: the learning rate, t′ (the testbed decides the class above t = 900),
/// the erase target's η (1: negative guidance; 0: the anchor's prediction) and the trainable set
/// (the whole UNet or the cross-attention keys and values only; docs/METHOD.md, "Why these
/// defaults"). The defaults come first in each list.
extension SCOREConfig: TunableConfig {
    public static let searchSpace = SearchSpace([
        "learningRate": [1e-3, 5e-4, 2e-4], "splitTimestep": [980, 940], "eta": [0.05, 0.0, 0.1, 1.0],
        "trainable": ["cross-attention-kv", "full"],
    ])
}

/// The game SCORE's critic and adversarial term play (docs/METHOD.md, SCORE §1).
public enum SCOREObjective: String, Codable, Sendable, CaseIterable {
    /// The critic judges the x̂₀ users sample through, from the *guided* ε̂ at `criticGuidance`,
    /// at gameMinTimestep ≤ t ≤ t′, against θ₀'s guided x̂₀ on `gameReference`'s prompts.
    case independence
    /// The first design: the critic judges the unguided x̂₀ at any t ≤ t′ against θ₀'s x̂₀ on
    /// the anchors; erasure comes from the negative-guidance erase term.
    case negativeGuidance = "negative-guidance"
}

/// How the independence game's critic compares the model's x̂₀ with the reference's.
public enum GamePairing: String, Codable, Sendable, CaseIterable {
    /// One x̂₀ at a time: target x̂₀ (class 1) against reference x̂₀ (class 0) from separate
    /// trajectories. Its optimum matches the two mixtures, which one mode of the reference can
    /// fool sample by sample.
    case marginal
    /// Pairs (target x̂₀, reference x̂₀) from trajectories that start at the same noise and are
    /// judged at the same step; the critic says which member is the target's
    /// (`Critic.pairLogits`). It is at chance only when the pair's law is exchangeable, which
    /// makes the two marginals equal, and a collapsed model is told apart on every pair whose
    /// reference member left the collapsed mode.
    case sharedNoise = "shared-noise"
}

/// The prompts whose θ₀ outputs the independence game's critic takes as class 0.
public enum GameReference: String, Codable, Sendable, CaseIterable {
    /// The retained prompts: a mixture of images without the concept.
    case retained
    /// The request's anchors ("" on the testbed: the unconditional mixture, which still holds
    /// the concept at its own rate).
    case anchors
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

    /// One implementation over both families (`ErasableModel`): on FLUX the predictions are
    /// velocities, the erase target the same negative-guidance combination of them, the
    /// trajectory term an MSE on velocities, the critic reads x̂₀ = x_σ − σ·v̂ unpacked to images,
    /// and the timestep keys (t′, the game window) are on the σ·1000 scale the flow's schedule
    /// gives the model (the default t′ = 940: σ ≤ 0.94).
    public func erase<Model: ErasableModel>(_ request: ErasureRequest, model: Model, context: ErasureContext) throws -> ErasureOutcome {
        try request.validate()
        try config.validate()
        return try TrainingRun.train(config: config, request: request, context: context) {
            try SCORERun(config: config, request: request, pipeline: model, log: context.log)
        }
    }

    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try erase(request, model: pipeline, context: context)
    }
}

extension SCOREConfig: TrainingConfig {
    static let resumableKeys: Set<String> = ["steps", "checkpointEvery"]
}

/// The state of one SCORE run, trained by `TrainingRun`.
final class SCORERun<Family: ErasableModel>: FineTuning {
    let config: SCOREConfig
    let request: ErasureRequest
    let pipeline: Family
    let frozen: Family.Denoiser
    let table: ConditioningTable
    let emptyIndex = 0
    /// Per concept: caption indices of its target prompts and of its anchors (target trajectory k
    /// is steered towards anchor k mod count).
    let targetIndices: [[Int]]
    let anchorIndices: [[Int]]
    /// Per concept: the prompts of the critic's class 0 (the anchors, or the retained prompts).
    let referenceIndices: [[Int]]
    /// θ₀'s trajectories on each concept's reference prompts; under the paired game from the
    /// target pool's noise streams (entry i pairs with the target pool's entry i), resampled with
    /// it.
    var referencePools: [TrajectoryPool]
    /// θ₀'s x̂₀ (guided at `criticGuidance` under the independence objective) for every game-window
    /// entry of the reference pool: the critic's class 0.
    var referenceEstimates: [ReferenceEstimates]
    let retainPool: TrajectoryPool
    var targetPools: [TrajectoryPool]
    let critics: [CriticTrainer]
    let trainable: [(name: String, tensor: Tensor)]
    private(set) var masks: [String: Tensor] = [:]
    private(set) var optimizer: any Optimizer = SGD([], learningRate: 0)
    var generator: RandomGenerator

    typealias Config = SCOREConfig
    static var method: String { "score" }
    var model: Module { pipeline.denoiser }

    var independence: Bool { config.objective == .independence }
    /// Whether the critic judges (target, reference) pairs that share their noise.
    var paired: Bool { independence && config.gamePairing == .sharedNoise }
    /// Whether a critic is trained: some term reads it.
    var playsGame: Bool { config.lambdaAdversarial > 0 || config.lambdaFeatureMatching > 0 }
    /// Reference estimates drawn per late sample for the feature-matching term, at its timestep.
    static var referencePerSample: Int { 4 }
    /// The timesteps the erase and adversarial terms (and the critic) act at.
    var gameWindow: ClosedRange<Float> { Float(independence ? config.gameMinTimestep : 0)...Float(config.splitTimestep) }

    init(config: SCOREConfig, request: ErasureRequest, pipeline: Family, log: (String) -> Void) throws {
        self.config = config
        self.request = request
        self.pipeline = pipeline
        pipeline.denoiser.eval()
        let frozen = try pipeline.frozenDenoiser()
        self.frozen = frozen
        guard config.splitTimestep < pipeline.trainingTimestepCount else {
            throw ErasureError.invalidConfig("splitTimestep (t′) \(config.splitTimestep) must be below the model's \(pipeline.trainingTimestepCount) training timesteps")
        }

        // Every text the run uses, encoded once.
        var captions = CaptionList()
        targetIndices = request.concepts.map { $0.targetPrompts.map { captions.index($0) } }
        anchorIndices = request.concepts.map { $0.anchors.map { captions.index($0) } }
        let retainPrompts = request.retainPrompts.map { captions.index($0) }
        let retainIndices = retainPrompts + [captions.empty]
        let useRetained = config.objective == .independence && config.gameReference == .retained && !retainPrompts.isEmpty
        referenceIndices = useRetained ? request.concepts.map { _ in retainPrompts } : anchorIndices
        let table = ConditioningTable(captions: captions.captions, model: pipeline)
        self.table = table

        // Pools from θ₀ (the denoiser is still θ₀ here, also when resuming: the
        // checkpoint is loaded afterwards), each from its own noise streams. The first target
        // pool holds every target prompt at least once (stratified: prompt k mod count).
        let n = config.poolTrajectories
        let started = Date()
        let paired = config.objective == .independence && config.gamePairing == .sharedNoise
        var referencePools: [TrajectoryPool] = [], targetPools: [TrajectoryPool] = []
        for (c, concept) in request.concepts.enumerated() {
            targetPools.append(try TrajectoryPool.sample(
                pipeline: pipeline, table: table, promptIndices: stratified(targetIndices[c], max(n, targetIndices[c].count)),
                unconditionalIndex: 0, steps: config.poolSteps, guidance: config.poolGuidance, seed: config.seed &+ 201 &+ UInt64(c)))
            referencePools.append(try Self.referencePool(
                pipeline: pipeline, model: frozen, table: table, config: config, prompts: referenceIndices[c], concept: c,
                pairedWith: paired ? (targetPools[c].trajectoryCount, 0) : nil))
            log("sampled trajectory pools for '\(concept.name)': \(referencePools[c].trajectoryCount) reference + \(targetPools[c].trajectoryCount) target trajectories (\(targetIndices[c].count) target prompts) × \(config.poolSteps) steps")
        }
        retainPool = try TrajectoryPool.sample(
            pipeline: pipeline, table: table, promptIndices: stratified(retainIndices, max(2 * n, retainIndices.count)),
            unconditionalIndex: 0, steps: config.poolSteps, guidance: config.poolGuidance, seed: config.seed &+ 301)
        log(String(format: "sampled the retain pool (%d prompts incl. \"\") in %.0f s", retainIndices.count, Date().timeIntervalSince(started)))
        self.referencePools = referencePools
        self.targetPools = targetPools
        let window = Float(config.objective == .independence ? config.gameMinTimestep : 0)...Float(config.splitTimestep)
        guard !targetPools[0].indices(where: { window.contains($0) }).isEmpty else {
            throw ErasureError.invalidConfig("no step of the \(config.poolSteps)-step pools lies in the game window [\(window.lowerBound), \(window.upperBound)] (gameMinTimestep, splitTimestep)")
        }
        referenceEstimates = referencePools.map {
            ReferenceEstimates(pool: $0, window: window, config: config, pipeline: pipeline, model: frozen, table: table)
        }
        log(Self.estimateShares(pool: referencePools[0], pipeline: pipeline, model: frozen, table: table))

        let master = RandomGenerator(seed: config.seed)
        generator = master.fork(1)
        var criticGenerator = master.fork(2)
        critics = request.concepts.map { _ in
            // The paired critic reads the two members of a pair stacked on the channel axis.
            CriticTrainer(channels: (paired ? 2 : 1) * pipeline.imageChannels, width: config.criticWidth, learningRate: config.criticLearningRate,
                          betas: (config.criticBeta1, config.criticBeta2), spectralNorm: config.criticSpectralNorm,
                          generator: &criticGenerator)
        }

        trainable = pipeline.selectTrainable(config.trainable)
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

    /// How much of x̂₀ the model's prediction decides, per timestep of a pool: ‖x̂₀ − x̂₀|pred=0‖ /
    /// ‖x̂₀|pred=0‖ over its entries under θ₀ (unguided, on the entry's own prompt), i.e.
    /// ‖(√(1−ᾱₜ)/√ᾱₜ)·ε̂‖ / ‖zₜ/√ᾱₜ‖ for the UNet and ‖σ·v̂‖ / ‖x_σ‖ for a flow. Where it is small,
    /// x̂₀ is zₜ rescaled, and no change of the model moves what a critic sees there.
    static func estimateShares(pool: TrajectoryPool, pipeline: Family, model: Family.Denoiser, table: ConditioningTable) -> String {
        func norm(_ x: Tensor) -> Double { Double(x.scalars.map { $0 * $0 }.reduce(0, +)).squareRoot() }
        let steps = Array(Set(pool.timesteps)).sorted(by: >)
        var parts: [String] = []
        for t in steps {
            let (z, ts, p) = pool.batch(pool.indices { $0 == t }.filter { pool.trajectories[$0] < 4 })
            let (estimate, statePart) = noGrad {
                let prediction = pipeline.predict(z, timesteps: ts, conditioning: table.batch(p), model: model)
                return (pipeline.cleanEstimate(z, prediction: prediction, timesteps: ts),
                        pipeline.cleanEstimate(z, prediction: Tensor.zeros(prediction.shape), timesteps: ts))
            }
            parts.append(String(format: "%.0f:%.2f", t, norm(estimate - statePart) / norm(statePart)))
        }
        return "x̂₀'s model share ‖x̂₀ − x̂₀(prediction 0)‖/‖x̂₀(prediction 0)‖ by t: " + parts.joined(separator: " ")
    }

    /// θ₀'s trajectories on `prompts` (cycled). Marginal game: max(n, |prompts|) of them from
    /// their own noise streams. Paired game (`pairedWith`: the target pool's trajectory count and
    /// first stream): exactly the target pool's streams, so trajectory k here and there start
    /// from the same noise (DDIM draws none after it) and entry i pairs with entry i.
    static func referencePool(pipeline: Family, model: Family.Denoiser, table: ConditioningTable,
                              config: SCOREConfig, prompts: [Int], concept c: Int,
                              pairedWith: (trajectories: Int, first: Int)?) throws -> TrajectoryPool {
        let count = pairedWith?.trajectories ?? max(config.poolTrajectories, prompts.count)
        return try TrajectoryPool.sample(
            pipeline: pipeline, table: table, promptIndices: stratified(prompts, count, offset: pairedWith?.first ?? 0),
            unconditionalIndex: 0, steps: config.poolSteps, guidance: config.poolGuidance,
            seed: config.seed &+ (pairedWith == nil ? 101 : 201) &+ UInt64(c), firstTrajectory: pairedWith?.first ?? 0,
            model: model)
    }

    // MARK: Loss terms

    /// One model step's batch: its inputs, θ₀'s references, and θ's prediction on
    /// [late; early; retain] (recorded for autodiff).
    struct Batch {
        var zLate: Tensor, tLate: [Float]
        var counts: (late: Int, early: Int, retain: Int)
        var prediction: Tensor
        var eraseTarget: Tensor
        /// ε_θ₀(zₜ, ∅) on the late entries: the unconditional half of the guided ε̂.
        var unconditional: Tensor
        var frozenEarly: Tensor, frozenRetain: Tensor
        /// θ₀'s reference x̂₀ at the late entries' timesteps (the feature-matching term's).
        var reference: Tensor?, referenceTimesteps: [Float]
        /// Under the paired game: θ₀'s x̂₀ paired with each late entry (same noise, same step).
        var paired: Tensor?
    }

    /// θ₀'s references and θ's prediction for the entries of concept `c`'s pools; `prompts`
    /// replaces the late entries' prompts (the saliency's variants).
    func batch(concept c: Int, late: [Int], early: [Int], retain: [Int], reference picked: [Int] = [], prompts: [Int]? = nil) -> Batch {
        let pool = targetPools[c]
        var (zL, tL, pL) = pool.batch(late)
        if let prompts { pL = prompts }
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
        let reference = noGrad {
            pipeline.predict(frozenLatents, timesteps: frozenTimes, conditioning: table.batch(frozenPrompts), model: frozen)
        }
        let sizes = [nL, nL] + (anchorIsEmpty ? [] : [nL]) + [nE, nR]
        let parts = reference.split(sizes: sizes, axis: 0)
        let (conditional, unconditional) = (parts[0], parts[1])
        let anchor = anchorIsEmpty ? unconditional : parts[2]

        // θ: one pass over [late; early; retain].
        let latents = Tensor.concat([zL, zE, zR].filter { $0.shape[0] > 0 }, axis: 0)
        let prediction = pipeline.predict(latents, timesteps: tL + tE + tR, conditioning: table.batch(pL + pE + pR), model: nil)
        return Batch(zLate: zL, tLate: tL, counts: (nL, nE, nR), prediction: prediction,
                     eraseTarget: negativeGuidanceTarget(anchor: anchor, conditional: conditional, unconditional: unconditional, eta: config.eta),
                     unconditional: unconditional, frozenEarly: parts[parts.count - 2], frozenRetain: parts[parts.count - 1],
                     reference: picked.isEmpty ? nil : gather(referenceEstimates[c].estimates, picked),
                     referenceTimesteps: picked.map { referenceEstimates[c].timesteps[$0] },
                     paired: paired ? referenceEstimates[c].paired(with: late) : nil)
    }

    /// The three terms on a prediction of `batch`'s layout (θ's, or a leaf standing for it).
    struct Terms { var erase: Tensor; var trajectory: Tensor; var adversarial: Tensor; var featureMatching: Tensor }

    /// The terms on `prediction`; of the two that read the critic, only those in `criticTerms`
    /// (each costs a critic pass).
    func terms(_ b: Batch, prediction: Tensor, concept c: Int,
               criticTerms: Set<String> = ["adversarial", "feature_matching"]) -> Terms {
        let predicted = prediction.split(sizes: [b.counts.late, b.counts.early, b.counts.retain], axis: 0)
        let erase = mseLoss(predicted[0], b.eraseTarget)
        var trajectory = Tensor(0)
        if b.counts.retain > 0 { trajectory = trajectory + mseLoss(predicted[2], b.frozenRetain) }
        if b.counts.early > 0 { trajectory = trajectory + mseLoss(predicted[1], b.frozenEarly) }
        var adversarial = Tensor(0), featureMatching = Tensor(0)
        if criticTerms.contains("adversarial"), config.lambdaAdversarial > 0 {
            let estimate = modelEstimate(b, late: predicted[0])
            let logits = b.paired.map { critics[c].pairLogitsForModel(estimate, reference: $0, timesteps: criticTimesteps(b.tLate)) }
                ?? critics[c].logitsForModel(estimate, timesteps: criticTimesteps(b.tLate))
            adversarial = adversarialLoss(logits: logits, form: config.adversarialForm)
        }
        if criticTerms.contains("feature_matching"), config.lambdaFeatureMatching > 0, let reference = b.reference {
            let features = critics[c].featuresForModel(modelEstimate(b, late: predicted[0]), timesteps: criticTimesteps(b.tLate))
            let referenceFeatures = noGrad { critics[c].featuresForModel(reference, timesteps: criticTimesteps(b.referenceTimesteps)) }
            featureMatching = featureMatchingLoss(model: features, reference: referenceFeatures)
        }
        return Terms(erase: erase, trajectory: trajectory, adversarial: adversarial, featureMatching: featureMatching)
    }

    /// The x̂₀ the critic judges for the model's late prediction ε_θ(zₜ, c): under the
    /// independence objective from the guided ε̂ = ε(∅) + w(ε_θ(c) − ε(∅)), whose unconditional
    /// half is θ₀'s (the trajectory term keeps θ's ∅ prediction there; the critic's own samples
    /// use θ's).
    func modelEstimate(_ b: Batch, late: Tensor) -> Tensor {
        let noise = independence ? guidedNoise(conditional: late, unconditional: b.unconditional, guidance: config.criticGuidance) : late
        return pipeline.imageLayout(pipeline.cleanEstimate(b.zLate, prediction: noise, timesteps: b.tLate))
    }

    /// The critic's time input: the training timestep rounded (exact for the UNet's integers;
    /// σ·1000 to the nearest integer for a flow, which only feeds its sinusoidal embedding).
    func criticTimesteps(_ timesteps: [Float]) -> [Int] { timesteps.map { Int($0.rounded()) } }

    /// One critic step for concept `c`: the current model's x̂₀ on target prompts vs θ₀'s on the
    /// reference prompts, both in the game window (under the paired game, each beside its pair:
    /// half a batch of pairs, each seen in both orders).
    @discardableResult
    func criticStep(concept c: Int) -> (loss: Float, accuracy: Float) {
        let half = config.criticBatchSize / 2
        let window = gameWindow
        let late = targetPools[c].indices { window.contains($0) }
        let entries = draw(half, from: late, generator: &generator)
        let (z, t, p) = targetPools[c].batch(entries)
        let estimate = noGrad {
            pipeline.imageLayout(guidedCleanEstimate(pipeline: pipeline, model: nil, table: table, latents: z, timesteps: t, prompts: p,
                                                     unconditional: emptyIndex, guidance: independence ? config.criticGuidance : 1))
        }
        let reference = referenceEstimates[c]
        if paired {
            return critics[c].pairStep(target: estimate, reference: reference.paired(with: entries), timesteps: criticTimesteps(t))
        }
        let picked = draw(half, from: Array(reference.timesteps.indices), generator: &generator)
        return critics[c].step(target: estimate, targetTimesteps: criticTimesteps(t), anchor: gather(reference.estimates, picked),
                               anchorTimesteps: criticTimesteps(picked.map { reference.timesteps[$0] }))
    }

    // MARK: Saliency

    /// Top-ρ masks of Σ |∂L_erase/∂θ| over every target prompt variant × seeds, computed on θ₀
    /// at late entries of the variant's own trajectories (the first pool holds each variant).
    func saliencyMasks(generator seedGenerator: RandomGenerator) throws -> [String: Tensor] {
        var perRun: [[String: Tensor]] = []
        var summed: [String: Tensor] = [:]
        var g = seedGenerator
        let window = gameWindow
        for c in request.concepts.indices {
            let pool = targetPools[c]
            for variant in targetIndices[c] {
                let candidates = pool.indices { window.contains($0) }.filter { pool.prompts[$0] == variant }
                guard !candidates.isEmpty else { continue }
                for _ in 0..<config.saliencySeeds {
                    let late = draw(config.batchSize, from: candidates, generator: &g)
                    let b = batch(concept: c, late: late, early: [], retain: [])
                    terms(b, prediction: b.prediction, concept: c, criticTerms: []).erase.backward()
                    var scores: [String: Tensor] = [:]
                    Saliency.accumulate(trainable, into: &scores)
                    Saliency.accumulate(trainable, into: &summed)
                    pipeline.denoiser.zeroGrad()
                    if config.saliencyIntersect { perRun.append(Saliency.masks(scores: scores, ratio: config.saliencyRatio)) }
                }
            }
        }
        return config.saliencyIntersect ? Saliency.intersection(perRun) : Saliency.masks(scores: summed, ratio: config.saliencyRatio)
    }

    // MARK: Training steps

    /// Critic warm-up before the first model step.
    func begin(log: (String) -> Void) {
        guard playsGame else { return }
        for c in request.concepts.indices {
            var last = (loss: Float(0), accuracy: Float(0))
            for _ in 0..<config.criticWarmupSteps { last = criticStep(concept: c) }
            log(String(format: "critic warm-up for '%@': %d steps, loss %.3f, accuracy %.2f",
                       request.concepts[c].name, config.criticWarmupSteps, last.loss, last.accuracy))
        }
    }

    /// Step `step` on its concept (round robin): n_D critic steps, then the model's terms on
    /// batches drawn from the pools. Each term is evaluated on its own detached copy of θ's
    /// prediction, so its gradient at ε̂ is known apart (and its norm recorded); the model's
    /// graph is then back-propagated once from their weighted sum, the same gradient as the
    /// weighted sum of the terms.
    func losses(step: Int) throws -> StepLosses {
        optimizer.learningRate = learningRate(at: step)
        let c = step % request.concepts.count
        let adversarial = playsGame
        var critic = (loss: Float.nan, accuracy: Float.nan)
        if adversarial {
            for _ in 0..<config.criticSteps { critic = criticStep(concept: c) }
        }
        let entries = drawEntries(concept: c)
        let b = batch(concept: c, late: entries.late, early: entries.early, retain: entries.retain, reference: entries.reference)

        let weighted: [(name: String, weight: Float, pick: (Terms) -> Tensor)] = [
            ("erase", config.lambdaErase, \.erase), ("trajectory", config.lambdaTrajectory, \.trajectory),
            ("adversarial", config.lambdaAdversarial, \.adversarial),
            ("feature_matching", config.lambdaFeatureMatching, \.featureMatching)]
        var values: [(String, Float)] = [], norms: [(String, Float)] = []
        var gradient = Tensor.zeros(b.prediction.shape)
        for term in weighted {
            let leaf = Tensor(storage: b.prediction.detached().storage, shape: b.prediction.shape, requiresGrad: true)
            let value = term.pick(terms(b, prediction: leaf, concept: c, criticTerms: [term.name]))
            values.append((term.name, value.item))
            var norm: Float = 0
            if term.weight > 0 {
                value.backward()
                if let g = leaf.grad {
                    let scaled = g * term.weight
                    norm = Float(Double(scaled.scalars.reduce(0) { $0 + $1 * $1 }).squareRoot())
                    gradient = gradient + scaled
                }
            }
            norms.append(("grad_\(term.name)", norm))
        }
        let totalValue = zip(values, weighted).reduce(Float(0)) { $0 + $1.0.1 * $1.1.weight }
        // d/dθ of Σ(prediction ⊙ gradient) is the weighted terms' gradient through θ's pass.
        let surrogate = (b.prediction * gradient).sum()
        let criticLoss = [("critic", critic.loss)]
        return StepLosses(total: surrogate,
                          checked: values + (adversarial ? criticLoss : []) + [("total", totalValue)],
                          recorded: (adversarial ? [] : criticLoss) + [("critic_accuracy", critic.accuracy)] + norms)
    }

    /// A model step's pool entries, uniformly with replacement: late target entries (in the
    /// game window), early ones (t > t′), retain-pool ones and, for feature matching,
    /// `referencePerSample` reference estimates at each late entry's timestep.
    func drawEntries(concept c: Int) -> (late: [Int], early: [Int], retain: [Int], reference: [Int]) {
        let pool = targetPools[c]
        let split = Float(config.splitTimestep)
        let window = gameWindow
        let late = draw(config.batchSize, from: pool.indices { window.contains($0) }, generator: &generator)
        let earlyCandidates = pool.indices { $0 > split }
        let early = earlyCandidates.isEmpty ? [] : draw(config.earlyBatchSize, from: earlyCandidates, generator: &generator)
        let retain = config.retainBatchSize > 0 && config.lambdaTrajectory > 0
            ? draw(config.retainBatchSize, from: Array(0..<retainPool.count), generator: &generator) : []
        var reference: [Int] = []
        if config.lambdaFeatureMatching > 0 {
            let times = referenceEstimates[c].timesteps
            for t in late.map({ pool.timesteps[$0] }) {
                let matched = times.indices.filter { times[$0] == t }
                reference += draw(Self.referencePerSample, from: matched.isEmpty ? Array(times.indices) : matched, generator: &generator)
            }
        }
        return (late, early, retain, reference)
    }

    /// The model's learning rate at `step` (from 0): a function of the step alone, so a resumed
    /// run continues the schedule where it stopped.
    func learningRate(at step: Int) -> Float {
        config.learningRateSchedule == "cosine"
            ? CosineAnnealingLR(base: config.learningRate, period: config.steps).learningRate(at: step)
            : config.learningRate
    }

    func beforeUpdate() {
        if config.maxGradNorm > 0 { clipGradNorm(trainable.map(\.tensor), maxNorm: config.maxGradNorm) }
    }

    /// Every `poolRefreshEvery` steps the target pool of the step's concept is sampled again.
    func afterUpdate(done: Int) throws {
        if config.poolRefreshEvery > 0, done % config.poolRefreshEvery == 0, done < config.steps {
            let c = (done - 1) % request.concepts.count
            targetPools[c] = try refreshedTargetPool(concept: c, done: done)
            if paired { try resamplePairedReference(concept: c, done: done) }
        }
    }

    /// The paired game's reference pool and estimates for concept `c`'s current target pool:
    /// θ₀ on the reference prompts from the noise streams of the target pool refreshed after
    /// `done` steps.
    func resamplePairedReference(concept c: Int, done: Int) throws {
        let pool = targetPools[c]
        let first = max(config.poolTrajectories, targetIndices[c].count) * done
        referencePools[c] = try Self.referencePool(pipeline: pipeline, model: frozen, table: table, config: config,
                                                   prompts: referenceIndices[c], concept: c,
                                                   pairedWith: (pool.trajectoryCount, first))
        referenceEstimates[c] = ReferenceEstimates(pool: referencePools[c], window: gameWindow, config: config,
                                                   pipeline: pipeline, model: frozen, table: table)
    }

    func progress(_ losses: [String: [Float]]) -> [(String, Float)] {
        let accuracy = (losses["critic_accuracy"] ?? []).suffix(20).filter { $0.isFinite }
        return [("erase", losses["erase"]?.last ?? .nan), ("traj", losses["trajectory"]?.last ?? .nan),
                ("adv", losses["adversarial"]?.last ?? .nan), ("fm", losses["feature_matching"]?.last ?? .nan),
                ("critic_acc", accuracy.isEmpty ? .nan : accuracy.reduce(0, +) / Float(accuracy.count))]
    }

    /// The target pool resampled from the current model, from noise streams no earlier pool
    /// used, its prompts continuing the stratified cycle where the last pool stopped (so over
    /// the refreshes every target prompt comes back).
    func refreshedTargetPool(concept c: Int, done: Int) throws -> TrajectoryPool {
        let n = config.poolTrajectories
        let prompts = targetIndices[c]
        let first = max(n, prompts.count)
        let offset = first + n * (done / max(1, config.poolRefreshEvery) - 1)
        // The paired game's reference pool (`resamplePairedReference`) starts at the same stream.
        return try TrajectoryPool.sample(pipeline: pipeline, table: table, promptIndices: stratified(prompts, n, offset: offset),
                                         unconditionalIndex: 0, steps: config.poolSteps, guidance: config.poolGuidance,
                                         seed: config.seed &+ 201 &+ UInt64(c), firstTrajectory: first * done)
    }

    // MARK: Checkpoints

    /// The critics, their Adam state and the target pools.
    func checkpointTensors() -> [String: Tensor] {
        var extra: [String: Tensor] = [:]
        for (c, trainer) in critics.enumerated() {
            for (name, p) in trainer.critic.namedParameters() { extra["critic\(c).\(name)"] = p }
            for (name, t) in trainer.optimizer.state() { extra["critic\(c).optimizer.\(name)"] = t }
            extra.merge(targetPools[c].archived(prefix: "pool\(c)")) { a, _ in a }
            if paired { extra.merge(referencePools[c].archived(prefix: "reference\(c)")) { a, _ in a } }
        }
        return extra
    }

    func restore(from checkpoint: ErasureCheckpoint) throws {
        for (c, trainer) in critics.enumerated() {
            let prefix = "critic\(c)."
            try trainer.critic.load(checkpoint.group(prefix).filter { !$0.key.hasPrefix("optimizer.") }, source: checkpoint.url.path)
            try trainer.optimizer.loadState(checkpoint.group(prefix + "optimizer."))
            targetPools[c] = try TrajectoryPool(archive: checkpoint.tensors, prefix: "pool\(c)")
            if paired {
                referencePools[c] = try TrajectoryPool(archive: checkpoint.tensors, prefix: "reference\(c)")
                referenceEstimates[c] = ReferenceEstimates(pool: referencePools[c], window: gameWindow, config: config,
                                                           pipeline: pipeline, model: frozen, table: table)
            }
        }
    }
}

/// θ₀'s x̂₀ (in the family's image layout) at every game-window entry of a reference pool (guided
/// at `criticGuidance` under the independence objective), with each entry's row.
struct ReferenceEstimates {
    var estimates: Tensor
    var timesteps: [Float]
    /// The row of `estimates` holding each window entry of the pool.
    var rows: [Int: Int]

    init<Family: ErasableModel>(pool: TrajectoryPool, window: ClosedRange<Float>, config: SCOREConfig, pipeline: Family,
                                model: Family.Denoiser, table: ConditioningTable) {
        let entries = pool.indices { window.contains($0) }
        let (z, t, p) = pool.batch(entries)
        estimates = noGrad {
            pipeline.imageLayout(guidedCleanEstimate(pipeline: pipeline, model: model, table: table, latents: z, timesteps: t, prompts: p,
                                                     unconditional: 0, guidance: config.objective == .independence ? config.criticGuidance : 1))
        }
        timesteps = t
        rows = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1, $0) })
    }

    /// The estimates paired with target-pool `entries` (the paired game's pools share their
    /// layout, so target entry i pairs with reference entry i).
    func paired(with entries: [Int]) -> Tensor {
        gather(estimates, entries.map { entry in
            guard let row = rows[entry] else { preconditionFailure("no paired reference estimate for target entry \(entry)") }
            return row
        })
    }
}

/// `count` prompts cycling through `prompts` from `offset`: every prompt appears ⌊count/|P|⌋ or
/// one more times, so no prompt is left out once count ≥ |P|.
func stratified(_ prompts: [Int], _ count: Int, offset: Int = 0) -> [Int] {
    (0..<count).map { prompts[(offset + $0) % prompts.count] }
}
