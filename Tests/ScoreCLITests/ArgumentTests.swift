import ArgumentParser
import Diffusion
import Erasure
import Evaluation
import Foundation
import Kernels
@testable import ScoreCLI
import Testbed
import XCTest

/// The command line's parsing and its checks before any work: every bad value below must be
/// refused while parsing (`validate()`), before a model is loaded or a file written.
final class ArgumentTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("score-cli-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func parse(_ arguments: [String]) throws -> ParsableCommand {
        try Score.parseAsRoot(arguments)
    }

    /// `arguments` are refused while parsing, with a message containing `needle`. Negative values
    /// are passed as `--flag=-1`: the parser reads a separate "-1" as a flag.
    func assertRefused(_ arguments: [String], mentioning needle: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(arguments), "\(arguments)", file: file, line: line) { error in
            let message = Score.message(for: error)
            XCTAssert(message.contains(needle), "\(arguments): '\(message)' does not mention \(needle)", file: file, line: line)
            XCTAssertFalse(message.contains("Missing value"), "\(arguments): refused by the parser, not checked: \(message)", file: file, line: line)
        }
    }

    var out: String { folder.appendingPathComponent("run").path }

    // MARK: erase

    /// A list flag reads a file of that name, one item per line; a folder of that name (the
    /// benchmark's cell folder "trouser" in the working directory) is an item, not a file.
    func testListFlagReadsFilesButNotFolders() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("list-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        XCTAssertEqual(try listValue(folder.path), [folder.path])
        let file = folder.appendingPathComponent("concepts.txt")
        try Data("trouser\n bag \n\n".utf8).write(to: file)
        XCTAssertEqual(try listValue(file.path), ["trouser", "bag"])
        XCTAssertEqual(try listValue("trouser, ankle boot"), ["trouser", "ankle boot"])
    }

    func testEraseParsesIntoTheLibrarysRun() throws {
        let command = try XCTUnwrap(try parse(["erase", "--concept", "sneaker", "--out", out, "--steps", "7", "--anchor", "a shoe"]) as? Erase)
        let run = try command.erasure()
        XCTAssertEqual(run.concepts, ["sneaker"])
        XCTAssertEqual(run.anchors, ["a shoe"])
        XCTAssertEqual(run.output, out)
        XCTAssertEqual((run.method as? SCORE)?.config.steps, 7)
        XCTAssertEqual(run.leakage?.trajectories, LeakageOptions().trajectories)
    }

    /// The demo estimates its leakage at 128 trajectories unless told otherwise; the flag still wins.
    func testDemoEstimatesLeakageAtItsOwnDefault() throws {
        let demo = try XCTUnwrap(try parse(["demo", "--out", out]) as? Demo)
        XCTAssertEqual(try demo.demo().leakage.trajectories, 128)
        let told = try XCTUnwrap(try parse(["demo", "--out", out, "--leakage-trajectories", "16"]) as? Demo)
        XCTAssertEqual(try told.demo().leakage.trajectories, 16)
    }

    func testEraseRefusesAnEmptyOrUnwritableOut() throws {
        assertRefused(["erase", "--concept", "sneaker", "--out", ""], mentioning: "--out")
        // A path under a regular file can never be created, whoever runs the test.
        let file = folder.appendingPathComponent("plain-file")
        try Data("x".utf8).write(to: file)
        assertRefused(["erase", "--concept", "sneaker", "--out", file.appendingPathComponent("run").path], mentioning: "--out")
        assertRefused(["erase", "--concept", "sneaker", "--out", file.path], mentioning: "not a folder")
    }

    func testEraseRefusesBadSaliencySeedsAndCriticWidth() throws {
        assertRefused(["erase", "--concept", "sneaker", "--out", out, "--saliency-seeds=-1"], mentioning: "saliencySeeds")
        // 0 seeds would give no mask and train every parameter without a word.
        assertRefused(["erase", "--concept", "sneaker", "--out", out, "--saliency-seeds", "0"], mentioning: "saliencySeeds")
        assertRefused(["erase", "--concept", "sneaker", "--out", out, "--critic-width", "0"], mentioning: "criticWidth")
        assertRefused(["erase", "--concept", "sneaker", "--out", out, "--critic-width=-4"], mentioning: "criticWidth")
        let config = folder.appendingPathComponent("score.json")
        try Data(#"{"saliencySeeds": -1}"#.utf8).write(to: config)
        assertRefused(["erase", "--concept", "sneaker", "--out", out, "--config", config.path], mentioning: "saliencySeeds")
    }

    func testEraseRefusesTooFewLeakageTrajectoriesBeforeTraining() {
        for value in ["0", "3", "-2"] {
            assertRefused(["erase", "--concept", "sneaker", "--out", out, "--leakage-trajectories=\(value)"], mentioning: "--leakage-trajectories")
        }
        XCTAssertNoThrow(try parse(["erase", "--concept", "sneaker", "--out", out, "--leakage-trajectories", "4"]))
        XCTAssertNoThrow(try parse(["erase", "--concept", "sneaker", "--out", out, "--leakage-trajectories", "0", "--no-leakage"]))
    }

    func testSCOREFlagsAreRefusedForOtherMethodsButSharedOnesAreNot() {
        assertRefused(["erase", "--method", "esd", "--concept", "sneaker", "--out", out, "--lr", "0.1"], mentioning: "--lr")
        assertRefused(["erase", "--method", "uce", "--concept", "sneaker", "--out", out, "--saliency-intersect"], mentioning: "--saliency-intersect")
        assertRefused(["erase", "--method", "uce", "--concept", "sneaker", "--out", out, "--config", "x.json"], mentioning: "--config")
        assertRefused(["erase", "--method", "score", "--concept", "sneaker", "--out", out, "--esd-lr", "0.1"], mentioning: "--esd-")
        XCTAssertNoThrow(try parse(["erase", "--method", "esd", "--concept", "sneaker", "--out", out, "--seed", "3", "--checkpoint-every", "5"]))
        // Flags set to their default values still count as given.
        assertRefused(["erase", "--method", "esd", "--concept", "sneaker", "--out", out, "--steps", "\(SCOREConfig().steps)"], mentioning: "--steps")
    }

    func testSCOREFlagsMergeOverTheConfigFile() throws {
        let config = folder.appendingPathComponent("score.json")
        try Data(#"{"steps": 11, "learningRate": 0.25}"#.utf8).write(to: config)
        let options = try SCOREOptions.parse(["--config", config.path, "--lr", "0.5", "--saliency-intersect"])
        let resolved = try options.resolve()
        XCTAssertEqual(resolved.steps, 11)
        XCTAssertEqual(resolved.learningRate, 0.5)
        XCTAssertTrue(resolved.saliencyIntersect)
        XCTAssertEqual(resolved.batchSize, SCOREConfig().batchSize)
    }

    /// The override table names each flag as ArgumentParser spells it: giving every flag of the
    /// table lists each once.
    func testEveryOverrideFlagParses() throws {
        let values: [String: String] = ["--optimizer": "sgd", "--trainable": "full", "--adversarial": "confusion",
                                        "--saliency": "0.5", "--lr": "0.1", "--critic-lr": "0.1", "--pool-guidance": "2",
                                        "--eta": "1", "--max-grad-norm": "1", "--lambda-adv": "1", "--lambda-erase": "1", "--lambda-traj": "1"]
        let all = try SCOREOptions.parse([]).overrides.compactMap { $0?.flag }
        XCTAssertTrue(all.isEmpty)
        var flags = ["--steps", "--batch", "--early-batch", "--retain-batch", "--lr", "--optimizer", "--max-grad-norm", "--trainable",
                     "--lambda-adv", "--lambda-erase", "--lambda-traj", "--eta", "--split-timestep", "--adversarial", "--critic-width",
                     "--critic-steps", "--critic-warmup", "--critic-lr", "--critic-batch", "--saliency", "--saliency-seeds",
                     "--pool-trajectories", "--pool-steps", "--pool-guidance", "--pool-refresh", "--checkpoint-every", "--seed"]
        var arguments = flags.flatMap { [$0, values[$0] ?? "3"] }
        arguments.append("--saliency-intersect")
        flags.insert("--saliency-intersect", at: flags.firstIndex(of: "--pool-trajectories")!)
        let options = try SCOREOptions.parse(arguments)
        XCTAssertEqual(options.overrides.compactMap { $0?.flag }, flags)
    }

    /// Every method's override table names its flags as ArgumentParser spells them, and a
    /// method's flags count as given only when one is.
    func testEveryMethodFlagParsesUnderItsOwnName() throws {
        func check<Options: ParsableArguments & MethodFlags>(_ type: Options.Type, _ values: [String: String]) throws {
            let flags = values.keys.sorted()
            let parsed = try Options.parse(flags.flatMap { [$0, values[$0]!] })
            XCTAssertEqual(parsed.overrides.compactMap { $0?.flag }.sorted(), flags, "\(Options.self)")
            XCTAssertTrue(parsed.isSet)
            XCTAssertFalse(try Options.parse([]).isSet, "\(Options.self)")
        }
        try check(ESDOptions.self, ["--esd-train-method": "esd-u", "--esd-iterations": "3", "--esd-lr": "0.1", "--esd-eta": "1", "--esd-batch": "2",
                                    "--esd-sampling-steps": "5", "--esd-sampling-guidance": "2", "--esd-sample-from": "trained"])
        try check(UCEOptions.self, ["--uce-lambda": "1", "--uce-erase-scale": "1", "--uce-preserve-scale": "1", "--uce-guide": "art"])
        try check(ANTOptions.self, ["--ant-iterations": "3", "--ant-lr": "0.1", "--ant-eta": "1", "--ant-alpha1": "1", "--ant-alpha2": "1",
                                    "--ant-sampling-steps": "9", "--ant-split-step": "3", "--ant-sampling-guidance": "2", "--ant-saliency": "0.5",
                                    "--ant-saliency-iterations": "2", "--ant-saliency-variants": "2"])
        try check(RECEOptions.self, ["--rece-epochs": "1", "--rece-lambda": "1", "--rece-erase-scale": "1", "--rece-preserve-scale": "1",
                                     "--rece-regular-scale": "1"])
        try check(MACEOptions.self, ["--mace-lambda": "10", "--mace-train-preserve-scale": "0", "--mace-fuse-preserve-scale": "0",
                                     "--mace-iterations": "3", "--mace-lr": "0.1", "--mace-rank": "1", "--mace-images": "2",
                                     "--mace-mask-threshold": "0.1"])
        try check(AdvUnlearnOptions.self, ["--advunlearn-module": "cross-attention", "--advunlearn-iterations": "3", "--advunlearn-lr": "0.1",
                                           "--advunlearn-warmup": "1", "--advunlearn-attack-steps": "2", "--advunlearn-attack-lr": "0.1",
                                           "--advunlearn-prefix-tokens": "1", "--advunlearn-retain-batch": "2", "--advunlearn-retain-weight": "0.3"])
        XCTAssertEqual(try ESDOptions.parse(["--esd-iterations", "3"]).resolve(seed: 4, checkpointEvery: 2).iterations, 3)
        XCTAssertEqual(try UCEOptions.parse(["--uce-guide", "art"]).resolve().guide, "art")
        XCTAssertNil(try UCEOptions.parse([]).resolve().guide)
    }

    // MARK: evaluate

    func testEvaluateRefusesBadImageCountsAndLeakage() {
        let base = ["evaluate", "--model", folder.path, "--concept", "sneaker", "--out", out]
        for (flag, value) in [("--target-images", "0"), ("--target-images", "-1"), ("--paraphrase-images", "-1"),
                              ("--retain-images", "0"), ("--retain-images", "-1"), ("--leakage-trajectories", "0")] {
            assertRefused(base + ["\(flag)=\(value)"], mentioning: flag)
        }
        assertRefused(["evaluate", "--model", folder.path, "--concept", "dragon"], mentioning: "--concept")
        XCTAssertNoThrow(try parse(base))
    }

    // MARK: attack, benchmark, check-leakage, check-model, train

    func testAttackChecks() {
        let base = ["attack", "--concept", "sneaker"]
        assertRefused(base + ["--attack", "nope"], mentioning: "--attack")
        assertRefused(base + ["--attack", "unlearndiffatk", "--judge", "mlp", "--attack-judge", "mlp"], mentioning: "--attack-judge")
        assertRefused(base + ["--attack", "paraphrase", "--seeds-per-prompt", "0"], mentioning: "--seeds-per-prompt")
        assertRefused(base + ["--attack", "unlearndiffatk", "--instances", "0"], mentioning: "--instances")
        XCTAssertNoThrow(try parse(base + ["--attack", "unlearndiffatk", "--judge", "mlp", "--attack-judge", "mlp", "--judge-weight", "0"]))
        assertRefused(base + ["--attack", "unlearndiffatk", "--attack-budget", "slow"], mentioning: "--attack-budget")
        assertRefused(base + ["--attack", "unlearndiffatk", "--attack-target", "dream"], mentioning: "--attack-target")
        assertRefused(base + ["--attack", "inversion", "--instances", "0"], mentioning: "--instances")
        assertRefused(base + ["--attack", "ring-a-bell", "--tokens", "0"], mentioning: "--tokens must be at least 1, not 0")
        assertRefused(base + ["--attack", "ring-a-bell", "--population", "1"], mentioning: "--population must be at least 2, not 1")
        assertRefused(base + ["--attack", "cce", "--lr", "0"], mentioning: "--lr must be positive, not 0.0")
        assertRefused(base + ["--attack", "p4d", "--weight-decay=-1"], mentioning: "--weight-decay must be ≥ 0, not -1.0")
        assertRefused(base + ["--attack", "p4d", "--selector", "cnn"], mentioning: "--selector cnn is also the scoring --judge")
        assertRefused(base + ["--attack", "p4d", "--selector", "svm"], mentioning: "--selector must be cnn, mlp or pixels, not 'svm'")
        assertRefused(base + ["--attack", "paraphrase", "--judge", "svm"], mentioning: "--judge must be cnn or mlp, not 'svm'")
        assertRefused(base + ["--attack", "paraphrase", "--sampling-steps", "0"], mentioning: "--sampling-steps must be at least 1, not 0")
        for attack in ["inversion", "ring-a-bell", "cce"] { XCTAssertNoThrow(try parse(base + ["--attack", attack])) }
        XCTAssertNoThrow(try parse(base + ["--attack", "unlearndiffatk", "--attack-budget", "fast"]))
    }

    func testBenchmarkChecks() {
        assertRefused(["benchmark", "--seeds", "0", "--out", out], mentioning: "--seeds")
        assertRefused(["benchmark", "--task", "colour", "--out", out], mentioning: "--task")
        assertRefused(["benchmark", "--task", "object", "--model", "m", "--out", out], mentioning: "--model")
        assertRefused(["benchmark", "--methods", "score,magic", "--out", out], mentioning: "magic")
        assertRefused(["benchmark", "--concepts", "dragon", "--out", out], mentioning: "--concepts")
        assertRefused(["benchmark", "--task", "style", "--out", out], mentioning: "--model")
        assertRefused(["benchmark", "--leakage-trajectories", "2", "--out", out], mentioning: "--leakage-trajectories")
        assertRefused(["benchmark", "--attacks", "cce,pgd", "--out", out], mentioning: "--attacks")
        assertRefused(["benchmark", "--attack-instances", "0", "--out", out], mentioning: "--attack-instances")
        assertRefused(["benchmark", "--concepts", "bag,trouser", "--held-in", "sneaker", "--out", out], mentioning: "--held-in")
        XCTAssertNoThrow(try parse(["benchmark", "--concepts", "bag,trouser", "--held-in", "none", "--out", out]))
        assertRefused(["benchmark", "--method-config", "magic=x.json", "--out", out], mentioning: "--method-config")
        assertRefused(["benchmark", "--methods", "original,score", "--method-config", "uce=x.json", "--out", out], mentioning: "x.json")
    }

    func testTuneChecks() throws {
        assertRefused(["tune", "--method", "magic", "--budget", "4", "--out", out], mentioning: "--method")
        assertRefused(["tune", "--method", "esd", "--budget", "0", "--out", out], mentioning: "--budget")
        assertRefused(["tune", "--method", "esd", "--budget", "4", "--concept", "dragon", "--out", out], mentioning: "--concept")
        let tune = try XCTUnwrap(try parse(["tune", "--method", "uce", "--budget", "5", "--seed", "2", "--leakage-trajectories", "16", "--out", out]) as? Tune)
        let run = tune.tuning()
        XCTAssertEqual([run.method, run.concept, "\(run.budget)", "\(run.seed)", "\(run.leakage.trajectories)"], ["uce", "sneaker", "5", "2", "16"])
        XCTAssertNoThrow(try parse(["benchmark", "--attacks", "cce,inversion", "--attack-instances", "4", "--out", out]))
        XCTAssertNoThrow(try parse(["benchmark", "--task", "style", "--finished-only", "--out", out]))
    }

    func testCheckLeakageAndCheckModelChecks() {
        assertRefused(["check-leakage", "--repeats", "0"], mentioning: "--repeats")
        assertRefused(["check-leakage", "--leakage-trajectories", "0"], mentioning: "--leakage-trajectories")
        let evaluate = ["evaluate", "--model", folder.path, "--concept", "sneaker", "--out", out]
        assertRefused(evaluate + ["--leakage-guidance=-1"], mentioning: "--leakage-guidance")
        XCTAssertEqual((try? parse(evaluate + ["--leakage-guidance", "2"]) as? Evaluate)??.leakage.options.guidance, 2)
        assertRefused(["check-leakage", "--leakage-guidance", "nan"], mentioning: "--leakage-guidance")
        assertRefused(["check-model", "--images-per-class", "0"], mentioning: "--images-per-class")
        assertRefused(["check-model", "--testbed", "emoji"], mentioning: "--model")
        assertRefused(["check-model", "--testbed", "mnist"], mentioning: "--testbed")
        assertRefused(["check-model", "--judge", "svm"], mentioning: "--judge")
        assertRefused(["check-model", "--family", "flux", "--prompt", "a bag"], mentioning: "--prompt is for --family sd")
    }

    func testTrainChecks() throws {
        assertRefused(["train", "unet", "--steps", "0", "--out", out], mentioning: "--steps")
        assertRefused(["train", "unet", "--offset-noise=-1", "--out", out], mentioning: "--offset-noise")
        assertRefused(["train", "unet", "--task-emoji-weight", "2", "--out", out], mentioning: "--task-emoji-weight")
        assertRefused(["train", "unet", "--stop-after", "900", "--out", out], mentioning: "--stop-after")
        assertRefused(["train", "judge", "--arch", "svm", "--out", out], mentioning: "--arch")
        assertRefused(["train", "judge", "--testbed", "emoji", "--out", out], mentioning: "--task")
        assertRefused(["train", "judge", "--task", "style", "--out", out], mentioning: "--testbed emoji")
        let judge = try XCTUnwrap(try parse(["train", "judge", "--arch", "mlp", "--out", out]) as? Train.JudgeCommand)
        XCTAssertEqual(try judge.training().options.architecture, "mlp")
        let unet = try XCTUnwrap(try parse(["train", "unet", "--testbed", "emoji"]) as? Train.UNetCommand)
        XCTAssertEqual(try unet.training().options.output.lastPathComponent, "mini-sd-emoji")
        let stopped = try XCTUnwrap(try parse(["train", "unet", "--stop-after", "5", "--export-checkpoint", "--out", out]) as? Train.UNetCommand)
        XCTAssertEqual(try stopped.training().options.stopAfter, 5)
        XCTAssertTrue(stopped.checkpoint.exportCheckpoint)
        let flux = try XCTUnwrap(try parse(["train", "flux", "--stop-after", "3", "--out", out]) as? Train.FluxCommand)
        XCTAssertEqual(flux.training().options.stopAfter, 3)
        XCTAssertFalse(flux.checkpoint.exportCheckpoint)
    }

    func testTrainingFlagsReachEveryTrainerOverItsOwnDefaults() throws {
        let unet = try XCTUnwrap(try parse(["train", "unet", "--steps", "7", "--lr", "0.01", "--seed", "5", "--resume", "--out", out])
            as? Train.UNetCommand)
        let sd = try unet.training().options
        XCTAssertEqual([sd.steps, sd.batchSize, sd.checkpointEvery], [7, MiniSDTrainingOptions(output: folder).batchSize, MiniSDTrainingOptions(output: folder).checkpointEvery])
        XCTAssertEqual(sd.learningRate, 0.01)
        XCTAssertEqual(sd.seed, 5)
        XCTAssertTrue(sd.resume)
        XCTAssertFalse(sd.command.isEmpty)
        let flux = try XCTUnwrap(try parse(["train", "flux", "--batch", "3", "--checkpoint-every", "9", "--out", out]) as? Train.FluxCommand)
        let f = flux.training().options, fluxDefaults = MiniFluxTrainingOptions(output: folder)
        XCTAssertEqual([f.steps, f.batchSize, f.checkpointEvery], [fluxDefaults.steps, 3, 9])
        XCTAssertEqual(f.learningRate, fluxDefaults.learningRate)
        XCTAssertFalse(f.resume)
        let judge = try XCTUnwrap(try parse(["train", "judge", "--out", out]) as? Train.JudgeCommand)
        let j = try judge.training().options, judgeDefaults = JudgeTrainingOptions(output: folder)
        XCTAssertEqual([j.steps, j.batchSize, j.checkpointEvery], [judgeDefaults.steps, judgeDefaults.batchSize, judgeDefaults.checkpointEvery])
        XCTAssertEqual(j.learningRate, judgeDefaults.learningRate)
    }

    func testJSONFlagIsSharedAndSilencesTheLog() throws {
        let attack = try XCTUnwrap(try parse(["attack", "--concept", "sneaker", "--attack", "paraphrase", "--json"]) as? Attack)
        XCTAssertTrue(attack.output.json)
        let check = try XCTUnwrap(try parse(["check-leakage"]) as? CheckLeakage)
        XCTAssertFalse(check.output.json)
    }

    // MARK: generate and bench

    func testGenerateChecks() {
        let png = folder.appendingPathComponent("a.png").path
        assertRefused(["generate", "a shoe", "--out", png, "--num-images", "0"], mentioning: "--num-images")
        assertRefused(["generate", "a shoe", "--out", png, "--height", "0"], mentioning: "--height")
        assertRefused(["generate", "a shoe", "--out", png, "--width=-8"], mentioning: "--width")
        assertRefused(["generate", "a shoe", "--out", png, "--grid"], mentioning: "--grid")
        assertRefused(["generate", "a shoe", "--out", ""], mentioning: "--out")
        assertRefused(["generate", "a shoe", "--out", folder.path], mentioning: "not a regular file")
        XCTAssertNoThrow(try parse(["generate", "a shoe", "--out", png, "--height", "65536", "--width", "65536"]))
    }

    /// --bf16 is offered by the commands that only run models forward and refused, naming the
    /// flag and why, where the instructions are unavailable (here: the kernels capped at avx2).
    func testBF16IsForInferenceCommandsAndRefusedWhereUnavailable() throws {
        let png = folder.appendingPathComponent("a.png").path
        let inference = [["generate", "a shoe", "--out", png, "--bf16"], ["check-model", "--bf16"], ["check-leakage", "--bf16"],
                         ["evaluate", "--family", "flux", "--concept", "sneaker", "--bf16"], ["bench", "unet", "--bf16"]]
        if Kernels.bf16Unavailable == nil {
            let generate = try XCTUnwrap(try parse(inference[0]) as? Generate)
            XCTAssertTrue(generate.precision.bf16)
            for arguments in inference { XCTAssertNoThrow(try parse(arguments), "\(arguments)") }
        }
        let saved = Kernels.isa
        defer { if saved == "avx512" || saved == "avx2" || saved == "portable" { Kernels.isa = saved } }
        Kernels.isa = "avx2"
        for arguments in inference { assertRefused(arguments, mentioning: "--bf16 is unavailable here") }
        XCTAssertNoThrow(try parse(["generate", "a shoe", "--out", png]), "without --bf16 nothing changes")
        // Training commands do not offer it.
        XCTAssertThrowsError(try parse(["erase", "--concept", "sneaker", "--out", out, "--bf16"]))
        XCTAssertThrowsError(try parse(["train", "unet", "--out", out, "--bf16"]))
    }

    func testBenchChecks() {
        assertRefused(["bench", "critic", "--batch", "0"], mentioning: "--batch")
        assertRefused(["bench", "critic", "--batch", "1"], mentioning: "--batch")
        assertRefused(["bench", "critic", "--side", "0"], mentioning: "--side")
        assertRefused(["bench", "critic", "--widths", "32,0"], mentioning: "--widths")
        assertRefused(["bench", "critic", "--widths", "x"], mentioning: "--widths")
        assertRefused(["bench", "engine", "--runs", "0"], mentioning: "--runs")
        assertRefused(["bench", "unet", "--config", "sd99"], mentioning: "--config")
        assertRefused(["bench", "unet", "--latent", "0"], mentioning: "--latent")
        assertRefused(["erase", "--concept", "sneaker", "--out", out, "--threads", "0"], mentioning: "--threads")
    }

    // MARK: UCE's per-concept guides and the testbed's synonyms

    func testEditGivesEachConceptItsOwnGuide() throws {
        let command = try XCTUnwrap(try parse(["erase", "--method", "uce", "--edit", "sneaker=shoe", "--edit", "bag = box", "--out", out]) as? Erase)
        let request = try command.erasure().request()
        XCTAssertEqual(request.concepts.map(\.name), ["sneaker", "bag"])
        XCTAssertEqual(request.concepts.map(\.anchors), [["shoe"], ["box"]])
        // --concept/--anchor keep working, and mix with --edit: the edit's guide wins for its concept.
        let mixed = try XCTUnwrap(try parse(["erase", "--concept", "sneaker", "--concept", "bag", "--anchor", "a shirt",
                                             "--edit", "bag=", "--out", out]) as? Erase).erasure().request()
        XCTAssertEqual(mixed.concepts.map(\.anchors), [["a shirt"], [""]])
        assertRefused(["erase", "--method", "uce", "--edit", "sneaker", "--out", out], mentioning: "--edit 'sneaker' is not concept=guide")
        assertRefused(["erase", "--method", "uce", "--edit", "bag=box", "--edit", "bag=tote", "--out", out], mentioning: "twice")
        assertRefused(["erase", "--method", "uce", "--edit", "bag=box", "--uce-guide", "art", "--out", out], mentioning: "--uce-guide")
    }

    func testTestbedSynonymsApplyOnlyToTheTestbedsModel() throws {
        func request(_ extra: [String]) throws -> ErasureRequest {
            try XCTUnwrap(try parse(["erase", "--method", "uce", "--concept", "sneaker", "--out", out] + extra) as? Erase).erasure().request()
        }
        let testbed = try request([])
        XCTAssert(testbed.concepts[0].targetPrompts.contains("trainer"), "\(testbed.concepts[0].targetPrompts)")
        XCTAssertEqual(testbed.retainPrompts.count, 9)
        // A class named otherwise than its canonical noun erases the noun too: Acc_e's prompt
        // ("a photo of a pair of trousers") is a target prompt, not a paraphrase.
        let trouser = try XCTUnwrap(try parse(["erase", "--method", "uce", "--concept", "trouser", "--out", out]) as? Erase).erasure().request()
        XCTAssertEqual(trouser.concepts[0].targetPrompts.filter { $0.hasPrefix("a photo of") },
                       ["a photo of a trouser", "a photo of a pair of trousers", "a photo of a pair of pants"])
        XCTAssertEqual(testbed.concepts[0].targetPrompts.filter { $0.hasPrefix("a photo of") }, ["a photo of a sneaker", "a photo of a trainer"])

        // Another model folder: only the concept and what the user gives.
        let other = folder.appendingPathComponent("other")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        try Data(#"{"_class_name": "StableDiffusionPipeline"}"#.utf8).write(to: other.appendingPathComponent("model_index.json"))
        let plain = try request(["--model", other.path])
        XCTAssertFalse(plain.concepts[0].targetPrompts.contains { $0.contains("trainer") }, "\(plain.concepts[0].targetPrompts)")
        XCTAssertEqual(plain.concepts[0].targetPrompts.first, "sneaker")
        XCTAssertEqual(plain.retainPrompts, [])
        let given = try request(["--model", other.path, "--synonyms", "kicks", "--retain", "a bag"])
        XCTAssert(given.concepts[0].targetPrompts.contains("kicks"))
        XCTAssertEqual(given.retainPrompts, ["a bag"])

        // An erased folder over the embedded model is the testbed's.
        let erased = folder.appendingPathComponent("erased")
        try FileManager.default.createDirectory(at: erased, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: erased.appendingPathComponent("model_index.json"))
        try Data(#"{"base_model": "embedded", "method": "uce", "concepts": [], "tensors_changed": 0, "parameters_changed": 0}"#.utf8)
            .write(to: erased.appendingPathComponent("erasure.json"))
        XCTAssert(try request(["--model", erased.path]).concepts[0].targetPrompts.contains("trainer"))
    }

    func testVariantFlagsParseAndAreChecked() throws {
        let model = folder.appendingPathComponent("m").path
        let erase = try XCTUnwrap(try parse(["erase", "--concept", "sneaker", "--model", model, "--variant", "fp16", "--full",
                                             "--save-variant", "bf16", "--out", out]) as? Erase).erasure()
        XCTAssertEqual(erase.variant, "fp16")
        XCTAssertEqual(erase.saveVariant, "bf16")
        XCTAssertEqual(try XCTUnwrap(try parse(["evaluate", "--model", model, "--concept", "sneaker", "--variant", "bf16"]) as? Evaluate)
            .evaluation().variant, "bf16")
        XCTAssertEqual(try XCTUnwrap(try parse(["attack", "--model", model, "--concept", "sneaker", "--attack", "paraphrase",
                                                "--variant", "fp16"]) as? Attack).attackRun().variant, "fp16")
        assertRefused(["erase", "--concept", "sneaker", "--variant", "fp16", "--out", out], mentioning: "give --model")
        assertRefused(["attack", "--concept", "sneaker", "--attack", "paraphrase", "--variant", "fp16"], mentioning: "give --model")
        assertRefused(["erase", "--concept", "sneaker", "--save-variant", "fp16", "--out", out], mentioning: "--full")
        assertRefused(["erase", "--concept", "sneaker", "--full", "--save-variant", "fp8", "--out", out], mentioning: "'fp8'")
    }
}
