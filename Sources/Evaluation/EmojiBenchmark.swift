import Diffusion
import Erasure
import Foundation
import Kernels
import Tensor
import Testbed

/// An emoji task's measurement of one model: judge scores, KID, leakage.
public struct EmojiEvaluation: Codable, Sendable {
    public var task: String
    public var concept: String
    public var scores: EmojiScores
    /// The original model's scores on the same prompts and noise.
    public var original_scores: EmojiScores?
    /// KID (judge features) of the preserved images vs the original model's, same prompts and noise.
    public var kid: Double?
    /// KID of the preserved images vs real dataset images of the same (emoji, style).
    public var kid_real: Double?
    public var leakage_nats: Double?
    public var leakage_bound: Double?
    public var leakage: LeakageReport?
    /// The judge that scored the images: "style cnn" or "identity cnn".
    public var judge: String
    public var images: Int
    public var settings: EmojiEvaluationSettings
    public var model: String
    public var base_model: String
}

/// A finished cell of an emoji task (`task` names it: a cell of another task is measured again).
public typealias EmojiBenchmarkCell = BenchmarkCell<EmojiEvaluation>

/// What an emoji benchmark measures with: the dataset, the two judges, the model to erase and
/// the emoji whose names fill the style task's prompts.
public struct EmojiBenchmarkResources {
    public var dataset: EmojiDataset
    public var styleJudge: any Judge
    public var identityJudge: any Judge
    /// A fresh copy of the model to erase (the trained emoji mini-SD) on every call.
    public var loadModel: () throws -> LoadedModel
    /// Dataset emoji indices: the evaluation's names first, then the erasure's.
    public var sample: [Int]

    public init(dataset: EmojiDataset, styleJudge: any Judge, identityJudge: any Judge, sample: [Int],
                loadModel: @escaping () throws -> LoadedModel) {
        self.dataset = dataset
        self.styleJudge = styleJudge
        self.identityJudge = identityJudge
        self.sample = sample
        self.loadModel = loadModel
    }
}

/// `score benchmark --task style|identity|unsafe`: the object benchmark's plan, cell files,
/// resume, methods, leakage estimate and attacks on the emoji testbed (docs/EMOJI.md, "Benchmark").
/// A cell's prompts come from `EmojiTaskSetup`, its scores from `EmojiScores`.
public struct EmojiBenchmark: CellBenchmark {
    public typealias Cell = EmojiBenchmarkCell
    public var task: BenchmarkTask
    public var tasks: EmojiTasks
    public var concepts: [String]
    public var methods: [BenchmarkMethod]
    public var seeds: [UInt64]
    public var output: URL
    public var settings = EmojiEvaluationSettings()
    public var leakage = LeakageOptions()
    public var paraphraseAttack: ParaphraseAttackSettings = {
        var settings = ParaphraseAttackSettings()
        settings.seedsPerPrompt = 2
        return settings
    }()
    /// nil skips the attack. Its judge term is off (`judgeWeight` 0, the official objective):
    /// the object task steers it with the MLP judge so that a success is not an adversarial
    /// example of the scoring CNN, and the emoji testbed has no second judge.
    public var unlearnDiffAtk: UnlearnDiffAtkConfig? = {
        var config = UnlearnDiffAtkConfig()
        config.judgeWeight = 0
        config.attackJudge = "none"
        return config
    }()
    /// The attacks beyond the text path, on the task's attack instances (docs/ATTACKS.md); nil
    /// skips one. P4D picks its best prompt by pixel similarity: the emoji testbed has one judge
    /// per task, which scores.
    public var inversion: InversionAttackConfig? = InversionAttackConfig()
    public var ringABell: RingABellConfig? = RingABellConfig()
    public var cce: CCEConfig? = CCEConfig()
    public var p4d: P4DConfig? = {
        var config = P4DConfig()
        config.selector = "pixels"
        return config
    }()

    /// `concepts` nil: the task's default concept. Names are checked and spelt as cells name
    /// them ("openmoji" → "OpenMoji style"); a wrong one is an error naming `--concepts`.
    public init(task: BenchmarkTask, tasks: EmojiTasks, concepts: [String]?, methods: [BenchmarkMethod], seeds: [UInt64],
                output: URL) throws {
        guard task.isEmoji else { throw EvaluationError.invalidRequest("--task \(task.rawValue) is not an emoji task") }
        guard !seeds.isEmpty else { throw EvaluationError.invalidRequest("--seeds must be at least 1") }
        self.task = task
        self.tasks = tasks
        self.concepts = try (concepts ?? [EmojiTaskSetup.defaultConcept(task: task, tasks: tasks)]).map {
            try EmojiTaskSetup.canonicalConcept($0, task: task, tasks: tasks)
        }
        self.methods = methods
        self.seeds = seeds
        self.output = output
    }

    public func accepts(_ cell: EmojiBenchmarkCell) -> Bool { cell.task == task.rawValue && cell.evaluation.settings == settings }

    /// The message for an emoji task without `--model`.
    public static func missingModelMessage(task: BenchmarkTask) -> String {
        "--task \(task.rawValue) needs --model: a trained emoji mini-SD folder (no emoji model is embedded). Train one with "
            + "`score train unet --testbed emoji --steps 6000 --batch 32 --lr 1e-3 --seed 0 --out runs/mini-sd-emoji` "
            + "(hours on two cores; docs/EMOJI.md) and pass --model runs/mini-sd-emoji/model"
    }

    /// Checks the flags, then runs: the model at `model` (a folder of `score train unet --testbed
    /// emoji`), the dataset of `score dataset emoji` (or `dataset`) and the emoji judges (from
    /// `judges` or the shipped ones), all loaded on the first cell that needs measuring.
    public func run(model: String?, dataset: String? = nil, judges: String? = nil, assets: Assets = Assets(),
                    log: @escaping (String) -> Void) throws -> [EmojiBenchmarkCell] {
        guard let model else { throw EvaluationError.invalidRequest(Self.missingModelMessage(task: task)) }
        let folder = URL(fileURLWithPath: model)
        guard FileManager.default.fileExists(atPath: folder.appendingPathComponent("model_index.json").path) else {
            throw EvaluationError.invalidRequest("--model \(model) is not a model folder (no model_index.json); "
                                              + "an emoji mini-SD is written by `score train unet --testbed emoji` to <out>/model")
        }
        let datasetURL = dataset.map { URL(fileURLWithPath: $0) } ?? EmojiDataset.defaultURL(assets: assets, size: 32)
        guard FileManager.default.fileExists(atPath: datasetURL.path) else {
            throw EvaluationError.invalidRequest("the emoji dataset \(datasetURL.path) does not exist: build it with `score dataset emoji` (or pass --dataset)")
        }
        var resources: EmojiBenchmarkResources? = nil
        return try run(log: log, resources: {
            if resources == nil {
                let data = try EmojiDataset.load(datasetURL)
                try tasks.check(against: data)
                let judgeFolder = judges.map { URL(fileURLWithPath: $0) }
                let split = data.split(tasks: tasks)
                resources = EmojiBenchmarkResources(
                    dataset: data,
                    styleJudge: try EmojiJudges.load(task: .style, architecture: settings.judge, folder: judgeFolder),
                    identityJudge: try EmojiJudges.load(task: .identity, architecture: settings.judge, folder: judgeFolder),
                    sample: data.checkSample(split: split, count: settings.evaluationEmoji + settings.erasureEmoji, seed: 0)) {
                    let loaded = try ModelLoader.load(model, assets: assets)
                    guard loaded.pipeline.unet.config.inChannels == 3 else {
                        throw EvaluationError.invalidRequest("--model \(model) draws \(loaded.pipeline.unet.config.inChannels)-channel images; the emoji tasks need an RGB emoji mini-SD (`score train unet --testbed emoji`)")
                    }
                    return loaded
                }
            }
            return resources!
        })
    }

    /// Runs the plan with resources made on the first cell that needs measuring: a finished
    /// benchmark loads nothing.
    public func run(log: @escaping (String) -> Void, resources make: () throws -> EmojiBenchmarkResources) throws -> [EmojiBenchmarkCell] {
        if let config = unlearnDiffAtk {
            try config.validate()
            guard config.judgeWeight == 0 else {
                throw EvaluationError.invalidSetting("the emoji tasks' UnlearnDiffAtk has no attack judge (the testbed has one judge per task): judgeWeight must be 0")
            }
        }
        var measurement: EmojiCellMeasurement? = nil
        return try run(log: log) { concept, method, seed in
            if measurement == nil { measurement = EmojiCellMeasurement(benchmark: self, resources: try make(), log: log) }
            return try measurement!.measure(concept: concept, method: method, seed: seed)
        }
    }

    /// A Markdown table with the task's own columns: one row per concept × method, mean ±
    /// standard deviation over seeds.
    public static func markdownTable(_ cells: [EmojiBenchmarkCell], task: BenchmarkTask, heldIn: String? = nil) -> String {
        comparisonTable(cells, task: task, heldIn: heldIn) + heldInTable(cells, task: task, heldIn: heldIn)
    }

    /// The rows of every concept but the held-in one: the comparison.
    public static func comparisonTable(_ cells: [EmojiBenchmarkCell], task: BenchmarkTask, heldIn: String?) -> String {
        let comparison = cells.filter { $0.concept != heldIn }
        return table(comparison, task: task)
            + (comparison.isEmpty ? "| no held-out concept measured: every row is the held-in class's, below |\n" : "")
    }

    /// The held-in class's section: its rows in the comparison's columns, apart ("" without one).
    public static func heldInTable(_ cells: [EmojiBenchmarkCell], task: BenchmarkTask, heldIn: String?) -> String {
        guard let heldIn else { return "" }
        let tuning = cells.filter { $0.concept == heldIn }
        return "\n" + heldInHeading(heldIn) + "\n\n" + (tuning.isEmpty ? "No cell of \(heldIn) measured.\n" : table(tuning, task: task))
    }

    /// One row per concept × method, with the task's columns.
    static func table(_ cells: [EmojiBenchmarkCell], task: BenchmarkTask) -> String {
        let stat = benchmarkStat
        let scoreColumns: [(String, (EmojiScores) -> Double?)]
        switch task {
        case .style:
            scoreColumns = [("erased style ↓", \.erased_style_score), ("preserved styles ↑", \.preserved_style_score),
                            ("difference ↑", \.style_difference)]
        case .identity:
            scoreColumns = [("Acc_e ↓", \.acc_e), ("Acc_p ↑", \.acc_p), ("H ↑", \.h)]
        case .unsafe, .object:
            scoreColumns = [("weapons, explicit prompts ↓", \.explicit_rate), ("weapons, implicit prompts ↓", \.implicit_rate),
                            ("Acc_p ↑", \.acc_p)]
        }
        let perClass = task == .style ? "each preserved style ↑" : "lowest preserved character ↑"
        let headers = ["concept", "method", "seeds"] + scoreColumns.map(\.0)
            + [perClass, "KID vs original", "KID vs real", "ASR paraphrase ↓", "ASR UnlearnDiffAtk pre → post ↓",
               "UnlearnDiffAtk post [95% CI] ↓"] + attackColumns.dropFirst().map { "\($0.title) [95% CI] ↓" }
            + ["leakage Î (nats)", "bound", "erase time (s)", "params changed"]
        var text = "| " + headers.joined(separator: " | ") + " |\n"
        text += "|" + String(repeating: "---|", count: headers.count) + "\n"
        for (concept, method, group) in benchmarkRows(cells) {
            let e = group.map(\.evaluation)
            var row = [concept, method, "\(group.count)"]
            row += scoreColumns.map { _, value in stat(e.compactMap { value($0.scores) }, true, 1) }
            if task == .style {
                let names = e.first?.scores.preserved_style_scores.map { Array($0.keys).sorted() } ?? []
                row.append(names.map { name in "\(name) \(stat(e.compactMap { $0.scores.preserved_style_scores?[name] }, true, 1))" }
                    .joined(separator: " · "))
            } else {
                // Ties broken by name: a dictionary's order changes from run to run.
                let lowest = e.compactMap { $0.scores.per_character_accuracy?.min { ($0.value, $0.key) < ($1.value, $1.key) } }
                let names = Set(lowest.map(\.key)).sorted().joined(separator: ", ")
                row.append(lowest.isEmpty ? "–" : "\(stat(lowest.map(\.value), true, 1)) (\(names))")
            }
            row += [stat(method == "original" ? [] : e.compactMap(\.kid), false, 3), stat(e.compactMap(\.kid_real), false, 3),
                    stat(group.compactMap(\.asr_paraphrase), true, 1),
                    "\(stat(group.compactMap(\.asr_unlearndiffatk_pre), true, 1)) → \(stat(group.compactMap(\.asr_unlearndiffatk_post), true, 1))",
                    attackCell(group.compactMap { $0.attacks?["unlearndiffatk"] })]
            row += attackColumns.dropFirst().map { column in attackCell(group.compactMap { $0.attacks?[column.key] }) }
            row += [stat(e.compactMap(\.leakage_nats), false, 3), stat(e.compactMap(\.leakage_bound), false, 3),
                    stat(group.map(\.wall_seconds), false, 0), stat(group.map { Double($0.parameters_changed) }, false, 0)]
            text += "| " + row.joined(separator: " | ") + " |\n"
        }
        return text
    }
}

/// What every cell of one emoji benchmark run shares (dataset, judges, the original model's
/// images per concept), and the measurement of one cell: erase, evaluate, leakage, attacks.
final class EmojiCellMeasurement {
    let benchmark: EmojiBenchmark
    let resources: EmojiBenchmarkResources
    let probes: [FeatureProbe]
    let log: (String) -> Void
    private var originalImages: [String: Tensor] = [:]
    /// Ring-A-Bell's searches by concept: they read only the text encoder, which no method changes.
    private var ringABellPrompts: [String: (encoder: String, found: [RingABellInstance])] = [:]

    init(benchmark: EmojiBenchmark, resources: EmojiBenchmarkResources, log: @escaping (String) -> Void) {
        self.benchmark = benchmark
        self.resources = resources
        self.log = log
        let judges: [(String, any Judge)] = [("style", resources.styleJudge), ("identity", resources.identityJudge)]
        probes = judges.map { name, judge in
            FeatureProbe(name: "linear probe on emoji \(name) judge features") { judge.featureBatches($0) }
        } + judges.map { name, judge in
            FeatureProbe(name: "judged class (emoji \(name) judge)") { judge.judgedClassOneHot($0) }
        }
    }

    func measure(concept: String, method: BenchmarkMethod, seed: UInt64) throws -> EmojiBenchmarkCell {
        let settings = benchmark.settings
        let dataset = resources.dataset
        let setup = try EmojiTaskSetup(task: benchmark.task, concept: concept, tasks: benchmark.tasks, dataset: dataset,
                                       sample: resources.sample, settings: settings)
        let judge = setup.judge == .style ? resources.styleJudge : resources.identityJudge
        let outputs = noGrad { judge.logits(Tensor.zeros([1, 3, dataset.size, dataset.size])) }.shape[1]
        guard outputs == setup.judgeClasses.count else {
            throw EvaluationError.invalidRequest("the emoji \(setup.judge.rawValue) judge has \(outputs) classes, the task needs \(setup.judgeClasses.count): retrain it with `score train judge --testbed emoji --task \(setup.judge.rawValue)`")
        }
        var generation = EvaluationSettings()
        generation.steps = settings.steps
        generation.guidance = settings.guidance
        generation.seed = settings.seed
        let prompts = setup.evaluation.map(\.prompt)
        let timed = PhaseTimer()
        let original = try resources.loadModel()
        if originalImages[concept] == nil {
            originalImages[concept] = try timed("original_images") {
                try ObjectEvaluator.generate(original.pipeline, prompts: prompts, settings: generation, log: log)
            }
        }
        let model = try resources.loadModel()
        let changed = try eraseCell(method: method, seed: seed, request: setup.request, model: model, original: original,
                                    runFolder: benchmark.cellURL(concept: concept, method: method.name, seed: seed).deletingPathExtension(),
                                    timer: timed, log: log)
        let before = originalImages[concept]!
        // The original model's row is the images just made from the same weights and noise.
        let images = method.make == nil ? before
            : try timed("evaluate") { try ObjectEvaluator.generate(model.pipeline, prompts: prompts, settings: generation) }
        func score(_ x: Tensor) -> EmojiScores {
            EmojiScores.compute(task: benchmark.task, prompts: setup.evaluation, predictions: judge.predict(x),
                                conceptLabels: setup.conceptLabels, classNames: setup.judgeClasses)
        }
        // The preserved images are the list's last block (EmojiTaskSetup builds it so).
        let preserved = setup.indices(.preserved)
        precondition(preserved == Array((prompts.count - preserved.count)..<prompts.count), "preserved prompts must come last")
        func preservedPart(_ x: Tensor) -> Tensor { x.narrowed(axis: 0, start: prompts.count - preserved.count, length: preserved.count) }
        let reals = preserved.compactMap { setup.evaluation[$0].real }
        let features = judge.featureBatches(preservedPart(images))
        var evaluation = EmojiEvaluation(
            task: benchmark.task.rawValue, concept: concept, scores: score(images), original_scores: score(before),
            // The original row's images are `before` itself; its KID against them would only show the
            // unbiased estimator's negative bias on identical sets.
            kid: method.make != nil && preserved.count > 1 ? kernelDistance(features, judge.featureBatches(preservedPart(before))) : nil,
            kid_real: reals.count > 1 ? kernelDistance(features, judge.featureBatches(dataset.batch(reals))) : nil,
            leakage_nats: nil, leakage_bound: nil, leakage: nil, judge: "\(setup.judge.rawValue) \(settings.judge)",
            images: prompts.count, settings: settings, model: method.name, base_model: original.name)
        let report = try timed("leakage") {
            try Leakage.report(concept: setup.request.concepts[0], pipeline: model.pipeline, original: original.pipeline.unet,
                               options: benchmark.leakage, probes: probes, log: log)
        }
        evaluation.leakage = report
        evaluation.leakage_nats = report.leakage_nats
        evaluation.leakage_bound = report.leakage_bound
        let paraphrase = try timed("paraphrase_attack") {
            try ParaphraseAttack.run(pipeline: model.pipeline, list: setup.paraphrases, concept: concept, label: setup.conceptLabels[0],
                                     conceptLabels: setup.conceptLabels, judge: judge, settings: benchmark.paraphraseAttack,
                                     modelName: method.name).0
        }
        let uda = try benchmark.unlearnDiffAtk.map { config in
            try timed("unlearndiffatk") {
                let targets = (0..<config.instances).map { i -> AttackTarget in
                    let instance = setup.attack[i % setup.attack.count]
                    return AttackTarget(prompt: instance.prompt, image: dataset.batch([instance.image]), imageIndex: instance.image,
                                        label: instance.label)
                }
                return try UnlearnDiffAtk.run(pipeline: model.pipeline, original: original.pipeline, targets: targets, concept: concept,
                                              label: setup.conceptLabels[0],
                                              conceptLabels: setup.conceptLabels, judge: judge, attackJudge: nil, config: config,
                                              modelName: method.name).0
            }
        }
        var attacks: [String: AttackSummary] = [:]
        attacks["unlearndiffatk"] = uda?.summary
        try breakingAttacks(setup: setup, concept: concept, judge: judge, model: model, original: original, methodName: method.name,
                            timed: timed, into: &attacks)
        log("  " + Self.summary(evaluation.scores, task: benchmark.task)
            + String(format: "  leakage bound %.3f  ASR paraphrase %.1f%%", report.leakage_bound, paraphrase.asr * 100)
            + (uda.map { String(format: ", UnlearnDiffAtk %.0f%% → %.0f%%", $0.asr_pre * 100, $0.asr_post * 100) } ?? "")
            + attackColumns.dropFirst().map { c in attacks[c.key].map { String(format: ", %@ %.0f%%", c.title, $0.asr * 100) } ?? "" }.joined())
        log(timed.line)
        return EmojiBenchmarkCell(task: benchmark.task.rawValue, concept: concept, method: method.name, seed: seed, evaluation: evaluation,
                                  wall_seconds: timed.seconds["erase"] ?? 0, peak_memory_mb: peakResidentMegabytes(),
                                  parameters_changed: changed, asr_paraphrase: paraphrase.asr, asr_unlearndiffatk_pre: uda?.asr_pre,
                                  asr_unlearndiffatk_post: uda?.asr_post, phase_seconds: timed.seconds,
                                  attacks: attacks.isEmpty ? nil : attacks)
    }

    /// Inversion, Ring-A-Bell, CCE and P4D on the task's attack instances, as the object task
    /// runs them on a class: real images of the concept (the instances' dataset images), the
    /// attack templates with the concept's and the other classes' words, the attacked prompts.
    func breakingAttacks(setup: EmojiTaskSetup, concept: String, judge: any Judge, model: LoadedModel, original: LoadedModel,
                         methodName: String, timed: PhaseTimer, into attacks: inout [String: AttackSummary]) throws {
        let dataset = resources.dataset
        let label = setup.conceptLabels[0]
        if let config = benchmark.inversion {
            attacks["inversion"] = try timed("inversion") {
                let indices = setup.realImages(count: config.images)
                return try InversionAttack.run(pipeline: model.pipeline, original: original.pipeline, images: dataset.batch(indices),
                                               indices: indices, concept: concept, label: label, conceptLabels: setup.conceptLabels,
                                               judge: judge, config: config, modelName: methodName).0.summary
            }
        }
        if let config = benchmark.ringABell {
            attacks["ring-a-bell"] = try timed("ring_a_bell") {
                let encoder = (model.pipeline.textEncoder as? BertTextEncoder).map { weightsDigest($0.model) } ?? ""
                if ringABellPrompts[concept]?.encoder != encoder {
                    let pairs = setup.ringABellPairs
                    ringABellPrompts[concept] = (encoder, try RingABellAttack.search(
                        pipeline: model.pipeline, with: pairs.with, without: pairs.without, bases: setup.ringABellBases(count: config.instances),
                        config: config))
                }
                return try RingABellAttack.run(pipeline: model.pipeline, found: ringABellPrompts[concept]!.found, concept: concept, label: label,
                                               conceptLabels: setup.conceptLabels, judge: judge, config: config, modelName: methodName).0.summary
            }
        }
        if let config = benchmark.cce {
            attacks["cce"] = try timed("cce") {
                let indices = setup.realImages(count: config.images)
                return try CCEAttack.run(pipeline: model.pipeline, images: dataset.batch(indices), indices: indices,
                                         templates: setup.attackTemplates, samplingTemplates: setup.attackTemplates, concept: concept,
                                         label: label, conceptLabels: setup.conceptLabels, judge: judge, config: config,
                                         modelName: methodName).0.summary
            }
        }
        if let config = benchmark.p4d {
            attacks["p4d"] = try timed("p4d") {
                try P4DAttack.run(pipeline: model.pipeline, original: original.pipeline, prompts: setup.attack.map(\.prompt), concept: concept,
                                  label: label, conceptLabels: setup.conceptLabels, judge: judge, selector: nil, config: config,
                                  modelName: methodName).0.summary
            }
        }
    }

    static func summary(_ s: EmojiScores, task: BenchmarkTask) -> String {
        func p(_ x: Double?) -> String { x.map { String(format: "%.1f%%", $0 * 100) } ?? "–" }
        switch task {
        case .style: return "erased style \(p(s.erased_style_score))  preserved styles \(p(s.preserved_style_score))  difference \(p(s.style_difference))"
        case .identity: return "Acc_e \(p(s.acc_e))  Acc_p \(p(s.acc_p))  H \(p(s.h))"
        case .unsafe, .object: return "weapons: explicit \(p(s.explicit_rate)), implicit \(p(s.implicit_rate))  Acc_p \(p(s.acc_p))"
        }
    }
}
