import Erasure
import Foundation
import SafeTensors
import Testbed

// `score tune`: the equal tuning budget. One method, one held-in class, K configurations drawn
// from the method's declared search space (`TunableConfig.searchSpace`), each measured as one
// object-benchmark cell (erase, evaluate, leakage; no attacks), and one stated rule picking the
// winner. Every method gets the same K and the same rule (docs/RESULTS.md, "Fair tuning").

/// One measured configuration of a tuning run.
public struct TunedConfig: Codable, Sendable, Equatable {
    /// The configuration's number in the search space (0: the defaults).
    public var index: Int
    /// The cell's method name, "<method>-config<index>".
    public var name: String
    /// The searched keys' values.
    public var setting: ConfigSetting
    /// Every hyper-parameter as the cell ran with it (run.json's config).
    public var config: String?
    public var acc_e: Double
    public var acc_g: Double
    public var acc_s: Double
    /// Acc_s as a fraction of the original model's on the same images.
    public var acc_s_relative: Double?
    public var h_o: Double
    public var leakage_nats: Double?
    /// The upper limit of the leakage estimate's 95% interval.
    public var leakage_upper: Double?
    /// Whether it keeps Acc_s ≥ `TuningRule.retainedFraction` of the original's.
    public var eligible: Bool

    public init(index: Int, name: String, setting: ConfigSetting, config: String? = nil, acc_e: Double, acc_g: Double = 0,
                acc_s: Double, acc_s_relative: Double?, h_o: Double = 0, leakage_nats: Double? = nil, leakage_upper: Double?) {
        self.index = index
        self.name = name
        self.setting = setting
        self.config = config
        self.acc_e = acc_e
        self.acc_g = acc_g
        self.acc_s = acc_s
        self.acc_s_relative = acc_s_relative
        self.h_o = h_o
        self.leakage_nats = leakage_nats
        self.leakage_upper = leakage_upper
        eligible = (acc_s_relative ?? 0) >= TuningRule.retainedFraction
    }
}

/// How a tuning run picks its winner; the same for every method.
public enum TuningRule {
    /// The share of the original model's Acc_s a configuration must keep to be eligible.
    public static let retainedFraction = 0.95

    public static let text = "Among the configurations that keep Acc_s ≥ 95% of the original model's, the lowest upper 95% limit "
        + "of the leakage estimate wins; ties go to the lower Acc_e, then to the earlier draw (the defaults first). If none keeps "
        + "95%, the one that keeps the most Acc_s wins, ties broken the same way."

    /// The position in `configs` (draw order) of the winner; nil when `configs` is empty.
    public static func winner(_ configs: [TunedConfig]) -> Int? {
        let eligible = configs.indices.filter { configs[$0].eligible }
        let leakage = { (i: Int) in configs[i].leakage_upper ?? .infinity }
        let kept = { (i: Int) in configs[i].acc_s_relative ?? 0 }
        let pool = eligible.isEmpty ? Array(configs.indices) : eligible
        // `min` keeps the first of equal elements: the earlier draw.
        return pool.min { a, b in
            if eligible.isEmpty, kept(a) != kept(b) { return kept(a) > kept(b) }
            if leakage(a) != leakage(b) { return leakage(a) < leakage(b) }
            return configs[a].acc_e < configs[b].acc_e
        }
    }
}

/// What `score tune` writes to `<out>/tune.json`: every configuration measured and the winner.
public struct TuneResult: Codable, Sendable {
    public var method: String
    public var concept: String
    public var seed: UInt64
    public var budget: Int
    public var space_size: Int
    public var leakage_trajectories: Int
    public var rule: String
    /// In draw order: the defaults first.
    public var configs: [TunedConfig]
    /// The winner's `name`, and its searched keys.
    public var winner: String?
    public var winner_setting: ConfigSetting?
}

/// `score tune --method M --concept C --budget K --out DIR`.
public struct TuneRun {
    public var method: String
    /// The held-in class every configuration is measured on.
    public var concept = "sneaker"
    /// Configurations measured: the defaults, then K − 1 drawn without replacement.
    public var budget: Int
    public var output: String
    /// The draw's seed and the erasure seed of every cell.
    public var seed: UInt64 = 0
    public var leakage = LeakageOptions()

    public init(method: String, budget: Int, output: String) {
        self.method = method
        self.budget = budget
        self.output = output
    }

    public var outputURL: URL { URL(fileURLWithPath: output) }

    public func validate() throws {
        guard MethodConfigs.methods.contains(method) else {
            throw EvaluationError.invalidRequest("--method '\(method)' cannot be tuned; methods: \(MethodConfigs.methods.joined(separator: ", "))")
        }
        guard budget >= 1 else { throw EvaluationError.invalidSetting("--budget must be at least 1, not \(budget)") }
        guard try FashionPrompts.bundled().label(forConcept: concept) != nil else {
            throw EvaluationError.invalidRequest("--concept '\(concept)' is not a class of the testbed")
        }
        try leakage.validate()
        _ = try OutputPath.folder(output, flag: "--out")
    }

    /// The method's search space.
    public var space: SearchSpace { get throws { try defaults.searchSpace } }

    private var defaults: (config: any TunableConfig, searchSpace: SearchSpace) {
        get throws {
            guard let config = MethodConfigs()[method] else {
                throw EvaluationError.invalidRequest("--method '\(method)' cannot be tuned; methods: \(MethodConfigs.methods.joined(separator: ", "))")
            }
            return (config, type(of: config).searchSpace)
        }
    }

    /// The drawn configurations in draw order: their number in the space, setting and benchmark row.
    public func candidates() throws -> [(index: Int, setting: ConfigSetting, row: BenchmarkMethod)] {
        let (config, space) = try defaults
        return try space.draw(budget: budget, seed: seed).map { index in
            let setting = space.setting(index)
            var configs = MethodConfigs()
            configs[method] = try config.applying(setting)
            var row = try BenchmarkMethod.named(method, configs: configs)
            row.name = "\(method)-config\(index)"
            return (index, setting, row)
        }
    }

    /// The cells: each configuration on `concept` with `seed`, measured by the benchmark's cell
    /// code without attacks, resumable in `output` like any benchmark.
    func benchmark(_ candidates: [(index: Int, setting: ConfigSetting, row: BenchmarkMethod)]) -> ObjectBenchmark {
        var benchmark = ObjectBenchmark(concepts: [concept], methods: candidates.map(\.row), seeds: [seed], output: outputURL)
        benchmark.attacks = []
        benchmark.leakage = leakage
        return benchmark
    }

    /// Measures the configurations not measured before, picks the winner and writes
    /// `tune.json`, `tune.md` and `<method>.json` (the winner's config) to `output`.
    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> TuneResult {
        try validate()
        let candidates = try candidates()
        log("tuning \(method) on \(concept): \(candidates.count) of \(try space.size) configurations, seed \(seed)")
        return try finish(candidates, cells: try benchmark(candidates).run(assets: assets, log: log))
    }

    /// The result of the measured `cells` (one per candidate, in order), written out.
    func finish(_ candidates: [(index: Int, setting: ConfigSetting, row: BenchmarkMethod)], cells: [ObjectBenchmarkCell]) throws -> TuneResult {
        let measured = zip(candidates, cells).map { candidate, cell in
            let e = cell.evaluation
            return TunedConfig(index: candidate.index, name: candidate.row.name, setting: candidate.setting, config: cell.method_config,
                               acc_e: e.acc_e, acc_g: e.acc_g, acc_s: e.acc_s, acc_s_relative: e.acc_s_relative, h_o: e.h_o,
                               leakage_nats: e.leakage?.leakage_nats ?? e.leakage_nats, leakage_upper: e.leakage?.leakage_interval.last)
        }
        let winner = TuningRule.winner(measured).map { measured[$0] }
        let result = TuneResult(method: method, concept: concept, seed: seed, budget: budget, space_size: try space.size,
                                leakage_trajectories: leakage.trajectories, rule: TuningRule.text, configs: measured,
                                winner: winner?.name, winner_setting: winner?.setting)
        try FileManager.default.createDirectory(at: outputURL, withIntermediateDirectories: true)
        try SafeTensors.writeAtomically(try JSONOutput.encode(result), to: outputURL.appendingPathComponent("tune.json"))
        try SafeTensors.writeAtomically(Data(Self.markdown(result).utf8), to: outputURL.appendingPathComponent("tune.md"))
        if let config = winner?.config {
            try SafeTensors.writeAtomically(Data(config.utf8), to: outputURL.appendingPathComponent("\(method).json"))
        }
        return result
    }

    /// `tune.md`: the rule, then one row per configuration in draw order, the winner marked.
    public static func markdown(_ result: TuneResult) -> String {
        let keys = result.configs.first.map { $0.setting.keys.sorted() } ?? []
        var text = "# Tuning \(result.method) on \(result.concept)\n\n"
        text += "\(result.configs.count) of \(result.space_size) configurations (the defaults, then drawn with seed \(result.seed)); "
            + "each one cell: erasure seed \(result.seed), no attacks, leakage at \(result.leakage_trajectories) trajectories per class.\n\n"
        text += "Rule: \(result.rule)\n\n"
        text += "| config | " + keys.joined(separator: " | ") + " | Acc_e ↓ | Acc_g ↓ | Acc_s ↑ (of original) | H_o ↑ | leakage Î | upper 95% | eligible | |\n"
        text += "|---|" + String(repeating: "---|", count: keys.count) + "---|---|---|---|---|---|---|---|\n"
        for c in result.configs {
            let leakage = c.leakage_nats.map { String(format: "%.3f", $0) } ?? "–"
            let upper = c.leakage_upper.map { String(format: "%.3f", $0) } ?? "–"
            let relative = c.acc_s_relative.map { String(format: " (%.1f%%)", $0 * 100) } ?? ""
            text += "| \(c.name) | " + keys.map { c.setting[$0]?.description ?? "–" }.joined(separator: " | ")
            text += String(format: " | %.1f%% | %.1f%% | %.1f%%%@ | %.1f%% | ", c.acc_e * 100, c.acc_g * 100, c.acc_s * 100, relative, c.h_o * 100)
            text += "\(leakage) | \(upper) | \(c.eligible ? "yes" : "no") | \(c.name == result.winner ? "**winner**" : "") |\n"
        }
        if let winner = result.winner {
            text += "\nWinner: \(winner); its config is `\(result.method).json` beside this file "
                + "(`score benchmark --method-config \(result.method)=<this folder>/\(result.method).json`).\n"
        }
        return text
    }
}
