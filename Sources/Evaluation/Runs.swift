import Diffusion
import Erasure
import Foundation
import SafeTensors
import Tensor
import Testbed

// The commands of the erasure side as library calls: `score erase`, `evaluate`, `attack`,
// `benchmark`, `check-leakage` and `demo` fill one of these and call `validate()` (before any
// model is loaded) and `run`. Each holds its settings with their defaults; the CLI only parses.

/// `score erase`: erase concepts from a model and write the erased model, mask, run.json and
/// leakage estimate into `output`.
public struct EraseRun {
    public var method: any ErasureMethod
    public var concepts: [String]
    /// Synonyms of the i-th concept (nil: a testbed class's training synonyms).
    public var synonyms: [[String]?] = []
    /// What target prompts should draw instead (empty: "", the unconditional model).
    public var anchors: [String] = []
    /// Per-concept anchors, "concept=guide" (`--edit`): the concept (added when not in
    /// `concepts`) steered towards its own guide instead of `anchors`.
    public var edits: [String] = []
    /// Prompts to keep (nil: on the testbed, the other classes' canonical prompts).
    public var retain: [String]?
    /// Any `--model` folder `ModelLoader` accepts (nil: the embedded mini-SD).
    public var model: String?
    /// The weights variant of `model` to read (nil: the plain weights).
    public var variant: String?
    public var output: String
    public var full = false
    /// Save the `full` model's UNet as this variant (fp16, bf16).
    public var saveVariant: String?
    public var resume = false
    public var command = ""
    /// nil: no leakage estimate.
    public var leakage: LeakageOptions? = LeakageOptions()
    /// `--gradient-checkpointing` (`EraseJob.gradientCheckpointing`).
    public var gradientCheckpointing = false

    public init(method: any ErasureMethod, concepts: [String], output: String) {
        self.method = method
        self.concepts = concepts
        self.output = output
    }

    /// The request; the testbed's synonyms and retained classes only when the model is the testbed's.
    public func request() throws -> ErasureRequest {
        let prompts = ModelLoader.testbed(of: model) == "fashion-mnist" ? try FashionPrompts.bundled() : nil
        return try Workflows.request(concepts: concepts, synonyms: synonyms, anchors: anchors, edits: edits, retain: retain, prompts: prompts)
    }

    public func validate() throws {
        _ = try request()
        if !edits.isEmpty, let guide = (method as? UCE)?.config.guide {
            throw EvaluationError.invalidRequest("--uce-guide '\(guide)' would replace every concept's guide; give each with --edit alone")
        }
        try ModelLoader.checkVariant(variant, model: model)
        try ErasedModel.checkSaveVariant(saveVariant, full: full)
        _ = try OutputPath.folder(output, flag: "--out")
        try leakage?.validate()
    }

    /// Runs the erasure; returns the record written to run.json (nil when stopped early). A FLUX
    /// `--model` folder (recognised by its model_index.json, as `generate` does) runs on the flow
    /// family; the erased folder names it as its base as an SD one does.
    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> ErasureRecord? {
        try validate()
        let request = try request()
        let output = try OutputPath.folder(output, flag: "--out")
        if let model, FluxPipeline.isFluxFolder(URL(fileURLWithPath: model)) {
            let pipeline = try ModelLoader.loadFlux(model, variant: variant, assets: assets)
            var job = eraseJob(request: request, baseFolder: URL(fileURLWithPath: model), baseName: model, output: output)
            job.leakage = leakage?.sampledAsFlux
            job.probes = try Workflows.judgeProbes()
            return try job.run(model: pipeline, log: log)
        }
        let loaded = try ModelLoader.load(model, variant: variant, assets: assets)
        var job = eraseJob(request: request, baseFolder: loaded.folder, baseName: loaded.name, output: output)
        job.probes = loaded.pipeline.latentChannels == 1 ? try Workflows.judgeProbes() : []
        return try job.run(pipeline: loaded.pipeline, log: log)
    }

    /// The job of this run's settings.
    func eraseJob(request: ErasureRequest, baseFolder: URL, baseName: String, output: URL) -> EraseJob {
        var job = EraseJob(method: method, request: request, baseFolder: baseFolder, baseName: baseName, output: output)
        job.full = full
        job.baseVariant = variant
        job.saveVariant = saveVariant
        job.resume = resume
        job.command = command
        job.leakage = leakage
        job.gradientCheckpointing = gradientCheckpointing
        return job
    }
}

/// `score evaluate`: measure an erased model on a testbed class and write the report.
public struct EvaluationRun {
    /// The erased model (the model/ folder of `score erase`, or any testbed folder); nil with
    /// `family` "flux": the embedded mini-FLUX itself.
    public var model: String?
    /// "sd" or "flux". A FLUX-layout `model` (a FLUX folder, or `erase`'s changed tensors over one)
    /// is measured as flux whatever this says; "flux" with a Stable Diffusion `model` is refused.
    public var family = "sd"
    /// The original model (nil: for an erased folder, its base; for a FLUX model, the embedded mini-FLUX).
    public var original: String?
    /// The weights variant to read of both models (nil: the plain weights, or what the erased folder records).
    public var variant: String?
    public var concept: String
    /// Sampler, sizes and judges. A FLUX model is sampled at the mini-FLUX's steps and guidance
    /// (`EvaluationSettings.flux`), whatever these say.
    public var settings = EvaluationSettings()
    /// nil: no leakage estimate when run.json has none.
    public var leakage: LeakageOptions? = LeakageOptions()
    /// Report folder (nil: `<model>/../report`; without a model, runs/evaluate-flux/report).
    public var reportFolder: String?
    /// LoRA files merged into the erased model's weights (not the original's), in order.
    public var loras: [LoRAFile] = []

    public init(model: String?, concept: String) {
        self.model = model
        self.concept = concept
    }

    public var reportURL: URL {
        if let reportFolder { return URL(fileURLWithPath: reportFolder) }
        guard let model else { return URL(fileURLWithPath: "runs/evaluate-flux/report") }
        return URL(fileURLWithPath: model).deletingLastPathComponent().appendingPathComponent("report")
    }

    /// Whether the model is measured as a flow model: `--family flux`, or a FLUX-layout `--model`.
    public var isFlux: Bool { model.map { FluxPipeline.isFluxFolder(URL(fileURLWithPath: $0)) } ?? (family == "flux") }

    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw EvaluationError.invalidSetting(message) } }
        try check(["sd", "flux"].contains(family), "--family must be sd or flux, not '\(family)'")
        try check(model != nil || family == "flux", "give --model (or --family flux to evaluate the embedded mini-FLUX)")
        if family == "flux", let model {
            try check(isFlux, "--family flux: \(model) is not a FLUX folder (its model_index.json names no FluxPipeline)")
        }
        if isFlux, let original {
            try check(FluxPipeline.isFluxFolder(URL(fileURLWithPath: original)), "--original \(original) is not a FLUX folder, and the model is one: compare models of one family")
        }
        try settings.validate()
        try leakage?.validate()
        _ = try Workflows.testbedLabel(concept)
        _ = try OutputPath.folder(reportURL.path, flag: "--out")
    }

    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> ObjectEvaluation {
        try validate()
        if isFlux { return try runFlux(assets: assets, log: log) }
        var erased = try ModelLoader.load(model, variant: variant, assets: assets)
        try erased.merge(loras)
        let base = original ?? erased.manifest.flatMap { $0.base_model == "embedded" ? nil : $0.base_model }
        let baseVariant = variant ?? erased.manifest?.base_variant
        let reference = original != nil || erased.manifest != nil ? try ModelLoader.load(base, variant: base == nil ? nil : baseVariant, assets: assets) : nil
        return try Workflows.evaluate(model: erased, original: reference, concept: concept, settings: settings,
                                      leakage: leakage, reportFolder: reportURL, assets: assets, log: log)
    }

    /// The flow family: the model (or the embedded mini-FLUX) against `original`, else the erased
    /// folder's base, else the embedded mini-FLUX; nothing to compare when the model is the
    /// embedded mini-FLUX itself.
    func runFlux(assets: Assets, log: @escaping (String) -> Void) throws -> ObjectEvaluation {
        let embedded = try DefaultModel.fluxFolder().path
        let path = model ?? embedded
        let record = try model.flatMap { try ErasedModel.record(beside: URL(fileURLWithPath: $0)) }
        let erased = try ModelLoader.loadFlux(path, variant: variant, assets: assets)
        try erased.merge(loras)
        let manifest = try ErasedModel.manifest(in: URL(fileURLWithPath: path))
        let base = original ?? manifest?.baseFolder(relativeTo: URL(fileURLWithPath: path))?.path ?? (model == nil ? nil : embedded)
        let reference = try base.map { try ModelLoader.loadFlux($0, variant: variant ?? manifest?.base_variant, assets: assets) }
        var name = model ?? "embedded mini-FLUX"
        name += loras.map { " + LoRA \($0.path)" + ($0.scale == 1 ? "" : " × \($0.scale)") }.joined()
        var fluxSettings = settings
        (fluxSettings.steps, fluxSettings.guidance) = (MiniFlux.steps, MiniFlux.guidance)
        return try Workflows.evaluate(model: EvaluatedModel<FluxPipeline>(erased, name: name, record: record),
                                      original: reference.map { EvaluatedModel<FluxPipeline>($0, name: base == embedded ? "embedded mini-FLUX" : base!) },
                                      concept: concept, settings: fluxSettings, leakage: leakage?.sampledAsFlux,
                                      reportFolder: reportURL, assets: assets, log: log)
    }
}

/// `score attack`: paraphrase prompts, UnlearnDiffAtk's adversarial prefix tokens, text-free
/// inversion, Ring-A-Bell or CCE against a model on a testbed class (docs/ATTACKS.md).
public struct AttackRun {
    public enum Kind: String, CaseIterable, Sendable {
        case paraphrase, unlearndiffatk, inversion, cce, p4d
        case ringABell = "ring-a-bell"
    }

    /// The attack's outcome, as attack.json records it.
    public enum Outcome {
        case paraphrase(ParaphraseAttackResult)
        case unlearnDiffAtk(UnlearnDiffAtkResult)
        case inversion(InversionAttackResult)
        case ringABell(RingABellResult)
        case cce(CCEResult)
        case p4d(P4DResult)
    }

    public var kind: Kind
    public var model: String?
    /// The weights variant of `model` to read (nil: the plain weights).
    public var variant: String?
    public var concept: String
    /// Folder for attack.json, prompts.txt and grid.png (nil: nothing written).
    public var output: String?
    /// The paraphrase attack's settings; its seed, judge, steps and guidance are also UnlearnDiffAtk's.
    public var paraphrase = ParaphraseAttackSettings()
    public var unlearnDiffAtk = UnlearnDiffAtkConfig()
    public var inversion = InversionAttackConfig()
    public var ringABell = RingABellConfig()
    public var cce = CCEConfig()
    public var p4d = P4DConfig()
    /// UnlearnDiffAtk, P4D: plain prompts to attack instead of the class's prompts.
    public var prompts: [String] = []
    /// The un-erased model (UnlearnDiffAtk's target images, inversion's reference, P4D); nil: the
    /// erased model's base_model, or the embedded mini-SD.
    public var original: String?
    /// LoRA files merged into the attacked model's weights, in order.
    public var loras: [LoRAFile] = []

    public init(kind: Kind, model: String?, concept: String) {
        self.kind = kind
        self.model = model
        self.concept = concept
    }

    /// "sd" or "flux": which embedded model is attacked without `model`; a FLUX-layout `model`
    /// is attacked as flux whatever this says.
    public var family = "sd"

    /// Whether the attacked model is a flow model: `--family flux`, or a FLUX-layout `--model`.
    public var isFlux: Bool { model.map { FluxPipeline.isFluxFolder(URL(fileURLWithPath: $0)) } ?? (family == "flux") }

    public func validate() throws {
        _ = try Workflows.testbedLabel(concept)
        guard ["sd", "flux"].contains(family) else { throw EvaluationError.invalidSetting("--family must be sd or flux, not '\(family)'") }
        if family == "flux", let model, !isFlux {
            throw EvaluationError.invalidSetting("--family flux: \(model) is not a FLUX folder (its model_index.json names no FluxPipeline)")
        }
        try ModelLoader.checkVariant(variant, model: model)
        try paraphrase.validate()
        switch kind {
        case .paraphrase: break
        case .unlearndiffatk: try shared(unlearnDiffAtk).validate()
        case .inversion: try shared(inversion).validate()
        case .ringABell: try shared(ringABell).validate()
        case .cce: try shared(cce).validate()
        case .p4d: try shared(p4d).validate()
        }
        if let output { _ = try OutputPath.folder(output, flag: "--out") }
    }

    /// An attack's config with the shared settings (seed, scoring judge, sampling steps and, where
    /// the attack samples at the user's guidance, guidance) copied in from `settings` (default:
    /// the paraphrase attack's; on FLUX the same at the mini-FLUX's sampler).
    func shared<Config: JudgedAttackConfig>(_ config: Config, settings: ParaphraseAttackSettings? = nil) -> Config {
        let settings = settings ?? paraphrase
        var c = config
        (c.seed, c.judge, c.samplingSteps) = (settings.seed, settings.judge, settings.steps)
        if Config.samplesAtUserGuidance { c.guidance = settings.guidance }
        return c
    }

    /// The un-erased FLUX model the one at `path` is compared with: `original`, else its
    /// manifest's base folder, else the embedded mini-FLUX (itself when `model` is nil).
    func fluxOriginal(of path: String, assets: Assets) throws -> FluxPipeline {
        let manifest = try ErasedModel.manifest(in: URL(fileURLWithPath: path))
        let base = try original ?? manifest?.baseFolder(relativeTo: URL(fileURLWithPath: path))?.path ?? DefaultModel.fluxFolder().path
        return try ModelLoader.loadFlux(base, variant: variant ?? manifest?.base_variant, assets: assets)
    }

    /// The un-erased model `loaded` is compared with: `original`, else its manifest's base_model,
    /// else the embedded mini-SD.
    func originalModel(of loaded: LoadedModel, assets: Assets) throws -> LoadedModel {
        let base = original ?? loaded.manifest.flatMap { $0.base_model == "embedded" ? nil : $0.base_model }
        return try ModelLoader.load(base, variant: base == nil ? nil : variant ?? loaded.manifest?.base_variant, assets: assets)
    }

    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> Outcome {
        try validate()
        let prompts = try FashionPrompts.bundled()
        let label = try Workflows.testbedLabel(concept)
        /// attack.json, prompts.txt and grid.png in --out, when it is given.
        func save(_ result: any Encodable, _ prompts: [String], _ grid: () -> Tensor) throws {
            guard let output else { return }
            let folder = URL(fileURLWithPath: output)
            try AttackOutput.write(result, prompts: prompts, grid: grid(), to: folder)
            log("wrote \(folder.path)/attack.json, prompts.txt, grid.png")
        }
        let scorer = try DefaultModel.judge(paraphrase.judge)
        if isFlux {
            // The flow family, sampled at the mini-FLUX's sampler.
            let path = try model ?? DefaultModel.fluxFolder().path
            let pipeline = try ModelLoader.loadFlux(path, variant: variant, assets: assets)
            try pipeline.merge(loras)
            let name = (model ?? "embedded mini-FLUX") + loras.map { " + LoRA \($0.path)" }.joined()
            return try run(pipeline, name: name, original: { try self.fluxOriginal(of: path, assets: assets) },
                           settings: paraphrase.sampledAsFlux, label: label, prompts: prompts, scorer: scorer, assets: assets,
                           save: save, log: log)
        }
        var loaded = try ModelLoader.load(model, variant: variant, assets: assets)
        try loaded.merge(loras)
        return try run(loaded.pipeline, name: loaded.name, original: { try self.originalModel(of: loaded, assets: assets).pipeline },
                       settings: paraphrase, label: label, prompts: prompts, scorer: scorer, assets: assets, save: save, log: log)
    }

    /// The attack on a model of either family (`AttackedModel`), sampled at `settings`.
    /// `original` loads the un-erased model when the attack needs it.
    func run<Model: AttackedModel>(_ pipeline: Model, name: String, original: () throws -> Model, settings: ParaphraseAttackSettings,
                                   label: Int, prompts: FashionPrompts, scorer: any Judge, assets: Assets,
                                   save: (any Encodable, [String], () -> Tensor) throws -> Void,
                                   log: @escaping (String) -> Void) throws -> Outcome {
        switch kind {
        case .paraphrase:
            let (result, images) = try ParaphraseAttack.run(sampler: pipeline.sampler, label: label, prompts: prompts, judge: scorer,
                                                            settings: settings, modelName: name, log: log)
            try save(result, result.prompts.map(\.prompt), { AttackOutput.paraphraseGrid(images, seedsPerPrompt: settings.seedsPerPrompt) })
            return .paraphrase(result)
        case .unlearndiffatk:
            let config = shared(unlearnDiffAtk, settings: settings)
            let data = try FashionMNIST(assets: assets)
            let adversary = config.judgeWeight > 0 ? try DefaultModel.judge(config.attackJudge) : nil
            let reference = config.target == "original" ? try original() : nil
            let (result, images) = try UnlearnDiffAtk.run(pipeline: pipeline, original: reference, label: label, prompts: prompts, test: data.test,
                                                          judge: scorer, attackJudge: adversary, config: config, modelName: name,
                                                          promptOverride: self.prompts.isEmpty ? nil : self.prompts, log: log)
            try save(result, result.prompts.map { $0.adversarial_prompt ?? $0.prompt }, { images.grid() })
            return .unlearnDiffAtk(result)
        case .inversion:
            let config = shared(inversion, settings: settings)
            let data = try FashionMNIST(assets: assets)
            let (images, indices) = try InversionAttack.realImages(label: label, train: data.train, count: config.images, seed: config.seed)
            let (result, grid) = try InversionAttack.run(pipeline: pipeline, original: try original(), images: images,
                                                         indices: indices, concept: prompts.classes[label].name, label: label,
                                                         conceptLabels: [label], judge: scorer, config: config, modelName: name, log: log)
            try save(result, [config.prompt], { grid })
            return .inversion(result)
        case .ringABell:
            let (result, grid) = try RingABellAttack.run(pipeline: pipeline, label: label, prompts: prompts, judge: scorer,
                                                         config: shared(ringABell, settings: settings), modelName: name, log: log)
            try save(result, result.instances.map(\.prompt), { grid })
            return .ringABell(result)
        case .cce:
            let data = try FashionMNIST(assets: assets)
            let (result, grid) = try CCEAttack.run(pipeline: pipeline, label: label, prompts: prompts, train: data.train,
                                                   judge: scorer, config: shared(cce, settings: settings), modelName: name, log: log)
            try save(result, [prompts.canonicalTemplate], { grid })
            return .cce(result)
        case .p4d:
            let config = shared(p4d, settings: settings).fitted(textLength: pipeline.paddedTextLength, log: log)
            let selector = config.selector == "pixels" ? nil : try DefaultModel.judge(config.selector)
            let (result, grid) = try P4DAttack.run(pipeline: pipeline, original: try original(), label: label, prompts: prompts,
                                                   judge: scorer, selector: selector, config: config, modelName: name,
                                                   promptOverride: self.prompts.isEmpty ? nil : self.prompts, log: log)
            try save(result, result.instances.map { $0.adversarial_prompt ?? $0.prompt }, { grid })
            return .p4d(result)
        }
    }
}

/// An attack's settings that `score attack` fills from the paraphrase attack's flags (--seed,
/// --judge, --steps, --guidance), so each is given once.
protocol JudgedAttackConfig {
    var seed: UInt64 { get set }
    var judge: String { get set }
    var samplingSteps: Int { get set }
    var guidance: Float { get set }
    /// False where the attack keeps a guidance of its own (inversion regenerates at 1).
    static var samplesAtUserGuidance: Bool { get }
}

extension JudgedAttackConfig {
    static var samplesAtUserGuidance: Bool { true }
}

extension UnlearnDiffAtkConfig: JudgedAttackConfig {}
extension RingABellConfig: JudgedAttackConfig {}
extension CCEConfig: JudgedAttackConfig {}
extension P4DConfig: JudgedAttackConfig {}
extension InversionAttackConfig: JudgedAttackConfig {
    var samplingSteps: Int { get { steps } set { steps = newValue } }
    static var samplesAtUserGuidance: Bool { false }
}

/// `score benchmark`: every method on the task's concepts and seeds, one cell file each; writes
/// the Markdown table.
public struct BenchmarkRun {
    public var task: BenchmarkTask
    /// UnlearnDiffAtk's schedule in every cell (recorded in the cell's `attacks`).
    public var attackBudget = UnlearnDiffAtkBudget.official
    /// nil: the task's default concept.
    public var concepts: [String]?
    public var methods: [BenchmarkMethod]
    /// Erasure seeds per stochastic method (deterministic ones, UCE and RECE, run once).
    public var seeds = 3
    /// Object task: the attacks each cell runs (`benchmarkAttacks` keys) and their judged instances.
    public var attacks = benchmarkAttacks.map(\.key)
    public var attackInstances = ObjectBenchmark.defaultAttackInstances
    /// nil: `task.defaultOutput`.
    public var output: String?
    /// nil: `<output>/results.md`.
    public var table: String?
    /// Emoji tasks: the trained emoji mini-SD, the dataset file and the judges' folder.
    public var model: String?
    public var dataset: String?
    public var judges: String?
    public var leakage = LeakageOptions()
    /// Measure nothing: table the cells already finished.
    public var finishedOnly = false
    /// Object task: "sd" (the embedded mini-SD) or "flux" (the embedded mini-FLUX, sampled at its
    /// own settings: 25 Euler steps, true CFG 4, for images, leakage and the paraphrase attack).
    public var family = "sd"
    /// `--held-in`: the class hyper-parameters were tuned on, measured but tabled apart from the
    /// comparison; "none" for no held-in class; nil for the task's default (`defaultHeldIn`).
    public var heldIn: String?

    /// The held-in class without `--held-in`: sneaker for the object task, the class SCORE's
    /// defaults were chosen on (docs/RESULTS.md); none for the emoji tasks, where no method was
    /// tuned on any class.
    public static func defaultHeldIn(_ task: BenchmarkTask) -> String? { task == .object ? "sneaker" : nil }

    /// The methods that run on the flow family (the rest are UNet-only).
    public static let fluxMethods = ["original", "esd", "esd-x", "esd-u", "esd-all", "esd-x-strict", "uce", "eraseanything", "score",
                                     "score-retain-anchor"] + BenchmarkMethod.scoreAblations.keys.sorted()

    /// The rows without `--methods`.
    public static let defaultMethods = ["original", "esd-x", "esd-u", "uce", "score"]

    public init(task: BenchmarkTask, methods: [BenchmarkMethod]) {
        self.task = task
        self.methods = methods
    }

    public var outputURL: URL { URL(fileURLWithPath: output ?? (family == "flux" ? "runs/benchmark-flux" : task.defaultOutput)) }
    public var tableURL: URL { table.map { URL(fileURLWithPath: $0) } ?? outputURL.appendingPathComponent("results.md") }

    public func validate() throws {
        guard seeds >= 1 else { throw EvaluationError.invalidSetting("--seeds must be at least 1, not \(seeds)") }
        guard attackInstances >= 1 else { throw EvaluationError.invalidSetting("--attack-instances must be at least 1, not \(attackInstances)") }
        guard !methods.isEmpty else { throw EvaluationError.invalidSetting("--methods names no method") }
        try leakage.validate()
        guard ["sd", "flux"].contains(family) else { throw EvaluationError.invalidSetting("--family must be sd or flux, not '\(family)'") }
        if family == "flux" {
            guard task == .object else {
                throw EvaluationError.invalidRequest("--family flux runs the object task (the embedded mini-FLUX); --task \(task.rawValue) is the emoji mini-SD's")
            }
            for method in methods where !Self.fluxMethods.contains(method.name) {
                throw EvaluationError.invalidRequest("--methods: \(method.name) runs on Stable Diffusion (UNet) models only; with --family flux the methods are \(Self.fluxMethods.joined(separator: ", "))")
            }
        } else if let method = methods.first(where: { $0.name == "eraseanything" }) {
            throw EvaluationError.invalidRequest("--methods: \(method.name) runs on FLUX models only; add --family flux")
        }
        if task == .object {
            for (flag, value) in [("--model", model), ("--dataset", dataset), ("--judges", judges)] where value != nil {
                throw EvaluationError.invalidRequest("\(flag) is for the emoji tasks; --task object uses the embedded mini-SD and judges")
            }
            let prompts = try FashionPrompts.bundled()
            for concept in concepts ?? [] where prompts.label(forConcept: concept) == nil {
                throw EvaluationError.invalidRequest("--concepts: '\(concept)' is not a class of the testbed")
            }
        } else if !finishedOnly, model == nil {
            throw EvaluationError.invalidRequest(EmojiBenchmark.missingModelMessage(task: task))
        }
        _ = try OutputPath.folder(outputURL.path, flag: "--out")
        _ = try OutputPath.file(tableURL.path, flag: "--table")
        _ = try heldInConcept()
    }

    /// The concepts the cells are of, spelt as cells name them.
    func conceptNames() throws -> [String] {
        if task == .object { return concepts ?? ["sneaker"] }
        let tasks = try EmojiTasks.bundled()
        return try (concepts ?? [EmojiTaskSetup.defaultConcept(task: task, tasks: tasks)]).map {
            try EmojiTaskSetup.canonicalConcept($0, task: task, tasks: tasks)
        }
    }

    /// The held-in concept, spelt as cells name it; nil for none. A `--held-in` that is not
    /// among the concepts is an error naming the flag; the task's default counts only when it is
    /// and another concept is measured beside it (a run of the tuning class alone is its own
    /// comparison, not an empty one).
    public func heldInConcept() throws -> String? {
        let names = try conceptNames()
        guard let heldIn else {
            return Self.defaultHeldIn(task).flatMap { names.contains($0) && names.count > 1 ? $0 : nil }
        }
        if heldIn.lowercased() == "none" { return nil }
        let spelt = task.isEmoji ? (try? EmojiTaskSetup.canonicalConcept(heldIn, task: task, tasks: try EmojiTasks.bundled())) ?? heldIn : heldIn
        guard names.contains(spelt) else {
            throw EvaluationError.invalidRequest("--held-in '\(heldIn)' is not among the benchmark's concepts (\(names.joined(separator: ", "))); name one of them, or none")
        }
        return spelt
    }

    /// Runs (or, with `finishedOnly`, only gathers) the cells, writes the table and returns it
    /// with the cells as JSON.
    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> (markdown: String, cellsJSON: Data) {
        try validate()
        let seedList = (0..<UInt64(seeds)).map { $0 }
        let heldIn = try heldInConcept()
        let markdown: String, encoded: Data
        if task == .object {
            var benchmark = ObjectBenchmark(concepts: try conceptNames(), methods: methods, seeds: seedList, output: outputURL)
            benchmark.leakage = leakage
            if family == "flux" {
                benchmark.family = .flux
                benchmark.settings = .flux
                benchmark.leakage = leakage.sampledAsFlux
                benchmark.paraphraseAttack = benchmark.paraphraseAttack.sampledAsFlux
            }
            benchmark.unlearnDiffAtk = UnlearnDiffAtkConfig(budget: attackBudget)
            if family == "flux" { benchmark.sampleAttacksAsFlux() }
            benchmark.attacks = attacks
            benchmark.setAttackInstances(attackInstances)
            let cells = finishedOnly ? benchmark.finishedCells(log: log) : try benchmark.run(assets: assets, log: log)
            let summary = BenchmarkSummary(cells: cells, heldIn: heldIn)
            let heldOut = cells.filter { $0.concept != heldIn }
            markdown = summary.comparisonMarkdown() + LeakageAttackCorrelation.markdown(LeakageAttackCorrelation.rows(heldOut) { $0.leakage_nats })
                + summary.heldInMarkdown()
            encoded = try JSONOutput.encode(summary)
        } else {
            var benchmark = try EmojiBenchmark(task: task, tasks: try EmojiTasks.bundled(), concepts: concepts, methods: methods,
                                               seeds: seedList, output: outputURL)
            benchmark.leakage = leakage
            benchmark.unlearnDiffAtk?.budget = attackBudget
            if attackBudget == .fast { benchmark.unlearnDiffAtk?.target = "real" }
            let cells = finishedOnly ? benchmark.finishedCells(log: log)
                                     : try benchmark.run(model: model, dataset: dataset, judges: judges, assets: assets, log: log)
            let heldOut = cells.filter { $0.concept != heldIn }
            markdown = EmojiBenchmark.comparisonTable(cells, task: task, heldIn: heldIn)
                + LeakageAttackCorrelation.markdown(LeakageAttackCorrelation.rows(heldOut) { $0.leakage_nats })
                + EmojiBenchmark.heldInTable(cells, task: task, heldIn: heldIn)
            encoded = try JSONOutput.encode(cells.map { $0.markingHeldIn(heldIn) })
        }
        try FileManager.default.createDirectory(at: tableURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        try SafeTensors.writeAtomically(Data(markdown.utf8), to: tableURL)
        return (markdown, encoded)
    }
}

/// `score check-leakage`: the leakage estimate's noise floor on one model and prompt.
public struct LeakageFloorRun {
    public var model: String?
    /// θ₀ of an erased `model`: class 0 is drawn through it instead of through `model` (the
    /// erasure's drift on `prompt`, not the estimate's floor).
    public var referenceModel: String?
    /// The prompt both classes are drawn from ("" is the anchor of the testbed's erasures).
    public var prompt = ""
    public var repeats = 3
    public var leakage = LeakageOptions()
    /// "flux": the flow family (without `model`, the embedded mini-FLUX), sampled at its CFG.
    public var family = "sd"

    public init() {}

    /// Whether the floor is measured on a flow model: `--family flux`, or a FLUX-layout `--model`.
    public var isFlux: Bool { model.map { FluxPipeline.isFluxFolder(URL(fileURLWithPath: $0)) } ?? (family == "flux") }

    public func validate() throws {
        guard repeats >= 1 else { throw EvaluationError.invalidSetting("--repeats must be at least 1, not \(repeats)") }
        guard ["sd", "flux"].contains(family) else { throw EvaluationError.invalidSetting("--family must be sd or flux, not '\(family)'") }
        if family == "flux", let model, !isFlux {
            throw EvaluationError.invalidSetting("--family flux: \(model) is not a FLUX folder (its model_index.json names no FluxPipeline)")
        }
        try leakage.validate()
    }

    /// `repeats` estimates of `prompt` against itself through the model, with the testbed's
    /// judges as probes (see `Leakage.noiseFloor`): what the leakage estimate of `evaluate` and
    /// `benchmark` reads when there is no leakage to find.
    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> LeakageFloor {
        try validate()
        if isFlux {
            let pipeline = try ModelLoader.loadFlux(model ?? DefaultModel.fluxFolder().path, assets: assets)
            let reference = try referenceModel.map { try ModelLoader.loadFlux($0, assets: assets).denoiser }
            let reports = try Leakage.noiseFloor(prompt: prompt, pipeline: pipeline, reference: reference, options: leakage.sampledAsFlux,
                                                 probes: try Workflows.judgeProbes(), repeats: repeats, log: log)
            return LeakageFloor(prompt: prompt, model: model ?? "embedded mini-FLUX", referenceModel: referenceModel,
                                trajectories_per_class: leakage.trajectories, repeats: reports)
        }
        let loaded = try ModelLoader.load(model, assets: assets)
        let reference = try referenceModel.map { try ModelLoader.load($0, assets: assets).pipeline.denoiser }
        let reports = try Leakage.noiseFloor(prompt: prompt, pipeline: loaded.pipeline, reference: reference, options: leakage,
                                             probes: try Workflows.judgeProbes(), repeats: repeats, log: log)
        return LeakageFloor(prompt: prompt, model: loaded.name, referenceModel: referenceModel,
                            trajectories_per_class: leakage.trajectories, repeats: reports)
    }
}

/// `score demo`: erase one class from the embedded mini-SD with SCORE, evaluate it, write the report.
public struct DemoRun {
    public var concept = "sneaker"
    public var anchors: [String] = []
    public var config = SCOREConfig()
    public var settings = EvaluationSettings()
    /// 128 trajectories per class: the estimate's floor there is about 0.004 nats, so an upper
    /// 95% limit below 0.05 can be shown; at the other commands' 48 it is rarely that narrow.
    public var leakage: LeakageOptions = {
        var options = LeakageOptions()
        options.trajectories = 128
        return options
    }()
    public var output = "runs/demo"
    public var resume = false
    public var command = ""

    public init() {}

    public func validate() throws {
        try config.validate()
        try settings.validate()
        try leakage.validate()
        _ = try Workflows.testbedLabel(concept)
        _ = try OutputPath.folder(output, flag: "--out")
    }

    /// Erases into `<output>/erase`, evaluates against the original into `<output>/report`;
    /// returns the evaluation and the report's path.
    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> (ObjectEvaluation, URL) {
        try validate()
        let output = URL(fileURLWithPath: self.output)
        let request = try Workflows.request(concepts: [concept], synonyms: [], anchors: anchors, retain: nil, prompts: try FashionPrompts.bundled())
        let started = Date()
        let model = try ModelLoader.load(nil, assets: assets)
        var job = EraseJob(method: SCORE(config: config), request: request, baseFolder: model.folder, baseName: model.name,
                           output: output.appendingPathComponent("erase"))
        job.resume = resume
        job.command = command
        job.leakage = leakage
        job.probes = try Workflows.judgeProbes()
        log("erasing '\(concept)' with SCORE (\(config.steps) steps)")
        try job.run(pipeline: model.pipeline, log: log)
        let erased = try ModelLoader.load(output.appendingPathComponent("erase/model").path, assets: assets)
        let original = try ModelLoader.load(nil, assets: assets)
        let reportFolder = output.appendingPathComponent("report")
        let evaluation = try Workflows.evaluate(model: erased, original: original, concept: concept, settings: settings, leakage: nil,
                                                reportFolder: reportFolder, assets: assets, log: log)
        log(String(format: "demo finished in %.1f min", Date().timeIntervalSince(started) / 60))
        return (evaluation, reportFolder.appendingPathComponent("report.html"))
    }
}

/// The JSON every command prints with `--json`: keys sorted, slashes as they are.
public enum JSONOutput {
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }

    public static func string<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encode(value), as: UTF8.self)
    }
}
