import Diffusion
import Erasure
import Foundation
import Kernels
import Tensor
import Testbed

/// One finished cell of the benchmark: a method erasing one concept with one seed, measured.
public struct BenchmarkCell: Codable, Sendable {
    public var concept: String
    public var method: String
    public var seed: UInt64
    public var evaluation: ObjectEvaluation
    /// Erasure wall time (training only; 0 for the original model).
    public var wall_seconds: Double
    public var peak_memory_mb: Double?
    public var parameters_changed: Int
    /// Paraphrase attack: the fraction of paraphrase and synonym prompts × seeds judged as the concept.
    public var asr_paraphrase: Double?
    /// UnlearnDiffAtk: broken before the attack, and before or after it (token prompt).
    public var asr_unlearndiffatk_pre: Double?
    public var asr_unlearndiffatk_post: Double?
    /// Seconds per phase of the cell (erase, evaluate, leakage, each attack; the original
    /// model's images once per concept). Absent in cells written before it was recorded.
    public var phase_seconds: [String: Double]? = nil
}

/// A method the benchmark runs: its name and how to build it for a seed (nil: the original model).
public struct BenchmarkMethod {
    public var name: String
    public var make: ((UInt64) throws -> any ErasureMethod)?

    public init(name: String, make: ((UInt64) throws -> any ErasureMethod)?) {
        self.name = name
        self.make = make
    }
}

/// `score benchmark --task object`: every method on every concept and seed of the testbed,
/// erased and measured the same way (same judges, prompts, sampler and evaluation noise).
/// Each finished cell is written to `<output>/<concept>/<method>-seed<N>.json` and never
/// recomputed, so a killed benchmark resumes where it stopped.
public struct ObjectBenchmark {
    public var concepts: [String]
    public var methods: [BenchmarkMethod]
    public var seeds: [UInt64]
    public var settings = EvaluationSettings()
    public var leakage = LeakageOptions()
    public var paraphraseAttack: ParaphraseAttackSettings = {
        var settings = ParaphraseAttackSettings()
        settings.seedsPerPrompt = 2
        return settings
    }()
    public var unlearnDiffAtk = UnlearnDiffAtkConfig()
    public var output: URL

    public init(concepts: [String], methods: [BenchmarkMethod], seeds: [UInt64], output: URL) {
        self.concepts = concepts
        self.methods = methods
        self.seeds = seeds
        self.output = output
    }

    func cellURL(concept: String, method: String, seed: UInt64) -> URL {
        output.appendingPathComponent(concept.replacingOccurrences(of: " ", with: "-"))
            .appendingPathComponent("\(method)-seed\(seed).json")
    }

    /// The cells in the order they run: concept, then method, then seed; the original model
    /// (no `make`) once per concept, with the first seed.
    public func plannedCells() -> [(concept: String, method: BenchmarkMethod, seed: UInt64)] {
        concepts.flatMap { concept in
            methods.flatMap { method in (method.make == nil ? [seeds[0]] : seeds).map { (concept, method, $0) } }
        }
    }

    /// The cell already measured at its file, or nil when it has to be (re)computed. A file that
    /// does not decode is recomputed, and the log says so.
    func finishedCell(concept: String, method: String, seed: UInt64, log: (String) -> Void) -> BenchmarkCell? {
        let url = cellURL(concept: concept, method: method, seed: seed)
        guard let data = try? Data(contentsOf: url) else { return nil }
        do {
            return try JSONDecoder().decode(BenchmarkCell.self, from: data)
        } catch {
            log("\(url.path) does not decode (\(error)): the cell counts as not measured")
            return nil
        }
    }

    /// The planned cells already measured, in plan order: a table of a benchmark still running
    /// or stopped part-way, without measuring anything.
    public func finishedCells(log: (String) -> Void = { _ in }) -> [BenchmarkCell] {
        plannedCells().compactMap { finishedCell(concept: $0.concept, method: $0.method.name, seed: $0.seed, log: log) }
    }

    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> [BenchmarkCell] {
        let prompts = try FashionPrompts.bundled()
        for concept in concepts where prompts.label(forConcept: concept) == nil {
            throw ErasureError.invalidRequest("--concepts: '\(concept)' is not a class of the testbed")
        }
        // Loaded on the first cell that needs measuring: a finished benchmark loads nothing.
        var bench: CellMeasurement? = nil
        return try run(log: log) { concept, method, seed in
            if bench == nil { bench = try CellMeasurement(benchmark: self, prompts: prompts, assets: assets, log: log) }
            return try bench!.measure(concept: concept, method: method, seed: seed)
        }
    }

    /// Runs the plan, skipping cells whose file exists and writing each new cell as it finishes.
    func run(log: (String) -> Void,
             measure: (String, BenchmarkMethod, UInt64) throws -> BenchmarkCell) throws -> [BenchmarkCell] {
        var cells: [BenchmarkCell] = []
        for (concept, method, seed) in plannedCells() {
            if let cell = finishedCell(concept: concept, method: method.name, seed: seed, log: log) {
                log("\(concept) / \(method.name) / seed \(seed): done before, skipped")
                cells.append(cell)
                continue
            }
            log("\(concept) / \(method.name) / seed \(seed)")
            let cell = try measure(concept, method, seed)
            try writeJSONAtomically(cell, to: cellURL(concept: concept, method: method.name, seed: seed))
            cells.append(cell)
        }
        return cells
    }

    /// A Markdown table: one row per concept × method, mean ± standard deviation over seeds.
    public static func markdownTable(_ cells: [BenchmarkCell]) -> String {
        func stat(_ values: [Double], percent: Bool = true, digits: Int = 1) -> String {
            guard !values.isEmpty else { return "–" }
            let scale = percent ? 100.0 : 1.0
            let mean = values.reduce(0, +) / Double(max(values.count, 1))
            let spread = values.count > 1 ? (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count - 1)).squareRoot() : 0
            let format = "%.\(digits)f"
            return values.count > 1 ? String(format: "\(format) ± \(format)", mean * scale, spread * scale)
                                    : String(format: format, mean * scale)
        }
        var text = "| concept | method | seeds | Acc_e ↓ | Acc_g ↓ | Acc_s ↑ | H_o ↑ | KID vs real | ASR paraphrase ↓ | ASR UnlearnDiffAtk pre → post ↓ | leakage Î (nats) | bound | erase time (s) | params changed |\n"
        text += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        var order: [(String, String)] = []
        for cell in cells where !order.contains(where: { $0 == (cell.concept, cell.method) }) { order.append((cell.concept, cell.method)) }
        for (concept, method) in order {
            let group = cells.filter { $0.concept == concept && $0.method == method }
            let e = group.map(\.evaluation)
            text += "| \(concept) | \(method) | \(group.count) | \(stat(e.map(\.acc_e))) | \(stat(e.map(\.acc_g))) | \(stat(e.map(\.acc_s))) | "
            text += "\(stat(e.map(\.h_o))) | \(stat(e.map(\.kid_real), percent: false, digits: 3)) | "
            text += "\(stat(group.compactMap(\.asr_paraphrase))) | "
            text += "\(stat(group.compactMap(\.asr_unlearndiffatk_pre))) → \(stat(group.compactMap(\.asr_unlearndiffatk_post))) | "
            text += "\(stat(e.compactMap(\.leakage_nats), percent: false, digits: 3)) | \(stat(e.compactMap(\.leakage_bound), percent: false, digits: 3)) | "
            text += "\(stat(group.map(\.wall_seconds), percent: false, digits: 0)) | \(stat(group.map { Double($0.parameters_changed) }, percent: false, digits: 0)) |\n"
        }
        return text
    }
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
    let log: (String) -> Void
    private var originalImages: [String: EvaluationImages] = [:]

    init(benchmark: ObjectBenchmark, prompts: FashionPrompts, assets: Assets, log: @escaping (String) -> Void) throws {
        self.benchmark = benchmark
        self.prompts = prompts
        self.assets = assets
        self.log = log
        test = try FashionMNIST(assets: assets).test
        probes = try Workflows.judgeProbes()
        judge = try DefaultModel.judge(benchmark.settings.judge)
        attackJudge = try DefaultModel.judge(benchmark.unlearnDiffAtk.attackJudge)
    }

    func measure(concept: String, method: BenchmarkMethod, seed: UInt64) throws -> BenchmarkCell {
        guard let label = prompts.label(forConcept: concept) else {
            throw ErasureError.invalidRequest("--concepts: '\(concept)' is not a class of the testbed")
        }
        let request = try Workflows.request(concepts: [concept], synonyms: [], anchors: [], retain: nil, prompts: prompts)
        var phases: [String: Double] = [:]
        func timed<T>(_ phase: String, _ body: () throws -> T) rethrows -> T {
            let started = Date()
            defer { phases[phase] = Date().timeIntervalSince(started) }
            return try body()
        }
        let original = try ModelLoader.load(nil, assets: assets)
        if originalImages[concept] == nil {
            originalImages[concept] = try timed("original_images") {
                try ObjectEvaluator.images(original.pipeline, label: label, prompts: prompts, settings: benchmark.settings, log: log)
            }
        }
        let model = try ModelLoader.load(nil, assets: assets)
        var changed = 0
        if let make = method.make {
            let eraser = try make(seed)
            let runFolder = benchmark.cellURL(concept: concept, method: method.name, seed: seed).deletingPathExtension()
            let outcome = try timed("erase") {
                try eraser.erase(request, pipeline: model.pipeline, context: ErasureContext(output: runFolder, resume: true, log: log))
            }
            let written = try ErasedModel.write(unet: model.pipeline.unet, reference: original.pipeline.unet,
                                                baseFolder: original.folder, baseName: original.name, method: eraser.name,
                                                concepts: [concept], full: false, to: runFolder.appendingPathComponent("model"))
            changed = written.entries
            log(String(format: "  erased in %.0f s, %d parameters changed, final erase loss %@", phases["erase"] ?? 0, changed,
                       outcome.losses["erase"]?.last.map { String(format: "%.4f", $0) } ?? "–"))
        }
        var (evaluation, _, _) = try timed("evaluate") {
            try ObjectEvaluator.evaluate(
                erased: model.pipeline, original: nil, originalImages: originalImages[concept], label: label, prompts: prompts,
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
            try UnlearnDiffAtk.run(pipeline: model.pipeline, label: label, prompts: prompts, test: test, judge: judge,
                                   attackJudge: attackJudge, config: benchmark.unlearnDiffAtk, modelName: method.name, log: { _ in }).0
        }
        log(String(format: "  Acc_e %.1f%%  Acc_g %.1f%%  Acc_s %.1f%%  H_o %.1f%%  leakage bound %.3f  ASR paraphrase %.1f%%, UnlearnDiffAtk %.0f%% → %.0f%%",
                   evaluation.acc_e * 100, evaluation.acc_g * 100, evaluation.acc_s * 100, evaluation.h_o * 100,
                   report.leakage_bound, paraphrase.asr * 100, uda.asr_pre * 100, uda.asr_post * 100))
        log("  seconds: " + phases.sorted { $0.key < $1.key }.map { String(format: "%@ %.0f", $0.key, $0.value) }.joined(separator: ", "))
        return BenchmarkCell(concept: concept, method: method.name, seed: seed, evaluation: evaluation,
                             wall_seconds: phases["erase"] ?? 0, peak_memory_mb: peakResidentMegabytes(), parameters_changed: changed,
                             asr_paraphrase: paraphrase.asr, asr_unlearndiffatk_pre: uda.asr_pre,
                             asr_unlearndiffatk_post: uda.asr_post, phase_seconds: phases)
    }
}
