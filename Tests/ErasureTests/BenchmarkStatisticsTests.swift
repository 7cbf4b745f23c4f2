import Erasure
@testable import Evaluation
import Foundation
import XCTest

/// The benchmark's intervals and tests (Statistics.swift, BenchmarkSummary.swift) on cases whose
/// answer is known.
final class BenchmarkStatisticsTests: XCTestCase {
    /// Judged images of one cell on class 7: `targetHits` of 32 target images and
    /// `paraphraseHits` of 30 paraphrase images drawn as the concept, 9 retained classes × 10
    /// images with `retainedMisses` wrong in class 0.
    static func judged(targetHits: Int, paraphraseHits: Int = 0, retainedMisses: Int = 0) -> JudgedImages {
        let retainedLabels = [0, 1, 2, 3, 4, 5, 6, 8, 9].flatMap { Array(repeating: $0, count: 10) }
        var retained = retainedLabels
        for i in 0..<retainedMisses { retained[i] = 7 }
        return JudgedImages(target: (0..<32).map { $0 < targetHits ? 7 : 1 }, paraphrase: (0..<30).map { $0 < paraphraseHits ? 7 : 2 },
                            retained: retained, retainedLabels: retainedLabels)
    }

    func testEstimateWilsonMatchesKnownValues() {
        // statsmodels proportion_confint(method="wilson"): 81/263 → (0.2553, 0.3662); 0/10 → (0, 0.2775).
        let e = Estimate.wilson(successes: 81, trials: 263)
        XCTAssertEqual(e.value, 81.0 / 263, accuracy: 1e-12)
        XCTAssertEqual(e.low, 0.25527, accuracy: 1e-4)
        XCTAssertEqual(e.high, 0.36617, accuracy: 1e-4)
        XCTAssertEqual(Estimate.wilson(successes: 0, trials: 10).high, 0.27753, accuracy: 1e-4)
        XCTAssertEqual(Estimate.wilson(successes: 5, trials: 10).text(), "50.0% [23.7, 76.3]")
    }

    func testPercentileIntervalOfKnownSample() {
        let (low, high) = percentileInterval((0...100).map(Double.init))
        XCTAssertEqual(low, 2.5, accuracy: 1e-12)
        XCTAssertEqual(high, 97.5, accuracy: 1e-12)
    }

    func testHOIntervalContainsTheEstimateAndCollapsesWithoutVariation() throws {
        // Every image judged the same way in every cell: every resample gives the same H_o.
        let perfect = try XCTUnwrap(BenchmarkStatistics.hO([Self.judged(targetHits: 0), Self.judged(targetHits: 0)], label: 7))
        XCTAssertEqual(perfect.value, 1, accuracy: 1e-12)
        XCTAssertEqual(perfect.low, 1, accuracy: 1e-12)
        XCTAssertEqual(perfect.high, 1, accuracy: 1e-12)
        // Half the target images still drawn: H_o = 3 / (1/0.5 + 1 + 1) = 0.75, with real width.
        let half = try XCTUnwrap(BenchmarkStatistics.hO([Self.judged(targetHits: 16)], label: 7))
        XCTAssertEqual(half.value, 0.75, accuracy: 1e-12)
        XCTAssertLessThan(half.low, 0.75)
        XCTAssertGreaterThan(half.high, 0.75)
        XCTAssertLessThan(half.high, 0.9)
        // Same seed, same interval.
        XCTAssertEqual(BenchmarkStatistics.hO([Self.judged(targetHits: 16)], label: 7), half)
        // Seeds that disagree widen the interval beyond the images' own spread.
        let spread = try XCTUnwrap(BenchmarkStatistics.hO([Self.judged(targetHits: 4), Self.judged(targetHits: 28)], label: 7))
        XCTAssertGreaterThan(spread.high - spread.low, half.high - half.low)
    }

    func testPairedBootstrapOnConstructedCases() throws {
        let reference = [Self.judged(targetHits: 2), Self.judged(targetHits: 3), Self.judged(targetHits: 1)]
        // The same images judged the same way: difference 0 in every replicate, p = 1.
        let same = try XCTUnwrap(BenchmarkStatistics.pairedHODifference(reference, reference: reference, label: 7))
        XCTAssertEqual(same.difference.value, 0, accuracy: 1e-12)
        XCTAssertEqual(same.p_value, 1)
        XCTAssertFalse(same.differs)
        // A method that still draws the concept 30 times in 32: far worse H_o, p < 0.05.
        let weak = [Self.judged(targetHits: 30), Self.judged(targetHits: 29), Self.judged(targetHits: 31)]
        let worse = try XCTUnwrap(BenchmarkStatistics.pairedHODifference(weak, reference: reference, label: 7))
        XCTAssertLessThan(worse.difference.value, -0.5)
        XCTAssertLessThan(worse.difference.high, 0)
        XCTAssertLessThan(worse.p_value, 0.05)
        XCTAssertTrue(worse.differs)
        // One image more in one seed: within the noise.
        let close = [Self.judged(targetHits: 3), Self.judged(targetHits: 3), Self.judged(targetHits: 1)]
        let near = try XCTUnwrap(BenchmarkStatistics.pairedHODifference(close, reference: reference, label: 7))
        XCTAssertGreaterThan(near.p_value, 0.05)
        XCTAssertFalse(near.differs)
        XCTAssertLessThan(near.difference.low, 0)
        XCTAssertGreaterThan(near.difference.high, 0)
        // Different prompt lists cannot be paired.
        var other = Self.judged(targetHits: 1)
        other.target.removeLast()
        XCTAssertNil(BenchmarkStatistics.pairedHODifference([other], reference: reference, label: 7))
    }

    func testLeakageIntervalOverSeeds() throws {
        let one = try XCTUnwrap(BenchmarkStatistics.leakage([(0.02, 0.01, 0.03)]))
        XCTAssertEqual([one.value, one.low, one.high], [0.02, 0.01, 0.03])
        let three = try XCTUnwrap(BenchmarkStatistics.leakage([(0.01, 0.0, 0.02), (0.03, 0.02, 0.04), (0.02, 0.01, 0.03)]))
        XCTAssertEqual(three.value, 0.02, accuracy: 1e-12)
        XCTAssertLessThan(three.low, 0.02)
        XCTAssertGreaterThan(three.high, 0.02)
        XCTAssertGreaterThan(three.low, -0.01)
        XCTAssertLessThan(three.high, 0.05)
        XCTAssertNil(BenchmarkStatistics.leakage([]))
    }

    // MARK: Benchmark

    static func cell(_ method: String, seed: UInt64, judged: JudgedImages, benchmark: ObjectBenchmark) -> ObjectBenchmarkCell {
        let (accuracies, perClass) = ObjectEvaluator.accuracies(judged, label: 7)
        var evaluation = ObjectEvaluation(concept: "Sneaker", label: 7, acc_e: accuracies.acc_e, acc_s: accuracies.acc_s,
                                          acc_g: accuracies.acc_g, h_o: accuracies.h_o, kid: nil, kid_real: 1, acc_s_relative: nil,
                                          original: nil, second_judge: accuracies,
                                          per_class_accuracy: Dictionary(uniqueKeysWithValues: perClass.map { ("class \($0.key)", $0.value) }),
                                          target_classes: nil, leakage_nats: 0.01, leakage_bound: nil, leakage: nil,
                                          settings: benchmark.settings, model: method, original_model: nil, judged: judged)
        evaluation.neighbours = ["class 5", "class 9"]
        evaluation.neighbours_by = neighboursMethod
        let attacks = benchmark.attackBudgets.mapValues { AttackSummary(successes: 1, trials: $0.instances * $0.seeds, budget: $0) }
        return ObjectBenchmarkCell(concept: "sneaker", method: method, seed: seed, evaluation: evaluation, wall_seconds: 1,
                                   parameters_changed: 1, asr_paraphrase: 0.25, asr_paraphrase_trials: 16,
                                   asr_unlearndiffatk_pre: 0, asr_unlearndiffatk_post: 0.1, attacks: attacks)
    }

    func testDefaultsMeetTheBenchmarkPower() throws {
        let benchmark = ObjectBenchmark(concepts: ["sneaker"], methods: [], seeds: [0], output: URL(fileURLWithPath: "/tmp/unused"))
        XCTAssertEqual(benchmark.attacks, benchmarkAttacks.map(\.key))
        XCTAssertTrue(Set(benchmark.attacks).isSuperset(of: ["unlearndiffatk", "inversion", "ring-a-bell", "cce"]))
        for (name, budget) in benchmark.attackBudgets {
            XCTAssertGreaterThanOrEqual(budget.instances * budget.seeds, 16, name)
        }
        XCTAssertEqual(benchmark.budget(of: "unlearndiffatk")?.instances, 16)
        XCTAssertGreaterThanOrEqual(BenchmarkRun(task: .object, methods: []).seeds, 3)
    }

    func testAttacksFlagSelectsByName() throws {
        XCTAssertEqual(try parseBenchmarkAttacks("cce, unlearndiffatk"), ["unlearndiffatk", "cce"])
        XCTAssertEqual(try parseBenchmarkAttacks("all"), benchmarkAttacks.map(\.key))
        XCTAssertEqual(try parseBenchmarkAttacks("none"), [])
        XCTAssertThrowsError(try parseBenchmarkAttacks("inversion,pgd")) { error in
            XCTAssertTrue("\(error)".contains("--attacks") && "\(error)".contains("pgd"), "\(error)")
        }
    }

    /// A stored cell lacking a selected attack, or holding it at another budget, is not finished;
    /// the run adds just the attacks it lacks and keeps its erasure, evaluation and leakage, and
    /// measures it again only when the attacks cannot be added.
    func testCellLackingAnAttackGetsOnlyThatAttackAdded() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bench-attacks-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let methods = [BenchmarkMethod(name: "original", make: nil)]
        let benchmark = ObjectBenchmark(concepts: ["sneaker"], methods: methods, seeds: [0], output: folder)
        _ = try benchmark.run(log: { _ in }) { _, method, seed in Self.cell(method.name, seed: seed, judged: Self.judged(targetHits: 30), benchmark: benchmark) }
        XCTAssertEqual(benchmark.finishedCells().count, 1)

        var fewer = benchmark
        fewer.setAttackInstances(4)
        var logged: [String] = []
        XCTAssertEqual(fewer.finishedCells(log: { logged.append($0) }).count, 0, "another attack budget")
        XCTAssertTrue(logged.contains { $0.contains("lacks") }, "\(logged)")
        XCTAssertEqual(fewer.attacksToRun(benchmark.finishedCells()[0]).count, benchmark.attacks.count)

        var official = benchmark
        official.unlearnDiffAtk.budget = .fast
        XCTAssertEqual(official.finishedCells().count, 0, "another UnlearnDiffAtk schedule")
        XCTAssertEqual(official.attacksToRun(benchmark.finishedCells()[0]), ["unlearndiffatk"])

        var subset = benchmark
        subset.attacks = ["cce"]
        XCTAssertEqual(subset.finishedCells().count, 1, "a cell with more attacks than selected is kept")

        // A cell that ran CCE alone: the full set adds the other attacks to it, nothing else.
        var onlyCCE = subset.finishedCells()[0]
        onlyCCE.attacks = onlyCCE.attacks?.filter { $0.key == "cce" }
        onlyCCE.evaluation.acc_e = 0.123
        try JSONEncoder().encode(onlyCCE).write(to: benchmark.cellURL(concept: "sneaker", method: "original", seed: 0))
        XCTAssertEqual(benchmark.finishedCells().count, 0, "the full set lacks attacks on disk")
        var added: [[String]] = []
        var measured = 0
        let cells = try benchmark.run(log: { _ in }, addAttacks: { cell, _, names in
            added.append(names)
            var cell = cell
            for name in names { cell.attacks?[name] = AttackSummary(successes: 2, trials: 16, budget: benchmark.budget(of: name)!) }
            return cell
        }) { _, method, seed in
            measured += 1
            return Self.cell(method.name, seed: seed, judged: Self.judged(targetHits: 30), benchmark: benchmark)
        }
        XCTAssertEqual(measured, 0)
        XCTAssertEqual(added, [benchmark.attacks.filter { $0 != "cce" }])
        XCTAssertEqual(cells[0].evaluation.acc_e, 0.123, "the stored evaluation is kept")
        let onDisk = try XCTUnwrap(benchmark.finishedCells().first)
        XCTAssertEqual(onDisk.attacks?["cce"], onlyCCE.attacks?["cce"])
        XCTAssertEqual(onDisk.attacks?["inversion"]?.successes, 2)

        // Attacks that cannot be added (no stored model): the cell is measured again.
        measured = 0
        _ = try fewer.run(log: { _ in }, addAttacks: { _, _, _ in nil }) { _, method, seed in
            measured += 1
            return Self.cell(method.name, seed: seed, judged: Self.judged(targetHits: 30), benchmark: fewer)
        }
        XCTAssertEqual(measured, 1)
        XCTAssertEqual(fewer.finishedCells().count, 1)
    }

    func testSummaryJSONCarriesIntervalsAndTheComparison() throws {
        let benchmark = ObjectBenchmark(concepts: ["sneaker"], methods: [], seeds: [0, 1, 2], output: URL(fileURLWithPath: "/tmp/unused"))
        let cells = [Self.cell("original", seed: 0, judged: Self.judged(targetHits: 31, paraphraseHits: 28), benchmark: benchmark)]
            + (0..<3).map { Self.cell("esd-x", seed: UInt64($0), judged: Self.judged(targetHits: 20 + $0, paraphraseHits: 15), benchmark: benchmark) }
            + (0..<3).map { Self.cell("score", seed: UInt64($0), judged: Self.judged(targetHits: 1 + $0, retainedMisses: 3), benchmark: benchmark) }
        let summary = BenchmarkSummary(cells: cells)
        let json = try JSONSerialization.jsonObject(with: JSONOutput.encode(summary)) as! [String: Any]
        XCTAssertEqual(json["reference_method"] as? String, "score")
        XCTAssertEqual((json["cells"] as? [Any])?.count, 7)
        let rows = try XCTUnwrap(json["rows"] as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["method"] as? String }, ["original", "esd-x", "score"])
        let esd = rows[1]
        let accE = try XCTUnwrap(esd["acc_e"] as? [String: Any])
        XCTAssertEqual(accE["successes"] as? Int, 20 + 21 + 22)
        XCTAssertEqual(accE["trials"] as? Int, 96)
        XCTAssertEqual(accE["method"] as? String, "wilson")
        for key in ["low", "high", "value"] { XCTAssertNotNil(accE[key] as? Double, key) }
        let hO = try XCTUnwrap(esd["h_o"] as? [String: Any])
        XCTAssertLessThanOrEqual(hO["low"] as! Double, hO["value"] as! Double)
        XCTAssertGreaterThanOrEqual(hO["high"] as! Double, hO["value"] as! Double)
        let versus = try XCTUnwrap(esd["versus_reference"] as? [String: Any])
        XCTAssertEqual(versus["differs"] as? Bool, true)
        XCTAssertLessThan(versus["p_value"] as! Double, 0.05)
        XCTAssertNil(rows[2]["versus_reference"], "the reference row is not tested against itself")
        let retained = try XCTUnwrap(esd["retained"] as? [String: Any])
        XCTAssertEqual(retained.count, 9)
        XCTAssertEqual(((retained["class 0"] as? [String: Any])?["trials"]) as? Int, 30)
        XCTAssertEqual(esd["neighbours"] as? [String], ["class 5", "class 9"])
        let attacks = try XCTUnwrap(esd["attacks"] as? [String: Any])
        XCTAssertEqual(Set(attacks.keys), Set(benchmark.attacks))
        XCTAssertNotNil((esd["asr_paraphrase"] as? [String: Any])?["low"])

        // The table shows the intervals, the comparison and the flagged neighbours.
        let table = summary.markdown()
        let lines = table.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines[0].contains("H_o vs score"))
        XCTAssertTrue(lines[3].contains("| esd-x | 3 | 65.6% ["), lines[3])
        XCTAssertTrue(lines[3].contains("differs (p "), lines[3])
        XCTAssertTrue(lines[4].contains("| reference |"), lines[4])
        XCTAssertTrue(table.contains("class 5 ◆"))
        XCTAssertTrue(table.contains("| score | 70% ["), table)
    }

    /// Cells of two concepts with sneaker held in: the comparison, its summaries and the
    /// leakage–attack correlation use bag alone; sneaker's rows are listed apart and marked.
    func testHeldInClassIsMeasuredButTabledApart() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bench-held-in-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let names = ["original", "esd-x", "esd-u", "uce", "score"]
        let methods = try names.map { try BenchmarkMethod.named($0) }
        let benchmark = ObjectBenchmark(concepts: ["sneaker", "bag"], methods: methods, seeds: [0], output: folder)
        _ = try benchmark.run(log: { _ in }) { concept, method, seed in
            var cell = Self.cell(method.name, seed: seed, judged: Self.judged(targetHits: 3 + method.name.count), benchmark: benchmark)
            cell.concept = concept
            cell.evaluation.leakage_nats = Double(method.name.count) / 100
            return cell
        }

        let summary = BenchmarkSummary(cells: benchmark.finishedCells(), heldIn: "sneaker")
        XCTAssertEqual(summary.heldOutRows.map(\.concept), Array(repeating: "bag", count: names.count))
        XCTAssertEqual(summary.rows.filter { $0.held_in == true }.map(\.method), names)
        let comparison = summary.comparisonMarkdown()
        XCTAssertFalse(comparison.contains("| sneaker |"), comparison)
        XCTAssertFalse(comparison.contains("erasing sneaker"), comparison)
        XCTAssertTrue(comparison.contains("| bag | score |"), comparison)
        let apart = summary.heldInMarkdown()
        XCTAssertTrue(apart.contains("Tuning class (held in): sneaker"), apart)
        XCTAssertTrue(apart.contains("| sneaker | score |"), apart)
        XCTAssertFalse(apart.contains("| bag |"), apart)
        XCTAssertEqual(BenchmarkSummary(cells: benchmark.finishedCells()).heldInMarkdown(), "", "no held-in class, no section")

        // `--finished-only` re-tables the cells on disk the same way; the default held-in class is sneaker.
        var run = BenchmarkRun(task: .object, methods: methods)
        run.concepts = ["sneaker", "bag"]
        run.seeds = 1
        run.output = folder.path
        run.finishedOnly = true
        let (markdown, json) = try run.run(log: { _ in })
        let heldInSection = try XCTUnwrap(markdown.range(of: "### Tuning class (held in): sneaker"))
        XCTAssertFalse(markdown[..<heldInSection.lowerBound].contains("| sneaker |"), markdown)
        // The correlation over concepts counts bag's four erasing rows, not sneaker's as well.
        XCTAssertTrue(markdown.contains("| any attack (highest ASR) | 4 |"), markdown)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        XCTAssertEqual(object["held_in"] as? String, "sneaker")
        let rows = try XCTUnwrap(object["rows"] as? [[String: Any]])
        XCTAssertEqual(rows.filter { $0["held_in"] as? Bool == true }.count, names.count)
        XCTAssertTrue(rows.filter { $0["concept"] as? String == "bag" }.allSatisfy { $0["held_in"] == nil })
        let cells = try XCTUnwrap(object["cells"] as? [[String: Any]])
        XCTAssertEqual(cells.filter { $0["held_in"] as? Bool == true }.map { $0["concept"] as? String }, Array(repeating: "sneaker", count: names.count))

        run.heldIn = "none"
        let (plain, _) = try run.run(log: { _ in })
        XCTAssertFalse(plain.contains("Tuning class"), plain)
        XCTAssertTrue(plain.contains("| any attack (highest ASR) | 8 |"), plain)
    }

    func testHeldInMustBeAmongTheConcepts() throws {
        var run = BenchmarkRun(task: .object, methods: [try BenchmarkMethod.named("score")])
        run.concepts = ["bag", "trouser"]
        run.output = FileManager.default.temporaryDirectory.appendingPathComponent("bench-held-in-\(UUID().uuidString)").path
        XCTAssertNil(try run.heldInConcept(), "the default held-in class counts only where it is measured")
        run.concepts = ["sneaker"]
        XCTAssertNil(try run.heldInConcept(), "a run of the tuning class alone is its own comparison")
        run.concepts = ["sneaker", "bag"]
        XCTAssertEqual(try run.heldInConcept(), "sneaker")
        run.concepts = ["bag", "trouser"]
        run.heldIn = "sneaker"
        XCTAssertThrowsError(try run.validate()) { error in
            XCTAssertTrue("\(error)".contains("--held-in") && "\(error)".contains("bag, trouser"), "\(error)")
        }
        run.heldIn = "none"
        XCTAssertNil(try run.heldInConcept())
        run.heldIn = "trouser"
        XCTAssertEqual(try run.heldInConcept(), "trouser")
        XCTAssertNil(try BenchmarkRun(task: .style, methods: []).heldInConcept(), "no emoji class was tuned on")
    }
}
