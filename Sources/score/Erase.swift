import ArgumentParser
import Erasure
import Evaluation
import Foundation
import Testbed

/// Every SCORE hyper-parameter as a flag; unset flags keep the config file's (or default) value.
struct SCOREOptions: ParsableArguments {
    @Option(help: "A JSON file of SCORE hyper-parameters (keys as in run.json's config); flags override it.") var config: String?
    @Option(help: "Model steps.") var steps: Int?
    @Option(help: "Target samples with t ≤ t′ per step.") var batch: Int?
    @Option(help: "Target samples with t > t′ per step (kept as the original).") var earlyBatch: Int?
    @Option(help: "Retained-prompt samples per step.") var retainBatch: Int?
    @Option(help: "Learning rate.") var lr: Float?
    @Option(help: "Optimizer: adam, adamw or sgd.") var optimizer: String?
    @Option(help: "Gradient-norm clip (0: off).") var maxGradNorm: Float?
    @Option(help: "Trainable set: full, cross-attention, non-cross-attention, cross-attention-kv.") var trainable: String?
    @Option(help: "λ_adv.") var lambdaAdv: Float?
    @Option(help: "λ_er.") var lambdaErase: Float?
    @Option(help: "λ_tr.") var lambdaTraj: Float?
    @Option(help: "η of the erase target.") var eta: Float?
    @Option(help: "t′: erase and adversarial terms act at t ≤ t′.") var splitTimestep: Int?
    @Option(help: "Adversarial form: confusion or non-saturating.") var adversarial: String?
    @Option(help: "Critic width.") var criticWidth: Int?
    @Option(help: "n_D: critic steps per model step.") var criticSteps: Int?
    @Option(help: "Critic warm-up steps.") var criticWarmup: Int?
    @Option(help: "Critic learning rate.") var criticLr: Float?
    @Option(help: "Critic batch (half target, half anchor).") var criticBatch: Int?
    @Option(help: "Saliency ρ: fraction of each tensor that may change (1: no mask).") var saliency: Float?
    @Option(help: "Saliency seeds per prompt variant.") var saliencySeeds: Int?
    @Flag(help: "Intersect the saliency masks of prompt variants × seeds (ANT) instead of summing.") var saliencyIntersect = false
    @Option(help: "Trajectories per prompt set in the pools.") var poolTrajectories: Int?
    @Option(help: "Sampling steps of the pools.") var poolSteps: Int?
    @Option(help: "Guidance of the pools.") var poolGuidance: Float?
    @Option(help: "Resample the target pool every N steps (0: never).") var poolRefresh: Int?
    @Option(help: "Checkpoint every N steps (SCORE and ESD).") var checkpointEvery: Int?
    @Option(help: "Random seed (SCORE and ESD).") var seed: UInt64?

    func resolve() throws -> SCOREConfig {
        var c = try config.map { try SCOREConfig.load(URL(fileURLWithPath: $0)) } ?? SCOREConfig()
        func set<T>(_ value: T?, _ path: WritableKeyPath<SCOREConfig, T>) { if let value { c[keyPath: path] = value } }
        set(steps, \.steps); set(batch, \.batchSize); set(earlyBatch, \.earlyBatchSize); set(retainBatch, \.retainBatchSize)
        set(lr, \.learningRate); set(optimizer, \.optimizer); set(maxGradNorm, \.maxGradNorm)
        set(lambdaAdv, \.lambdaAdversarial); set(lambdaErase, \.lambdaErase); set(lambdaTraj, \.lambdaTrajectory)
        set(eta, \.eta); set(splitTimestep, \.splitTimestep)
        set(criticWidth, \.criticWidth); set(criticSteps, \.criticSteps); set(criticWarmup, \.criticWarmupSteps)
        set(criticLr, \.criticLearningRate); set(criticBatch, \.criticBatchSize)
        set(saliency, \.saliencyRatio); set(saliencySeeds, \.saliencySeeds)
        if saliencyIntersect { c.saliencyIntersect = true }
        set(poolTrajectories, \.poolTrajectories); set(poolSteps, \.poolSteps); set(poolGuidance, \.poolGuidance)
        set(poolRefresh, \.poolRefreshEvery); set(checkpointEvery, \.checkpointEvery); set(seed, \.seed)
        if let trainable {
            guard let set = TrainableSet(rawValue: trainable) else {
                throw ValidationError("--trainable must be one of \(TrainableSet.allCases.map(\.rawValue).joined(separator: ", ")), not '\(trainable)'")
            }
            c.trainable = set
        }
        if let adversarial {
            guard let form = AdversarialForm(rawValue: adversarial) else {
                throw ValidationError("--adversarial must be confusion or non-saturating, not '\(adversarial)'")
            }
            c.adversarialForm = form
        }
        try c.validate()
        return c
    }
}

/// ESD's hyper-parameters as flags (defaults: the official script's, see `ESDConfig`). ESD also
/// reads the shared --seed and --checkpoint-every.
struct ESDOptions: ParsableArguments {
    @Option(help: "ESD trainable set: esd-x (cross-attention), esd-u (all but cross-attention), esd-all, esd-x-strict (cross-attention K/V).") var esdTrainMethod: String?
    @Option(help: "ESD iterations (official: 200; the paper: 1000).") var esdIterations: Int?
    @Option(help: "ESD Adam learning rate (official: 5e-5; the paper: 1e-5).") var esdLr: Float?
    @Option(help: "ESD negative guidance η (official: 2; the paper: 1).") var esdEta: Float?
    @Option(help: "ESD samples per iteration (official: 1).") var esdBatch: Int?
    @Option(help: "Steps of the sampling run xₜ is drawn from (official: 50).") var esdSamplingSteps: Int?
    @Option(help: "Guidance of that sampling run (official: 3).") var esdSamplingGuidance: Float?
    @Option(help: "Which model draws xₜ: frozen (the current official script) or trained (the paper).") var esdSampleFrom: String?

    /// Whether any ESD flag was given.
    var isSet: Bool {
        esdTrainMethod != nil || esdIterations != nil || esdLr != nil || esdEta != nil || esdBatch != nil
            || esdSamplingSteps != nil || esdSamplingGuidance != nil || esdSampleFrom != nil
    }

    func resolve(seed: UInt64?, checkpointEvery: Int?) throws -> ESDConfig {
        var c = ESDConfig()
        func set<T>(_ value: T?, _ path: WritableKeyPath<ESDConfig, T>) { if let value { c[keyPath: path] = value } }
        set(esdIterations, \.iterations); set(esdLr, \.learningRate); set(esdEta, \.eta); set(esdBatch, \.batchSize)
        set(esdSamplingSteps, \.samplingSteps); set(esdSamplingGuidance, \.samplingGuidance)
        set(seed, \.seed); set(checkpointEvery, \.checkpointEvery)
        if let esdTrainMethod {
            guard let method = ESDTrainMethod(rawValue: esdTrainMethod) else {
                throw ValidationError("--esd-train-method must be one of \(ESDTrainMethod.allCases.map(\.rawValue).joined(separator: ", ")), not '\(esdTrainMethod)'")
            }
            c.trainMethod = method
        }
        if let esdSampleFrom {
            guard let model = ESDSamplingModel(rawValue: esdSampleFrom) else {
                throw ValidationError("--esd-sample-from must be frozen or trained, not '\(esdSampleFrom)'")
            }
            c.samplingModel = model
        }
        try c.validate()
        return c
    }
}

/// UCE's hyper-parameters as flags (defaults: the official script's, see `UCEConfig`).
struct UCEOptions: ParsableArguments {
    @Option(help: "UCE λ, the pull towards the original weights (official: 0.5).") var uceLambda: Double?
    @Option(help: "UCE erase scale (official: 1; too large damages unrelated prompts).") var uceEraseScale: Double?
    @Option(help: "UCE preserve scale for the --retain prompts (official: 1).") var ucePreserveScale: Double?
    @Option(help: "UCE guide concept for every erased concept (default: each concept's --anchor, \"\"; the official script uses \"art\" for styles).") var uceGuide: String?

    var isSet: Bool { uceLambda != nil || uceEraseScale != nil || ucePreserveScale != nil || uceGuide != nil }

    func resolve() throws -> UCEConfig {
        var c = UCEConfig()
        if let uceLambda { c.lambda = uceLambda }
        if let uceEraseScale { c.eraseScale = uceEraseScale }
        if let ucePreserveScale { c.preserveScale = ucePreserveScale }
        c.guide = uceGuide
        try c.validate()
        return c
    }
}

/// Leakage-estimate flags shared by erase, evaluate and demo.
struct LeakageFlags: ParsableArguments {
    @Option(help: "Trajectories per class for the leakage critics.") var leakageTrajectories = LeakageOptions().trajectories
    @Option(help: "Steps of the first leakage critic (the second trains 3× longer).") var leakageCriticSteps = LeakageOptions().criticSteps

    var options: LeakageOptions {
        var o = LeakageOptions()
        o.trajectories = leakageTrajectories
        o.criticSteps = leakageCriticSteps
        return o
    }
}

/// Reads a list flag value: a path to a file (one item per line) or a comma-separated list.
func listValue(_ value: String) throws -> [String] {
    if FileManager.default.fileExists(atPath: value) {
        return try String(contentsOfFile: value, encoding: .utf8).split(separator: "\n")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
    return value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
}

struct Erase: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Erase concepts from a model (SCORE, ESD or UCE), write the erased model, mask, run.json and leakage estimate.",
        discussion: "Outputs in --out: model/ (diffusers layout; changed UNet tensors over the base unless --full), mask.safetensors, config.json, run.json, checkpoint.safetensors.")

    @Option(help: "Erasure method: score, esd or uce.") var method = "score"
    @Option(help: "A concept to erase (repeat for several).") var concept: [String] = []
    @Option(help: "Synonyms of the i-th --concept: a comma-separated list or a file (one per line). Default for testbed classes: their training synonyms.") var synonyms: [String] = []
    @Option(help: "What target prompts should draw instead (repeat for an anchor set; default \"\", the unconditional model).") var anchor: [String] = []
    @Option(help: "Prompts to keep (a comma-separated list or a file). Default on the testbed: the other classes' canonical prompts.") var retain: String?
    @Option(help: "A diffusers pipeline folder (default: the embedded mini-SD).") var model: String?
    @Option(help: "Output folder.") var out: String
    @Flag(help: "Write every UNet tensor and the base's other components, not just the changed tensors.") var full = false
    @Flag(help: "Continue from the checkpoint in --out.") var resume = false
    @Flag(help: "Skip the leakage estimate.") var noLeakage = false
    @OptionGroup var hyperparameters: SCOREOptions
    @OptionGroup var esd: ESDOptions
    @OptionGroup var uce: UCEOptions
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    /// The method with its config; flags of another method are an error, not silently ignored.
    func eraser() throws -> any ErasureMethod {
        guard ErasureMethods.names.contains(method) else { return try ErasureMethods.make(method) }
        if method != "esd", esd.isSet { throw ValidationError("--esd-… flags apply to --method esd, not \(method)") }
        if method != "uce", uce.isSet { throw ValidationError("--uce-… flags apply to --method uce, not \(method)") }
        if method != "score" {
            // --seed and --checkpoint-every are shared with ESD; every other SCORE flag is SCORE's.
            var scoreOnly = try hyperparameters.resolve()
            scoreOnly.seed = SCOREConfig().seed
            scoreOnly.checkpointEvery = SCOREConfig().checkpointEvery
            if hyperparameters.config != nil || scoreOnly != SCOREConfig() {
                throw ValidationError("SCORE's hyper-parameter flags (and --config) do not apply to --method \(method); see its --\(method)-… flags")
            }
        }
        switch method {
        case "esd":
            return try ErasureMethods.make(method, esd: esd.resolve(seed: hyperparameters.seed, checkpointEvery: hyperparameters.checkpointEvery))
        case "uce": return try ErasureMethods.make(method, uce: uce.resolve())
        default: return try ErasureMethods.make(method, score: hyperparameters.resolve())
        }
    }

    func run() throws {
        try compute.apply()
        let eraser = try eraser()
        let prompts = try FashionPrompts.bundled()
        let request = try Workflows.request(concepts: concept, synonyms: try synonyms.map { try listValue($0) },
                                            anchors: anchor, retain: try retain.map(listValue),
                                            prompts: prompts)
        let assets = Assets(log: { print("… \($0)") })
        let loaded = try ModelLoader.load(model, assets: assets)
        var job = EraseJob(method: eraser, request: request, baseFolder: loaded.folder, baseName: loaded.name,
                           output: URL(fileURLWithPath: out))
        job.full = full
        job.resume = resume
        job.command = CommandLine.arguments.joined(separator: " ")
        job.leakage = noLeakage ? nil : leakage.options
        job.probes = loaded.pipeline.latentChannels == 1 ? try Workflows.judgeProbes() : []
        guard let record = try job.run(pipeline: loaded.pipeline, log: { print($0) }) else { return }
        for report in record.leakage ?? [] {
            print(String(format: "'%@': estimated leakage %.4f nats (%@), bound on any detector's accuracy %.3f",
                         report.concept, report.leakage_nats, report.best_critic, report.leakage_bound))
        }
        print("wrote \(out)/run.json and \(out)/model")
    }
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure an erased model on the testbed: Acc_e, Acc_s, Acc_g, H_o, KID, leakage; write the report.")

    @Option(help: "The erased model (the model/ folder of `score erase`, or any testbed folder).") var model: String
    @Option(help: "The original model (default for an erased folder: its base).") var original: String?
    @Option(help: "The erased concept (a testbed class).") var concept: String
    @Option(help: "Report folder (default: <model>/../report).") var out: String?
    @Option(help: "Images of the target prompt.") var targetImages = EvaluationSettings().targetImages
    @Option(help: "Images over the paraphrases.") var paraphraseImages = EvaluationSettings().paraphraseImages
    @Option(help: "Images per retained class.") var retainImages = EvaluationSettings().retainImagesPerClass
    @Option(help: "Random seed of the evaluation images.") var seed = EvaluationSettings().seed
    @Flag(help: "Do not estimate the leakage when run.json has none.") var noLeakage = false
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        let log: (String) -> Void = { message in if !json { print(message) } }
        let assets = Assets(log: log)
        let erased = try ModelLoader.load(model, assets: assets)
        let originalPath = original ?? erased.manifest.map { $0.base_model == "embedded" ? nil : $0.base_model } ?? nil
        let reference = original != nil || erased.manifest != nil ? try ModelLoader.load(originalPath, assets: assets) : nil
        var settings = EvaluationSettings()
        settings.targetImages = targetImages
        settings.paraphraseImages = paraphraseImages
        settings.retainImagesPerClass = retainImages
        settings.seed = seed
        let folder = out.map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: model).deletingLastPathComponent().appendingPathComponent("report")
        let result = try Workflows.evaluate(model: erased, original: reference, concept: concept, settings: settings,
                                            leakage: noLeakage ? nil : leakage.options, reportFolder: folder, assets: assets, log: log)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(summary(result))
        }
    }
}

func summary(_ e: ObjectEvaluation) -> String {
    var lines = [String(format: "'%@': Acc_e %.1f%%  Acc_g %.1f%%  Acc_s %.1f%%  H_o %.1f%%  KID(real) %.4f",
                        e.concept, e.acc_e * 100, e.acc_g * 100, e.acc_s * 100, e.h_o * 100, e.kid_real)]
    if let o = e.original {
        lines.append(String(format: "original: Acc_e %.1f%%  Acc_g %.1f%%  Acc_s %.1f%%; Acc_s kept %.1f%%, KID vs original %.4f",
                            o.acc_e * 100, o.acc_g * 100, o.acc_s * 100, (e.acc_s_relative ?? 0) * 100, e.kid ?? .nan))
    }
    if let nats = e.leakage_nats, let bound = e.leakage_bound {
        lines.append(String(format: "estimated leakage %.4f nats, bound on any detector's accuracy %.3f", nats, bound))
    }
    return lines.joined(separator: "\n")
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Erase one class from the embedded mini-SD with SCORE, evaluate it and write the report.")

    @Option(help: "The class to erase.") var concept = "sneaker"
    @Option(help: "What its prompts should draw instead (repeat for an anchor set; default \"\").") var anchor: [String] = []
    @Option(help: "Output folder.") var out = "runs/demo"
    @Flag(help: "Continue an interrupted demo.") var resume = false
    @OptionGroup var hyperparameters: SCOREOptions
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        let config = try hyperparameters.resolve()
        let (evaluation, report) = try Workflows.demo(
            concept: concept, anchors: anchor, config: config, settings: EvaluationSettings(), leakage: leakage.options,
            output: URL(fileURLWithPath: out), resume: resume, command: CommandLine.arguments.joined(separator: " "),
            assets: Assets(log: { print("… \($0)") }), log: { print($0) })
        print(summary(evaluation))
        print("report: \(report.path)")
    }
}

struct Benchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run every method on testbed concepts and seeds, measure each the same way, write a Markdown table and JSON.",
        discussion: """
            Finished cells are kept in --out and skipped when the command is run again. --task object erases \
            Fashion-MNIST classes from the embedded mini-SD; --task style, identity and unsafe erase an emoji style, \
            character or the weapons group from a trained emoji mini-SD (--model; docs/EMOJI.md).
            """)

    @Option(help: "Task: object (Fashion-MNIST classes), style (an emoji style), identity (an emoji character) or unsafe (the emoji weapons group).") var task = "object"
    @Option(help: "Concepts (comma-separated; default: sneaker, OpenMoji style, Santa Claus or weapons by task).") var concepts: String?
    @Option(help: "Methods (comma-separated): original, score, score-retain-anchor (SCORE erasing towards the retained prompts), esd-x, esd-u, esd-all, esd-x-strict, uce.") var methods = "original,esd-x,esd-u,uce,score"
    @Option(help: "Seeds per method.") var seeds = 1
    @Option(help: "Folder for the cells (default: runs/benchmark for object, runs/benchmark-<task> for the emoji tasks).") var out: String?
    @Option(help: "Markdown table to write (default: <out>/results.md).") var table: String?
    @Option(help: "Emoji tasks: the trained emoji mini-SD folder (`score train unet --testbed emoji` writes <out>/model).") var model: String?
    @Option(help: "Emoji tasks: the emoji dataset file (default: the one `score dataset emoji` builds).") var dataset: String?
    @Option(help: "Emoji tasks: folder with judge-style-cnn.safetensors and judge-identity-cnn.safetensors (default: the shipped emoji judges).") var judges: String?
    @Flag(help: "Print the cells as JSON.") var json = false
    @Flag(help: "Measure nothing: write the table of the cells already finished in --out.") var finishedOnly = false
    @OptionGroup var hyperparameters: SCOREOptions
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        let task = try BenchmarkTask(flag: self.task)
        guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
        let config = try hyperparameters.resolve()
        let methods = try self.methods.split(separator: ",").map { name -> BenchmarkMethod in
            try BenchmarkMethod.named(String(name).trimmingCharacters(in: .whitespaces), score: config)
        }
        let out = self.out ?? task.defaultOutput
        let seedList = (0..<UInt64(seeds)).map { $0 }
        let conceptList = try concepts.map(listValue)
        let markdown: String, encoded: Data
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        if task == .object {
            for (flag, value) in [("--model", model), ("--dataset", dataset), ("--judges", judges)] where value != nil {
                throw ValidationError("\(flag) is for the emoji tasks; --task object uses the embedded mini-SD and judges")
            }
            var benchmark = ObjectBenchmark(concepts: conceptList ?? ["sneaker"], methods: methods, seeds: seedList,
                                            output: URL(fileURLWithPath: out))
            benchmark.leakage = leakage.options
            let cells = finishedOnly ? benchmark.finishedCells(log: { print($0) })
                                     : try benchmark.run(assets: Assets(log: { print("… \($0)") }), log: { print($0) })
            markdown = ObjectBenchmark.markdownTable(cells)
            encoded = try encoder.encode(cells)
        } else {
            var benchmark = try EmojiBenchmark(task: task, tasks: try EmojiTasks.bundled(), concepts: conceptList, methods: methods,
                                               seeds: seedList, output: URL(fileURLWithPath: out))
            benchmark.leakage = leakage.options
            let cells = finishedOnly ? benchmark.finishedCells(log: { print($0) })
                                     : try benchmark.run(model: model, dataset: dataset, judges: judges,
                                                         assets: Assets(log: { print("… \($0)") }), log: { print($0) })
            markdown = EmojiBenchmark.markdownTable(cells, task: task)
            encoded = try encoder.encode(cells)
        }
        let tableURL = URL(fileURLWithPath: table ?? "\(out)/results.md")
        try FileManager.default.createDirectory(at: tableURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(markdown.utf8).write(to: tableURL, options: .atomic)
        if json {
            print(String(decoding: encoded, as: UTF8.self))
        } else {
            print(markdown)
            print("wrote \(tableURL.path)")
        }
    }
}
