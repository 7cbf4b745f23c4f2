import Foundation

/// One row of the object benchmark (a method on a concept, over its seeds) with every rate's
/// 95% interval: what `--json` prints beside the cells and what the tables show.
public struct BenchmarkRowSummary: Codable, Sendable {
    public var concept: String
    public var method: String
    public var seeds: [UInt64]
    /// Pooled over seeds, each with its Wilson interval.
    public var acc_e: Estimate
    public var acc_g: Estimate
    public var acc_s: Estimate
    /// Bootstrap over seeds and images; nil where a cell lacks the per-image record.
    public var h_o: Estimate?
    /// Mean Î over seeds; see `BenchmarkStatistics.leakage`.
    public var leakage_nats: Estimate?
    public var asr_paraphrase: Estimate?
    public var asr_unlearndiffatk_pre: Estimate?
    /// Each attack's ASR over the seeds' pooled instances, by attack name.
    public var attacks: [String: Estimate]
    /// Each retained class's accuracy pooled over seeds (Wilson), by class name.
    public var retained: [String: Estimate]
    /// The erased concept's nearest classes, flagged in the retained table, and how they were found.
    public var neighbours: [String]?
    public var neighbours_by: String?
    /// This row against the reference method's row on the same concept and images (nil for the
    /// reference itself, or when either lacks the per-image record).
    public var versus_reference: PairedComparison?
    public var kid_real: [Double]
    public var wall_seconds: [Double]
    public var parameters_changed: [Int]
    /// true on the held-in (tuning) class's rows, which the comparison leaves out; absent otherwise.
    public var held_in: Bool? = nil
}

/// The object benchmark's rows with their intervals and tests, and the cells they come from.
public struct BenchmarkSummary: Codable, Sendable {
    /// The method every row is tested against.
    public var reference_method: String
    /// The class hyper-parameters were tuned on (`--held-in`): its rows are measured and listed
    /// apart, never part of the comparison. nil: no held-in class.
    public var held_in: String?
    public var rows: [BenchmarkRowSummary]
    public var cells: [ObjectBenchmarkCell]

    public init(cells: [ObjectBenchmarkCell], reference: String = "score", heldIn: String? = nil) {
        self.cells = cells.map { $0.markingHeldIn(heldIn) }
        reference_method = reference
        held_in = heldIn
        let groups = benchmarkRows(cells)
        rows = groups.map { group in
            let referenceCells = groups.first { $0.concept == group.concept && $0.method == reference }?.cells
            var row = Self.row(concept: group.concept, method: group.method, cells: group.cells,
                               reference: group.method == reference ? nil : referenceCells)
            if group.concept == heldIn { row.held_in = true }
            return row
        }
    }

    /// The rows the comparison is made of: every concept but the held-in one.
    public var heldOutRows: [BenchmarkRowSummary] { rows.filter { $0.held_in != true } }

    /// Rates pooled over cells: successes are each cell's rate × its image count, rounded (the
    /// rates are counts over those images).
    static func pooled(_ rates: [(Double, Int)]) -> Estimate {
        let successes = rates.map { Int(($0.0 * Double($0.1)).rounded()) }.reduce(0, +)
        return .wilson(successes: successes, trials: rates.map(\.1).reduce(0, +))
    }

    static func row(concept: String, method: String, cells: [ObjectBenchmarkCell], reference: [ObjectBenchmarkCell]?) -> BenchmarkRowSummary {
        let evaluations = cells.map(\.evaluation)
        let label = evaluations[0].label
        let judged = evaluations.compactMap(\.judged)
        let complete = judged.count == evaluations.count
        func counts(_ pick: (ObjectEvaluation) -> (Double, Int)) -> Estimate { pooled(evaluations.map(pick)) }
        let accE = counts { ($0.acc_e, $0.judged?.target.count ?? $0.settings.targetImages) }
        let accG = counts { ($0.acc_g, $0.judged?.paraphrase.count ?? $0.settings.paraphraseImages) }
        let perClassCount = { (e: ObjectEvaluation) in e.settings.retainImagesPerClass }
        let classes = Set(evaluations.flatMap { $0.per_class_accuracy.keys }).sorted()
        let retained = Dictionary(uniqueKeysWithValues: classes.map { name in
            (name, pooled(evaluations.compactMap { e in e.per_class_accuracy[name].map { ($0, perClassCount(e)) } }))
        })
        let accS = pooled(evaluations.map { e in (e.acc_s, perClassCount(e) * max(1, e.per_class_accuracy.count)) })
        let leakage = BenchmarkStatistics.leakage(evaluations.compactMap { e in
            e.leakage.map { ($0.leakage_nats, $0.leakage_interval[0], $0.leakage_interval[1]) }
        })
        let paraphrase = cells.allSatisfy({ $0.asr_paraphrase != nil && $0.asr_paraphrase_trials != nil })
            ? pooled(cells.map { ($0.asr_paraphrase!, $0.asr_paraphrase_trials!) }) : nil
        let udaTrials = cells.compactMap { $0.attacks?["unlearndiffatk"]?.trials }
        let udaPre = udaTrials.count == cells.count && cells.allSatisfy({ $0.asr_unlearndiffatk_pre != nil })
            ? pooled(zip(cells, udaTrials).map { ($0.asr_unlearndiffatk_pre!, $1) }) : nil
        var attacks: [String: Estimate] = [:]
        for (key, _) in attackColumns {
            let summaries = cells.compactMap { $0.attacks?[key] }
            guard !summaries.isEmpty else { continue }
            attacks[key] = .wilson(successes: summaries.map(\.successes).reduce(0, +), trials: summaries.map(\.trials).reduce(0, +))
        }
        var versus: PairedComparison? = nil
        if let reference, complete {
            let referenceJudged = reference.compactMap(\.evaluation.judged)
            if referenceJudged.count == reference.count {
                versus = BenchmarkStatistics.pairedHODifference(judged, reference: referenceJudged, label: label)
            }
        }
        return BenchmarkRowSummary(
            concept: concept, method: method, seeds: cells.map(\.seed), acc_e: accE, acc_g: accG, acc_s: accS,
            h_o: complete ? BenchmarkStatistics.hO(judged, label: label) : nil, leakage_nats: leakage,
            asr_paraphrase: paraphrase, asr_unlearndiffatk_pre: udaPre, attacks: attacks, retained: retained,
            neighbours: evaluations.compactMap(\.neighbours).first, neighbours_by: evaluations.compactMap(\.neighbours_by).first,
            versus_reference: versus, kid_real: evaluations.map(\.kid_real), wall_seconds: cells.map(\.wall_seconds),
            parameters_changed: cells.map(\.parameters_changed))
    }

    /// "differs (p 0.003, −12.1 [−20.3, −4.0])", "no (p 0.41, …)", "reference" or "—".
    func versusText(_ row: BenchmarkRowSummary) -> String {
        if row.method == reference_method { return "reference" }
        guard let v = row.versus_reference else { return "—" }
        let p = v.p_value < 1.0 / Double(BenchmarkStatistics.replicates) ? String(format: "< %.4f", 1.0 / Double(BenchmarkStatistics.replicates))
                                                                          : String(format: "%.3f", v.p_value)
        return String(format: "%@ (p %@, %+.1f [%+.1f, %+.1f])", v.differs ? "differs" : "no", p,
                      v.difference.value * 100, v.difference.low * 100, v.difference.high * 100)
    }

    /// The comparison over the held-out concepts, then the held-in class's own section.
    public func markdown() -> String { comparisonMarkdown() + heldInMarkdown() }

    /// The comparison over the held-out concepts: one row per concept × method with every rate's
    /// interval and the test against the reference method, then each retained class apart with
    /// the concept's neighbours flagged.
    public func comparisonMarkdown() -> String {
        let comparison = heldOutRows
        var out = table(comparison)
        if comparison.isEmpty { out += "| no held-out concept measured: every row is the held-in class's, below |\n" }
        out += "\nRates pooled over seeds with 95% Wilson intervals; H_o with a 95% bootstrap interval over seeds and images; "
            + "leakage the mean Î over seeds, 95% interval over seeds and held-out trajectories. "
            + "H_o vs \(reference_method): the difference in points with its 95% interval, by a paired bootstrap on the same images "
            + "(every method samples the same noise); \"differs\" when p < 0.05.\n"
        return out + retainedTables(comparison)
    }

    /// The held-in class's section: its rows in the comparison's columns, apart ("" without one).
    public func heldInMarkdown() -> String {
        guard let heldIn = held_in else { return "" }
        let tuning = rows.filter { $0.held_in == true }
        return "\n" + heldInHeading(heldIn) + "\n\n" + (tuning.isEmpty ? "No cell of \(heldIn) measured.\n" : table(tuning) + retainedTables(tuning))
    }

    /// One row per concept × method, with the columns of `markdown`.
    func table(_ rows: [BenchmarkRowSummary]) -> String {
        let stat = benchmarkStat
        func text(_ e: Estimate?, percent: Bool = true, digits: Int = 1) -> String { e?.text(percent: percent, digits: digits) ?? "–" }
        var out = "| concept | method | seeds | Acc_e ↓ | Acc_g ↓ | Acc_s ↑ | H_o ↑ | H_o vs \(reference_method) | KID vs real | ASR paraphrase ↓ | ASR UnlearnDiffAtk pre ↓ | "
            + attackColumns.map { "\($0.title) ↓" }.joined(separator: " | ")
            + " | leakage Î (nats) | erase time (s) | params changed |\n"
        out += "|---|---|---|---|---|---|---|---|---|---|---|" + String(repeating: "---|", count: attackColumns.count) + "---|---|---|\n"
        for row in rows {
            out += "| \(row.concept) | \(row.method) | \(row.seeds.count) | \(text(row.acc_e)) | \(text(row.acc_g)) | \(text(row.acc_s)) | "
            out += "\(text(row.h_o)) | \(versusText(row)) | \(stat(row.kid_real, false, 3)) | \(text(row.asr_paraphrase)) | "
            out += "\(text(row.asr_unlearndiffatk_pre)) | "
            out += attackColumns.map { row.attacks[$0.key].map { $0.text() } ?? "—" }.joined(separator: " | ") + " | "
            out += "\(text(row.leakage_nats, percent: false, digits: 3)) | \(stat(row.wall_seconds, false, 0)) | "
            out += "\(stat(row.parameters_changed.map(Double.init), false, 0)) |\n"
        }
        return out
    }

    /// Each concept's retained classes apart (Wilson 95%), the concept's neighbours flagged.
    func retainedTables(_ rows: [BenchmarkRowSummary]) -> String {
        func text(_ e: Estimate?) -> String { e?.text(percent: true, digits: 0) ?? "–" }
        var out = ""
        for concept in rows.map(\.concept).reduce(into: [String](), { if !$0.contains($1) { $0.append($1) } }) {
            let conceptRows = rows.filter { $0.concept == concept }
            let classes = Set(conceptRows.flatMap { $0.retained.keys }).sorted()
            let neighbours = conceptRows.compactMap(\.neighbours).first ?? []
            out += "\nRetained classes after erasing \(concept), each apart (Wilson 95%)"
            if let by = conceptRows.compactMap(\.neighbours_by).first {
                out += "; ◆ marks the concept's nearest neighbours (\(by))"
            }
            out += ".\n\n| method | " + classes.map { neighbours.contains($0) ? "\($0) ◆" : $0 }.joined(separator: " | ") + " |\n|---|"
                + String(repeating: "---|", count: classes.count) + "\n"
            for row in conceptRows {
                out += "| \(row.method) | " + classes.map { text(row.retained[$0]) }.joined(separator: " | ") + " |\n"
            }
        }
        return out
    }
}
