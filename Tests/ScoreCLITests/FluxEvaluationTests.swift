import ArgumentParser
import Diffusion
import Erasure
import Evaluation
import Foundation
@testable import ScoreCLI
import Tensor
import Testbed
import XCTest

/// `score evaluate`, `attack` and `benchmark` on the flow family: the shared measurement code
/// driven by a FLUX sampler, and the arguments that pick the family.
final class FluxEvaluationTests: XCTestCase {
    func tinyFluxFolder(seed: UInt64) throws -> URL { try FluxCommandTests.tinyFluxFolder(seed: seed, removedAfter: self) }

    func temporaryFolder(_ name: String) -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        return folder
    }

    func smallSettings(_ run: inout EvaluationRun) {
        run.settings.targetImages = 3
        run.settings.paraphraseImages = 2
        run.settings.retainImagesPerClass = 1
        run.leakage = nil
    }

    /// Acc_e, Acc_g, Acc_s, H_o and KID of `evaluate` on FLUX folders equal the same figures
    /// computed here from `FluxPipeline.generate` and the judge, at the mini-FLUX's sampler.
    func testEvaluateOnFluxMatchesADirectComputation() throws {
        let erasedFolder = try tinyFluxFolder(seed: 4), originalFolder = try tinyFluxFolder(seed: 5)
        var run = EvaluationRun(model: erasedFolder.path, concept: "sneaker")
        run.original = originalFolder.path
        run.reportFolder = temporaryFolder("flux-report").path
        smallSettings(&run)
        XCTAssertTrue(run.isFlux, "a FLUX folder is measured as flux without --family")
        let result: ObjectEvaluation
        do {
            result = try run.run(assets: Assets()) { _ in }
        } catch let error as AssetError {
            throw XCTSkip("MiniLM is not installed here (\(error)); run `score assets`")
        }

        let prompts = try FashionPrompts.bundled()
        let label = try XCTUnwrap(prompts.label(forConcept: "sneaker"))
        let erased = try MiniFlux.pipeline(folder: erasedFolder), original = try MiniFlux.pipeline(folder: originalFolder)
        func draw(_ pipeline: FluxPipeline, _ list: [String]) throws -> Tensor {
            try pipeline.generate(prompts: list, steps: MiniFlux.steps, guidance: MiniFlux.guidance, seed: run.settings.seed,
                                  height: 32, width: 32)
        }
        let judge = try DefaultModel.judge("cnn")
        func rate(_ images: Tensor) -> Double {
            let predicted = judge.predict(images)
            return Double(predicted.filter { $0 == label }.count) / Double(predicted.count)
        }
        let paraphrases = prompts.paraphrasePrompts(label)
        let target = Array(repeating: prompts.canonicalPrompt(label), count: 3)
        let paraphrase = (0..<2).map { paraphrases[$0 % paraphrases.count] }
        let retainedLabels = prompts.classes.map(\.label).filter { $0 != label }
        let retained = retainedLabels.map { prompts.canonicalPrompt($0) }
        let accE = rate(try draw(erased, target)), accG = rate(try draw(erased, paraphrase))
        let retainedImages = try draw(erased, retained)
        // One image per retained class: the mean of the per-class rates is the overall rate.
        let accS = Double(zip(judge.predict(retainedImages), retainedLabels).filter { $0 == $1 }.count) / Double(retainedLabels.count)
        XCTAssertEqual(result.acc_e, accE)
        XCTAssertEqual(result.acc_g, accG)
        XCTAssertEqual(result.acc_s, accS)
        XCTAssertEqual(result.h_o, harmonicMean([1 - accE, accS, 1 - accG]))
        XCTAssertEqual(result.original?.acc_e, rate(try draw(original, target)))
        let kid = kernelDistance(judge.featureBatches(retainedImages), judge.featureBatches(try draw(original, retained)))
        XCTAssertEqual(try XCTUnwrap(result.kid), kid, accuracy: 1e-12)
        XCTAssertEqual([result.settings.steps], [MiniFlux.steps])
        XCTAssertEqual(result.settings.guidance, MiniFlux.guidance)
        XCTAssertEqual(result.model, erasedFolder.path)
        XCTAssertEqual(result.original_model, originalFolder.path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run.reportURL.appendingPathComponent("report.html").path))
    }

    /// `erase --model <FLUX folder>` then `evaluate --model <its model/>`: the erased folder is
    /// loaded over its base and compared with that base; the run's leakage estimate is reported.
    func testEvaluateAnErasedFluxFolderAgainstItsBase() throws {
        let base = try tinyFluxFolder(seed: 6)
        let out = temporaryFolder("flux-uce")
        var erase = EraseRun(method: UCE(), concepts: ["sneaker"], output: out.path)
        erase.model = base.path
        var leakage = LeakageOptions()
        (leakage.trajectories, leakage.steps, leakage.criticSteps, leakage.criticWidth, leakage.batchSize, leakage.bootstrapRounds) = (4, 3, 2, 4, 4, 10)
        erase.leakage = leakage
        let record: ErasureRecord?
        do {
            record = try erase.run(assets: Assets()) { _ in }
        } catch let error as AssetError {
            throw XCTSkip("MiniLM is not installed here (\(error)); run `score assets`")
        }
        let report = try XCTUnwrap(record?.leakage?.first, "erase on FLUX estimates the leakage")
        XCTAssertEqual(report.critics.count, 6, "two x̂₀ critics, the image critic, the two judges' probes and the judged class")
        XCTAssertEqual(report.critics.last?.critic, "judged class (cnn judge)")

        var run = EvaluationRun(model: out.appendingPathComponent("model").path, concept: "sneaker")
        smallSettings(&run)
        let result = try run.run(assets: Assets()) { _ in }
        XCTAssertEqual(result.original_model, base.standardizedFileURL.path)
        XCTAssertNotNil(result.kid)
        XCTAssertEqual(result.leakage?.leakage_nats, report.leakage_nats, "the estimate comes from run.json")

        // More trajectories than run.json's estimate used: measured again, and the log says so.
        var more = leakage
        more.trajectories = 6
        run.leakage = more
        var lines: [String] = []
        let remeasured = try run.run(assets: Assets()) { lines.append($0) }
        XCTAssertEqual(remeasured.leakage?.trajectories_per_class, 6)
        XCTAssert(lines.contains { $0.contains("measuring it again on 6") }, "\(lines)")
        run.leakage = leakage
        lines = []
        XCTAssertEqual(try run.run(assets: Assets()) { lines.append($0) }.leakage?.leakage_nats, report.leakage_nats)
        XCTAssertFalse(lines.contains { $0.contains("measuring it again") }, "as many trajectories as run.json's: reused")
    }

    // MARK: Arguments

    func testEvaluateFamilyArguments() throws {
        let embedded = try Evaluate.parse(["--family", "flux", "--concept", "sneaker"]).evaluation()
        XCTAssertNil(embedded.model)
        XCTAssertTrue(embedded.isFlux)
        XCTAssertNoThrow(try embedded.validate())
        XCTAssertThrowsError(try Evaluate.parse(["--concept", "sneaker"]).evaluation().validate()) {
            XCTAssert("\($0)".contains("--model") && "\($0)".contains("--family flux"), "\($0)")
        }
        XCTAssertThrowsError(try Evaluate.parse(["--family", "jax", "--concept", "sneaker"]).evaluation().validate()) {
            XCTAssert("\($0)".contains("--family"), "\($0)")
        }
    }

    func testCheckLeakageOnFlux() throws {
        let embedded = try CheckLeakage.parse(["--family", "flux"]).check()
        XCTAssertNil(embedded.model)
        XCTAssertTrue(embedded.isFlux)
        XCTAssertNoThrow(try embedded.validate())
        XCTAssertFalse(try CheckLeakage.parse([]).check().isFlux)
        XCTAssertThrowsError(try CheckLeakage.parse(["--family", "jax"]).check().validate()) {
            XCTAssert("\($0)".contains("--family"), "\($0)")
        }
        let notFlux = FileManager.default.temporaryDirectory.appendingPathComponent("not-flux-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: notFlux, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: notFlux) }
        XCTAssertThrowsError(try CheckLeakage.parse(["--family", "flux", "--model", notFlux.path]).check().validate()) {
            XCTAssert("\($0)".contains("--family flux") && "\($0)".contains("not a FLUX folder"), "\($0)")
        }

        var run = try CheckLeakage.parse(["--model", try tinyFluxFolder(seed: 5).path, "--repeats", "1"]).check()
        XCTAssertTrue(run.isFlux, "a FLUX-layout --model is measured as a flow model")
        (run.leakage.trajectories, run.leakage.steps, run.leakage.criticSteps, run.leakage.criticWidth,
         run.leakage.batchSize, run.leakage.bootstrapRounds) = (4, 3, 2, 4, 4, 10)
        let first: LeakageFloor
        do {
            first = try run.run(assets: Assets()) { _ in }
        } catch let error as AssetError {
            throw XCTSkip("MiniLM is not installed here (\(error)); run `score assets`")
        }
        let second = try run.run(assets: Assets()) { _ in }
        XCTAssertEqual(first.repeats.count, 1)
        XCTAssertEqual(first.repeats.map(\.leakage_nats), second.repeats.map(\.leakage_nats), "the floor repeats bit for bit")
    }

    func testEveryAttackRunsOnFlux() throws {
        for kind in AttackRun.Kind.allCases {
            var run = AttackRun(kind: kind, model: nil, concept: "sneaker")
            run.family = "flux"
            XCTAssertNoThrow(try run.validate(), kind.rawValue)
        }
        XCTAssertEqual(try Attack.parse(["--family", "flux", "--concept", "bag", "--attack", "paraphrase"]).attackRun().family, "flux")
        // P4D-N's official 16 learned tokens do not fit the mini-FLUX's 16 text positions with [CLS] and [SEP].
        XCTAssertEqual(P4DConfig().fitted(textLength: 16).tokens, 14)
        XCTAssertEqual(P4DConfig().fitted(textLength: nil).tokens, 16)
        var k = P4DConfig()
        k.variant = .k
        XCTAssertEqual(k.fitted(textLength: 16), k)
    }

    func testBenchmarkFamilyFluxArguments() throws {
        let flux = try Benchmark.parse(["--family", "flux", "--concepts", "sneaker,trouser,bag",
                                        "--methods", "original,uce,esd,eraseanything,score"]).benchmark()
        XCTAssertEqual(flux.family, "flux")
        XCTAssertEqual(flux.methods.map(\.name), ["original", "uce", "esd", "eraseanything", "score"])
        XCTAssertEqual(flux.attacks, benchmarkAttacks.map(\.key), "the flow family runs every attack by default")
        XCTAssertEqual(flux.outputURL.path, URL(fileURLWithPath: "runs/benchmark-flux").path)
        XCTAssertNoThrow(try flux.validate())
        XCTAssertEqual(try Benchmark.parse([]).benchmark().attacks, benchmarkAttacks.map(\.key), "the UNet family keeps every attack")

        func refused(_ arguments: [String], naming words: [String], line: UInt = #line) {
            XCTAssertThrowsError(try Benchmark.parse(arguments).benchmark().validate(), line: line) { error in
                for word in words { XCTAssert("\(error)".contains(word), "\(error) does not name \(word)", line: line) }
            }
        }
        refused(["--family", "flux", "--methods", "original,ant"], naming: ["--methods", "ant"])
        let attacked = try Benchmark.parse(["--family", "flux", "--attacks", "inversion,p4d"]).benchmark()
        XCTAssertNoThrow(try attacked.validate())
        XCTAssertEqual(attacked.attacks, ["inversion", "p4d"])
        refused(["--methods", "eraseanything"], naming: ["eraseanything", "--family flux"])
        refused(["--family", "flux", "--task", "style"], naming: ["--family flux", "--task style"])
        refused(["--family", "mlx"], naming: ["--family"])
    }

    func testEraseAnythingFlags() throws {
        let method = try Erase.parse(["--method", "eraseanything", "--concept", "bag", "--out", "/tmp/x", "--eraseanything-steps", "6",
                                      "--eraseanything-rank", "4", "--eraseanything-lambda-attention", "0.01", "--seed", "3"]).eraser()
        let config = try XCTUnwrap((method as? EraseAnything)?.config)
        XCTAssertEqual([config.steps, config.rank], [6, 4])
        XCTAssertEqual(config.lambdaAttention, 0.01)
        XCTAssertEqual(config.seed, 3)
        XCTAssertThrowsError(try Erase.parse(["--method", "esd", "--concept", "bag", "--out", "/tmp/x", "--eraseanything-rank", "4"]).eraser()) {
            XCTAssert("\($0)".contains("--eraseanything-"), "\($0)")
        }
        XCTAssertThrowsError(try Erase.parse(["--method", "eraseanything", "--concept", "bag", "--out", "/tmp/x", "--eraseanything-rank", "0"]).eraser()) {
            XCTAssert("\($0)".contains("rank"), "\($0)")
        }
    }
}
