import Diffusion
import Erasure
import Foundation
import Kernels
import NN
import Tensor
import Testbed

/// A finished cell of the object task.
public typealias ObjectBenchmarkCell = BenchmarkCell<ObjectEvaluation>

/// `score benchmark --task object`: every method on every concept and seed of the testbed,
/// erased and measured the same way (same judges, prompts, sampler and evaluation noise).
/// Each finished cell is written to `<output>/<concept>/<method>-seed<N>.json` and never
/// recomputed, so a killed benchmark resumes where it stopped (`CellBenchmark`).
public struct ObjectBenchmark: CellBenchmark {
    public typealias Cell = ObjectBenchmarkCell
    public var concepts: [String]
    public var methods: [BenchmarkMethod]
    public var seeds: [UInt64]
    /// Which embedded model every cell erases: the mini-SD (.unet) or the mini-FLUX (.flux). Set
    /// `settings`, `leakage` and `paraphraseAttack` to the family's sampler with it (`BenchmarkRun` does).
    public var family = DenoiserFamily.unet
    public var settings = EvaluationSettings()

    /// A cell measured with other evaluation settings (another guidance, say), or with a leakage
    /// estimate on another number of trajectories or at another guidance, is measured again.
    public func accepts(_ cell: ObjectBenchmarkCell) -> Bool {
        cell.evaluation.settings == settings && cell.evaluation.leakage.map { $0.isSampled(as: leakage) } ?? true
    }
    /// The selected attacks the cell has not run, or ran at another budget; attacks it ran
    /// beyond the selection are kept.
    public func attacksToRun(_ cell: ObjectBenchmarkCell) -> [String] {
        let recorded = cell.attacks ?? [:]
        return attacks.filter { name in recorded[name]?.budget != budget(of: name) }
    }
    /// The testbed request's target prompts for `concept` (its name, noun and training synonyms
    /// in the target templates).
    public func targetPrompts(concept: String) -> [String]? {
        guard let prompts = try? FashionPrompts.bundled(), prompts.label(forConcept: concept) != nil else { return nil }
        return try? Workflows.request(concepts: [concept], synonyms: [], anchors: [], retain: nil, prompts: prompts).concepts[0].targetPrompts
    }
    public var leakage = LeakageOptions()
    public var paraphraseAttack: ParaphraseAttackSettings = {
        var settings = ParaphraseAttackSettings()
        settings.seedsPerPrompt = 2
        return settings
    }()
    /// The attacks every cell runs (keys of `benchmarkAttacks`), beside the paraphrase attack.
    public var attacks = benchmarkAttacks.map(\.key)
    public var unlearnDiffAtk = UnlearnDiffAtkConfig()
    /// The attacks beyond the text path (docs/ATTACKS.md).
    public var inversion = InversionAttackConfig()
    public var ringABell = RingABellConfig()
    public var cce = CCEConfig()
    public var p4d = P4DConfig()
    public var output: URL

    public init(concepts: [String], methods: [BenchmarkMethod], seeds: [UInt64], output: URL) {
        self.concepts = concepts
        self.methods = methods
        self.seeds = seeds
        self.output = output
        setAttackInstances(Self.defaultAttackInstances)
    }

    /// Judged attack instances per cell and attack without `--attack-instances`.
    public static let defaultAttackInstances = 16

    /// Gives every attack `n` judged instances: UnlearnDiffAtk `n` attacked prompts, inversion `n`
    /// real images, CCE `n` samples of its one learned token, Ring-A-Bell its searched prompts ×
    /// seeds (at most 8 of the 9 other classes' prompts: 8 × 2 for 16).
    public mutating func setAttackInstances(_ n: Int) {
        unlearnDiffAtk.instances = n
        inversion.images = n
        cce.samples = n
        p4d.instances = n
        ringABell.instances = max(1, min(8, n / 2))
        ringABell.seedsPerPrompt = (n + ringABell.instances - 1) / ringABell.instances
    }

    /// The attacks' sampler set to the mini-FLUX's (25 Euler steps, true CFG 4; inversion keeps
    /// its guidance 1), and P4D-N's tokens to what its 16 text positions hold.
    public mutating func sampleAttacksAsFlux() {
        (unlearnDiffAtk.samplingSteps, unlearnDiffAtk.guidance) = (MiniFlux.steps, MiniFlux.guidance)
        (ringABell.samplingSteps, ringABell.guidance) = (MiniFlux.steps, MiniFlux.guidance)
        (cce.samplingSteps, cce.guidance) = (MiniFlux.steps, MiniFlux.guidance)
        (p4d.samplingSteps, p4d.guidance) = (MiniFlux.steps, MiniFlux.guidance)
        p4d = p4d.fitted(textLength: PooledSentenceEncoder.defaultTokens)
        inversion.steps = MiniFlux.steps
    }

    /// The budget a cell records for `attack` under this benchmark's settings.
    public func budget(of attack: String) -> AttackBudget? {
        switch attack {
        case "unlearndiffatk": return unlearnDiffAtk.record
        case "inversion": return inversion.record
        case "ring-a-bell": return ringABell.record
        case "cce": return cce.record
        case "p4d": return p4d.record
        default: return nil
        }
    }

    /// The selected attacks' budgets: what a finished cell must have run to be kept.
    public var attackBudgets: [String: AttackBudget] {
        Dictionary(uniqueKeysWithValues: attacks.compactMap { name in budget(of: name).map { (name, $0) } })
    }

    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> [ObjectBenchmarkCell] {
        let prompts = try FashionPrompts.bundled()
        for concept in concepts where prompts.label(forConcept: concept) == nil {
            throw EvaluationError.invalidRequest("--concepts: '\(concept)' is not a class of the testbed")
        }
        // Loaded on the first cell that needs measuring: a finished benchmark loads nothing.
        var bench: CellMeasurement? = nil
        func measurement() throws -> CellMeasurement {
            if bench == nil { bench = try CellMeasurement(benchmark: self, prompts: prompts, assets: assets, log: log) }
            return bench!
        }
        return try run(log: log, addAttacks: { cell, method, names in
            try measurement().addAttacks(names, to: cell, method: method)
        }) { concept, method, seed in
            try measurement().measure(concept: concept, method: method, seed: seed)
        }
    }

    /// The benchmark's tables in Markdown (see `BenchmarkSummary.markdown`).
    public static func markdownTable(_ cells: [ObjectBenchmarkCell]) -> String { BenchmarkSummary(cells: cells).markdown() }
}

/// The attacks a benchmark can run beside the paraphrase attack: the key cells record them under
/// and the table's header. `--attacks` picks among them; a new attack adds its entry here, its
/// budget in `ObjectBenchmark.budget(of:)` and its run in `CellMeasurement.measure`.
public let benchmarkAttacks: [(key: String, title: String)] = [
    ("unlearndiffatk", "UnlearnDiffAtk post"), ("inversion", "inversion"), ("ring-a-bell", "Ring-A-Bell"), ("cce", "CCE"), ("p4d", "P4D-N"),
]

/// The table's attack columns. Cells written before an attack was recorded show "—" in its column.
let attackColumns = benchmarkAttacks

/// `--attacks`: a comma-separated list of `benchmarkAttacks` keys ("all" for every one, "none" for none).
public func parseBenchmarkAttacks(_ list: String) throws -> [String] {
    let names = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty }
    if names == ["all"] { return benchmarkAttacks.map(\.key) }
    if names == ["none"] { return [] }
    for name in names where !benchmarkAttacks.contains(where: { $0.key == name }) {
        throw EvaluationError.invalidRequest("--attacks: unknown attack '\(name)'; attacks: \(benchmarkAttacks.map(\.key).joined(separator: ", ")), all, none")
    }
    // In the registry's order, once each: the same selection always gives the same cells.
    return benchmarkAttacks.map(\.key).filter(names.contains)
}

/// What every cell of one benchmark run shares (data, judges, the original model's images per
/// concept), and the measurement of one cell: erase, evaluate, leakage, attacks.
final class CellMeasurement {
    let benchmark: ObjectBenchmark
    let prompts: FashionPrompts
    let assets: Assets
    let test: LabelledImages
    let probes: [FeatureProbe]
    let judge: any Judge
    let attackJudge: any Judge
    let train: LabelledImages
    let log: (String) -> Void
    /// Ring-A-Bell's searches by concept: they read only the text encoder, which no method changes.
    private var ringABellPrompts: [String: (encoder: String, found: [RingABellInstance])] = [:]
    private var originalImages: [String: EvaluationImages] = [:]
    /// Each class's nearest classes by the judge's confusion on real test images.
    private lazy var neighbours: [Int: [Int]] = nearestClasses(judge: self.judge, test: self.test)

    init(benchmark: ObjectBenchmark, prompts: FashionPrompts, assets: Assets, log: @escaping (String) -> Void) throws {
        self.benchmark = benchmark
        self.prompts = prompts
        self.assets = assets
        self.log = log
        let data = try FashionMNIST(assets: assets)
        test = data.test
        train = data.train
        probes = try Workflows.judgeProbes()
        judge = try DefaultModel.judge(benchmark.settings.judge)
        attackJudge = try DefaultModel.judge(benchmark.unlearnDiffAtk.attackJudge)
    }

    func measure(concept: String, method: BenchmarkMethod, seed: UInt64) throws -> ObjectBenchmarkCell {
        guard let label = prompts.label(forConcept: concept) else {
            throw EvaluationError.invalidRequest("--concepts: '\(concept)' is not a class of the testbed")
        }
        let request = try Workflows.request(concepts: [concept], synonyms: [], anchors: [], retain: nil, prompts: prompts)
        let timed = PhaseTimer()
        switch benchmark.family {
        case .flux:
            // The flow family, every attack as on the UNet (`AttackedModel`). Erased cells name
            // the embedded folder as their base (`ErasedModel.Manifest.baseFolder`).
            let folder = try DefaultModel.fluxFolder()
            let name = folder.path
            let original = try ModelLoader.loadFlux(folder.path, assets: assets)
            let model = try ModelLoader.loadFlux(folder.path, assets: assets)
            return try measure(concept: concept, label: label, method: method, seed: seed, request: request, timed: timed,
                               model: EvaluatedModel<FluxPipeline>(model, name: method.name), original: EvaluatedModel<FluxPipeline>(original, name: name),
                               baseFolder: folder) { timed in
                try self.attacks(self.benchmark.attacks, concept: concept, label: label, method: method, model: model, original: original,
                                 timed: timed)
            }
        case .unet:
            let original = try ModelLoader.load(nil, assets: assets)
            let model = try ModelLoader.load(nil, assets: assets)
            return try measure(concept: concept, label: label, method: method, seed: seed, request: request, timed: timed,
                               model: EvaluatedModel<StableDiffusionPipeline>(model.pipeline, name: method.name),
                               original: EvaluatedModel<StableDiffusionPipeline>(original.pipeline, name: original.name), baseFolder: original.folder) { timed in
                try self.attacks(self.benchmark.attacks, concept: concept, label: label, method: method, model: model.pipeline,
                                 original: original.pipeline, timed: timed)
            }
        }
    }

    /// One cell on either family: the original model's images (once per concept), the erasure,
    /// the evaluation against those images, the leakage estimate, the paraphrase attack and the
    /// family's other attacks (`attacks`: UnlearnDiffAtk's result and the rest by name).
    func measure<Model: ErasableModel>(
        concept: String, label: Int, method: BenchmarkMethod, seed: UInt64, request: ErasureRequest, timed: PhaseTimer,
        model: EvaluatedModel<Model>, original: EvaluatedModel<Model>, baseFolder: URL,
        attacks runAttacks: (PhaseTimer) throws -> (UnlearnDiffAtkResult?, [String: AttackSummary])
    ) throws -> ObjectBenchmarkCell {
        if originalImages[concept] == nil {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            let settingsJSON = String(decoding: try encoder.encode(benchmark.settings), as: UTF8.self)
            originalImages[concept] = try timed("original_images") {
                try ObjectEvaluator.cachedImages(
                    file: benchmark.output.appendingPathComponent(concept).appendingPathComponent("original-images.safetensors"),
                    key: "\(original.name) \(weightsDigest(original.pipeline.denoiser)) class \(label) \(settingsJSON)", label: label, prompts: prompts, settings: benchmark.settings) {
                    try ObjectEvaluator.images(original.sampler, label: label, prompts: prompts, settings: benchmark.settings, log: log)
                }
            }
        }
        let changed = try eraseCell(method: method, seed: seed, request: request, model: model.pipeline,
                                    reference: original.pipeline.denoiser, baseFolder: baseFolder, baseName: original.name,
                                    runFolder: benchmark.cellURL(concept: concept, method: method.name, seed: seed).deletingPathExtension(),
                                    timer: timed, log: log)
        var (evaluation, _, _) = try timed("evaluate") {
            try ObjectEvaluator.evaluate(
                // The original model's cell evaluates the images it just generated (the same bits
                // as generating them again).
                erased: model.sampler, original: nil, originalImages: originalImages[concept],
                erasedImages: method.make == nil ? originalImages[concept] : nil, label: label, prompts: prompts,
                test: test, settings: benchmark.settings, modelName: method.name, originalName: original.name, log: { _ in })
        }
        let report = try timed("leakage") {
            try Leakage.report(concept: request.concepts[0], pipeline: model.pipeline, original: original.pipeline.denoiser,
                               options: benchmark.leakage, probes: probes, log: log)
        }
        evaluation.leakage = report
        evaluation.neighbours = neighbours[label]?.map { prompts.classes[$0].name }
        evaluation.neighbours_by = neighboursMethod
        evaluation.leakage_nats = report.leakage_nats
        evaluation.leakage_bound = report.leakage_bound
        let paraphrase = try timed("paraphrase_attack") {
            try ParaphraseAttack.run(sampler: model.sampler, label: label, prompts: prompts, judge: judge,
                                     settings: benchmark.paraphraseAttack, modelName: method.name).0
        }
        let (uda, attacks) = try runAttacks(timed)
        log(String(format: "  Acc_e %.1f%%  Acc_g %.1f%%  Acc_s %.1f%%  H_o %.1f%%  leakage bound %.3f  ASR paraphrase %.1f%%",
                   evaluation.acc_e * 100, evaluation.acc_g * 100, evaluation.acc_s * 100, evaluation.h_o * 100,
                   report.leakage_bound, paraphrase.asr * 100)
            + (uda.map { String(format: ", UnlearnDiffAtk %.0f%% → %.0f%%", $0.asr_pre * 100, $0.asr_post * 100) } ?? "")
            + attackColumns.dropFirst().map { c in attacks[c.key].map { String(format: ", %@ %.0f%%", c.title, $0.asr * 100) } ?? "" }.joined())
        log(timed.line)
        return ObjectBenchmarkCell(concept: concept, method: method.name, seed: seed, evaluation: evaluation,
                             wall_seconds: timed.seconds["erase"] ?? 0, peak_memory_mb: peakResidentMegabytes(), parameters_changed: changed,
                             asr_paraphrase: paraphrase.asr,
                             asr_paraphrase_trials: paraphrase.prompts.map(\.broken.count).reduce(0, +),
                             asr_unlearndiffatk_pre: uda?.asr_pre, asr_unlearndiffatk_post: uda?.asr_post,
                             phase_seconds: timed.seconds, attacks: attacks)
    }

    /// Runs `names` on a stored cell's model — the original, or the erased model its run folder
    /// keeps — and merges them into the cell: evaluation, leakage and the other attacks stay as
    /// measured. Nil (measure the cell again) where the run folder has no model.
    func addAttacks(_ names: [String], to stored: ObjectBenchmarkCell, method: BenchmarkMethod) throws -> ObjectBenchmarkCell? {
        guard let label = prompts.label(forConcept: stored.concept) else { return nil }
        // The original's cell has no folder: its model is the embedded one.
        let folder = benchmark.cellURL(concept: stored.concept, method: method.name, seed: stored.seed)
            .deletingPathExtension().appendingPathComponent("model")
        let erased: String? = method.make == nil ? nil : folder.path
        if erased != nil, !FileManager.default.fileExists(atPath: folder.appendingPathComponent("model_index.json").path) { return nil }
        let timed = PhaseTimer()
        let (uda, added): (UnlearnDiffAtkResult?, [String: AttackSummary])
        switch benchmark.family {
        case .unet:
            let original = try ModelLoader.load(nil, assets: assets)
            let model = try ModelLoader.load(erased, assets: assets)
            (uda, added) = try attacks(names, concept: stored.concept, label: label, method: method, model: model.pipeline,
                                       original: original.pipeline, timed: timed)
        case .flux:
            // An erased FLUX folder holds the changed transformer tensors and loads over its base.
            let embedded = try DefaultModel.fluxFolder().path
            let original = try ModelLoader.loadFlux(embedded, assets: assets)
            let model = try ModelLoader.loadFlux(erased ?? embedded, assets: assets)
            (uda, added) = try attacks(names, concept: stored.concept, label: label, method: method, model: model, original: original,
                                       timed: timed)
        }
        var cell = stored
        cell.attacks = (cell.attacks ?? [:]).merging(added) { _, new in new }
        if let uda {
            cell.asr_unlearndiffatk_pre = uda.asr_pre
            cell.asr_unlearndiffatk_post = uda.asr_post
        }
        cell.phase_seconds = (cell.phase_seconds ?? [:]).merging(timed.seconds) { _, new in new }
        log(names.compactMap { name in added[name].map { String(format: "  %@ %.0f%%", name, $0.asr * 100) } }.joined(separator: ","))
        log(timed.line)
        return cell
    }

    /// The attacks beyond the paraphrase attack: those of `names`.
    func attacks<Model: AttackedModel>(_ names: [String], concept: String, label: Int, method: BenchmarkMethod, model: Model,
                                       original: Model, timed: PhaseTimer) throws -> (UnlearnDiffAtkResult?, [String: AttackSummary]) {
        let selected = Set(names)
        var uda: UnlearnDiffAtkResult? = nil
        if selected.contains("unlearndiffatk") {
            uda = try timed("unlearndiffatk") {
                try UnlearnDiffAtk.run(pipeline: model, original: original, label: label, prompts: prompts, test: test,
                                       judge: judge, attackJudge: attackJudge, config: benchmark.unlearnDiffAtk, modelName: method.name,
                                       log: { _ in }).0
            }
        }
        var attacks: [String: AttackSummary] = [:]
        attacks["unlearndiffatk"] = uda?.summary
        if selected.contains("inversion") {
            let config = benchmark.inversion
            attacks["inversion"] = try timed("inversion") {
                let (images, indices) = try InversionAttack.realImages(label: label, train: train, count: config.images, seed: config.seed)
                return try InversionAttack.run(pipeline: model, original: original, images: images, indices: indices,
                                               concept: concept, label: label, conceptLabels: [label], judge: judge, config: config,
                                               modelName: method.name).0.summary
            }
        }
        if selected.contains("ring-a-bell") {
            let config = benchmark.ringABell
            attacks["ring-a-bell"] = try timed("ring_a_bell") {
                let encoder = model.attackTextEncoder.map { weightsDigest($0.model) } ?? ""
                if ringABellPrompts[concept]?.encoder != encoder {
                    ringABellPrompts[concept] = (encoder, try RingABellAttack.search(pipeline: model, label: label, prompts: prompts,
                                                                                     config: config))
                }
                return try RingABellAttack.run(pipeline: model, label: label, prompts: prompts, judge: judge, config: config,
                                               modelName: method.name, found: ringABellPrompts[concept]!.found).0.summary
            }
        }
        if selected.contains("cce") {
            let config = benchmark.cce
            attacks["cce"] = try timed("cce") {
                try CCEAttack.run(pipeline: model, label: label, prompts: prompts, train: train, judge: judge, config: config,
                                  modelName: method.name).0.summary
            }
        }
        if selected.contains("p4d") {
            let config = benchmark.p4d
            attacks["p4d"] = try timed("p4d") {
                try P4DAttack.run(pipeline: model, original: original, label: label, prompts: prompts, judge: judge,
                                  selector: config.selector == "pixels" ? nil : try DefaultModel.judge(config.selector), config: config,
                                  modelName: method.name).0.summary
            }
        }
        return (uda, attacks)
    }
}

/// SHA-256 of a model's weights (names and values in name order): what a cache of its outputs is keyed by.
func weightsDigest(_ model: Module) -> String {
    var bytes = Data()
    for (name, tensor) in model.stateDict().sorted(by: { $0.key < $1.key }) {
        bytes.append(Data(name.utf8))
        tensor.scalars.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
    return SHA256.hex(bytes)
}

/// How `nearestClasses` ranks neighbours, as cells record it.
let neighboursMethod = "judge confusion on real test images (both directions), top 2"

/// Each class's two nearest classes: ranked by how often the judge calls real test images of one
/// class the other, counted in both directions (so sandal and sneaker are each other's neighbours
/// even where the judge errs only one way). Classes the judge never confuses are not neighbours.
func nearestClasses(judge: any Judge, test: LabelledImages, count: Int = 2) -> [Int: [Int]] {
    var confusion: [Int: [Int: Int]] = [:]
    for start in stride(from: 0, to: test.count, by: 500) {
        let indices = Array(start..<min(test.count, start + 500))
        for (predicted, truth) in zip(judge.predict(test.batch(indices)), test.labels(indices)) where predicted != truth {
            confusion[truth, default: [:]][predicted, default: 0] += 1
        }
    }
    let classes = Set(test.labels)
    return Dictionary(uniqueKeysWithValues: classes.map { c in
        let scored = classes.subtracting([c]).map { other in (other, (confusion[c]?[other] ?? 0) + (confusion[other]?[c] ?? 0)) }
            .filter { $0.1 > 0 }
            .sorted { ($0.1, -$0.0) > ($1.1, -$1.0) }
        return (c, Array(scored.prefix(count).map(\.0)))
    })
}
