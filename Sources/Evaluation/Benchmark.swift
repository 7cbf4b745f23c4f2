import Diffusion
import Erasure
import Foundation
import Kernels
import NN
import Tensor
import Testbed

// The machinery every `score benchmark --task` shares: the plan (concept, then method, then
// seed), one JSON file per finished cell that is never recomputed, the methods by name, the
// erasure step of a cell and the table's number format. ObjectBenchmark (Fashion-MNIST) and
// EmojiBenchmark (style, identity, unsafe) differ only in how a cell is measured and tabled.

/// Which benchmark `score benchmark --task` runs.
public enum BenchmarkTask: String, CaseIterable, Sendable {
    /// A Fashion-MNIST class on the embedded mini-SD.
    case object
    /// An emoji style ("OpenMoji style"); the other three must survive.
    case style
    /// A named emoji character ("Santa Claus") among the identity task's 20.
    case identity
    /// The group "weapons", erased as one concept, judged on explicit and implicit prompts.
    case unsafe

    /// `--task` parsed; an unknown name is an error naming the flag and the tasks.
    public init(flag: String) throws {
        guard let task = BenchmarkTask(rawValue: flag.lowercased()) else {
            throw EvaluationError.invalidRequest("--task '\(flag)' is not a benchmark task; tasks: \(Self.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = task
    }

    /// The emoji tasks need a trained emoji mini-SD (`--model`) and the emoji dataset.
    public var isEmoji: Bool { self != .object }

    /// Where the cells go without `--out`: each task its own folder, so tables never mix.
    public var defaultOutput: String { self == .object ? "runs/benchmark" : "runs/benchmark-\(rawValue)" }
}

/// What the plan needs of a finished cell's record.
public protocol BenchmarkCellRecord: Codable {
    var concept: String { get }
    var method: String { get }
    var seed: UInt64 { get }
    /// The erasure method's hyper-parameters as run.json records them (nil: the original model,
    /// or a cell file without this field).
    var method_config: String? { get set }
    /// The erasure request's target prompts (nil: the original model, or a cell file without
    /// this field).
    var target_prompts: [String]? { get set }
}

/// One finished cell of a benchmark: a method erasing one concept with one seed, measured by
/// the task's evaluation.
public struct BenchmarkCell<Evaluation: Codable & Sendable>: BenchmarkCellRecord, Sendable {
    /// The emoji task ("style", "identity", "unsafe"); nil in object cells.
    public var task: String? = nil
    public var concept: String
    public var method: String
    public var seed: UInt64
    public var evaluation: Evaluation
    /// Erasure wall time (training only; 0 for the original model).
    public var wall_seconds: Double
    public var peak_memory_mb: Double?
    public var parameters_changed: Int
    /// Paraphrase attack: the fraction of paraphrase and synonym prompts × seeds judged as the concept.
    public var asr_paraphrase: Double?
    /// The paraphrase attack's judged images (prompts × seeds): the trials of its interval.
    public var asr_paraphrase_trials: Int? = nil
    /// UnlearnDiffAtk: broken before the attack, and before or after it (token prompt); nil when not run.
    public var asr_unlearndiffatk_pre: Double?
    public var asr_unlearndiffatk_post: Double?
    /// Seconds per phase of the cell (erase, evaluate, leakage, each attack; the original
    /// model's images once per concept). Absent in cell files without this field.
    public var phase_seconds: [String: Double]? = nil
    public var method_config: String? = nil
    public var target_prompts: [String]? = nil
    /// Each attack's ASR, interval and budget by attack name ("unlearndiffatk", "inversion",
    /// "ring-a-bell", "cce"); absent in cell files written before these were recorded.
    public var attacks: [String: AttackSummary]? = nil
    /// true when the cell's concept is the held-in (tuning) class of the table it is listed in;
    /// set when tabling, never stored in the cell's file.
    public var held_in: Bool? = nil

    /// The cell as a table with held-in class `heldIn` lists it.
    func markingHeldIn(_ heldIn: String?) -> Self {
        var cell = self
        cell.held_in = concept == heldIn ? true : nil
        return cell
    }
}

/// The heading and note of the held-in class's section, below every benchmark's comparison.
func heldInHeading(_ concept: String) -> String {
    "### Tuning class (held in): \(concept)\n\nHyper-parameters were tuned on this class (`--held-in`): its cells are measured like "
        + "every other, but they are not part of the comparison above, nor of the summaries and correlations over concepts."
}

/// A method the benchmark runs: its name and how to build it for a seed (nil: the original model).
public struct BenchmarkMethod {
    public var name: String
    public var make: ((UInt64) throws -> any ErasureMethod)?
    /// Erase towards the task's retained prompts (an anchor set without the concept) instead of
    /// the task's anchor. Only the erasure sees it; every row is evaluated, and its leakage
    /// measured, against the same anchor.
    public var anchorsFromRetained = false
    /// Whether the seed changes the erased model. UCE's closed form does not, and the evaluation
    /// noise is fixed, so its cell is measured once per concept, like the original model's.
    public var seeded = true

    /// The hyper-parameters the method runs with for `seed`, as cells record them.
    public func configJSON(seed: UInt64) throws -> String? {
        try make.map { String(decoding: try $0(seed).configJSON, as: UTF8.self) }
    }

    /// The erasure method the row runs ("score" for SCORE's variants, "esd" for ESD's rows; nil:
    /// the original model): the config `--method-config` gives it.
    public var erasureMethod: String? = nil

    public init(name: String, make: ((UInt64) throws -> any ErasureMethod)?) {
        self.name = name
        self.make = make
    }

    /// SCORE's ablation rows (docs/RESULTS.md, "SCORE's ablation"): the default with one thing
    /// changed (the critic's adversarial term added, "score-adversarial"; another η; the whole
    /// UNet instead of the text path), the independence game in full ("score-game") with one thing
    /// changed, its game alone ("score-game-only", no erase term), and the first design
    /// ("score-negative-guidance"); each over `score`'s other keys.
    public static let scoreAblations: [String: @Sendable (SCOREConfig) -> SCOREConfig] = [
        "score-adversarial": { var c = $0; c.lambdaAdversarial = 0.1; return c },
        "score-eta0": { var c = $0; c.eta = 0; return c },
        "score-eta0.1": { var c = $0; c.eta = 0.1; return c },
        "score-eta0.5": { var c = $0; c.eta = 0.5; return c },
        "score-eta1": { var c = $0; c.eta = 1; return c },
        "score-full-unet": { var c = $0; c.trainable = .full; return c },
        "score-game": { $0.independenceObjective },
        "score-game-no-adversarial": { var c = $0.independenceObjective; c.lambdaAdversarial = 0; return c },
        "score-game-only": { var c = $0.independenceObjective; c.lambdaErase = 0; return c },
        "score-game-eta0": { var c = $0.independenceObjective; c.eta = 0; return c },
        "score-game-eta0.5": { var c = $0.independenceObjective; c.eta = 0.5; return c },
        "score-game-eta1": { var c = $0.independenceObjective; c.eta = 1; return c },
        "score-negative-guidance": { $0.negativeGuidanceObjective },
    ]

    /// A benchmark row by name: "original" (no erasure), "score", "score-retain-anchor" (SCORE
    /// towards the retained prompts: with the unconditional anchor, SCORE's equilibrium draws
    /// the concept as often as the unconditional model does), "uce", or "esd-…" with that
    /// trainable set; each at its defaults (SCORE's from `score`), seeded per cell.
    public static func named(_ name: String, score: SCOREConfig = SCOREConfig()) throws -> BenchmarkMethod {
        var configs = MethodConfigs()
        configs.score = score
        return try named(name, configs: configs)
    }

    /// A benchmark row by name with each method's config from `configs` (SCORE's ablation rows
    /// change `configs.score`; an "esd-…" row sets ESD's trainable set to its own).
    public static func named(_ name: String, configs: MethodConfigs) throws -> BenchmarkMethod {
        var method = try row(name, configs: configs)
        method.erasureMethod = name == "original" ? nil
            : name.hasPrefix("score") ? "score" : name.hasPrefix("esd") ? "esd" : name
        return method
    }

    /// The rows of `names`; a method given a config file (`configs.loaded`) that no row runs is
    /// an error naming --method-config, not a file silently ignored.
    public static func rows(_ names: [String], configs: MethodConfigs) throws -> [BenchmarkMethod] {
        let rows = try names.map { try named($0, configs: configs) }
        for method in configs.loaded where !rows.contains(where: { $0.erasureMethod == method }) {
            throw EvaluationError.invalidRequest("--method-config \(method)=…: no row of --methods (\(names.joined(separator: ", "))) runs \(method)")
        }
        return rows
    }

    private static func row(_ name: String, configs: MethodConfigs) throws -> BenchmarkMethod {
        let score = configs.score
        switch name {
        case "original":
            return BenchmarkMethod(name: name, make: nil)
        case "score", "score-retain-anchor":
            var method = BenchmarkMethod(name: name) { seed in
                var config = score
                config.seed = seed
                return try ErasureMethods.make("score", score: config)
            }
            method.anchorsFromRetained = name == "score-retain-anchor"
            return method
        case let variant where scoreAblations[variant] != nil:
            let change = scoreAblations[variant]!
            return BenchmarkMethod(name: name) { seed in
                var config = change(score)
                config.seed = seed
                return try ErasureMethods.make("score", score: config)
            }
        case "esd":
            return BenchmarkMethod(name: name) { seed in
                var config = configs.esd
                config.seed = seed
                return try ErasureMethods.make("esd", esd: config)
            }
        case "eraseanything":
            return BenchmarkMethod(name: name) { seed in
                var config = EraseAnythingConfig()
                config.seed = seed
                return try ErasureMethods.make("eraseanything", eraseAnything: config)
            }
        case "uce":
            var method = BenchmarkMethod(name: name) { _ in try ErasureMethods.make("uce", uce: configs.uce) }
            method.seeded = false
            return method
        case "ant":
            return BenchmarkMethod(name: name) { seed in
                var config = configs.ant
                config.seed = seed
                return try ErasureMethods.make("ant", ant: config)
            }
        case "mace":
            return BenchmarkMethod(name: name) { seed in var c = configs.mace; c.seed = seed; return try ErasureMethods.make("mace", mace: c) }
        case "advunlearn":
            return BenchmarkMethod(name: name) { seed in var c = configs.advUnlearn; c.seed = seed; return try ErasureMethods.make("advunlearn", advUnlearn: c) }
        case "rece":
            var method = BenchmarkMethod(name: name) { _ in try ErasureMethods.make("rece", rece: configs.rece) }
            method.seeded = false
            return method
        case let esd where esd.hasPrefix("esd-"):
            guard let trainMethod = ESDTrainMethod(rawValue: esd) else {
                throw EvaluationError.invalidRequest("unknown benchmark method '\(esd)'; ESD rows are \(ESDTrainMethod.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            // A row named for its trainable set runs that set; a config file choosing another one
            // belongs to the plain "esd" row.
            if configs.esd.trainMethod != ESDConfig().trainMethod && configs.esd.trainMethod != trainMethod {
                throw EvaluationError.invalidRequest("--method-config esd=…: its trainMethod \(configs.esd.trainMethod.rawValue) contradicts the row \(esd); run it as the row esd")
            }
            return BenchmarkMethod(name: name) { seed in
                var config = configs.esd
                config.trainMethod = trainMethod
                config.seed = seed
                return try ErasureMethods.make("esd", esd: config)
            }
        default:
            throw EvaluationError.invalidRequest("unknown benchmark method '\(name)'; methods: original, score, score-retain-anchor, \(scoreAblations.keys.sorted().joined(separator: ", ")), uce, rece, ant, mace, advunlearn, esd (ESD at its defaults, esd-x), esd-x, esd-u, esd-all, esd-x-strict, eraseanything (FLUX only)")
        }
    }
}

/// The hyper-parameters each benchmark method runs with: the defaults, SCORE's `--config`, or a
/// file per method (`--method-config M=FILE`, e.g. the winner `score tune` writes).
public struct MethodConfigs {
    public var score = SCOREConfig()
    public var esd = ESDConfig()
    public var uce = UCEConfig()
    public var ant = ANTConfig()
    public var mace = MACEConfig()
    public var advUnlearn = AdvUnlearnConfig()
    public var rece = RECEConfig()
    /// The methods a file was loaded for, in the order given.
    public private(set) var loaded: [String] = []

    /// The methods with a config file and a search space (`--method-config`, `score tune`).
    public static let methods = ["score", "esd", "uce", "ant", "mace", "advunlearn", "rece"]

    public init() {}

    /// `--method-config M=FILE` entries, each file's keys over M's defaults; `scoreConfig`
    /// (`--config`) is SCORE's file as well, which may not be given twice. Only the entries count
    /// as `loaded`: `--config` applies to SCORE's rows when there are any, as it always has.
    public init(files: [String], scoreConfig: String? = nil) throws {
        let entries = try files.map { entry -> (String, String) in
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw EvaluationError.invalidRequest("--method-config '\(entry)' is not METHOD=FILE (e.g. esd=runs/tune-esd/esd.json)")
            }
            return (parts[0].lowercased(), parts[1])
        }
        if let scoreConfig {
            guard !entries.contains(where: { $0.0 == "score" }) else {
                throw EvaluationError.invalidRequest("--config and --method-config score=… both give SCORE's hyper-parameters; give one")
            }
            // Checked once SCORE's flags are over it, as `score erase` does.
            score = try SCOREConfig.load(URL(fileURLWithPath: scoreConfig))
        }
        for (method, file) in entries {
            guard let config = self[method] else {
                throw EvaluationError.invalidRequest("--method-config: unknown method '\(method)'; methods: \(Self.methods.joined(separator: ", "))")
            }
            guard !loaded.contains(method) else { throw EvaluationError.invalidRequest("--method-config \(method) is given twice") }
            self[method] = try config.loading(URL(fileURLWithPath: file))
            loaded.append(method)
        }
    }

    /// Method `name`'s config (nil: not a method of `methods`).
    public subscript(name: String) -> (any TunableConfig)? {
        get {
            switch name {
            case "score": return score
            case "esd": return esd
            case "uce": return uce
            case "ant": return ant
            case "mace": return mace
            case "advunlearn": return advUnlearn
            case "rece": return rece
            default: return nil
            }
        }
        set {
            switch (name, newValue) {
            case ("score", let c as SCOREConfig): score = c
            case ("esd", let c as ESDConfig): esd = c
            case ("uce", let c as UCEConfig): uce = c
            case ("ant", let c as ANTConfig): ant = c
            case ("mace", let c as MACEConfig): mace = c
            case ("advunlearn", let c as AdvUnlearnConfig): advUnlearn = c
            case ("rece", let c as RECEConfig): rece = c
            default: preconditionFailure("\(name) takes its own config type, not \(newValue.map { "\(type(of: $0))" } ?? "nil")")
            }
        }
    }
}

/// A benchmark of cells: every method on every concept and seed. Each finished cell is written
/// to `<output>/<concept>/<method>-seed<N>.json` and never recomputed, so a killed benchmark
/// resumes where it stopped.
public protocol CellBenchmark {
    associatedtype Cell: BenchmarkCellRecord
    var concepts: [String] { get }
    var methods: [BenchmarkMethod] { get }
    var seeds: [UInt64] { get }
    var output: URL { get }
    /// Whether a decoded cell file belongs to this benchmark (a cell of another task, or one
    /// measured with other evaluation settings, in the same folder is measured again, not trusted).
    func accepts(_ cell: Cell) -> Bool
    /// The selected attacks a cell `accepts` keeps has not run at this benchmark's budgets
    /// (missing, or run at another budget): the run adds just these to the cell.
    func attacksToRun(_ cell: Cell) -> [String]
    /// The target prompts an erasure of `concept` trains on now (nil: not checked). A cell that
    /// recorded other prompts was erased from another request and is measured again.
    func targetPrompts(concept: String) -> [String]?
}

extension CellBenchmark {
    public func accepts(_ cell: Cell) -> Bool { true }
    public func attacksToRun(_ cell: Cell) -> [String] { [] }
    public func targetPrompts(concept: String) -> [String]? { nil }

    func cellURL(concept: String, method: String, seed: UInt64) -> URL {
        output.appendingPathComponent(concept.replacingOccurrences(of: " ", with: "-"))
            .appendingPathComponent("\(method)-seed\(seed).json")
    }

    /// The cells in the order they run: concept, then method, then seed; the original model
    /// (no `make`) and unseeded methods (UCE) once per concept, with the first seed.
    public func plannedCells() -> [(concept: String, method: BenchmarkMethod, seed: UInt64)] {
        concepts.flatMap { concept in
            methods.flatMap { method in (method.make == nil || !method.seeded ? [seeds[0]] : seeds).map { (concept, method, $0) } }
        }
    }

    /// The cell already measured at its file, or nil when it has to be (re)computed or lacks one
    /// of the selected attacks. A file that does not decode, or whose method ran with other
    /// hyper-parameters than `method` has now, is recomputed, and the log says so.
    func finishedCell(concept: String, method: BenchmarkMethod, seed: UInt64, log: (String) -> Void) -> Cell? {
        guard let cell = storedCell(concept: concept, method: method, seed: seed, log: log) else { return nil }
        let missing = attacksToRun(cell)
        guard missing.isEmpty else {
            log("\(cellURL(concept: concept, method: method.name, seed: seed).path) lacks \(missing.joined(separator: ", ")) at this benchmark's budget")
            return nil
        }
        return cell
    }

    /// The cell at its file when its erasure and measurement still hold, whatever attacks it has run.
    func storedCell(concept: String, method: BenchmarkMethod, seed: UInt64, log: (String) -> Void) -> Cell? {
        let url = cellURL(concept: concept, method: method.name, seed: seed)
        guard let data = try? Data(contentsOf: url) else { return nil }
        do {
            let cell = try JSONInput.decode(Cell.self, from: data)
            guard accepts(cell) else {
                log("\(url.path) is a cell of another task or of other evaluation settings: the cell counts as not measured")
                return nil
            }
            if let recorded = cell.method_config, recorded != (try? method.configJSON(seed: seed)) {
                log("\(url.path) was measured with other \(method.name) hyper-parameters: the cell counts as not measured")
                return nil
            }
            if method.make != nil, let recorded = cell.target_prompts, let now = targetPrompts(concept: concept), recorded != now {
                log("\(url.path) was erased with other target prompts than '\(concept)' has now: the cell counts as not measured")
                return nil
            }
            return cell
        } catch {
            log("\(url.path) does not decode (\(error)): the cell counts as not measured")
            return nil
        }
    }

    /// The planned cells already measured, in plan order: a table of a benchmark still running
    /// or stopped part-way, without measuring anything.
    public func finishedCells(log: (String) -> Void = { _ in }) -> [Cell] {
        plannedCells().compactMap { finishedCell(concept: $0.concept, method: $0.method, seed: $0.seed, log: log) }
    }

    /// Runs the plan, skipping cells whose file exists and writing each new cell as it finishes.
    /// A stored cell that lacks some of the selected attacks gets just those from `addAttacks`
    /// (its erasure, evaluation and leakage estimate kept); when that returns nil, or is not
    /// given, the cell is measured again from the start.
    func run(log: (String) -> Void, addAttacks: ((Cell, BenchmarkMethod, [String]) throws -> Cell?)? = nil,
             measure: (String, BenchmarkMethod, UInt64) throws -> Cell) throws -> [Cell] {
        var cells: [Cell] = []
        for (concept, method, seed) in plannedCells() {
            if let stored = storedCell(concept: concept, method: method, seed: seed, log: log) {
                let missing = attacksToRun(stored)
                if missing.isEmpty {
                    log("\(concept) / \(method.name) / seed \(seed): done before, skipped")
                    cells.append(stored)
                    continue
                }
                log("\(concept) / \(method.name) / seed \(seed): measured before; adding \(missing.joined(separator: ", "))")
                if let completed = try addAttacks?(stored, method, missing) {
                    try writeJSONAtomically(completed, to: cellURL(concept: concept, method: method.name, seed: seed))
                    cells.append(completed)
                    continue
                }
                log("  the stored cell cannot be completed: measured again")
            }
            log("\(concept) / \(method.name) / seed \(seed)")
            var cell = try measure(concept, method, seed)
            cell.method_config = try method.configJSON(seed: seed)
            cell.target_prompts = method.make == nil ? nil : targetPrompts(concept: concept)
            try writeJSONAtomically(cell, to: cellURL(concept: concept, method: method.name, seed: seed))
            cells.append(cell)
        }
        return cells
    }
}

/// Seconds per phase of one cell.
final class PhaseTimer {
    private(set) var seconds: [String: Double] = [:]

    /// Adds time spent on `phase` outside this timer (an erasure's earlier pieces).
    func add(_ extra: Double, to phase: String) { seconds[phase, default: 0] += extra }

    func callAsFunction<T>(_ phase: String, _ body: () throws -> T) rethrows -> T {
        let started = Date()
        defer { seconds[phase] = Date().timeIntervalSince(started) }
        return try body()
    }

    var line: String {
        "  seconds: " + seconds.sorted { $0.key < $1.key }.map { String(format: "%@ %.0f", $0.key, $0.value) }.joined(separator: ", ")
    }
}

/// The erasure step of a cell, the same for every task: builds the method for the seed, erases
/// `request` from `model` in place (resumable in the cell's run folder) and writes the changed
/// tensors over `original` to `<runFolder>/model`. Returns how many parameters changed.
func eraseCell(method: BenchmarkMethod, seed: UInt64, request: ErasureRequest, model: LoadedModel, original: LoadedModel,
               runFolder: URL, timer: PhaseTimer, log: @escaping (String) -> Void) throws -> Int {
    try eraseCell(method: method, seed: seed, request: request, model: model.pipeline, reference: original.pipeline.unet,
                  baseFolder: original.folder, baseName: original.name, runFolder: runFolder, timer: timer, log: log)
}

/// The same on a model of either family: the changed denoiser tensors are written over
/// `reference` (the base's denoiser, read from `baseFolder`) under the family's component.
func eraseCell<Model: ErasableModel>(method: BenchmarkMethod, seed: UInt64, request: ErasureRequest, model: Model, reference: Module,
                                     baseFolder: URL, baseName: String, runFolder: URL, timer: PhaseTimer,
                                     log: @escaping (String) -> Void) throws -> Int {
    guard let make = method.make else { return 0 }
    let eraser = try make(seed)
    var request = request
    if method.anchorsFromRetained {
        guard !request.retainPrompts.isEmpty else {
            throw EvaluationError.invalidRequest("\(method.name) erases towards the retained prompts, and this task has none")
        }
        for i in request.concepts.indices { request.concepts[i].anchors = request.retainPrompts }
    }
    // A method that trains the text encoder saves that change beside the UNet's, as `score erase` does.
    let encoder = eraser.changesTextEncoder ? model.textEncoderModule : nil
    let encoderBefore = encoder.map { $0.namedParameters().reduce(into: [String: Tensor]()) { $0[$1.name] = Tensor(shape: $1.tensor.shape, scalars: $1.tensor.scalars) } }
    let outcome = try timer("erase") {
        try eraser.erase(request, model: model, context: ErasureContext(output: runFolder, resume: true, log: log))
    }
    timer.add(outcome.earlierSeconds, to: "erase")
    // Every term's loss and gradient norm per step (run.json's `losses`), kept beside the cell's
    // model so that an ablation can say which term moved the model; null where a step has none.
    if !outcome.losses.isEmpty {
        try writeJSONAtomically(outcome.losses.mapValues { $0.map { $0.isFinite ? $0 : nil } },
                                to: runFolder.appendingPathComponent("losses.json"))
    }
    let written = try ErasedModel.write(denoiser: model.denoiser, reference: reference, component: Model.denoiserComponent,
                                        baseFolder: baseFolder, baseName: baseName, method: eraser.name,
                                        concepts: request.concepts.map(\.name), full: false,
                                        textEncoder: encoder.map { ($0, encoderBefore!) },
                                        to: runFolder.appendingPathComponent("model"))
    log(String(format: "  erased in %.0f s, %d parameters changed, final erase loss %@", timer.seconds["erase"] ?? 0, written.entries,
               outcome.losses["erase"]?.last.map { String(format: "%.4f", $0) } ?? "–"))
    return written.entries
}

/// The tables' number format: mean ± sample standard deviation over seeds, "–" when nothing
/// was measured; fractions as percentages.
func benchmarkStat(_ values: [Double], percent: Bool = true, digits: Int = 1) -> String {
    guard !values.isEmpty else { return "–" }
    let scale = percent ? 100.0 : 1.0
    let mean = values.reduce(0, +) / Double(max(values.count, 1))
    let spread = values.count > 1 ? (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count - 1)).squareRoot() : 0
    let format = "%.\(digits)f"
    return values.count > 1 ? String(format: "\(format) ± \(format)", mean * scale, spread * scale)
                            : String(format: format, mean * scale)
}

/// (concept, method) pairs in the order the cells list them: the tables' rows.
func benchmarkRows<Cell: BenchmarkCellRecord>(_ cells: [Cell]) -> [(concept: String, method: String, cells: [Cell])] {
    var order: [(String, String)] = []
    for cell in cells where !order.contains(where: { $0 == (cell.concept, cell.method) }) { order.append((cell.concept, cell.method)) }
    return order.map { concept, method in (concept, method, cells.filter { $0.concept == concept && $0.method == method }) }
}
