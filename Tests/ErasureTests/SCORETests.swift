import Diffusion
@testable import Erasure
import Evaluation
import Foundation
import NN
import Tensor
import XCTest

/// SCORE end to end on a tiny random model: seconds, not minutes.
final class SCORETests: XCTestCase {
    /// The first design's keys (the whole masked UNet, the critic and its adversarial term) at a
    /// tiny size, so that every part of the machinery runs; `tinyDefault` is the default's.
    static func tinyConfig(steps: Int = 6) -> SCOREConfig {
        tiny(SCOREConfig().negativeGuidanceObjective, steps: steps)
    }

    static func tinyDefault(steps: Int = 6) -> SCOREConfig { tiny(SCOREConfig(), steps: steps) }

    private static func tiny(_ base: SCOREConfig, steps: Int) -> SCOREConfig {
        var c = base
        c.steps = steps
        c.batchSize = 2
        c.earlyBatchSize = 1
        c.retainBatchSize = 2
        c.learningRate = 1e-3
        c.criticWidth = 4
        c.criticWarmupSteps = 2
        c.criticBatchSize = 4
        c.saliencySeeds = 1
        c.poolTrajectories = 2
        c.poolSteps = 4
        c.poolRefreshEvery = 3
        c.checkpointEvery = 2
        return c
    }

    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of a cat"], anchor: "")],
        retainPrompts: ["dog", "a photo of a car"])

    func testRunMovesOnlyMaskedEntriesAndRecordsEveryTerm() throws {
        let pipeline = try Tiny.pipeline()
        let before = pipeline.unet.stateDict().mapValues { $0.copy() }
        let outcome = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
        XCTAssertEqual(outcome.steps, 6)
        for term in ["erase", "trajectory", "adversarial", "critic", "critic_accuracy", "total"] {
            XCTAssertEqual(outcome.losses[term]?.count, 6, term)
            XCTAssertTrue(outcome.losses[term]!.allSatisfy { $0.isFinite }, term)
        }
        XCTAssertFalse(outcome.masks.isEmpty)
        var moved = 0
        for (name, p) in pipeline.unet.namedParameters() {
            let mask = try XCTUnwrap(outcome.masks[name], name)
            XCTAssertEqual(Int(mask.scalars.reduce(0, +)), Int((0.5 * Double(p.count)).rounded(.up)), "top-ρ of \(name)")
            for i in 0..<p.count where p.pointer[i] != before[name]!.pointer[i] {
                XCTAssertEqual(mask.pointer[i], 1, "\(name)[\(i)] moved outside the mask")
                moved += 1
            }
        }
        XCTAssertGreaterThan(moved, 0)
    }

    /// The default edits the text path alone, towards the anchor's prediction: only the
    /// cross-attention keys and values move, inside the mask, no critic is trained, and the erase
    /// term falls.
    func testDefaultMovesOnlyTheTextPathWithoutACritic() throws {
        let pipeline = try Tiny.pipeline()
        let before = pipeline.unet.stateDict().mapValues { $0.copy() }
        let outcome = try SCORE(config: Self.tinyDefault(steps: 12)).erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
        var movedTensors: Set<String> = []
        for (name, p) in pipeline.unet.namedParameters() {
            for i in 0..<p.count where p.pointer[i] != before[name]!.pointer[i] {
                XCTAssertEqual(outcome.masks[name]?.pointer[i], 1, "\(name)[\(i)] moved outside the mask")
                movedTensors.insert(name)
            }
        }
        XCTAssertFalse(movedTensors.isEmpty)
        XCTAssertTrue(movedTensors.allSatisfy { $0.contains("attn2.to_k") || $0.contains("attn2.to_v") }, "\(movedTensors.sorted())")
        XCTAssertTrue((outcome.losses["adversarial"] ?? []).allSatisfy { $0 == 0 }, "no adversarial term")
        XCTAssertTrue((outcome.losses["critic_accuracy"] ?? []).allSatisfy { $0.isNaN }, "no critic step")
        let erase = try XCTUnwrap(outcome.losses["erase"])
        XCTAssertLessThan(erase.suffix(4).reduce(0, +), erase.prefix(4).reduce(0, +), "the fit closes")
    }

    func testSameSeedGivesIdenticalWeights() throws {
        let a = try Tiny.pipeline(), b = try Tiny.pipeline()
        let outcomeA = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: a, context: ErasureContext(output: nil))
        let outcomeB = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: b, context: ErasureContext(output: nil))
        XCTAssertEqual(outcomeA.losses["erase"], outcomeB.losses["erase"])
        XCTAssertEqual(outcomeA.losses["critic"], outcomeB.losses["critic"])
        let reference = a.unet.stateDict()
        var differing = 0
        for (name, p) in b.unet.namedParameters() where p.scalars != reference[name]!.scalars { differing += 1 }
        XCTAssertEqual(differing, 0)
    }

    func testResumeAfterAKillGivesIdenticalWeights() throws {
        let straight = try Tiny.pipeline()
        let folderA = Tiny.temporaryFolder("straight")
        _ = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: straight, context: ErasureContext(output: folderA))

        let folderB = Tiny.temporaryFolder("resumed")
        let killed = try Tiny.pipeline()
        let partial = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: killed,
                                                                 context: ErasureContext(output: folderB, stopAfter: 3))
        XCTAssertTrue(partial.stoppedEarly)
        let resumed = try Tiny.pipeline()
        let outcome = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: resumed,
                                                                 context: ErasureContext(output: folderB, resume: true))
        XCTAssertEqual(outcome.steps, 6)
        // The run's time counts the killed piece too (up to its checkpoint); a run in one piece has none earlier.
        XCTAssertEqual(partial.earlierSeconds, 0)
        XCTAssertGreaterThan(outcome.earlierSeconds, 0, "the first piece's time, read from the checkpoint")
        let reference = straight.unet.stateDict()
        var differing: [String] = []
        for (name, p) in resumed.unet.namedParameters() where p.scalars != reference[name]!.scalars { differing.append(name) }
        XCTAssertEqual(differing, [])
        XCTAssertEqual(outcome.losses["erase"], try SCORE(config: Self.tinyConfig()).erase(
            Self.request, pipeline: try Tiny.pipeline(), context: ErasureContext(output: nil)).losses["erase"])
    }

    /// The cosine schedule is a function of the step alone: a run killed half-way and resumed ends
    /// with the straight run's bits, and those differ from the constant rate's; an unknown
    /// schedule is refused by name.
    func testCosineLearningRateScheduleResumesAndChangesTheRun() throws {
        var config = Self.tinyConfig()
        config.learningRateSchedule = "cosine"
        let straight = try Tiny.pipeline()
        _ = try SCORE(config: config).erase(Self.request, pipeline: straight, context: ErasureContext(output: nil))
        let folder = Tiny.temporaryFolder("cosine-resumed")
        _ = try SCORE(config: config).erase(Self.request, pipeline: try Tiny.pipeline(), context: ErasureContext(output: folder, stopAfter: 3))
        let resumed = try Tiny.pipeline()
        _ = try SCORE(config: config).erase(Self.request, pipeline: resumed, context: ErasureContext(output: folder, resume: true))
        let constant = try Tiny.pipeline()
        _ = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: constant, context: ErasureContext(output: nil))
        let reference = straight.unet.stateDict(), constantWeights = constant.unet.stateDict()
        var differingFromStraight = 0, differingFromConstant = 0
        for (name, p) in resumed.unet.namedParameters() {
            if p.scalars != reference[name]!.scalars { differingFromStraight += 1 }
            if p.scalars != constantWeights[name]!.scalars { differingFromConstant += 1 }
        }
        XCTAssertEqual(differingFromStraight, 0)
        XCTAssertGreaterThan(differingFromConstant, 0)
        config.learningRateSchedule = "linear"
        XCTAssertThrowsError(try config.validate()) { XCTAssertTrue("\($0)".contains("learningRateSchedule"), "\($0)") }
    }

    /// Trajectory k of a pool is the pipeline's run of image k: its entries are the samples the
    /// run visits, its final the sample it ends with, whatever the pool's batching.
    func testPoolTrajectoriesAreThePipelinesRuns() throws {
        let pipeline = try Tiny.pipeline()
        let captions = ["", "cat", "a photo of a dog"]
        let table = ConditioningTable(captions: captions, model: pipeline)
        let prompts = [1, 2, 1]
        let pool = try TrajectoryPool.sample(pipeline: pipeline, table: table, promptIndices: prompts, unconditionalIndex: 0,
                                             steps: 4, guidance: 3, seed: 7, firstTrajectory: 2, batchSize: 2)
        let timesteps = try pipeline.scheduler.schedule(steps: 4).timesteps.map { $0.rounded() }
        XCTAssertEqual(pool.count, 12)
        XCTAssertEqual(pool.trajectories, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
        XCTAssertEqual(pool.prompts, [1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1])
        XCTAssertEqual(pool.timesteps, timesteps + timesteps + timesteps)
        for (k, prompt) in prompts.enumerated() {
            func run(_ stop: Int?) throws -> [Float] {
                try pipeline.sampleLatents(prompts: [captions[prompt]], steps: 4, guidance: 3, seed: 7, firstImageIndex: 2 + k,
                                           stopAtStep: stop).scalars
            }
            XCTAssertEqual(pool.finals.narrowed(axis: 0, start: k, length: 1).scalars, try run(nil), "trajectory \(k)")
            for i in 0..<4 {
                XCTAssertEqual(pool.latents.narrowed(axis: 0, start: 4 * k + i, length: 1).scalars, try run(i), "trajectory \(k) step \(i)")
            }
        }
    }

    func testResumeRefusesACheckpointOfAnotherRequestOrConfigNamingTheDifference() throws {
        let folder = Tiny.temporaryFolder("other-config")
        _ = try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: try Tiny.pipeline(),
                                                      context: ErasureContext(output: folder, stopAfter: 4))
        func refusal(_ config: SCOREConfig, _ request: ErasureRequest = SCORETests.request) -> String {
            var logged: [String] = []
            do {
                _ = try SCORE(config: config).erase(request, pipeline: try Tiny.pipeline(),
                                                    context: ErasureContext(output: folder, resume: true) { logged.append($0) })
                return ""
            } catch {
                XCTAssertEqual(logged, [], "refused before any work")
                return "\(error)"
            }
        }
        var other = Self.tinyConfig()
        other.lambdaAdversarial = 0.5
        XCTAssertTrue(refusal(other).contains("config.lambdaAdversarial: 0.1 in the checkpoint, 0.5 now"), refusal(other))
        var bag = Self.request
        bag.concepts[0].name = "bag"
        XCTAssertTrue(refusal(Self.tinyConfig(), bag).contains(#"request.concepts[0].name: "cat" in the checkpoint, "bag" now"#),
                      refusal(Self.tinyConfig(), bag))
        var retain = Self.request
        retain.retainPrompts.append("a tree")
        XCTAssertTrue(refusal(Self.tinyConfig(), retain).contains("request.retainPrompts"), refusal(Self.tinyConfig(), retain))
        XCTAssertTrue(refusal(Self.tinyConfig(steps: 3)).contains("at step 4, past the 3 steps asked for"), refusal(Self.tinyConfig(steps: 3)))
        // More steps and another checkpoint interval continue the run.
        var longer = Self.tinyConfig(steps: 8)
        longer.checkpointEvery = 3
        XCTAssertEqual(refusal(longer), "")
    }

    /// NaN weights are caught where they first act: sampling the trajectory pools.
    func testNonFiniteWeightsStopTheRunNamingTheSamplingStep() throws {
        let pipeline = try Tiny.pipeline()
        pipeline.unet.conv_out.weight.pointer[0] = .nan
        XCTAssertThrowsError(try SCORE(config: Self.tinyConfig()).erase(Self.request, pipeline: pipeline,
                                                                       context: ErasureContext(output: nil))) { error in
            guard case .nonFiniteSample(step: 1, of: 4, _)? = error as? PipelineError else { return XCTFail("\(error)") }
        }
    }

    /// A method whose loss turns NaN at its third step: the harness names the term and the step
    /// and keeps the checkpoint of step 2, which a resumed run continues from.
    func testNonFiniteLossStopsKeepingTheLastGoodCheckpoint() throws {
        struct Settings: TrainingConfig {
            var steps = 5
            var checkpointEvery = 1
            static let resumableKeys: Set<String> = []
        }
        final class Diverging: FineTuning {
            typealias Config = Settings
            let layer: Linear
            var model: Module { layer }
            let trainable: [(name: String, tensor: Tensor)]
            let optimizer: any Optimizer
            var generator = RandomGenerator(seed: 0)
            let nanAt: Int?
            static let method = "diverging"
            init(nanAt: Int?) {
                var g = RandomGenerator(seed: 1)
                layer = Linear(2, 1, generator: &g)
                trainable = layer.trainableParameters()
                optimizer = SGD(trainable, learningRate: 0.1)
                self.nanAt = nanAt
            }
            func losses(step: Int) throws -> StepLosses {
                let y = layer(Tensor(shape: [1, 2], scalars: [1, generator.uniform([1]).scalars[0]]))
                let loss = (y * y).sum() * (step == nanAt ? Float.nan : 1)
                return StepLosses(total: loss, checked: [("fit", loss.item)])
            }
            func progress(_ losses: [String: [Float]]) -> [(String, Float)] { [] }
        }
        let folder = Tiny.temporaryFolder("diverging")
        let checkpoint = folder.appendingPathComponent("checkpoint.safetensors")
        let context = ErasureContext(output: folder)
        XCTAssertThrowsError(try TrainingRun.train(config: Settings(), request: Self.request, context: context) { Diverging(nanAt: 2) }) { error in
            XCTAssertEqual(error as? ErasureError, .nonFinite(term: "fit", step: 3, checkpoint: checkpoint.path))
        }
        // The same run writes the same bytes: the recorded config and request have sorted keys.
        let sorted = JSONEncoder()
        sorted.outputFormatting = .sortedKeys
        let metadata = try TensorArchive(contentsOf: checkpoint).metadata
        XCTAssertEqual(metadata["config"], String(decoding: try sorted.encode(Settings()), as: UTF8.self))
        XCTAssertEqual(metadata["request"], String(decoding: try sorted.encode(Self.request), as: UTF8.self))
        let resumed = try TrainingRun.train(config: Settings(), request: Self.request, context: ErasureContext(output: folder, resume: true)) {
            Diverging(nanAt: nil)
        }
        XCTAssertEqual(resumed.steps, 5)
        XCTAssertEqual(resumed.losses["fit"]?.count, 5)
        let straight = try TrainingRun.train(config: Settings(), request: Self.request, context: ErasureContext(output: nil)) {
            Diverging(nanAt: nil)
        }
        XCTAssertEqual(resumed.losses["fit"], straight.losses["fit"], "the run continued from step 2's checkpoint")
    }

    func testBadRequestsAreRejectedBeforeAnyWork() throws {
        func message(_ request: ErasureRequest) -> String {
            do { try request.validate(); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message(ErasureRequest(concepts: [], retainPrompts: [])).contains("no --concept"))
        XCTAssertTrue(message(ErasureRequest(concepts: [Concept(name: " ", targetPrompts: ["x"], anchor: "")], retainPrompts: []))
            .contains("--concept is empty"))
        XCTAssertTrue(message(ErasureRequest(concepts: [Concept(name: "cat", targetPrompts: ["cat"], anchor: "Cat")], retainPrompts: []))
            .contains("is the concept"))
        XCTAssertTrue(message(ErasureRequest(concepts: [Concept(name: "cat", targetPrompts: ["cat"], anchor: "")], retainPrompts: ["cat"]))
            .contains("both a target prompt"))
        XCTAssertThrowsError(try ErasureMethods.make("esd-magic")) { XCTAssertTrue("\($0)".contains("unknown --method 'esd-magic'")) }
        XCTAssertThrowsError(try ModelLoader.load("/nonexistent/model")) { XCTAssertTrue("\($0)".contains("/nonexistent/model/model_index.json")) }
        var config = SCOREConfig()
        config.saliencyRatio = 0
        XCTAssertThrowsError(try config.validate()) { XCTAssertTrue("\($0)".contains("saliencyRatio")) }
        XCTAssertThrowsError(try Workflows.request(concepts: [""], synonyms: [], anchors: [""], retain: nil, prompts: nil))
    }

    func testConfigFileOverridesDefaultsAndRejectsUnknownKeys() throws {
        let folder = Tiny.temporaryFolder("config")
        let good = folder.appendingPathComponent("good.json")
        try Data(#"{"steps": 42, "lambdaAdversarial": 0.3, "adversarialForm": "non-saturating"}"#.utf8).write(to: good)
        let config = try SCOREConfig.load(good)
        XCTAssertEqual(config.steps, 42)
        XCTAssertEqual(config.lambdaAdversarial, 0.3)
        XCTAssertEqual(config.adversarialForm, .nonSaturating)
        XCTAssertEqual(config.eta, SCOREConfig().eta)
        let bad = folder.appendingPathComponent("bad.json")
        try Data(#"{"lamda_adv": 1}"#.utf8).write(to: bad)
        XCTAssertThrowsError(try SCOREConfig.load(bad)) { XCTAssertTrue("\($0)".contains("unknown key 'lamda_adv'")) }
    }

    func testEraseJobWritesAModelThatLoadsOverItsBase() throws {
        let folder = Tiny.temporaryFolder("job")
        let base = folder.appendingPathComponent("base")
        let pipeline = try Tiny.pipeline()
        try Tiny.save(pipeline, to: base)
        var job = EraseJob(method: SCORE(config: Self.tinyConfig(steps: 3)), request: Self.request, baseFolder: base,
                           baseName: base.path, output: folder.appendingPathComponent("out"))
        job.leakage = Tiny.leakageOptions()
        let record = try XCTUnwrap(try job.run(pipeline: pipeline, log: { _ in }))
        XCTAssertGreaterThan(record.parameters_changed, 0)
        XCTAssertLessThanOrEqual(record.parameters_changed, record.trainable_parameters / 2 + record.tensors_changed)
        let report = try XCTUnwrap(record.leakage?.first)
        XCTAssertEqual(report.critics.count, 3)
        XCTAssertEqual(report.leakage_bound, Leakage.bound(nats: report.leakage_nats))
        XCTAssertEqual(report.leakage_nats, report.critics.map(\.leakage_nats).max())

        let reloaded = try Tiny.pipeline()
        try ErasedModel.apply(folder: folder.appendingPathComponent("out/model"), to: reloaded)
        let erased = pipeline.unet.stateDict()
        for (name, p) in reloaded.unet.namedParameters() { XCTAssertEqual(p.scalars, erased[name]!.scalars, name) }
        let saved = try ErasureRecord.read(from: folder.appendingPathComponent("out/run.json"))
        XCTAssertEqual(saved.steps, 3)
        XCTAssertEqual(saved.losses["erase"]?.count, 3)
        XCTAssertNotNil(try ErasedModel.manifest(in: folder.appendingPathComponent("out/model")))
    }

    /// A run into an earlier run's folder replaces all of its outputs (the mask an ESD run does not
    /// write goes too) and clears what an interrupted run left behind.
    func testEraseJobReplacesAnEarlierRunsOutputsTogether() throws {
        let folder = Tiny.temporaryFolder("replace")
        let base = folder.appendingPathComponent("base"), out = folder.appendingPathComponent("out")
        try Tiny.save(try Tiny.pipeline(), to: base)
        func job(_ method: any ErasureMethod) -> EraseJob {
            var job = EraseJob(method: method, request: Self.request, baseFolder: base, baseName: base.path, output: out)
            job.leakage = nil
            return job
        }
        try job(SCORE(config: Self.tinyConfig(steps: 2))).run(pipeline: try Tiny.pipeline(), log: { _ in })
        XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent("mask.safetensors").path))
        for leftover in [".staging/model", ".model.partial/unet"] {
            try FileManager.default.createDirectory(at: out.appendingPathComponent(leftover), withIntermediateDirectories: true)
        }
        try Data("x".utf8).write(to: out.appendingPathComponent(".checkpoint.safetensors.1234.tmp"))

        try job(ESD(config: BaselineTests.tinyESD(iterations: 2))).run(pipeline: try Tiny.pipeline(), log: { _ in })
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted(),
                       ["checkpoint.safetensors", "config.json", "model", "run.json"])
        XCTAssertEqual(try ErasureRecord.read(from: out.appendingPathComponent("run.json")).method, "esd")
        XCTAssertEqual(try ErasedModel.manifest(in: out.appendingPathComponent("model"))?.method, "esd")
    }
}
