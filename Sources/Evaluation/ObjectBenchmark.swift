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
    public var settings = EvaluationSettings()

    /// A cell measured with other evaluation settings (another guidance, say) is measured again.
    public func accepts(_ cell: ObjectBenchmarkCell) -> Bool { cell.evaluation.settings == settings }
    public var leakage = LeakageOptions()
    public var paraphraseAttack: ParaphraseAttackSettings = {
        var settings = ParaphraseAttackSettings()
        settings.seedsPerPrompt = 2
        return settings
    }()
    public var unlearnDiffAtk = UnlearnDiffAtkConfig()
    /// The attacks beyond the text path (docs/ATTACKS.md); nil skips one.
    public var inversion: InversionAttackConfig? = InversionAttackConfig()
    public var ringABell: RingABellConfig? = RingABellConfig()
    public var cce: CCEConfig? = CCEConfig()
    public var output: URL

    public init(concepts: [String], methods: [BenchmarkMethod], seeds: [UInt64], output: URL) {
        self.concepts = concepts
        self.methods = methods
        self.seeds = seeds
        self.output = output
    }

    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> [ObjectBenchmarkCell] {
        let prompts = try FashionPrompts.bundled()
        for concept in concepts where prompts.label(forConcept: concept) == nil {
            throw EvaluationError.invalidRequest("--concepts: '\(concept)' is not a class of the testbed")
        }
        // Loaded on the first cell that needs measuring: a finished benchmark loads nothing.
        var bench: CellMeasurement? = nil
        return try run(log: log) { concept, method, seed in
            if bench == nil { bench = try CellMeasurement(benchmark: self, prompts: prompts, assets: assets, log: log) }
            return try bench!.measure(concept: concept, method: method, seed: seed)
        }
    }

    /// A Markdown table: one row per concept × method, mean ± standard deviation over seeds.
    public static func markdownTable(_ cells: [ObjectBenchmarkCell]) -> String {
        let stat = benchmarkStat
        var text = "| concept | method | seeds | Acc_e ↓ | Acc_g ↓ | Acc_s ↑ | H_o ↑ | KID vs real | ASR paraphrase ↓ | ASR UnlearnDiffAtk pre → post ↓ | "
            + attackColumns.map { "\($0.title) [95% CI] ↓" }.joined(separator: " | ")
            + " | leakage Î (nats) | bound | erase time (s) | params changed |\n"
        text += "|---|---|---|---|---|---|---|---|---|---|" + String(repeating: "---|", count: attackColumns.count) + "---|---|---|---|\n"
        for (concept, method, group) in benchmarkRows(cells) {
            let e = group.map(\.evaluation)
            text += "| \(concept) | \(method) | \(group.count) | \(stat(e.map(\.acc_e), true, 1)) | \(stat(e.map(\.acc_g), true, 1)) | \(stat(e.map(\.acc_s), true, 1)) | "
            text += "\(stat(e.map(\.h_o), true, 1)) | \(stat(e.map(\.kid_real), false, 3)) | "
            text += "\(stat(group.compactMap(\.asr_paraphrase), true, 1)) | "
            text += "\(stat(group.compactMap(\.asr_unlearndiffatk_pre), true, 1)) → \(stat(group.compactMap(\.asr_unlearndiffatk_post), true, 1)) | "
            text += attackColumns.map { column in attackCell(group.compactMap { $0.attacks?[column.key] }) }.joined(separator: " | ") + " | "
            text += "\(stat(e.compactMap(\.leakage_nats), false, 3)) | \(stat(e.compactMap(\.leakage_bound), false, 3)) | "
            text += "\(stat(group.map(\.wall_seconds), false, 0)) | \(stat(group.map { Double($0.parameters_changed) }, false, 0)) |\n"
        }
        return text
    }
}

/// The table's attack columns: the cell key and the header. Cells written before an attack was
/// recorded show "—" in its column.
let attackColumns: [(key: String, title: String)] = [
    ("unlearndiffatk", "UnlearnDiffAtk post"), ("inversion", "inversion"), ("ring-a-bell", "Ring-A-Bell"), ("cce", "CCE"),
]

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
        let original = try ModelLoader.load(nil, assets: assets)
        if originalImages[concept] == nil {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            let settingsJSON = String(decoding: try encoder.encode(benchmark.settings), as: UTF8.self)
            originalImages[concept] = try timed("original_images") {
                try ObjectEvaluator.cachedImages(
                    file: benchmark.output.appendingPathComponent(concept).appendingPathComponent("original-images.safetensors"),
                    key: "\(original.name) \(weightsDigest(original.pipeline.unet)) class \(label) \(settingsJSON)", label: label, prompts: prompts, settings: benchmark.settings) {
                    try ObjectEvaluator.images(original.pipeline, label: label, prompts: prompts, settings: benchmark.settings, log: log)
                }
            }
        }
        let model = try ModelLoader.load(nil, assets: assets)
        let changed = try eraseCell(method: method, seed: seed, request: request, model: model, original: original,
                                    runFolder: benchmark.cellURL(concept: concept, method: method.name, seed: seed).deletingPathExtension(),
                                    timer: timed, log: log)
        var (evaluation, _, _) = try timed("evaluate") {
            try ObjectEvaluator.evaluate(
                // The original model's cell evaluates the images it just generated (the same bits
                // as generating them again).
                erased: model.pipeline, original: nil, originalImages: originalImages[concept],
                erasedImages: method.make == nil ? originalImages[concept] : nil, label: label, prompts: prompts,
                test: test, settings: benchmark.settings, modelName: method.name, originalName: "embedded", log: { _ in })
        }
        let report = try timed("leakage") {
            try Leakage.report(concept: request.concepts[0], pipeline: model.pipeline, original: original.pipeline.unet,
                               options: benchmark.leakage, probes: probes, log: log)
        }
        evaluation.leakage = report
        evaluation.leakage_nats = report.leakage_nats
        evaluation.leakage_bound = report.leakage_bound
        let paraphrase = try timed("paraphrase_attack") {
            try ParaphraseAttack.run(pipeline: model.pipeline, label: label, prompts: prompts, judge: judge,
                                     settings: benchmark.paraphraseAttack, modelName: method.name).0
        }
        let uda = try timed("unlearndiffatk") {
            try UnlearnDiffAtk.run(pipeline: model.pipeline, original: original.pipeline, label: label, prompts: prompts, test: test,
                                   judge: judge, attackJudge: attackJudge, config: benchmark.unlearnDiffAtk, modelName: method.name,
                                   log: { _ in }).0
        }
        var attacks: [String: AttackSummary] = [:]
        attacks["unlearndiffatk"] = uda.summary
        if let config = benchmark.inversion {
            attacks["inversion"] = try timed("inversion") {
                let (images, indices) = try InversionAttack.realImages(label: label, train: train, count: config.images, seed: config.seed)
                return try InversionAttack.run(pipeline: model.pipeline, original: original.pipeline, images: images, indices: indices,
                                               concept: concept, label: label, conceptLabels: [label], judge: judge, config: config,
                                               modelName: method.name).0.summary
            }
        }
        if let config = benchmark.ringABell {
            attacks["ring-a-bell"] = try timed("ring_a_bell") {
                let encoder = (model.pipeline.textEncoder as? BertTextEncoder).map { weightsDigest($0.model) } ?? ""
                if ringABellPrompts[concept]?.encoder != encoder {
                    ringABellPrompts[concept] = (encoder, try RingABellAttack.search(pipeline: model.pipeline, label: label, prompts: prompts,
                                                                                     config: config))
                }
                return try RingABellAttack.run(pipeline: model.pipeline, label: label, prompts: prompts, judge: judge, config: config,
                                               modelName: method.name, found: ringABellPrompts[concept]!.found).0.summary
            }
        }
        if let config = benchmark.cce {
            attacks["cce"] = try timed("cce") {
                try CCEAttack.run(pipeline: model.pipeline, label: label, prompts: prompts, train: train, judge: judge, config: config,
                                  modelName: method.name).0.summary
            }
        }
        log(String(format: "  Acc_e %.1f%%  Acc_g %.1f%%  Acc_s %.1f%%  H_o %.1f%%  leakage bound %.3f  ASR paraphrase %.1f%%, UnlearnDiffAtk %.0f%% → %.0f%%",
                   evaluation.acc_e * 100, evaluation.acc_g * 100, evaluation.acc_s * 100, evaluation.h_o * 100,
                   report.leakage_bound, paraphrase.asr * 100, uda.asr_pre * 100, uda.asr_post * 100)
            + attackColumns.dropFirst().map { c in attacks[c.key].map { String(format: ", %@ %.0f%%", c.title, $0.asr * 100) } ?? "" }.joined())
        log(timed.line)
        return ObjectBenchmarkCell(concept: concept, method: method.name, seed: seed, evaluation: evaluation,
                             wall_seconds: timed.seconds["erase"] ?? 0, peak_memory_mb: peakResidentMegabytes(), parameters_changed: changed,
                             asr_paraphrase: paraphrase.asr, asr_unlearndiffatk_pre: uda.asr_pre,
                             asr_unlearndiffatk_post: uda.asr_post, phase_seconds: timed.seconds, attacks: attacks)
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
