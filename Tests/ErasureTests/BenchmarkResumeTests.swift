@testable import Evaluation
import Foundation
import XCTest

/// `score benchmark` resumes: a cell whose file exists is read back, not measured again.
final class BenchmarkResumeTests: XCTestCase {
    private func cell(_ concept: String, _ method: String, _ seed: UInt64) -> ObjectBenchmarkCell {
        let accuracies = Accuracies(acc_e: 0.5, acc_s: 0.5, acc_g: 0.5, h_o: 0.5)
        let evaluation = ObjectEvaluation(concept: concept, label: 7, acc_e: Double(seed), acc_s: 0.9, acc_g: 0, h_o: 0.9, kid: nil,
                                          kid_real: 1, acc_s_relative: nil, original: nil, second_judge: accuracies,
                                          per_class_accuracy: [:], leakage_nats: nil, leakage_bound: nil, leakage: nil,
                                          settings: EvaluationSettings(), model: method, original_model: nil)
        return ObjectBenchmarkCell(concept: concept, method: method, seed: seed, evaluation: evaluation, wall_seconds: 1,
                             peak_memory_mb: nil, parameters_changed: 0)
    }

    func testFinishedCellsAreReadBackAndOnlyTheRestMeasured() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bench-resume-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let methods = [BenchmarkMethod(name: "original", make: nil),
                       BenchmarkMethod(name: "erase", make: { _ in fatalError("the fake measurement never builds a method") })]
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

        // Everything finished: nothing is measured.
        measured = []
        _ = try benchmark.run(log: { _ in }) { concept, method, seed in
            measured.append("\(concept)/\(method.name)/\(seed)")
            return self.cell(concept, method.name, seed)
        }
        XCTAssertEqual(measured, [])
    }
}
