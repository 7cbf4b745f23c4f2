import Erasure
@testable import Evaluation
import Foundation
import XCTest

/// `score benchmark` resumes: a cell whose file exists is read back, not measured again.
final class BenchmarkResumeTests: XCTestCase {
    private func cell(_ concept: String, _ method: String, _ seed: UInt64) -> ObjectBenchmarkCell {
        let accuracies = Accuracies(acc_e: 0.5, acc_s: 0.5, acc_g: 0.5, h_o: 0.5)
        let evaluation = ObjectEvaluation(concept: concept, label: 7, acc_e: Double(seed), acc_s: 0.9, acc_g: 0, h_o: 0.9, kid: nil,
                                          kid_real: 1, acc_s_relative: nil, original: nil, second_judge: accuracies,
                                          per_class_accuracy: [:], target_classes: nil, leakage_nats: nil, leakage_bound: nil, leakage: nil,
                                          settings: EvaluationSettings(), model: method, original_model: nil)
        // The attacks a default benchmark runs, at its budgets: a cell without them is measured again.
        let budgets = ObjectBenchmark(concepts: [], methods: [], seeds: [0], output: URL(fileURLWithPath: "/")).attackBudgets
        return ObjectBenchmarkCell(concept: concept, method: method, seed: seed, evaluation: evaluation, wall_seconds: 1,
                             peak_memory_mb: nil, parameters_changed: 0,
                             attacks: budgets.mapValues { AttackSummary(successes: 0, trials: $0.instances, budget: $0) })
    }

    func testFinishedCellsAreReadBackAndOnlyTheRestMeasured() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bench-resume-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let methods = [BenchmarkMethod(name: "original", make: nil),
                       BenchmarkMethod(name: "erase", make: { _ in try ErasureMethods.make("uce") })]   // built only for its config
        let benchmark = ObjectBenchmark(concepts: ["sneaker", "bag"], methods: methods, seeds: [0, 1], output: folder)
        let planned = benchmark.plannedCells().map { "\($0.concept)/\($0.method.name)/\($0.seed)" }
        XCTAssertEqual(planned, ["sneaker/original/0", "sneaker/erase/0", "sneaker/erase/1",
                                 "bag/original/0", "bag/erase/0", "bag/erase/1"])
        // UCE's closed form does not depend on the seed: one cell per concept, as the original's.
        let withUCE = ObjectBenchmark(concepts: ["bag"], methods: [try BenchmarkMethod.named("uce"), try BenchmarkMethod.named("score")],
                                      seeds: [0, 1], output: folder)
        XCTAssertEqual(withUCE.plannedCells().map { "\($0.method.name)/\($0.seed)" }, ["uce/0", "score/0", "score/1"])

        // A first run killed after two cells: they are on disk.
        var measured: [String] = []
        struct Killed: Error {}
        XCTAssertThrowsError(try benchmark.run(log: { _ in }) { concept, method, seed in
            if measured.count == 2 { throw Killed() }
            measured.append("\(concept)/\(method.name)/\(seed)")
            return self.cell(concept, method.name, seed)
        })
        XCTAssertEqual(measured, ["sneaker/original/0", "sneaker/erase/0"])
        XCTAssertEqual(benchmark.finishedCells().map { "\($0.concept)/\($0.method)/\($0.seed)" }, measured)

        // A corrupt cell file is measured again, not trusted.
        let corrupt = benchmark.cellURL(concept: "bag", method: "erase", seed: 1)
        try FileManager.default.createDirectory(at: corrupt.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("{not json".utf8).write(to: corrupt)

        measured = []
        var skipped: [String] = []
        let cells = try benchmark.run(log: { if $0.hasSuffix("done before, skipped") { skipped.append($0) } }) { concept, method, seed in
            measured.append("\(concept)/\(method.name)/\(seed)")
            return self.cell(concept, method.name, seed)
        }
        XCTAssertEqual(measured, ["sneaker/erase/1", "bag/original/0", "bag/erase/0", "bag/erase/1"])
        XCTAssertEqual(skipped.count, 2)
        XCTAssertEqual(cells.map { "\($0.concept)/\($0.method)/\($0.seed)" }, planned)
        XCTAssertEqual(cells[2].evaluation.acc_e, 1, "the cell read back is the one written")

        // A cell measured at another guidance is measured again.
        var older = self.cell("bag", "erase", 1)
        older.evaluation.settings.guidance = 4
        try JSONEncoder().encode(older).write(to: corrupt)
        XCTAssertEqual(benchmark.finishedCells().count, planned.count - 1)
        measured = []
        _ = try benchmark.run(log: { _ in }) { concept, method, seed in
            measured.append("\(concept)/\(method.name)/\(seed)")
            return self.cell(concept, method.name, seed)
        }
        XCTAssertEqual(measured, ["bag/erase/1"])

        // A cell whose leakage was estimated on other trajectories, or at another guidance, is
        // measured again; one from before the guidance was recorded counts as the default's.
        let critic = CriticLeakage(critic: "x̂₀ critic w32", leakage_nats: 0.1, interval_low: 0, interval_high: 0.2, accuracy: 0.6,
                                   test_samples: 32, accuracy_samples: 32)
        for (trajectories, guidance, remeasured) in [(4, nil, true), (benchmark.leakage.trajectories, Float(2), true),
                                                     (benchmark.leakage.trajectories, nil, false)] as [(Int, Float?, Bool)] {
            var withLeakage = self.cell("bag", "erase", 1)
            withLeakage.evaluation.leakage = LeakageReport(concept: "bag", critics: [critic], trajectories_per_class: trajectories)
            withLeakage.evaluation.leakage?.guidance = guidance
            try JSONEncoder().encode(withLeakage).write(to: corrupt)
            XCTAssertEqual(benchmark.finishedCells().count, planned.count - (remeasured ? 1 : 0), "\(trajectories) trajectories, guidance \(String(describing: guidance))")
        }

        // Everything finished: nothing is measured.
        measured = []
        _ = try benchmark.run(log: { _ in }) { concept, method, seed in
            measured.append("\(concept)/\(method.name)/\(seed)")
            return self.cell(concept, method.name, seed)
        }
        XCTAssertEqual(measured, [])
    }

    /// A cell records its method's hyper-parameters; one measured with others (a changed
    /// default) is measured again, one with the same is kept, and one without the record is kept.
    func testCellsOfOtherHyperParametersAreMeasuredAgain() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bench-config-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let uce = try BenchmarkMethod.named("uce")
        let benchmark = ObjectBenchmark(concepts: ["bag"], methods: [uce], seeds: [0], output: folder)
        let written = try benchmark.run(log: { _ in }) { concept, method, seed in self.cell(concept, method.name, seed) }
        let current = try XCTUnwrap(try uce.configJSON(seed: 0))
        XCTAssertEqual(written[0].method_config, current)
        XCTAssertEqual(benchmark.finishedCells().count, 1)

        let url = benchmark.cellURL(concept: "bag", method: "uce", seed: 0)
        var stale = written[0]
        stale.method_config = current.replacingOccurrences(of: "\"lambda\" : 0.5", with: "\"lambda\" : 0.25")
        XCTAssertNotEqual(stale.method_config, current, "the fixture must change a hyper-parameter")
        try JSONEncoder().encode(stale).write(to: url)
        var logged: [String] = []
        XCTAssertEqual(benchmark.finishedCells(log: { logged.append($0) }).count, 0)
        XCTAssertTrue(logged.contains { $0.contains("other uce hyper-parameters") }, "\(logged)")

        stale.method_config = nil
        try JSONEncoder().encode(stale).write(to: url)
        XCTAssertEqual(benchmark.finishedCells().count, 1)
        XCTAssertNil(try BenchmarkMethod.named("original").configJSON(seed: 0))
    }

    /// A cell records the target prompts it was erased with; one erased from another request
    /// (trouser before its noun "pair of trousers" was a target) is measured again, one without
    /// the record is kept, and the original model's cell records none.
    func testCellsOfAnotherRequestAreMeasuredAgain() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bench-request-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let uce = try BenchmarkMethod.named("uce")
        let benchmark = ObjectBenchmark(concepts: ["trouser"], methods: [try BenchmarkMethod.named("original"), uce], seeds: [0], output: folder)
        let written = try benchmark.run(log: { _ in }) { concept, method, seed in self.cell(concept, method.name, seed) }
        let now = try XCTUnwrap(benchmark.targetPrompts(concept: "trouser"))
        XCTAssertTrue(now.contains { $0.contains("pair of trousers") }, "\(now)")
        XCTAssertNil(written[0].target_prompts, "the original model erases nothing")
        XCTAssertEqual(written[1].target_prompts, now)

        let url = benchmark.cellURL(concept: "trouser", method: "uce", seed: 0)
        var stale = written[1]
        stale.target_prompts = now.filter { !$0.contains("pair of trousers") }
        try JSONEncoder().encode(stale).write(to: url)
        var logged: [String] = []
        XCTAssertEqual(benchmark.finishedCells(log: { logged.append($0) }).count, 1)
        XCTAssertTrue(logged.contains { $0.contains("other target prompts") }, "\(logged)")

        stale.target_prompts = nil
        try JSONEncoder().encode(stale).write(to: url)
        XCTAssertEqual(benchmark.finishedCells().count, 2)
    }
}
