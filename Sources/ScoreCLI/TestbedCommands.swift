import ArgumentParser
import Evaluation
import Foundation
import Testbed

/// --testbed and the emoji data options, shared by `train` and `check-model`.
struct TestbedOptions: ParsableArguments {
    @Option(help: "Testbed: fashion (Fashion-MNIST, the default) or emoji (docs/EMOJI.md).") var testbed = "fashion"
    @Option(help: "Emoji dataset file (default: <cache>/emoji/dataset/emoji-v1-32px.safetensors, built by `score dataset emoji`).") var dataset: String?
    @Option(help: "Emoji task file (default: the bundled emoji_tasks.json).") var tasks: String?
    @Option(help: "Emoji: fraction of emoji held out of training (decided per emoji).") var heldOutFraction = TestbedData().heldOutFraction
    @Option(help: "Emoji: seed of the held-out split.") var splitSeed = TestbedData().splitSeed

    func data() throws -> TestbedData {
        var data = try TestbedData(flag: testbed)
        data.dataset = dataset.map { URL(fileURLWithPath: $0) }
        data.tasks = tasks.map { URL(fileURLWithPath: $0) }
        data.heldOutFraction = heldOutFraction
        data.splitSeed = splitSeed
        try data.validate()
        return data
    }
}

/// The options of a trainer that `score train` sets from the flags every trainer shares.
protocol TrainerOptions {
    var steps: Int { get set }
    var batchSize: Int { get set }
    var learningRate: Float { get set }
    var seed: UInt64 { get set }
    var checkpointEvery: Int { get set }
    var resume: Bool { get set }
    var command: String { get set }
    /// The trainer's defaults, which its flags show.
    static var defaults: Self { get }
}

extension MiniSDTrainingOptions: TrainerOptions {
    static var defaults: Self { Self(output: URL(fileURLWithPath: ".")) }
}
extension MiniFluxTrainingOptions: TrainerOptions {
    static var defaults: Self { Self(output: FluxTrainingRun.defaultOutput) }
}
extension JudgeTrainingOptions: TrainerOptions {
    static var defaults: Self { Self(output: URL(fileURLWithPath: JudgeTrainingRun.defaultOutput)) }
}

/// The flags every `score train` command has, declared once; each command's defaults are its
/// trainer's (`Options.defaults`).
struct TrainingFlags<Options: TrainerOptions>: ParsableArguments {
    @Option(help: "Optimizer steps.") var steps = Options.defaults.steps
    @Option(help: "Images per step.") var batch = Options.defaults.batchSize
    @Option(help: "Peak learning rate (cosine schedule; the UNet and FLUX warm up to it first).") var lr = Options.defaults.learningRate
    @Option(help: "Random seed.") var seed = Options.defaults.seed
    @Option(help: "Checkpoint every N steps.") var checkpointEvery = Options.defaults.checkpointEvery
    @Flag(help: "Continue from the checkpoint in --out.") var resume = false

    /// `options` with these flags and the command line that gave them.
    func applied(to options: Options) -> Options {
        var o = options
        (o.steps, o.batchSize, o.learningRate, o.seed) = (steps, batch, lr, seed)
        (o.checkpointEvery, o.resume) = (checkpointEvery, resume)
        o.command = CommandLine.arguments.joined(separator: " ")
        return o
    }
}

/// --export-checkpoint and --stop-after, which the UNet and FLUX trainers share.
struct CheckpointFlags: ParsableArguments {
    @Flag(help: "Only write the EMA weights of the checkpoint in --out as a model folder (<out>/model-step<N>).") var exportCheckpoint = false
    @Option(help: "Stop after this step, writing a checkpoint that --resume continues from (the schedule still runs to --steps).") var stopAfter: Int?

    /// Trains (or with --export-checkpoint only exports the checkpoint) and prints the folder written.
    func train(_ run: (Assets, @escaping (String) -> Void) throws -> URL, export: () throws -> URL) throws {
        let folder = exportCheckpoint ? try export() : try run(Assets(log: { print("… \($0)") }), { print($0) })
        print("wrote \(folder.path)")
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the testbed's models on Fashion-MNIST.",
        subcommands: [UNetCommand.self, FluxCommand.self, JudgeCommand.self])

    struct UNetCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unet", abstract: "Train the mini-SD UNet (pixel space, MiniLM conditioning, DDPM).")

        private static let defaults = MiniSDTrainingOptions.defaults
        @OptionGroup var trainingFlags: TrainingFlags<MiniSDTrainingOptions>
        @OptionGroup var checkpoint: CheckpointFlags
        @Option(help: "Output folder (a diffusers-layout model folder is written into it; default runs/mini-sd, runs/mini-sd-emoji).") var out: String?
        @Option(help: "Start from this model folder's UNet weights (a fine-tuning phase: fresh optimiser and schedule) instead of a random initialisation.") var initFrom: String?
        @Option(help: "Emoji: draw the tasks' characters and weapons this many times as often as other emoji.") var taskEmojiWeight = 1
        @Option(help: "Offset noise: std of a per-image, per-channel constant added to the training noise (0 = off; 0.1 lets samples' colour means follow the prompt, not the starting noise). The checkpoint records it; --resume must pass the same value.") var offsetNoise = defaults.offsetNoise
        @Flag(help: "Recompute each block's activations in the backward pass (diffusers' gradient_checkpointing): less memory, the same weights, more time.") var gradientCheckpointing = false
        @OptionGroup var testbed: TestbedOptions
        @OptionGroup var compute: ComputeOptions

        func training() throws -> UNetTrainingRun {
            let data = try testbed.data()
            var options = trainingFlags.applied(to: MiniSDTrainingOptions(output: out.map { URL(fileURLWithPath: $0) } ?? UNetTrainingRun.defaultOutput(data)))
            options.initialModel = initFrom.map { URL(fileURLWithPath: $0) }
            options.stopAfter = checkpoint.stopAfter
            options.offsetNoise = offsetNoise
            options.gradientCheckpointing = gradientCheckpointing
            var run = UNetTrainingRun(options: options, testbed: data)
            run.taskEmojiWeight = taskEmojiWeight
            return run
        }

        func validate() throws { try checking { try training().validate() } }

        func run() throws {
            compute.apply()
            let training = try training()
            try checkpoint.train(training.run(assets:log:), export: training.exportCheckpoint)
        }
    }

    struct FluxCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "flux", abstract: "Train the mini-FLUX transformer (pixel space, MiniLM states + pooled vector, rectified flow).")

        @OptionGroup var trainingFlags: TrainingFlags<MiniFluxTrainingOptions>
        @OptionGroup var checkpoint: CheckpointFlags
        @Option(help: "σ sampling: logit-normal or uniform (recorded in the checkpoint; --resume must pass the same).") var timeSampling = MiniFluxTrainingOptions.defaults.timeSampling
        @Option(help: "Output folder (a diffusers-layout model folder is written into it).") var out = FluxTrainingRun.defaultOutput.path
        @OptionGroup var compute: ComputeOptions

        func training() -> FluxTrainingRun {
            var options = trainingFlags.applied(to: MiniFluxTrainingOptions(output: URL(fileURLWithPath: out)))
            options.timeSampling = timeSampling
            options.stopAfter = checkpoint.stopAfter
            return FluxTrainingRun(options: options)
        }

        func validate() throws { try checking { try training().validate() } }

        func run() throws {
            compute.apply()
            let training = training()
            try checkpoint.train(training.run(assets:log:), export: training.exportCheckpoint)
        }
    }

    struct JudgeCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "judge", abstract: "Train a concept classifier (judge) and report its test accuracy.")

        @Option(help: "Architecture: resnet, cnn or mlp.") var arch = JudgeTrainingOptions.defaults.architecture
        @OptionGroup var trainingFlags: TrainingFlags<JudgeTrainingOptions>
        @Option(help: "Output folder.") var out = JudgeTrainingRun.defaultOutput
        @Flag(help: "Train on random flips and ±2-pixel shifts of the images (recorded in the checkpoint; --resume must pass it again).") var augment = false
        @Option(help: "Emoji judge: style (4 styles, held-out emoji) or identity (the tasks' emoji and \"other\", held-out copies).") var task: EmojiJudgeData.Task?
        @Option(help: "Emoji identity judge: hold out this whole style (noto, twemoji, openmoji, symbola) instead of the last copy; a measurement, not the judge check-model uses.") var heldOutStyle: String?
        @OptionGroup var testbed: TestbedOptions
        @OptionGroup var compute: ComputeOptions

        func training() throws -> JudgeTrainingRun {
            var options = trainingFlags.applied(to: JudgeTrainingOptions(output: URL(fileURLWithPath: out)))
            options.architecture = arch
            options.augment = augment
            var run = JudgeTrainingRun(options: options, testbed: try testbed.data())
            run.task = task
            run.heldOutStyle = heldOutStyle
            return run
        }

        func validate() throws { try checking { try training().validate() } }

        func run() throws {
            compute.apply()
            let weights = try training().run(assets: Assets(log: { print("… \($0)") }), log: { print($0) })
            print("wrote \(weights.path)")
        }
    }
}

extension EmojiJudgeData.Task: ExpressibleByArgument {}

struct CheckModel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-model",
        abstract: "Judge images of each class's canonical prompt and measure KID against real test images.")

    private static let defaults = ModelCheckRun()
    @Option(help: "A testbed model folder (default: the embedded mini-SD; required for --testbed emoji).") var model: String?
    @Option(help: "Folder with judge-<arch>.safetensors (emoji: judge-style-<arch>.safetensors and judge-identity-<arch>.safetensors, or where `score train judge --testbed emoji` wrote them; default: the embedded judges).") var judges: String?
    @Option(help: "Judge architecture: resnet, cnn or mlp.") var judge = defaults.judge
    @Option(help: "Images per class.") var imagesPerClass = defaults.imagesPerClass
    @Option(help: "Instead of the canonical prompts, judge --images-per-class images of this one prompt and print the fraction placed in each class (\"\" for the unconditional model).") var prompt: String?
    @Option(help: "Emoji: images per style (\"{name} in {style} style\" over a fixed sample of emoji).") var imagesPerStyle = defaults.imagesPerStyle
    @Option(help: "Emoji: images per identity-task character (cycling over the styles).") var imagesPerIdentity = defaults.imagesPerIdentity
    @Option(help: "Emoji: how many emoji the style check samples.") var styleEmoji = defaults.styleEmoji
    @OptionGroup var testbed: TestbedOptions
    @Option(help: "Model family: sd (the mini-SD, DDIM) or flux (the mini-FLUX, flow-matching Euler); --model picks a folder of that family, else the embedded one.") var family = defaults.family
    @Option(help: "Sampling steps (default: \(ModelCheckRun.defaultSampling(family: "sd").steps) for sd, \(ModelCheckRun.defaultSampling(family: "flux").steps) for flux).") var steps: Int?
    @Option(help: "Classifier-free guidance scale (default: \(ModelCheckRun.defaultSampling(family: "sd").guidance) for sd, \(ModelCheckRun.defaultSampling(family: "flux").guidance) for flux).") var guidance: Float?
    @Option(help: "Random seed.") var seed = defaults.seed
    @OptionGroup var output: JSONOption
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var precision: PrecisionOptions

    func check() throws -> ModelCheckRun {
        var run = ModelCheckRun()
        run.family = family
        let sampling = ModelCheckRun.defaultSampling(family: family)
        run.model = model.map { URL(fileURLWithPath: $0) }
        run.judges = judges.map { URL(fileURLWithPath: $0) }
        run.judge = judge
        run.imagesPerClass = imagesPerClass
        run.imagesPerStyle = imagesPerStyle
        run.imagesPerIdentity = imagesPerIdentity
        run.styleEmoji = styleEmoji
        run.steps = steps ?? sampling.steps
        run.guidance = guidance ?? sampling.guidance
        run.seed = seed
        run.testbed = try testbed.data()
        run.prompt = prompt
        return run
    }

    func validate() throws { try checking { try check().validate() } }

    func run() throws {
        compute.apply()
        let log = output.log
        switch try precision.run({ try check().run(assets: Assets(log: { log("… \($0)") }), log: log) }) {
        case let .emoji(result):
            if output.json { return try printJSON(result) }
            print(String(format: "mean style accuracy %.1f%%, mean identity accuracy %.1f%%, KID %.4f (style judge features)",
                         result.mean_style_accuracy * 100, result.mean_identity_accuracy * 100, result.kid))
        case let .distribution(distribution):
            if output.json { return try printJSON(distribution) }
            print("\(imagesPerClass) images of \"\(distribution.prompt)\", judged by the \(judge) judge:")
            for c in try FashionPrompts.bundled().classes {
                print(String(format: "%-12@ %5.1f%%", c.name as NSString, (distribution.class_fraction[c.name] ?? 0) * 100))
            }
        case let .fashion(result):
            if output.json { return try printJSON(result) }
            for c in try FashionPrompts.bundled().classes {
                print(String(format: "%-12@ generated %5.1f%%, real test images %5.1f%%", c.name as NSString,
                             (result.per_class_accuracy[c.name] ?? 0) * 100, (result.judge_test_per_class_accuracy?[c.name] ?? 0) * 100))
            }
            print(String(format: "mean accuracy %.1f%%, KID %.4f (judge %@, its test accuracy %.1f%%)",
                         result.mean_accuracy * 100, result.kid, judge, (result.judge_test_accuracy ?? 0) * 100))
            print(String(format: "mean border pixel (0–255) %.2f, real test images %.2f",
                         result.mean_border_pixel ?? .nan, result.real_mean_border_pixel ?? .nan))
        }
    }
}
