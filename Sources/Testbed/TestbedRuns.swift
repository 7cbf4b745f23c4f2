import Diffusion
import Foundation
import Tensor

// The testbed's commands as library calls: `score train unet`, `score train judge` and
// `score check-model` parse their flags into these types and call `run`.

/// Which testbed a run uses, and where the emoji testbed's data comes from.
public struct TestbedData: Sendable {
    public enum Kind: String, Sendable { case fashion = "fashion-mnist", emoji }

    public var kind: Kind
    /// The emoji dataset file (nil: the one `score dataset emoji` builds in the asset cache).
    public var dataset: URL?
    /// The emoji task file (nil: the bundled emoji_tasks.json).
    public var tasks: URL?
    /// Fraction of emoji held out of training, decided per emoji.
    public var heldOutFraction = EmojiSplit.defaultHeldOutFraction
    /// Seed of the held-out split.
    public var splitSeed: UInt64 = 0

    public init(kind: Kind = .fashion) { self.kind = kind }

    /// `--testbed`: fashion (or fashion-mnist) or emoji.
    public init(flag: String) throws {
        switch flag {
        case "fashion", "fashion-mnist": kind = .fashion
        case "emoji": kind = .emoji
        default: throw TrainingError.invalidOption("--testbed must be fashion or emoji, not '\(flag)'")
        }
    }

    public var isEmoji: Bool { kind == .emoji }

    public func validate() throws {
        guard heldOutFraction >= 0, heldOutFraction < 1 else {
            throw TrainingError.invalidOption("--held-out-fraction must be in [0, 1), not \(heldOutFraction)")
        }
    }

    /// The emoji dataset, its tasks (checked against it) and the held-out split.
    public func emojiData(assets: Assets) throws -> (EmojiDataset, EmojiTasks, EmojiSplit) {
        let data = try EmojiDataset.load(dataset ?? EmojiDataset.defaultURL(assets: assets, size: 32))
        let taskFile = try tasks.map { try EmojiTasks.load($0) } ?? EmojiTasks.bundled()
        try taskFile.check(against: data)
        return (data, taskFile, data.split(tasks: taskFile, heldOutFraction: heldOutFraction, seed: splitSeed))
    }
}

/// The option checks the mini-SD and mini-FLUX trainers share, then `more` (each trainer's own),
/// before any data is read.
func checkTrainingOptions(steps: Int, batchSize: Int, learningRate: Float, checkpointEvery: Int, stopAfter: Int?,
                          more: @autoclosure () -> (ok: Bool, message: String)) throws {
    func check(_ ok: Bool, _ message: String) throws { if !ok { throw TrainingError.invalidOption(message) } }
    try check(steps >= 1, "--steps must be at least 1, not \(steps)")
    try check(batchSize >= 1, "--batch must be at least 1, not \(batchSize)")
    try check(learningRate >= 0 && learningRate.isFinite, "--lr must be 0 or more, not \(learningRate)")
    try check(checkpointEvery >= 1, "--checkpoint-every must be at least 1, not \(checkpointEvery)")
    if let stop = stopAfter {
        try check((1...steps).contains(stop), "--stop-after \(stop) is outside the run's steps 1…\(steps) (--steps)")
    }
    let (ok, message) = more()
    try check(ok, message)
}

extension MiniSDTrainingOptions {
    /// Ranges of the options, checked before any data is read.
    public func validate() throws {
        try checkTrainingOptions(steps: steps, batchSize: batchSize, learningRate: learningRate, checkpointEvery: checkpointEvery,
                                 stopAfter: stopAfter, more: (offsetNoise >= 0 && offsetNoise.isFinite, "--offset-noise must be 0 or more, not \(offsetNoise)"))
    }
}

/// `score train unet`: trains (or resumes, or fine-tunes) the testbed's mini-SD and writes it as
/// a model folder.
public struct UNetTrainingRun {
    public var options: MiniSDTrainingOptions
    public var testbed: TestbedData
    /// Emoji: the tasks' characters and weapons are drawn this many times as often as other emoji.
    public var taskEmojiWeight = 1

    public init(options: MiniSDTrainingOptions, testbed: TestbedData) {
        self.options = options
        self.testbed = testbed
    }

    /// Where a run writes without `--out`.
    public static func defaultOutput(_ testbed: TestbedData) -> URL {
        URL(fileURLWithPath: testbed.isEmoji ? "runs/mini-sd-emoji" : "runs/mini-sd")
    }

    public func validate() throws {
        try options.validate()
        try testbed.validate()
        guard taskEmojiWeight >= 1 else { throw TrainingError.invalidOption("--task-emoji-weight must be at least 1, not \(taskEmojiWeight)") }
        guard testbed.isEmoji || taskEmojiWeight == 1 else { throw TrainingError.invalidOption("--task-emoji-weight is for --testbed emoji") }
    }

    /// The UNet config of the run: the one it recorded when it started, else the testbed's.
    func config(resuming: Bool) throws -> UNet2DConditionConfig {
        try MiniSD.trainingConfig(output: options.output, resuming: resuming, initialModel: options.initialModel,
                                  testbed: testbed.kind.rawValue)
    }

    /// Trains to `options.steps` (or `stopAfter`) and writes `<output>/model` with its
    /// training.json. Returns the model folder.
    public func run(assets: Assets, log: @escaping (String) -> Void) throws -> URL {
        try validate()
        let config = try config(resuming: options.resume)
        let textEncoder = try MiniSD.textEncoder(assets: assets)
        let (unet, record): (UNet2DConditionModel, TrainingRecord)
        if testbed.isEmoji {
            let (dataset, tasks, split) = try testbed.emojiData(assets: assets)
            let taskCodepoints = Set(tasks.taskEmoji.map(\.codepoint))
            let taskEmoji = dataset.entries.indices.filter { taskCodepoints.contains(dataset.entries[$0].codepoint) }
            let data = EmojiTrainingData(dataset: dataset, emoji: split.train, emphasised: taskEmoji, weight: taskEmojiWeight)
            log("emoji: \(split.train.count) training emoji (\(split.heldOut.count) held out), \(data.count) images"
                + (taskEmojiWeight > 1 ? " (the \(taskEmoji.count) task emoji × \(taskEmojiWeight))" : ""))
            (unet, record) = try trainMiniSD(options, data: data, textEncoder: textEncoder, digests: try dataset.digests(),
                                             config: config, log: log)
        } else {
            let data = try FashionMNIST(assets: assets)
            (unet, record) = try trainMiniSD(options, data: data.train, prompts: try FashionPrompts.bundled(),
                                             textEncoder: textEncoder, digests: data.digests, config: config, log: log)
        }
        let folder = options.output.appendingPathComponent("model")
        try MiniSD.save(unet, config: config, to: folder, testbed: testbed.kind.rawValue)
        try record.write(to: folder.appendingPathComponent("training.json"))
        return folder
    }

    /// Writes the EMA weights of `<output>/checkpoint.safetensors` as the model folder
    /// `<output>/model-step<N>` (staged beside it, then renamed). Returns that folder.
    public func exportCheckpoint() throws -> URL {
        let config = try config(resuming: true)
        let checkpoint = options.output.appendingPathComponent("checkpoint.safetensors")
        guard FileManager.default.fileExists(atPath: checkpoint.path) else {
            throw TrainingError.invalidFile(path: checkpoint.path, reason: "no checkpoint to export (--export-checkpoint reads the one in --out)")
        }
        let staging = options.output.appendingPathComponent("model-export")
        try? FileManager.default.removeItem(at: staging)
        let step = try MiniSD.export(checkpoint: checkpoint, config: config, to: staging, testbed: testbed.kind.rawValue)
        let folder = options.output.appendingPathComponent("model-step\(step)")
        try? FileManager.default.removeItem(at: folder)
        try FileManager.default.moveItem(at: staging, to: folder)
        return folder
    }
}

extension JudgeTrainingOptions {
    /// Ranges of the options, checked before any data is read.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw TrainingError.invalidOption(message) } }
        try check(["resnet", "cnn", "mlp"].contains(architecture), "--arch must be resnet, cnn or mlp, not '\(architecture)'")
        try check(steps >= 1, "--steps must be at least 1, not \(steps)")
        try check(batchSize >= 1, "--batch must be at least 1, not \(batchSize)")
        try check(learningRate >= 0 && learningRate.isFinite, "--lr must be 0 or more, not \(learningRate)")
        try check(checkpointEvery >= 1, "--checkpoint-every must be at least 1, not \(checkpointEvery)")
    }
}

/// `score train judge`: trains a concept classifier and writes its weights and training record
/// under a root folder, in the subfolder and file name the loaders look for.
public struct JudgeTrainingRun {
    /// The options; `options.output` is the root folder (e.g. runs/judges).
    public var options: JudgeTrainingOptions
    public var testbed: TestbedData
    /// Emoji only: which judge (style or identity).
    public var task: EmojiJudgeData.Task?
    /// Emoji identity judge only: hold out this whole style instead of the last copy.
    public var heldOutStyle: String?

    /// The root folder without `--out`.
    public static let defaultOutput = "runs/judges"

    public init(options: JudgeTrainingOptions, testbed: TestbedData) {
        self.options = options
        self.testbed = testbed
    }

    public func validate() throws {
        try options.validate()
        try testbed.validate()
        if testbed.isEmoji {
            guard task != nil else { throw TrainingError.invalidOption("--testbed emoji needs --task style or --task identity") }
            if heldOutStyle != nil, task != .identity { throw TrainingError.invalidOption("--held-out-style is for --task identity") }
        } else if task != nil || heldOutStyle != nil {
            throw TrainingError.invalidOption("--task and --held-out-style are for --testbed emoji")
        }
    }

    /// Trains (or resumes) the judge and writes its weights and record. Returns the weights file:
    /// `<root>/<arch>/judge-<arch>.safetensors`, or for emoji
    /// `<root>/emoji-<task>-<arch>[-without-<style>]/judge-<task>-<arch>.safetensors`.
    public func run(assets: Assets, log: @escaping (String) -> Void) throws -> URL {
        try validate()
        let root = options.output, arch = options.architecture
        var options = self.options
        let judge: any Judge, record: TrainingRecord, weights: URL
        if let task, testbed.isEmoji {
            let (dataset, tasks, split) = try testbed.emojiData(assets: assets)
            var heldStyle: Int?
            if let heldOutStyle {
                guard let s = dataset.styles.firstIndex(where: { $0.id == heldOutStyle.lowercased() }) else {
                    throw TrainingError.invalidOption("--held-out-style: unknown style \(heldOutStyle); use \(dataset.styles.map(\.id).joined(separator: ", "))")
                }
                heldStyle = s
            }
            let data = task == .style
                ? EmojiJudgeData.style(dataset: dataset, split: split, digests: try dataset.digests())
                : try EmojiJudgeData.identity(dataset: dataset, tasks: tasks, split: split, heldOutStyle: heldStyle, digests: try dataset.digests())
            let folder = "emoji-\(task.rawValue)-\(arch)" + (heldStyle.map { "-without-\(dataset.styles[$0].id)" } ?? "")
            options.output = root.appendingPathComponent(folder)
            log("emoji \(task.rawValue) judge: \(data.classCount) classes, \(data.trainByClass.map(\.count).reduce(0, +)) training images; held out: \(data.heldOutDescription)")
            (judge, record) = try trainJudge(options, data: data, log: log)
            weights = options.output.appendingPathComponent(EmojiJudges.fileName(task: task, architecture: arch))
        } else {
            options.output = root.appendingPathComponent(arch)
            (judge, record) = try trainJudge(options, data: try FashionMNIST(assets: assets), log: log)
            weights = options.output.appendingPathComponent("judge-\(arch).safetensors")
        }
        try Tensor.save(judge.stateDict(), to: weights)
        try record.write(to: weights.deletingPathExtension().appendingPathExtension("json"))
        return weights
    }
}

/// Where the judge places `images` images of one prompt (`score check-model --prompt`).
public struct ClassDistribution: Codable, Sendable {
    public var prompt: String
    public var images: Int
    public var class_fraction: [String: Double]
}

/// `score check-model`: how well a testbed model draws what it is asked.
public struct ModelCheckRun: Sendable {
    /// A testbed model folder (nil: the embedded mini-SD; the emoji testbed has none).
    public var model: URL?
    /// Folder of the judges' weights (nil: the embedded ones).
    public var judges: URL?
    public var judge = "cnn"
    public var imagesPerClass = 50
    /// Emoji: images per style, per identity-task character, and emoji the style check samples.
    public var imagesPerStyle = 32
    public var imagesPerIdentity = 8
    public var styleEmoji = 16
    public var steps = DefaultModel.steps
    public var guidance = DefaultModel.guidance
    public var seed: UInt64 = 0
    public var testbed = TestbedData()
    /// Which model family `model` is: "sd" (the mini-SD, a UNet) or "flux" (the mini-FLUX); with no
    /// `model`, the family's embedded default.
    public var family = "sd"
    /// Fashion-MNIST: judge `imagesPerClass` images of this one prompt instead of the canonical prompts.
    public var prompt: String?

    public init() {}

    /// What `run` measured: the emoji testbed's check, one prompt's class distribution, or the
    /// Fashion-MNIST check of every class.
    public enum Result {
        case emoji(EmojiModelCheck)
        case distribution(ClassDistribution)
        case fashion(ModelCheck)
    }

    public func run(assets: Assets, log: @escaping (String) -> Void) throws -> Result {
        try validate()
        if testbed.isEmoji { return .emoji(try runEmoji(assets: assets, log: log)) }
        if let prompt { return .distribution(try runDistribution(prompt: prompt, assets: assets)) }
        return .fashion(try runFashion(assets: assets, log: log))
    }

    /// The sampler settings a family is measured at when none are given.
    public static func defaultSampling(family: String) -> (steps: Int, guidance: Float) {
        family == "flux" ? (MiniFlux.steps, MiniFlux.guidance) : (DefaultModel.steps, DefaultModel.guidance)
    }

    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw TrainingError.invalidOption(message) } }
        try testbed.validate()
        try check(["resnet", "cnn", "mlp"].contains(judge), "--judge must be resnet, cnn or mlp, not '\(judge)'")
        try check(["sd", "flux"].contains(family), "--family must be sd or flux, not '\(family)'")
        try check(family == "sd" || !testbed.isEmoji, "--family flux is for the Fashion-MNIST testbed (no emoji mini-FLUX exists)")
        try check(imagesPerClass >= 1, "--images-per-class must be at least 1, not \(imagesPerClass)")
        try check(imagesPerStyle >= 1, "--images-per-style must be at least 1, not \(imagesPerStyle)")
        try check(imagesPerIdentity >= 1, "--images-per-identity must be at least 1, not \(imagesPerIdentity)")
        try check(styleEmoji >= 1, "--style-emoji must be at least 1, not \(styleEmoji)")
        try check(steps >= 1, "--steps must be at least 1, not \(steps)")
        try check(guidance.isFinite, "--guidance must be a number, not \(guidance)")
        try check(!testbed.isEmoji || model != nil,
                  "--testbed emoji needs --model (no emoji mini-SD is embedded; train one with `score train unet --testbed emoji`)")
        try check(prompt == nil || !testbed.isEmoji, "--prompt is for the Fashion-MNIST testbed")
        try check(prompt == nil || family == "sd", "--prompt is for --family sd")
    }

    /// Fashion-MNIST: judge accuracy per class of the canonical prompts' images, KID against real
    /// test images, and the judge's own accuracy on those test images.
    private func runFashion(assets: Assets, log: @escaping (String) -> Void) throws -> ModelCheck {
        let classifier = try DefaultModel.judge(judge, folder: judges)
        let prompts = try FashionPrompts.bundled()
        let data = try FashionMNIST(assets: assets)
        var result: ModelCheck
        if family == "flux" {
            let pipeline = try MiniFlux.pipeline(folder: model ?? DefaultModel.fluxFolder(), assets: assets)
            let side = pipeline.defaultSize
            result = try checkModel(sampler: "flow-matching Euler, true CFG with the empty prompt, \(type(of: pipeline.scheduler))",
                                    judge: classifier, prompts: prompts, test: data.test, imagesPerClass: imagesPerClass,
                                    steps: steps, guidance: guidance, seed: seed, log: log) { prompts, seed in
                try pipeline.generate(prompts: prompts, steps: steps, guidance: guidance, seed: seed, height: side, width: side)
            }
        } else {
            let pipeline = try DefaultModel.pipeline(folder: model, assets: assets)
            result = try checkModel(pipeline: pipeline, judge: classifier, prompts: prompts, test: data.test,
                                    imagesPerClass: imagesPerClass, steps: steps, guidance: guidance, seed: seed, log: log)
        }
        result.judge_test_accuracy = judgeAccuracy(classifier, on: data.test)
        let real = judgePerClassAccuracy(classifier, on: data.test)
        result.judge_test_per_class_accuracy = Dictionary(uniqueKeysWithValues: prompts.classes.compactMap { c in real[c.label].map { (c.name, $0) } })
        return result
    }

    /// Fashion-MNIST: where the judge places `imagesPerClass` images of `prompt`.
    private func runDistribution(prompt: String, assets: Assets) throws -> ClassDistribution {
        let pipeline = try DefaultModel.pipeline(folder: model, assets: assets)
        let classifier = try DefaultModel.judge(judge, folder: judges)
        let fractions = try classDistribution(pipeline: pipeline, judge: classifier, prompts: try FashionPrompts.bundled(), prompt: prompt,
                                              count: imagesPerClass, steps: steps, guidance: guidance, seed: seed)
        return ClassDistribution(prompt: prompt, images: imagesPerClass, class_fraction: fractions)
    }

    /// Emoji: style and identity accuracy and KID in the style judge's feature space.
    private func runEmoji(assets: Assets, log: @escaping (String) -> Void) throws -> EmojiModelCheck {
        let (dataset, tasks, split) = try testbed.emojiData(assets: assets)
        let pipeline = try DefaultModel.pipeline(folder: model, assets: assets)
        let styleJudge = try EmojiJudges.load(task: .style, architecture: judge, folder: judges)
        let identityJudge = try EmojiJudges.load(task: .identity, architecture: judge, folder: judges)
        return try checkEmojiModel(pipeline: pipeline, styleJudge: styleJudge, identityJudge: identityJudge, dataset: dataset,
                                   tasks: tasks, sample: dataset.checkSample(split: split, count: styleEmoji, seed: seed),
                                   imagesPerStyle: imagesPerStyle, imagesPerIdentity: imagesPerIdentity, steps: steps,
                                   guidance: guidance, seed: seed, log: log)
    }
}
