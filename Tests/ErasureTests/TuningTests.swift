import Erasure
@testable import Evaluation
import Foundation
import XCTest

/// `score tune`: the search spaces, the draw, the selection rule, resuming, and the configs it
/// hands to `score benchmark --method-config`.
final class TuningTests: XCTestCase {
    private func folder(_ name: String) -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
    }

    func testDrawIsSeededStartsWithTheDefaultsAndNeverRepeats() {
        let space = SearchSpace(["a": [1, 2, 3], "b": ["x", "y"], "c": [0.5, 0.25, 1.0, 2.0]])
        XCTAssertEqual(space.size, 24)
        XCTAssertEqual(space.setting(0), ["a": 1, "b": "x", "c": 0.5])
        XCTAssertEqual(space.setting(1), ["a": 2, "b": "x", "c": 0.5], "the first key turns fastest")
        XCTAssertEqual(space.setting(23), ["a": 3, "b": "y", "c": 2.0])
        XCTAssertEqual(Set((0..<24).map(space.setting)).count, 24, "every number is its own configuration")

        let drawn = space.draw(budget: 8, seed: 3)
        XCTAssertEqual(drawn, space.draw(budget: 8, seed: 3), "the same seed draws the same configurations")
        XCTAssertEqual(drawn.first, 0, "the defaults first")
        XCTAssertEqual(Set(drawn).count, 8, "without replacement")
        XCTAssertTrue(drawn.allSatisfy { (0..<24).contains($0) })
        XCTAssertNotEqual(drawn, space.draw(budget: 8, seed: 4), "another seed, another draw")
        XCTAssertEqual(Array(space.draw(budget: 12, seed: 3).prefix(8)), drawn, "a larger budget extends the same draw")
        let whole = space.draw(budget: 100, seed: 3)
        XCTAssertEqual(whole.count, 24)
        XCTAssertEqual(whole.first, 0)
        XCTAssertEqual(Set(whole), Set(0..<24), "a budget beyond the space measures all of it")
        XCTAssertEqual(space.draw(budget: 1, seed: 9), [0])
    }

    /// Every method's declared space starts at its defaults, names keys its config has and holds
    /// only valid configurations.
    func testEveryMethodsSpaceStartsAtItsDefaultsAndIsValid() throws {
        for method in MethodConfigs.methods {
            let defaults = try XCTUnwrap(MethodConfigs()[method], method)
            let space = type(of: defaults).searchSpace
            XCTAssertGreaterThan(space.size, 1, method)
            XCTAssertTrue(space.dimensions.allSatisfy { Set($0.values).count == $0.values.count }, "\(method): a candidate listed twice")
            let first = try defaults.applying(space.setting(0))
            XCTAssertEqual(try JSONOutput.string(first), try JSONOutput.string(defaults), "\(method): configuration 0 is the defaults")
            var distinct = Set<String>()
            for index in 0..<space.size { distinct.insert(try JSONOutput.string(try defaults.applying(space.setting(index)))) }
            XCTAssertEqual(distinct.count, space.size, "\(method): every configuration changes the config")
        }
    }

    func testUnknownKeyOrValueIsNamed() {
        XCTAssertThrowsError(try UCEConfig().applying(["lamda": 0.1])) { error in
            XCTAssertTrue("\(error)".contains("'lamda'") && "\(error)".contains("lambda"), "\(error)")
        }
        XCTAssertThrowsError(try ESDConfig().applying(["trainMethod": "esd-z"])) { error in
            XCTAssertTrue("\(error)".contains("'trainMethod'") && "\(error)".contains("esd-z"), "\(error)")
        }
        XCTAssertThrowsError(try UCEConfig().applying(["lambda": 0.0]), "an invalid configuration is refused") { error in
            XCTAssertTrue("\(error)".contains("lambda"), "\(error)")
        }
    }

    func testSelectionRule() throws {
        func config(_ index: Int, kept: Double?, upper: Double?, accE: Double = 0.1) -> TunedConfig {
            TunedConfig(index: index, name: "m-config\(index)", setting: [:], acc_e: accE, acc_s: 0.9, acc_s_relative: kept, leakage_upper: upper)
        }
        // The lowest upper leakage limit among those keeping 95% of Acc_s: not the lower leakage
        // of the one that lost retained accuracy.
        let configs = [config(0, kept: 0.99, upper: 0.30), config(1, kept: 0.90, upper: 0.05),
                       config(2, kept: 0.96, upper: 0.20), config(3, kept: 1.01, upper: 0.25)]
        XCTAssertEqual(configs.map(\.eligible), [true, false, true, true])
        XCTAssertEqual(TuningRule.winner(configs), 2)
        XCTAssertEqual(TuningRule.winner([config(0, kept: 0.95, upper: 0.2)]), 0, "95% itself is eligible")
        // Ties on the leakage limit go to the lower Acc_e, then to the earlier draw.
        XCTAssertEqual(TuningRule.winner([config(0, kept: 0.99, upper: 0.2, accE: 0.3), config(1, kept: 0.98, upper: 0.2, accE: 0.1)]), 1)
        XCTAssertEqual(TuningRule.winner([config(0, kept: 0.99, upper: 0.2), config(1, kept: 0.98, upper: 0.2)]), 0)
        // A configuration without a leakage estimate never beats one with it.
        XCTAssertEqual(TuningRule.winner([config(0, kept: 0.99, upper: nil), config(1, kept: 0.98, upper: 0.6)]), 1)
        // None eligible: the most Acc_s kept.
        XCTAssertEqual(TuningRule.winner([config(0, kept: 0.80, upper: 0.1), config(1, kept: 0.90, upper: 0.4)]), 1)
        XCTAssertNil(TuningRule.winner([]))
    }

    /// A tuning run killed part-way measures only the configurations left, and writes the
    /// winner by the rule; the cells record the configs they ran with.
    func testTuneResumesAndWritesTheWinner() throws {
        let out = folder("tune")
        defer { try? FileManager.default.removeItem(at: out) }
        var run = TuneRun(method: "uce", budget: 4, output: out.path)
        run.concept = "bag"
        try run.validate()
        let candidates = try run.candidates()
        XCTAssertEqual(candidates.count, 4)
        XCTAssertEqual(candidates[0].index, 0)
        XCTAssertEqual(candidates.map(\.row.name), candidates.map { "uce-config\($0.index)" })
        XCTAssertEqual(candidates.map(\.index), try run.candidates().map(\.index), "the same draw each time")
        let benchmark = run.benchmark(candidates)
        XCTAssertEqual(benchmark.attacks, [], "tuning cells run no attacks")
        XCTAssertEqual(benchmark.leakage.trajectories, 48)

        // Config 0 (the defaults) loses Acc_s; the second drawn has the lowest leakage limit.
        let metrics = { (name: String) -> (kept: Double, upper: Double) in
            let position = candidates.firstIndex { $0.row.name == name }!
            return position == 0 ? (0.5, 0.01) : (1, position == 1 ? 0.1 : 0.3)
        }
        func cell(_ concept: String, _ method: String, _ seed: UInt64) -> ObjectBenchmarkCell {
            let (kept, upper) = metrics(method)
            let accuracies = Accuracies(acc_e: 0.1, acc_s: 0.9 * kept, acc_g: 0, h_o: 0.9)
            var evaluation = ObjectEvaluation(concept: concept, label: 8, acc_e: 0.1, acc_s: 0.9 * kept, acc_g: 0, h_o: 0.9, kid: nil,
                                              kid_real: 1, acc_s_relative: kept, original: accuracies, second_judge: accuracies,
                                              per_class_accuracy: [:], target_classes: nil, leakage_nats: upper / 2, leakage_bound: nil,
                                              leakage: nil, settings: benchmark.settings, model: method, original_model: nil)
            evaluation.leakage = LeakageReport(concept: concept, critics: [
                CriticLeakage(critic: "probe", leakage_nats: upper / 2, interval_low: 0, interval_high: upper, accuracy: 0.5,
                              test_samples: 8, accuracy_samples: 8)], trajectories_per_class: 48)
            return ObjectBenchmarkCell(concept: concept, method: method, seed: seed, evaluation: evaluation, wall_seconds: 1,
                                       peak_memory_mb: nil, parameters_changed: 1, attacks: [:])
        }
        var measured: [String] = []
        struct Killed: Error {}
        XCTAssertThrowsError(try benchmark.run(log: { _ in }) { concept, method, seed in
            if measured.count == 2 { throw Killed() }
            measured.append(method.name)
            return cell(concept, method.name, seed)
        })
        measured = []
        let cells = try benchmark.run(log: { _ in }) { concept, method, seed in
            measured.append(method.name)
            return cell(concept, method.name, seed)
        }
        XCTAssertEqual(measured, candidates.suffix(2).map(\.row.name), "the two finished configurations are skipped")
        let lambdas = try cells.map { cell -> Double in
            let config = try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(cell.method_config).utf8)) as! [String: Any]
            return try XCTUnwrap(config["lambda"] as? Double)
        }
        XCTAssertEqual(lambdas, candidates.map { setting -> Double in
            if case .real(let lambda)? = setting.setting["lambda"] { return lambda }
            return .nan
        }, "each cell records the config it ran with")

        let result = try run.finish(candidates, cells: cells)
        XCTAssertEqual(result.winner, candidates[1].row.name)
        XCTAssertEqual(result.configs.map(\.eligible), [false, true, true, true])
        XCTAssertEqual(result.space_size, UCEConfig.searchSpace.size)
        let written = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("tune.json"))) as! [String: Any]
        XCTAssertEqual(written["winner"] as? String, candidates[1].row.name)
        XCTAssertEqual((written["configs"] as? [Any])?.count, 4)
        XCTAssertTrue(try String(contentsOf: out.appendingPathComponent("tune.md"), encoding: .utf8).contains("**winner**"))

        // The winner's file runs the benchmark's uce row with the winner's config.
        let winnerFile = out.appendingPathComponent("uce.json")
        let configs = try MethodConfigs(files: ["uce=\(winnerFile.path)"])
        XCTAssertEqual(configs.uce, try UCEConfig().applying(candidates[1].setting))
        let row = try BenchmarkMethod.rows(["original", "uce"], configs: configs)[1]
        XCTAssertEqual(try row.configJSON(seed: 0), cells[1].method_config)
    }

    func testTuneAndMethodConfigErrorsNameTheFlagOrKey() throws {
        let out = folder("tune-errors")
        defer { try? FileManager.default.removeItem(at: out) }
        XCTAssertThrowsError(try TuneRun(method: "magic", budget: 4, output: out.path).validate()) { error in
            XCTAssertTrue("\(error)".contains("--method") && "\(error)".contains("magic"), "\(error)")
        }
        XCTAssertThrowsError(try TuneRun(method: "esd", budget: 0, output: out.path).validate()) { error in
            XCTAssertTrue("\(error)".contains("--budget"), "\(error)")
        }
        XCTAssertThrowsError(try MethodConfigs(files: ["magic=x.json"])) { error in
            XCTAssertTrue("\(error)".contains("--method-config") && "\(error)".contains("magic"), "\(error)")
        }
        XCTAssertThrowsError(try MethodConfigs(files: ["esd"])) { error in XCTAssertTrue("\(error)".contains("--method-config"), "\(error)") }

        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let file = out.appendingPathComponent("esd.json")
        try Data(#"{"learningRate": 0.0001, "negativeGuidance": 2}"#.utf8).write(to: file)
        XCTAssertThrowsError(try MethodConfigs(files: ["esd=\(file.path)"])) { error in
            XCTAssertTrue("\(error)".contains("negativeGuidance") && "\(error)".contains(file.path), "\(error)")
        }
        try Data(#"{"learningRate": 0.0001, "trainMethod": "esd-u"}"#.utf8).write(to: file)
        let configs = try MethodConfigs(files: ["esd=\(file.path)"])
        XCTAssertEqual(configs.esd.learningRate, 1e-4)
        XCTAssertEqual(configs.loaded, ["esd"])
        XCTAssertThrowsError(try BenchmarkMethod.rows(["original", "score"], configs: configs), "a file no row runs") { error in
            XCTAssertTrue("\(error)".contains("--method-config esd"), "\(error)")
        }
        XCTAssertThrowsError(try BenchmarkMethod.rows(["esd-x"], configs: configs), "the row's name fixes another trainable set")
        let esd = try BenchmarkMethod.rows(["esd", "esd-u"], configs: configs)
        for row in esd {
            let config = try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(try row.configJSON(seed: 0)).utf8)) as! [String: Any]
            XCTAssertEqual(config["trainMethod"] as? String, "esd-u", row.name)
            XCTAssertEqual((config["learningRate"] as? Double).map { Float($0) }, 1e-4, row.name)
        }
        XCTAssertThrowsError(try MethodConfigs(files: ["score=\(file.path)"], scoreConfig: file.path)) { error in
            XCTAssertTrue("\(error)".contains("--config"), "\(error)")
        }
    }
}
