import ArgumentParser
import Erasure
import Evaluation
import Foundation
import Testbed

/// Every SCORE hyper-parameter as an optional flag, merged over `--config` (or the defaults):
/// a flag left out keeps the file's value. Defaults and meanings are `SCOREConfig`'s.
struct SCOREOptions: ParsableArguments, MethodFlags {
    typealias Config = SCOREConfig

    @Option(help: "A JSON file of SCORE hyper-parameters (keys as in run.json's config); flags override it.") var config: String?
    @Option(help: "Model steps.") var steps: Int?
    @Option(help: "Target samples with t ≤ t′ per step.") var batch: Int?
    @Option(help: "Target samples with t > t′ per step (kept as the original).") var earlyBatch: Int?
    @Option(help: "Retained-prompt samples per step.") var retainBatch: Int?
    @Option(help: "Learning rate.") var lr: Float?
    @Option(help: "Optimizer: adam, adamw or sgd.") var optimizer: String?
    @Option(help: "Gradient-norm clip (0: off).") var maxGradNorm: Float?
    @Option(help: "Trainable set: full, cross-attention, non-cross-attention, cross-attention-kv.") var trainable: TrainableSet?
    @Option(help: "λ_adv.") var lambdaAdv: Float?
    @Option(help: "λ_er.") var lambdaErase: Float?
    @Option(help: "λ_tr.") var lambdaTraj: Float?
    @Option(help: "η of the erase target.") var eta: Float?
    @Option(help: "t′: erase and adversarial terms act at t ≤ t′.") var splitTimestep: Int?
    @Option(help: "Adversarial form: confusion or non-saturating.") var adversarial: AdversarialForm?
    @Option(help: "Critic width.") var criticWidth: Int?
    @Option(help: "n_D: critic steps per model step.") var criticSteps: Int?
    @Option(help: "Critic warm-up steps.") var criticWarmup: Int?
    @Option(help: "Critic learning rate.") var criticLr: Float?
    @Option(help: "Critic batch (half target, half anchor).") var criticBatch: Int?
    @Option(help: "Saliency ρ: fraction of each tensor that may change (1: no mask).") var saliency: Float?
    @Option(help: "Saliency seeds per prompt variant (at least 1; --saliency 1 turns the mask off).") var saliencySeeds: Int?
    @Flag(help: "Intersect the saliency masks of prompt variants × seeds (ANT) instead of summing.") var saliencyIntersect = false
    @Option(help: "Trajectories per prompt set in the pools.") var poolTrajectories: Int?
    @Option(help: "Sampling steps of the pools.") var poolSteps: Int?
    @Option(help: "Guidance of the pools.") var poolGuidance: Float?
    @Option(help: "Resample the target pool every N steps (0: never).") var poolRefresh: Int?
    @Option(help: "Checkpoint every N steps (SCORE, ESD, ANT, MACE and AdvUnlearn).") var checkpointEvery: Int?
    @Option(help: "Random seed (SCORE, ESD, ANT, MACE and AdvUnlearn).") var seed: UInt64?

    /// The flags given, in declaration order. --seed and --checkpoint-every are shared with the
    /// other methods that train.
    var overrides: [FlagOverride<Config>?] {
        [
            field("--steps", steps, \.steps), field("--batch", batch, \.batchSize), field("--early-batch", earlyBatch, \.earlyBatchSize),
            field("--retain-batch", retainBatch, \.retainBatchSize), field("--lr", lr, \.learningRate),
            field("--optimizer", optimizer, \.optimizer), field("--max-grad-norm", maxGradNorm, \.maxGradNorm),
            field("--trainable", trainable, \.trainable), field("--lambda-adv", lambdaAdv, \.lambdaAdversarial),
            field("--lambda-erase", lambdaErase, \.lambdaErase), field("--lambda-traj", lambdaTraj, \.lambdaTrajectory),
            field("--eta", eta, \.eta), field("--split-timestep", splitTimestep, \.splitTimestep),
            field("--adversarial", adversarial, \.adversarialForm), field("--critic-width", criticWidth, \.criticWidth),
            field("--critic-steps", criticSteps, \.criticSteps), field("--critic-warmup", criticWarmup, \.criticWarmupSteps),
            field("--critic-lr", criticLr, \.criticLearningRate), field("--critic-batch", criticBatch, \.criticBatchSize),
            field("--saliency", saliency, \.saliencyRatio), field("--saliency-seeds", saliencySeeds, \.saliencySeeds),
            field("--saliency-intersect", saliencyIntersect ? true : nil, \.saliencyIntersect),
            field("--pool-trajectories", poolTrajectories, \.poolTrajectories), field("--pool-steps", poolSteps, \.poolSteps),
            field("--pool-guidance", poolGuidance, \.poolGuidance), field("--pool-refresh", poolRefresh, \.poolRefreshEvery),
            field("--checkpoint-every", checkpointEvery, \.checkpointEvery), field("--seed", seed, \.seed),
        ]
    }

    /// The SCORE-only flags given (--config included): an error for another method.
    var scoreOnlyFlags: [String] {
        (config == nil ? [] : ["--config"]) + overrides.compactMap { $0?.flag }.filter { $0 != "--seed" && $0 != "--checkpoint-every" }
    }

    /// The config file (or the defaults) with the given flags over it, validated.
    func resolve() throws -> SCOREConfig {
        try resolve(over: try config.map { try SCOREConfig.load(URL(fileURLWithPath: $0)) } ?? SCOREConfig())
    }
}

/// One flag given on the command line and what it sets in a method's config.
struct FlagOverride<Config> {
    let flag: String
    let apply: (inout Config) -> Void
}

/// A method's config as the CLI builds it: its defaults (or a file), the given flags over them, checked.
protocol FlaggedConfig {
    init()
    func validate() throws
}

/// The configs of the methods that train, which also read the shared --seed and --checkpoint-every.
protocol TrainedConfig: FlaggedConfig {
    var seed: UInt64 { get set }
    var checkpointEvery: Int { get set }
}

extension SCOREConfig: TrainedConfig {}
extension ESDConfig: TrainedConfig {}
extension ANTConfig: TrainedConfig {}
extension MACEConfig: TrainedConfig {}
extension AdvUnlearnConfig: TrainedConfig {}
extension EraseAnythingConfig: TrainedConfig {}
extension UCEConfig: FlaggedConfig {}
extension RECEConfig: FlaggedConfig {}

/// One method's hyper-parameters as optional flags: a flag left out keeps the config's value.
protocol MethodFlags {
    associatedtype Config: FlaggedConfig
    /// Each flag's override, nil where it was left out, in declaration order.
    var overrides: [FlagOverride<Config>?] { get }
}

extension MethodFlags {
    /// The override that sets `path` to the flag's value, nil when the flag was left out.
    func field<T>(_ flag: String, _ value: T?, _ path: WritableKeyPath<Config, T>) -> FlagOverride<Config>? {
        value.map { v in FlagOverride(flag: flag) { $0[keyPath: path] = v } }
    }

    /// Whether any of the method's flags was given.
    var isSet: Bool { overrides.contains { $0 != nil } }

    /// `base` with the given flags (then `shared`) over it, validated.
    func resolve(over base: Config = Config(), adding shared: [FlagOverride<Config>?] = []) throws -> Config {
        var c = base
        for override in (overrides + shared).compactMap({ $0 }) { override.apply(&c) }
        try c.validate()
        return c
    }
}

extension MethodFlags where Config: TrainedConfig {
    /// The defaults with the method's flags and the shared --seed and --checkpoint-every over them.
    func resolve(seed: UInt64?, checkpointEvery: Int?) throws -> Config {
        try resolve(adding: [field("--seed", seed, \.seed), field("--checkpoint-every", checkpointEvery, \.checkpointEvery)])
    }
}

extension TrainableSet: ExpressibleByArgument {}
extension AdversarialForm: ExpressibleByArgument {}
extension ESDTrainMethod: ExpressibleByArgument {}
extension ESDSamplingModel: ExpressibleByArgument {}
extension AdvUnlearnModule: ExpressibleByArgument {}

/// ESD's hyper-parameters as flags (defaults: the official script's, see `ESDConfig`). ESD also
/// reads the shared --seed and --checkpoint-every.
struct ESDOptions: ParsableArguments, MethodFlags {
    typealias Config = ESDConfig

    @Option(help: "ESD trainable set: esd-x (cross-attention), esd-u (all but cross-attention), esd-all, esd-x-strict (cross-attention K/V).") var esdTrainMethod: ESDTrainMethod?
    @Option(help: "ESD iterations (official: 200; the paper: 1000).") var esdIterations: Int?
    @Option(help: "ESD Adam learning rate (official: 5e-5; the paper: 1e-5).") var esdLr: Float?
    @Option(help: "ESD negative guidance η of the target ε₀(∅) − η(ε₀(c) − ε₀(∅)) (default 1: the official script's --negative_guidance 2, which is η + 1; the paper: 1).") var esdEta: Float?
    @Option(help: "ESD samples per iteration (official: 1).") var esdBatch: Int?
    @Option(help: "Steps of the sampling run xₜ is drawn from (official: 50).") var esdSamplingSteps: Int?
    @Option(help: "Guidance of that sampling run (official: 3).") var esdSamplingGuidance: Float?
    @Option(help: "Which model draws xₜ: frozen (the current official script) or trained (the paper).") var esdSampleFrom: ESDSamplingModel?

    var overrides: [FlagOverride<Config>?] {
        [field("--esd-train-method", esdTrainMethod, \.trainMethod), field("--esd-iterations", esdIterations, \.iterations),
         field("--esd-lr", esdLr, \.learningRate), field("--esd-eta", esdEta, \.eta), field("--esd-batch", esdBatch, \.batchSize),
         field("--esd-sampling-steps", esdSamplingSteps, \.samplingSteps),
         field("--esd-sampling-guidance", esdSamplingGuidance, \.samplingGuidance),
         field("--esd-sample-from", esdSampleFrom, \.samplingModel)]
    }
}

/// UCE's hyper-parameters as flags (defaults: the official script's, see `UCEConfig`).
struct UCEOptions: ParsableArguments, MethodFlags {
    typealias Config = UCEConfig

    @Option(help: "UCE λ, the pull towards the original weights (official: 0.5).") var uceLambda: Double?
    @Option(help: "UCE erase scale (official: 1; too large damages unrelated prompts).") var uceEraseScale: Double?
    @Option(help: "UCE preserve scale for the --retain prompts (official: 1).") var ucePreserveScale: Double?
    @Option(help: "UCE guide concept for every erased concept (default: each concept's --anchor, \"\"; the official script uses \"art\" for styles).") var uceGuide: String?

    var overrides: [FlagOverride<Config>?] {
        [field("--uce-lambda", uceLambda, \.lambda), field("--uce-erase-scale", uceEraseScale, \.eraseScale),
         field("--uce-preserve-scale", ucePreserveScale, \.preserveScale), uceGuide.map { guide in FlagOverride(flag: "--uce-guide") { $0.guide = guide } }]
    }
}

/// ANT's hyper-parameters as flags (defaults: the official configs', see `ANTConfig`). ANT also
/// reads the shared --seed and --checkpoint-every.
struct ANTOptions: ParsableArguments, MethodFlags {
    typealias Config = ANTConfig

    @Option(help: "ANT iterations (official: 250).") var antIterations: Int?
    @Option(help: "ANT Adam learning rate (official: 5e-4).") var antLr: Float?
    @Option(help: "ANT guidance η of both targets ε₀(∅) ± η(ε₀(c) − ε₀(∅)) (official: 1).") var antEta: Float?
    @Option(help: "ANT α₁, weight of the early terms (official: 1).") var antAlpha1: Float?
    @Option(help: "ANT α₂, weight of the unconditional terms (official: 0.5).") var antAlpha2: Float?
    @Option(help: "ANT steps of the sampling run (official: 50).") var antSamplingSteps: Int?
    @Option(help: "ANT early steps from noise, kept on the original's guidance direction (official: 7).") var antSplitStep: Int?
    @Option(help: "ANT guidance of the sampling run (official: 3).") var antSamplingGuidance: Float?
    @Option(help: "ANT saliency: fraction of each tensor one map keeps (official: 0.5; 1: no mask).") var antSaliency: Float?
    @Option(help: "ANT saliency: iterations of gradients per map (official: 10).") var antSaliencyIterations: Int?
    @Option(help: "ANT saliency: target prompts used as variants (official nudity list: 4).") var antSaliencyVariants: Int?

    var overrides: [FlagOverride<Config>?] {
        [field("--ant-iterations", antIterations, \.iterations), field("--ant-lr", antLr, \.learningRate),
         field("--ant-eta", antEta, \.eta), field("--ant-alpha1", antAlpha1, \.alpha1), field("--ant-alpha2", antAlpha2, \.alpha2),
         field("--ant-sampling-steps", antSamplingSteps, \.samplingSteps), field("--ant-split-step", antSplitStep, \.splitStep),
         field("--ant-sampling-guidance", antSamplingGuidance, \.samplingGuidance),
         field("--ant-saliency", antSaliency, \.saliencyRatio),
         field("--ant-saliency-iterations", antSaliencyIterations, \.saliencyIterations),
         field("--ant-saliency-variants", antSaliencyVariants, \.saliencyVariants)]
    }
}

/// RECE's hyper-parameters as flags (defaults: the official object script's, see `RECEConfig`);
/// its first edit is UCE at UCE's defaults.
struct RECEOptions: ParsableArguments, MethodFlags {
    typealias Config = RECEConfig

    @Option(help: "RECE rounds of adversarial embeddings after the UCE edit (official for objects: 1).") var receEpochs: Int?
    @Option(help: "RECE λ of each round's edit (official: 0.1).") var receLambda: Double?
    @Option(help: "RECE erase scale of the adversarial embeddings (official: 1).") var receEraseScale: Double?
    @Option(help: "RECE preserve scale of \"\" and the --retain prompts (official: 0.1).") var recePreserveScale: Double?
    @Option(help: "RECE regularisation of the adversarial embedding (official: 1e-3; 0.1 for objects UCE erases easily).") var receRegularScale: Double?

    var overrides: [FlagOverride<Config>?] {
        [field("--rece-epochs", receEpochs, \.epochs), field("--rece-lambda", receLambda, \.lambda),
         field("--rece-erase-scale", receEraseScale, \.eraseScale), field("--rece-preserve-scale", recePreserveScale, \.preserveScale),
         field("--rece-regular-scale", receRegularScale, \.regularScale)]
    }
}

/// MACE's hyper-parameters as flags (defaults: the official object configs', see `MACEConfig`);
/// MACE also reads the shared --seed and --checkpoint-every.
struct MACEOptions: ParsableArguments, MethodFlags {
    typealias Config = MACEConfig

    @Option(help: "MACE λ of the refinement and fusion closed forms (official objects: 10, 100 or 1000; default 100).") var maceLambda: Double?
    @Option(help: "MACE weight of the --retain prompts' tokens in the refinement (official objects: 0).") var maceTrainPreserveScale: Double?
    @Option(help: "MACE weight of the --retain prompts' tokens in the fusion (official objects: 0).") var maceFusePreserveScale: Double?
    @Option(help: "MACE LoRA steps per concept (official: 50).") var maceIterations: Int?
    @Option(help: "MACE AdamW learning rate of the LoRAs (official objects: 1e-5).") var maceLr: Float?
    @Option(help: "MACE LoRA rank (official: 1).") var maceRank: Int?
    @Option(help: "MACE training images per concept, drawn by the original model (official: 8).") var maceImages: Int?
    @Option(help: "MACE object mask: a pixel differing from the background by more than this ([−1, 1] units; default 0.1).") var maceMaskThreshold: Float?

    var overrides: [FlagOverride<Config>?] {
        [field("--mace-lambda", maceLambda, \.lambda), field("--mace-train-preserve-scale", maceTrainPreserveScale, \.trainPreserveScale),
         field("--mace-fuse-preserve-scale", maceFusePreserveScale, \.fusePreserveScale),
         field("--mace-iterations", maceIterations, \.iterations), field("--mace-lr", maceLr, \.learningRate),
         field("--mace-rank", maceRank, \.rank), field("--mace-images", maceImages, \.trainingImages),
         field("--mace-mask-threshold", maceMaskThreshold, \.maskThreshold)]
    }
}

/// AdvUnlearn's hyper-parameters as flags (defaults: the official script with its README
/// command, see `AdvUnlearnConfig`); AdvUnlearn also reads the shared --seed and --checkpoint-every.
struct AdvUnlearnOptions: ParsableArguments, MethodFlags {
    typealias Config = AdvUnlearnConfig

    @Option(help: "AdvUnlearn module to train: text-encoder (official default) or cross-attention (the UNet's attn2).") var advunlearnModule: AdvUnlearnModule?
    @Option(help: "AdvUnlearn iterations (official: 1000).") var advunlearnIterations: Int?
    @Option(help: "AdvUnlearn Adam learning rate (official: 1e-5).") var advunlearnLr: Float?
    @Option(help: "AdvUnlearn iterations before the attacks start (official: 200).") var advunlearnWarmup: Int?
    @Option(help: "AdvUnlearn attack steps per attack (official: 30).") var advunlearnAttackSteps: Int?
    @Option(help: "AdvUnlearn attack learning rate (official: 1e-3).") var advunlearnAttackLr: Float?
    @Option(help: "AdvUnlearn soft prefix tokens (official: 1).") var advunlearnPrefixTokens: Int?
    @Option(help: "AdvUnlearn retained prompts per iteration (official: 5).") var advunlearnRetainBatch: Int?
    @Option(help: "AdvUnlearn weight of the retain term (official README: 0.3).") var advunlearnRetainWeight: Float?

    var overrides: [FlagOverride<Config>?] {
        [field("--advunlearn-module", advunlearnModule, \.module), field("--advunlearn-iterations", advunlearnIterations, \.iterations),
         field("--advunlearn-lr", advunlearnLr, \.learningRate), field("--advunlearn-warmup", advunlearnWarmup, \.warmupIterations),
         field("--advunlearn-attack-steps", advunlearnAttackSteps, \.attackSteps),
         field("--advunlearn-attack-lr", advunlearnAttackLr, \.attackLearningRate),
         field("--advunlearn-prefix-tokens", advunlearnPrefixTokens, \.prefixTokens),
         field("--advunlearn-retain-batch", advunlearnRetainBatch, \.retainBatch),
         field("--advunlearn-retain-weight", advunlearnRetainWeight, \.retainWeight)]
    }
}

/// EraseAnything's hyper-parameters as flags (defaults: the official config's, see
/// `EraseAnythingConfig`). It also reads the shared --seed and --checkpoint-every.
struct EraseAnythingOptions: ParsableArguments, MethodFlags {
    typealias Config = EraseAnythingConfig

    @Option(help: "EraseAnything steps, erasure and preservation alternating (official: 200).") var eraseanythingSteps: Int?
    @Option(help: "EraseAnything AdamW learning rate (official: 1e-3).") var eraseanythingLr: Float?
    @Option(help: "EraseAnything LoRA rank (official: 8; alpha = rank).") var eraseanythingRank: Int?
    @Option(help: "EraseAnything negative guidance η of the ESD velocity target (official: 1).") var eraseanythingEta: Float?
    @Option(help: "EraseAnything λ₁ of the ESD velocity loss (official: 1).") var eraseanythingLambdaEsd: Float?
    @Option(help: "EraseAnything λ₂ of the attention-map regulariser (official: 1e-3).") var eraseanythingLambdaAttention: Float?
    @Option(help: "EraseAnything λ₃ of the flow-matching (LoRA) loss on concept images (official: 0.1).") var eraseanythingLambdaLora: Float?
    @Option(help: "EraseAnything λ₄ of the contrastive (InfoNCE) term (official: 0.1).") var eraseanythingLambdaContrastive: Float?

    var overrides: [FlagOverride<Config>?] {
        [field("--eraseanything-steps", eraseanythingSteps, \.steps), field("--eraseanything-lr", eraseanythingLr, \.learningRate),
         field("--eraseanything-rank", eraseanythingRank, \.rank), field("--eraseanything-eta", eraseanythingEta, \.eta),
         field("--eraseanything-lambda-esd", eraseanythingLambdaEsd, \.lambdaESD),
         field("--eraseanything-lambda-attention", eraseanythingLambdaAttention, \.lambdaAttention),
         field("--eraseanything-lambda-lora", eraseanythingLambdaLora, \.lambdaLoRA),
         field("--eraseanything-lambda-contrastive", eraseanythingLambdaContrastive, \.lambdaContrastive)]
    }
}

/// Leakage-estimate flags shared by erase, evaluate, benchmark, check-leakage and demo.
struct LeakageFlags: ParsableArguments {
    @Option(help: "Trajectories per class for the leakage critics (at least 4; default \(LeakageOptions().trajectories), \(DemoRun().leakage.trajectories) for demo).")
    var leakageTrajectories: Int?
    @Option(help: "Steps of the first leakage critic (the second trains 3× longer).") var leakageCriticSteps = LeakageOptions().criticSteps
    @Option(help: "Guidance both classes of the leakage estimate are sampled at (default: the testbed's evaluation guidance, 7.5). As in diffusers, 1 or less samples the conditional prediction alone; on the anchor \"\" it changes nothing.")
    var leakageGuidance = LeakageOptions().guidance

    var options: LeakageOptions { options(over: LeakageOptions()) }

    /// The flags over a command's own defaults.
    func options(over defaults: LeakageOptions) -> LeakageOptions {
        var o = defaults
        o.trajectories = leakageTrajectories ?? defaults.trajectories
        o.criticSteps = leakageCriticSteps
        o.guidance = leakageGuidance
        return o
    }
}

/// Reads a list flag value: a path to a file (one item per line) or a comma-separated list. A
/// folder of that name (a benchmark's cell folder is named by its concept) is not a list file.
func listValue(_ value: String) throws -> [String] {
    var isFolder: ObjCBool = false
    if FileManager.default.fileExists(atPath: value, isDirectory: &isFolder), !isFolder.boolValue {
        return try String(contentsOfFile: value, encoding: .utf8).split(separator: "\n")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
    return value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
}

struct Erase: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Erase concepts from a model (SCORE, ESD, UCE, ANT, RECE, MACE or AdvUnlearn), write the erased model, mask, run.json and leakage estimate.",
        discussion: "Outputs in --out: model/ (diffusers layout; changed UNet tensors, and AdvUnlearn's text-encoder tensors, over the base unless --full), mask.safetensors, config.json, run.json, checkpoint.safetensors.")

    @Option(help: "Erasure method: \(ErasureMethods.names.joined(separator: ", ")).") var method = "score"
    @Option(help: "A concept to erase (repeat for several).") var concept: [String] = []
    @Option(help: "Synonyms of the i-th --concept: a comma-separated list or a file (one per line). Default for testbed classes: their training synonyms.") var synonyms: [String] = []
    @Option(help: "What target prompts should draw instead (repeat for an anchor set; default \"\", the unconditional model).") var anchor: [String] = []
    @Option(help: "A concept and its own guide, \"sneaker=shoe\" (repeat: --edit \"sneaker=shoe\" --edit \"bag=box\"; UCE's per-concept guide, every method's anchor for that concept).") var edit: [String] = []
    @Option(help: "Prompts to keep (a comma-separated list or a file). Default on the testbed: the other classes' canonical prompts.") var retain: String?
    @Option(help: "A diffusers pipeline folder (Stable Diffusion, or a mini-FLUX folder of `score train flux`: esd, uce, score and eraseanything run on it) or an SD 1.x/2.x single-file .safetensors (default: the embedded mini-SD).") var model: String?
    @Option(help: variantHelp) var variant: String?
    @Option(help: "Output folder.") var out: String
    @Flag(help: "Write every UNet tensor and the base's other components, not just the changed tensors.") var full = false
    @Option(help: "With --full: save the UNet as this variant, fp16 or bf16 (diffusion_pytorch_model.<variant>.safetensors in that precision).") var saveVariant: String?
    @Flag(help: "Continue from the checkpoint in --out.") var resume = false
    @Flag(help: "Skip the leakage estimate.") var noLeakage = false
    @Flag(help: "Recompute the UNet's block activations in the backward pass (diffusers' gradient_checkpointing): less memory, the same weights, more time.") var gradientCheckpointing = false
    @OptionGroup var hyperparameters: SCOREOptions
    @OptionGroup var esd: ESDOptions
    @OptionGroup var uce: UCEOptions
    @OptionGroup var ant: ANTOptions
    @OptionGroup var rece: RECEOptions
    @OptionGroup var mace: MACEOptions
    @OptionGroup var advUnlearn: AdvUnlearnOptions
    @OptionGroup var eraseAnything: EraseAnythingOptions
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    /// The method with its config; flags of another method are an error, not silently ignored.
    func eraser() throws -> any ErasureMethod {
        guard ErasureMethods.names.contains(method) else { return try ErasureMethods.make(method) }
        let given = [("esd", esd.isSet), ("uce", uce.isSet), ("ant", ant.isSet), ("rece", rece.isSet), ("mace", mace.isSet),
                     ("advunlearn", advUnlearn.isSet), ("eraseanything", eraseAnything.isSet)]
        if let other = given.first(where: { $0.0 != method && $0.1 })?.0 {
            throw ValidationError("--\(other)-… flags apply to --method \(other), not \(method)")
        }
        if method != "score", let flag = hyperparameters.scoreOnlyFlags.first {
            throw ValidationError("\(flag) is a SCORE hyper-parameter and does not apply to --method \(method); see its --\(method)-… flags")
        }
        let (seed, every) = (hyperparameters.seed, hyperparameters.checkpointEvery)
        switch method {
        case "esd": return try ErasureMethods.make(method, esd: esd.resolve(seed: seed, checkpointEvery: every))
        case "uce": return try ErasureMethods.make(method, uce: uce.resolve())
        case "ant": return try ErasureMethods.make(method, ant: ant.resolve(seed: seed, checkpointEvery: every))
        case "rece": return try ErasureMethods.make(method, rece: rece.resolve())
        case "mace": return try ErasureMethods.make(method, mace: mace.resolve(seed: seed, checkpointEvery: every))
        case "advunlearn": return try ErasureMethods.make(method, advUnlearn: advUnlearn.resolve(seed: seed, checkpointEvery: every))
        case "eraseanything": return try ErasureMethods.make(method, eraseAnything: eraseAnything.resolve(seed: seed, checkpointEvery: every))
        default: return try ErasureMethods.make(method, score: hyperparameters.resolve())
        }
    }

    func erasure() throws -> EraseRun {
        var run = EraseRun(method: try eraser(), concepts: concept, output: out)
        run.synonyms = try synonyms.map { try listValue($0) }
        run.anchors = anchor
        run.edits = edit
        run.retain = try retain.map(listValue)
        run.model = model
        run.variant = variant
        run.full = full
        run.saveVariant = saveVariant
        run.resume = resume
        run.gradientCheckpointing = gradientCheckpointing
        run.command = CommandLine.arguments.joined(separator: " ")
        run.leakage = noLeakage ? nil : leakage.options
        return run
    }

    func validate() throws { try checking { try erasure().validate() } }

    func run() throws {
        compute.apply()
        guard let record = try erasure().run(assets: Assets(log: { print("… \($0)") }), log: { print($0) }) else { return }
        for report in record.leakage ?? [] {
            print("'\(report.concept)': \(report.summary)")
        }
        print("wrote \(out)/run.json and \(out)/model")
    }
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure an erased model on the testbed: Acc_e, Acc_s, Acc_g, H_o, KID, leakage; write the report.")

    private static let defaults = EvaluationSettings()
    @Option(help: "The erased model (the model/ folder of `score erase`, or any testbed folder; a FLUX folder is measured as flux).") var model: String?
    @Option(help: "Model family: sd or flux (without --model: the embedded mini-FLUX; a FLUX --model is compared with the embedded mini-FLUX, or its base).") var family = "sd"
    @Option(help: "The original model (default for an erased folder: its base).") var original: String?
    @Option(help: variantHelp) var variant: String?
    @Option(help: "The erased concept (a testbed class).") var concept: String
    @Option(help: "Report folder (default: <model>/../report).") var out: String?
    @Option(help: "Images of the target prompt.") var targetImages = defaults.targetImages
    @Option(help: "Images over the paraphrases.") var paraphraseImages = defaults.paraphraseImages
    @Option(help: "Images per retained class.") var retainImages = defaults.retainImagesPerClass
    @Option(help: "Random seed of the evaluation images.") var seed = defaults.seed
    @Flag(help: "Do not estimate the leakage when run.json has none.") var noLeakage = false
    @OptionGroup var output: JSONOption
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var lora: LoRAOptions
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var precision: PrecisionOptions

    func evaluation() -> EvaluationRun {
        var run = EvaluationRun(model: model, concept: concept)
        run.family = family
        run.loras = lora.files
        run.original = original
        run.variant = variant
        run.reportFolder = out
        run.settings.targetImages = targetImages
        run.settings.paraphraseImages = paraphraseImages
        run.settings.retainImagesPerClass = retainImages
        run.settings.seed = seed
        run.leakage = noLeakage ? nil : leakage.options
        return run
    }

    func validate() throws { try checking { try evaluation().validate() } }

    func run() throws {
        compute.apply()
        let log = output.log
        let result = try precision.run { try evaluation().run(assets: Assets(log: log), log: log) }
        if output.json { return try printJSON(result) }
        print(summary(result))
    }
}

func summary(_ e: ObjectEvaluation) -> String {
    var lines = [String(format: "'%@': Acc_e %.1f%%  Acc_g %.1f%%  Acc_s %.1f%%  H_o %.1f%%  KID(real) %.4f",
                        e.concept, e.acc_e * 100, e.acc_g * 100, e.acc_s * 100, e.h_o * 100, e.kid_real)]
    if let o = e.original {
        lines.append(String(format: "original: Acc_e %.1f%%  Acc_g %.1f%%  Acc_s %.1f%%; Acc_s kept %.1f%%, KID vs original %.4f",
                            o.acc_e * 100, o.acc_g * 100, o.acc_s * 100, (e.acc_s_relative ?? 0) * 100, e.kid ?? .nan))
    }
    if let leakage = e.leakage { lines.append(leakage.summary) }
    return lines.joined(separator: "\n")
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Erase one class from the embedded mini-SD with SCORE, evaluate it and write the report.")

    private static let defaults = DemoRun()
    @Option(help: "The class to erase.") var concept = defaults.concept
    @Option(help: "What its prompts should draw instead (repeat for an anchor set; default \"\").") var anchor: [String] = []
    @Option(help: "Output folder.") var out = defaults.output
    @Flag(help: "Continue an interrupted demo.") var resume = false
    @OptionGroup var hyperparameters: SCOREOptions
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    func demo() throws -> DemoRun {
        var run = DemoRun()
        run.concept = concept
        run.anchors = anchor
        run.config = try hyperparameters.resolve()
        run.leakage = leakage.options(over: run.leakage)
        run.output = out
        run.resume = resume
        run.command = CommandLine.arguments.joined(separator: " ")
        return run
    }

    func validate() throws { try checking { try demo().validate() } }

    func run() throws {
        compute.apply()
        let (evaluation, report) = try demo().run(assets: Assets(log: { print("… \($0)") }), log: { print($0) })
        print(summary(evaluation))
        print("report: \(report.path)")
    }
}

struct Benchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run every method on testbed concepts and seeds, measure each the same way, write a Markdown table and JSON.",
        discussion: """
            Finished cells are kept in --out and skipped when the command is run again. --task object erases \
            Fashion-MNIST classes from the embedded mini-SD; --task style, identity and unsafe erase an emoji style, \
            character or the weapons group from a trained emoji mini-SD (--model; docs/EMOJI.md).
            """)

    @Option(help: "Task: object (Fashion-MNIST classes), style (an emoji style), identity (an emoji character) or unsafe (the emoji weapons group).") var task = BenchmarkTask.object.rawValue
    @Option(help: "Concepts (comma-separated; default: sneaker, OpenMoji style, Santa Claus or weapons by task).") var concepts: String?
    @Option(help: "Methods (comma-separated): original, score, score-retain-anchor (SCORE erasing towards the retained prompts), esd-x, esd-u, esd-all, esd-x-strict, uce, rece, ant, mace, advunlearn, and the SCORE ablation rows score-adversarial, score-eta0, score-eta0.1, score-eta0.5, score-eta1, score-full-unet, score-game, score-game-no-adversarial, score-game-only, score-game-eta0, score-game-eta0.5, score-game-eta1, score-negative-guidance (the first design).") var methods = BenchmarkRun.defaultMethods.joined(separator: ",")
    @Option(help: "Erasure seeds per stochastic method (UCE and RECE are deterministic and run once).") var seeds = BenchmarkRun(task: .object, methods: []).seeds
    @Option(help: "Folder for the cells (default: runs/benchmark for object, runs/benchmark-<task> for the emoji tasks).") var out: String?
    @Option(help: "Markdown table to write (default: <out>/results.md).") var table: String?
    @Option(help: "Emoji tasks: the trained emoji mini-SD folder (`score train unet --testbed emoji` writes <out>/model).") var model: String?
    @Option(help: "Emoji tasks: the emoji dataset file (default: the one `score dataset emoji` builds).") var dataset: String?
    @Option(help: "Emoji tasks: folder with judge-style-cnn.safetensors and judge-identity-cnn.safetensors (default: the shipped emoji judges).") var judges: String?
    @OptionGroup var output: JSONOption
    @Flag(help: "Measure nothing: write the table of the cells already finished in --out.") var finishedOnly = false
    @Option(help: "UnlearnDiffAtk's budget: official (40 steps at each of 50 timestep blocks, early stop) or fast.") var attackBudget = UnlearnDiffAtkBudget.official
    @Option(help: "Object task: attacks each cell runs (comma-separated: \(benchmarkAttacks.map(\.key).joined(separator: ", ")); all; none; default: all, on either --family).") var attacks: String?
    @Option(help: "Object task: sd (the embedded mini-SD) or flux (the embedded mini-FLUX; methods original, esd, uce, eraseanything, score; the paraphrase attack and the --attacks, at the mini-FLUX's sampler).") var family = "sd"
    @Option(help: "Object task: judged instances per attack and cell.") var attackInstances = ObjectBenchmark.defaultAttackInstances
    @Option(help: "The class hyper-parameters were tuned on (one of --concepts, or none): its cells are measured but tabled apart, outside the comparison and its summaries (default: sneaker for --task object, where SCORE's defaults were chosen, when it is among several --concepts; none for the emoji tasks).") var heldIn: String?
    @Option(help: "Run method M (\(MethodConfigs.methods.joined(separator: ", "))) with a JSON config, M=FILE (keys as in run.json's config, e.g. the <method>.json `score tune` writes); repeatable. SCORE's --config and flags still apply; ESD's file applies to every esd row, whose name fixes its trainable set.") var methodConfig: [String] = []
    @OptionGroup var hyperparameters: SCOREOptions
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    func benchmark() throws -> BenchmarkRun {
        var configs = try MethodConfigs(files: methodConfig, scoreConfig: hyperparameters.config)
        configs.score = try hyperparameters.resolve(over: configs.score)
        let methodList = try BenchmarkMethod.rows(methods.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) },
                                                  configs: configs)
        var run = BenchmarkRun(task: try BenchmarkTask(flag: task), methods: methodList)
        run.concepts = try concepts.map(listValue)
        run.seeds = seeds
        run.output = out
        run.table = table
        run.model = model
        run.dataset = dataset
        run.judges = judges
        run.leakage = leakage.options
        run.finishedOnly = finishedOnly
        run.attackBudget = attackBudget
        run.family = family
        run.attacks = try attacks.map(parseBenchmarkAttacks) ?? benchmarkAttacks.map(\.key)
        run.attackInstances = attackInstances
        run.heldIn = heldIn
        return run
    }

    func validate() throws { try checking { try benchmark().validate() } }

    func run() throws {
        compute.apply()
        let run = try benchmark()
        let (markdown, cells) = try run.run(assets: Assets(log: { print("… \($0)") }), log: { print($0) })
        if output.json {
            print(String(decoding: cells, as: UTF8.self))
        } else {
            print(markdown)
            print("wrote \(run.tableURL.path)")
        }
    }
}

struct Tune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tune one method on one held-in class with a fixed budget of configurations; write the winner's config.",
        discussion: """
            Each method declares its search space beside its config. --budget K configurations are measured: the \
            defaults, then K − 1 drawn without replacement (seeded by --seed) from the space; each is one object-benchmark \
            cell on --concept (erasure with seed --seed, evaluation, leakage; no attacks). Finished configurations are kept in \
            --out and skipped when the command is run again. Selection rule: \(TuningRule.text) Writes --out/tune.json \
            (every configuration, its metrics and the winner), tune.md and <method>.json (the winner's config, for \
            `score benchmark --method-config <method>=FILE`). Report --concept as the benchmark's held-in class (--held-in).
            """)

    @Option(help: "The method to tune: \(MethodConfigs.methods.joined(separator: ", ")).") var method: String
    @Option(help: "The held-in class every configuration is measured on.") var concept = "sneaker"
    @Option(help: "Configurations to measure, the defaults included (the whole space when larger).") var budget: Int
    @Option(help: "Folder for the cells and the results.") var out: String
    @Option(help: "Seed of the draw and of every erasure.") var seed: UInt64 = 0
    @OptionGroup var output: JSONOption
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    func tuning() -> TuneRun {
        var run = TuneRun(method: method, budget: budget, output: out)
        run.concept = concept
        run.seed = seed
        run.leakage = leakage.options
        return run
    }

    func validate() throws { try checking { try tuning().validate() } }

    func run() throws {
        compute.apply()
        let result = try tuning().run(assets: Assets(log: output.log), log: output.log)
        if output.json { return try printJSON(result) }
        print(TuneRun.markdown(result))
        print("wrote \(out)/tune.json, tune.md and \(method).json")
    }
}

struct CheckLeakage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-leakage",
        abstract: "The leakage estimate's noise floor: the same estimate as evaluate and benchmark, on two independent samples of one prompt through one model (true leakage 0).")

    private static let defaults = LeakageFloorRun()
    @Option(help: "A testbed model folder (default: the embedded mini-SD, or the embedded mini-FLUX with --family flux).") var model: String?
    @Option(help: "Model family: sd or flux (a FLUX-layout --model is measured as a flow model, sampled at true CFG 4).") var family = defaults.family
    @Option(help: "Draw the second class through this model (an erased model's original) instead of through --model: the estimate then reads how far the erasure moved the model on --prompt.") var referenceModel: String?
    @Option(help: "The prompt both classes are drawn from (default \"\", the anchor of the testbed's erasures).") var prompt = defaults.prompt
    @Option(help: "Independent estimates (seeds 7, 107, 207, …).") var repeats = defaults.repeats
    @OptionGroup var output: JSONOption
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var precision: PrecisionOptions

    func check() -> LeakageFloorRun {
        var run = LeakageFloorRun()
        run.model = model
        run.referenceModel = referenceModel
        run.family = family
        run.prompt = prompt
        run.repeats = repeats
        run.leakage = leakage.options
        return run
    }

    func validate() throws { try checking { try check().validate() } }

    func run() throws {
        compute.apply()
        // A long run: with --json the progress (each detector of each repeat) goes to stderr.
        let log: (String) -> Void = output.json ? { FileHandle.standardError.write(Data(($0 + "\n").utf8)) } : { print($0) }
        let floor = try precision.run { try check().run(assets: Assets(log: log), log: log) }
        if output.json { return try printJSON(floor) }
        for (r, report) in floor.repeats.enumerated() {
            print("repeat \(r): \(report.summary)")
        }
        let against = referenceModel.map { "against \($0)" } ?? "against itself"
        print(String(format: "\"%@\" %@, %d trajectories per class: mean Î %.4f, largest %.4f nats (estimated bound %.3f)",
                     prompt, against, floor.trajectories_per_class, floor.mean_leakage_nats, floor.max_leakage_nats, floor.max_bound))
    }
}
