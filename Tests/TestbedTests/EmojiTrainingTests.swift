import Diffusion
import Foundation
import NN
import Tensor
import XCTest
@testable import Testbed

/// The emoji testbed's training side: the split, the mini-SD training view, the judges, the task
/// file and the model check, on slices of a few emoji. Tests that render skip (saying what to
/// run) when the sources are not installed; the task-file check against the full dataset skips
/// when `score dataset emoji` has not been run.
final class EmojiTrainingTests: XCTestCase {
    /// apple, cat, pizza, rocket, cactus, guitar (other), Santa Claus, ghost (identity), bomb, dagger (weapons).
    static let sliceCodepoints: [Int] = [0x1F34E, 0x1F431, 0x1F355, 0x1F680, 0x1F335, 0x1F3B8, 0x1F385, 0x1F47B, 0x1F4A3, 0x1F5E1]
    nonisolated(unsafe) static var cachedSlice: EmojiDataset?

    /// Ten emoji × 4 styles × 2 copies at 32×32, rendered once for the class.
    func slice() throws -> EmojiDataset {
        if let cached = Self.cachedSlice { return cached }
        let sources: EmojiSources
        do { sources = try Assets().emojiSources(install: false) } catch {
            throw XCTSkip("emoji sources not installed (\(error)); run `score assets --emoji`")
        }
        var options = EmojiDataset.Options()
        options.copies = 2
        options.codepoints = Set(Self.sliceCodepoints.map(UInt32.init))
        let dataset = try EmojiDataset.build(sources: sources, options: options, captions: try EmojiCaptions.bundled())
        Self.cachedSlice = dataset
        return dataset
    }

    /// A task file over the slice: two characters, two weapons.
    func tinyTasks() throws -> EmojiTasks {
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: bundledTaskURL())) as! [String: Any]
        var identity = json["identity"] as! [String: Any]
        identity["characters"] = [["codepoint": "1F385", "name": "Santa Claus"], ["codepoint": "1F47B", "name": "ghost"]]
        json["identity"] = identity
        var unsafe = json["unsafe"] as! [String: Any]
        unsafe["members"] = [["codepoint": "1F4A3", "name": "bomb"], ["codepoint": "1F5E1", "name": "dagger"]]
        json["unsafe"] = unsafe
        return try EmojiTasks.parse(JSONSerialization.data(withJSONObject: json), file: "tiny-tasks.json")
    }

    func bundledTaskURL() throws -> URL { try EmojiTasks.bundledURL() }

    // MARK: Split

    func testSplitIsByEmojiIdDeterministicAndKeepsTaskEmoji() {
        let codepoints = Array(0x1F300..<0x1F300 + 600)
        let a = EmojiSplit(codepoints: codepoints, heldOutFraction: 0.1, seed: 0)
        XCTAssertEqual(a, EmojiSplit(codepoints: codepoints, heldOutFraction: 0.1, seed: 0), "same seed, same split")
        XCTAssertNotEqual(a, EmojiSplit(codepoints: codepoints, heldOutFraction: 0.1, seed: 1))
        XCTAssertEqual(Set(a.train).union(a.heldOut), Set(codepoints.indices))
        XCTAssert(Set(a.train).isDisjoint(with: a.heldOut))
        XCTAssert((30...90).contains(a.heldOut.count), "about 10% of 600 held out, got \(a.heldOut.count)")
        // An emoji's side depends on its code point only: a slice splits as the full set does.
        let sliceIndices = Array(stride(from: 0, to: 600, by: 7))
        let slice = EmojiSplit(codepoints: sliceIndices.map { codepoints[$0] }, heldOutFraction: 0.1, seed: 0)
        XCTAssertEqual(slice.heldOut.map { sliceIndices[$0] }, a.heldOut.filter { $0 % 7 == 0 })
        // Kept emoji never go to the held-out side.
        let keep = Set(a.heldOut.prefix(5).map { codepoints[$0] })
        let kept = EmojiSplit(codepoints: codepoints, heldOutFraction: 0.1, seed: 0, keepInTraining: keep)
        XCTAssertEqual(kept.heldOut.count, a.heldOut.count - keep.count)
        XCTAssert(keep.allSatisfy { cp in kept.train.contains(codepoints.firstIndex(of: cp)!) })
    }

    func testSplitOfTheSliceSeparatesImagesByEmoji() throws {
        let dataset = try slice()
        let split = EmojiSplit(codepoints: dataset.entries.map(\.codepoint), heldOutFraction: 0.5, seed: 3)
        let train = Set(EmojiTrainingData(dataset: dataset, emoji: split.train).images.map { dataset.emoji[$0] })
        let held = Set(dataset.imageIndices(emoji: split.heldOut).map { dataset.emoji[$0] })
        XCTAssert(train.isDisjoint(with: held), "no emoji on both sides")
        XCTAssertEqual(train.count + held.count, dataset.entries.count)
        let tasks = try tinyTasks()
        let testbedSplit = dataset.split(tasks: tasks, heldOutFraction: 0.9, seed: 0)
        for m in tasks.taskEmoji {
            XCTAssert(testbedSplit.train.contains(dataset.entries.firstIndex { $0.codepoint == m.codepoint }!), "\(m.name) is trained on")
        }
    }

    // MARK: mini-SD

    func testTrainingViewGivesRGBInRangeAndTheCaptionForms() throws {
        let dataset = try slice()
        let apple = dataset.entries.firstIndex { $0.codepoint == 0x1F34E }!
        let view = EmojiTrainingData(dataset: dataset, emoji: [apple])
        XCTAssertEqual(view.count, 4 * 2)
        XCTAssertEqual(view.imageShape, [3, 32, 32])
        XCTAssertNil(view.allCaptions)
        let batch = view.batch([0, 7])
        XCTAssertEqual(batch.shape, [2, 3, 32, 32])
        XCTAssert(batch.scalars.allSatisfy { (-1...1).contains($0) })
        XCTAssertEqual(batch.pointer[0], 1, "white background is +1")
        XCTAssertLessThan(batch.scalars.min()!, -0.5, "the drawing has dark or saturated pixels")
        XCTAssertEqual(view.captions(0), ["red apple in Noto style", "red apple", "apple in Noto style", "apple"])
        XCTAssertEqual(view.captions(7).first, "red apple in Symbola style", "image 7 is Symbola's second copy")
    }

    func testTaskEmojiWeightRepeatsOnlyTheEmphasisedEmojisImages() throws {
        let dataset = try slice()
        let santa = dataset.entries.firstIndex { $0.codepoint == 0x1F385 }!
        let apple = dataset.entries.firstIndex { $0.codepoint == 0x1F34E }!
        let outside = dataset.entries.firstIndex { $0.codepoint == 0x1F47B }!
        let view = EmojiTrainingData(dataset: dataset, emoji: [apple, santa], emphasised: [santa, outside], weight: 3)
        XCTAssertEqual(view.count, 8 + 8 * 3, "apple once, Santa three times; an emphasised emoji outside the view adds nothing")
        let counts = Dictionary(grouping: view.images, by: { dataset.emoji[$0] }).mapValues(\.count)
        XCTAssertEqual(counts, [apple: 8, santa: 24])
        XCTAssertEqual(EmojiTrainingData(dataset: dataset, emoji: [apple, santa], emphasised: [santa]).count, 16, "weight 1 is the plain view")
    }

    func testOneStepOfATinyRGBUNetLowersTheLossOnAnEmojiSlice() throws {
        let dataset = try slice()
        let view = EmojiTrainingData(dataset: dataset, emoji: Array(dataset.entries.indices))
        var config = tinyUNetConfig()
        config.inChannels = 3
        config.outChannels = 3
        var g = RandomGenerator(seed: 1)
        let unet = try UNet2DConditionModel(config: config, generator: &g)
        let scheduler = try DDPMScheduler(config: MiniSD.schedulerConfig())
        let indices = [0, 9, 18, 27, 36, 45, 54, 63]
        let (states, mask) = HashingTextEncoder().encode(prompts: indices.map { view.captions($0)[0] })
        assertOneStepLowersTheLoss(unet: unet, scheduler: scheduler, clean: view.batch(indices),
                                   states: states, mask: mask, generator: &g)

        // The shared trainer runs on the emoji view (captions encoded per batch) and refuses a grey UNet.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("emoji-minisd-\(UUID())")
        defer { try? FileManager.default.removeItem(at: folder) }
        var options = MiniSDTrainingOptions(output: folder)
        options.steps = 2
        options.batchSize = 4
        options.warmupSteps = 1
        let (_, record) = try trainMiniSD(options, data: view, textEncoder: HashingTextEncoder(), digests: ["emoji-dataset": "x"], config: config) { _ in }
        XCTAssertEqual(record.model, "mini-sd-unet-emoji")
        XCTAssert(record.finalLoss.isFinite)
        XCTAssertThrowsError(try trainMiniSD(options, data: view, textEncoder: HashingTextEncoder(), config: tinyUNetConfig()) { _ in }) {
            XCTAssert("\($0)".contains("3"), "\($0)")
        }

        // --init-from: a fine-tuning phase starts from a saved model's weights, not a random UNet.
        var start = RandomGenerator(seed: 42)
        let saved = try UNet2DConditionModel(config: config, generator: &start)
        let savedFolder = folder.appendingPathComponent("saved")
        try MiniSD.save(saved, config: config, to: savedFolder, testbed: "emoji")
        var tune = MiniSDTrainingOptions(output: folder.appendingPathComponent("tune"))
        tune.steps = 1
        tune.batchSize = 2
        tune.warmupSteps = 1
        tune.learningRate = 0
        tune.initialModel = savedFolder
        let (tuned, _) = try trainMiniSD(tune, data: view, textEncoder: HashingTextEncoder(), config: config) { _ in }
        for ((name, a), (_, b)) in zip(tuned.namedParameters(), saved.namedParameters()) {
            // The returned model is the EMA of equal weights: equal up to its rounding.
            let gap = zip(a.scalars, b.scalars).map { Swift.abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(gap, 1e-6, "\(name): the saved weights, unchanged at learning rate 0")
        }
        var otherGroups = config
        otherGroups.normNumGroups = 2
        XCTAssertThrowsError(try trainMiniSD(tune, data: view, textEncoder: HashingTextEncoder(), config: otherGroups) { _ in },
                             "GroupNorm has no per-group weights: a config mismatch would load silently") {
            XCTAssert("\($0)".contains("--init-from") && "\($0)".contains("config"), "\($0)")
        }
        tune.initialModel = folder.appendingPathComponent("missing")
        XCTAssertThrowsError(try trainMiniSD(tune, data: view, textEncoder: HashingTextEncoder(), config: config) { _ in }) {
            XCTAssert("\($0)".contains("--init-from") && "\($0)".contains("missing"), "\($0)")
        }
        var g2 = RandomGenerator(seed: 0)
        let full = try UNet2DConditionModel(config: MiniSD.emojiUNetConfig(), generator: &g2)
        XCTAssertEqual(full.parameterCount, 1_972_641 + 576 + 578, "Fashion's UNet with RGB conv_in and conv_out")
    }

    func testEmojiUNetNormalisesGroupsOfSeveralChannels() throws {
        // One channel per group removes each channel's mean before conv_out: ε̂ then cannot follow
        // the noise's per-channel mean and samples come out on tinted backgrounds (docs/EMOJI.md).
        let config = MiniSD.emojiUNetConfig()
        let groups = try XCTUnwrap(config.normNumGroups)
        for width in config.blockOutChannels {
            XCTAssertEqual(width % groups, 0)
            XCTAssertGreaterThanOrEqual(width / groups, 4, "channels per group at width \(width)")
        }
    }

    func testTrainingRunsKeepTheConfigTheyStartedWith() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("training-config-\(UUID())")
        defer { try? FileManager.default.removeItem(at: folder) }
        let run = folder.appendingPathComponent("run")
        XCTAssertEqual(try MiniSD.trainingConfig(output: run, resuming: false, initialModel: nil, testbed: "emoji"), MiniSD.emojiUNetConfig())
        // A run started under an older default: resuming keeps what it recorded, a fresh start does not.
        var older = MiniSD.emojiUNetConfig()
        older.normNumGroups = 32
        try JSONEncoder().encode(older).write(to: run.appendingPathComponent("unet-config.json"))
        XCTAssertEqual(try MiniSD.trainingConfig(output: run, resuming: true, initialModel: nil, testbed: "emoji"), older)
        XCTAssertEqual(try MiniSD.trainingConfig(output: run, resuming: false, initialModel: nil, testbed: "emoji"), MiniSD.emojiUNetConfig())
        XCTAssertEqual(try UNet2DConditionConfig(contentsOf: run.appendingPathComponent("unet-config.json")), MiniSD.emojiUNetConfig(),
                       "the fresh start recorded its own config")
        // A fine-tune takes its starting model's config.
        let saved = folder.appendingPathComponent("saved")
        var g = RandomGenerator(seed: 0)
        try MiniSD.save(try UNet2DConditionModel(config: tinyUNetConfig(), generator: &g), config: tinyUNetConfig(), to: saved, testbed: "emoji")
        XCTAssertEqual(try MiniSD.trainingConfig(output: folder.appendingPathComponent("tune"), resuming: false, initialModel: saved, testbed: "emoji"),
                       tinyUNetConfig())
        XCTAssertEqual(try MiniSD.trainingConfig(output: folder.appendingPathComponent("plain"), resuming: true, initialModel: nil, testbed: "fashion"),
                       MiniSD.unetConfig(), "nothing recorded: the testbed's default")
    }

    // MARK: Judges

    func testStyleJudgeOnHeldOutEmojiBeatsChance() throws {
        let dataset = try slice()
        let split = EmojiSplit(codepoints: dataset.entries.map(\.codepoint), heldOutFraction: 0.3, seed: 2)
        XCTAssertFalse(split.heldOut.isEmpty)
        let data = EmojiJudgeData.style(dataset: dataset, split: split)
        XCTAssertEqual(data.classNames, ["Noto", "Twemoji", "OpenMoji", "Symbola"])
        XCTAssert(Set(data.heldOut.map { dataset.emoji[$0] }).isDisjoint(with: data.trainByClass.flatMap { $0 }.map { dataset.emoji[$0] }))
        var options = JudgeTrainingOptions(output: FileManager.default.temporaryDirectory.appendingPathComponent("emoji-judge-\(UUID())"))
        defer { try? FileManager.default.removeItem(at: options.output) }
        options.steps = 120
        options.batchSize = 32
        options.learningRate = 3e-3
        options.checkpointEvery = 1000
        let (judge, record) = try trainJudge(options, data: data) { _ in }
        XCTAssertEqual(record.model, "judge-emoji-style-cnn")
        // Chance is 0.25; telling the style of an unseen emoji from 8 seen ones is the hard case.
        XCTAssertGreaterThan(record.metrics["test_accuracy"]!, 0.45, "\(record.metrics)")
        // Weights round-trip with their class count and channels read from the shapes.
        let url = options.output.appendingPathComponent("judge-style-cnn.safetensors")
        try Tensor.save(judge.stateDict(), to: url)
        let loaded = try loadJudge("cnn", from: url)
        XCTAssertEqual(data.heldOutPredictions(loaded), data.heldOutPredictions(judge))
    }

    func testIdentityJudgeOnHeldOutCopiesBeatsChance() throws {
        let dataset = try slice()
        let tasks = try tinyTasks()
        let split = dataset.split(tasks: tasks, heldOutFraction: 0.5, seed: 0)
        let data = try EmojiJudgeData.identity(dataset: dataset, tasks: tasks, split: split)
        XCTAssertEqual(data.classNames, ["Santa Claus", "ghost", "bomb", "dagger", "other"])
        XCTAssertEqual(data.heldOutTaskImages, 4 * 4, "the last copy of each task emoji in each style")
        XCTAssert(data.trainByClass[0].allSatisfy { dataset.copy[$0] == 0 } && data.heldOut.prefix(16).allSatisfy { dataset.copy[$0] == 1 })
        var options = JudgeTrainingOptions(output: FileManager.default.temporaryDirectory.appendingPathComponent("emoji-judge-\(UUID())"))
        defer { try? FileManager.default.removeItem(at: options.output) }
        options.steps = 60
        options.batchSize = 32
        options.checkpointEvery = 1000
        let (_, record) = try trainJudge(options, data: data) { _ in }
        XCTAssertGreaterThan(record.metrics["test_accuracy"]!, 0.5, "chance is 0.2: \(record.metrics)")
        XCTAssertNotNil(record.metrics["accuracy/Santa Claus"])
    }

    // MARK: Tasks

    func testBundledTaskFileReadsAndHasTheTasks() throws {
        let tasks = try EmojiTasks.bundled()
        XCTAssertEqual(tasks.style.styles, ["Noto", "Twemoji", "OpenMoji", "Symbola"])
        XCTAssertEqual(tasks.style.prompt(name: "red apple", style: "OpenMoji"), "red apple in OpenMoji style")
        XCTAssertEqual(tasks.identity.characters.count, 20)
        XCTAssertEqual(tasks.identity.defaultTarget, "Santa Claus")
        XCTAssertEqual(tasks.unsafe.concept, "weapons")
        XCTAssertGreaterThanOrEqual(tasks.unsafe.members.count, 6)
        XCTAssertGreaterThanOrEqual(tasks.unsafe.explicitPrompts.count, 20)
        XCTAssertGreaterThanOrEqual(tasks.unsafe.implicitPrompts.count, 20)
        XCTAssertEqual(tasks.identityJudgeClasses.last, "other")
    }

    func testTaskFileErrorsNameTheFileAndTheKey() throws {
        let original = try JSONSerialization.jsonObject(with: Data(contentsOf: bundledTaskURL())) as! [String: Any]
        func error(_ change: (inout [String: Any]) -> Void) -> EmojiTaskError? {
            var json = original
            change(&json)
            do {
                _ = try EmojiTasks.parse(JSONSerialization.data(withJSONObject: json), file: "broken.json")
                return nil
            } catch { return error as? EmojiTaskError }
        }
        func edit(_ key: String, _ body: @escaping (inout [String: Any]) -> Void) -> (inout [String: Any]) -> Void {
            { json in var part = json[key] as! [String: Any]; body(&part); json[key] = part }
        }
        let missing = error(edit("identity") { identity in
            var characters = identity["characters"] as! [[String: Any]]
            characters[2].removeValue(forKey: "name")
            identity["characters"] = characters
        })
        XCTAssertEqual(missing?.key, "identity.characters[2].name")
        XCTAssert(missing.map { "\($0)".hasPrefix("broken.json: key \"identity.characters[2].name\"") } ?? false, "\(String(describing: missing))")

        let badHex = error(edit("unsafe") { unsafe in
            var members = unsafe["members"] as! [[String: Any]]
            members[1]["codepoint"] = "1F5ZZ"
            unsafe["members"] = members
        })
        XCTAssertEqual(badHex?.key, "unsafe.members[1].codepoint")
        XCTAssert(badHex?.reason.contains("1F5ZZ") ?? false)

        XCTAssertEqual(error(edit("style") { $0["default_target"] = "Wingdings" })?.key, "style.default_target")
        XCTAssertEqual(error(edit("style") { $0["styles"] = ["Noto"] })?.key, "style.styles")
        XCTAssertEqual(error(edit("identity") { $0["default_target"] = "Batman" })?.key, "identity.default_target")
        let leaky = error(edit("unsafe") { unsafe in unsafe["implicit_prompts"] = ["a quiet village", "a cowboy with his gun"] })
        XCTAssertEqual(leaky?.key, "unsafe.implicit_prompts[1]")
        XCTAssertEqual(error { $0.removeValue(forKey: "unsafe") }?.key, "unsafe")
        XCTAssertEqual(error { $0["version"] = 2 }?.key, "version")

        // A code point missing from the dataset names the key, the code point and the dataset.
        let dataset = try slice()
        XCTAssertThrowsError(try EmojiTasks.bundled().check(against: dataset)) {
            let e = $0 as? EmojiTaskError
            XCTAssertEqual(e?.key, "identity.characters[1]", "Mrs. Claus is not in the slice")
            XCTAssert(e?.reason.contains("U+1F936") ?? false, "\($0)")
        }
        XCTAssertNoThrow(try tinyTasks().check(against: dataset))
    }

    func testEveryTaskCodepointIsInTheDataset() throws {
        let url = EmojiDataset.defaultURL(assets: Assets(), size: 32)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw XCTSkip("the emoji dataset is not built (\(url.path)); run `score dataset emoji`")
        }
        let dataset = try EmojiDataset(contentsOf: url, verify: false)
        try EmojiTasks.bundled().check(against: dataset)
    }

    func testShippedJudgesFitTheTasks() throws {
        let tasks = try EmojiTasks.bundled()
        let probe = Tensor.zeros([1, 3, 32, 32])
        let style = try EmojiJudges.load(task: .style)
        XCTAssertEqual(noGrad { style.logits(probe) }.shape, [1, 4])
        let identity = try EmojiJudges.load(task: .identity)
        XCTAssertEqual(noGrad { identity.logits(probe) }.shape, [1, tasks.identityJudgeClasses.count])
        XCTAssertThrowsError(try EmojiJudges.load(task: .style, folder: FileManager.default.temporaryDirectory.appendingPathComponent("no-judges"))) {
            XCTAssert("\($0)".contains("score train judge --testbed emoji --task style"), "\($0)")
        }
    }

    // MARK: check-model

    func testModelCheckReportsEveryStyleAndIdentity() throws {
        let dataset = try slice()
        let tasks = try tinyTasks()
        var config = tinyUNetConfig()
        config.inChannels = 3
        config.outChannels = 3
        var g = RandomGenerator(seed: 3)
        let unet = try UNet2DConditionModel(config: config, generator: &g)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("emoji-model-\(UUID())")
        defer { try? FileManager.default.removeItem(at: folder) }
        try MiniSD.save(unet, config: config, to: folder, testbed: "emoji")
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("model_index.json"))) as! [String: Any]
        XCTAssertEqual(index["_score_testbed"] as? String, "emoji")
        let pipeline = try StableDiffusionPipeline(directory: folder, textEncoder: HashingTextEncoder())
        let styleJudge = ConvJudge(classes: 4, channels: 3, generator: &g)
        let split = dataset.split(tasks: tasks, heldOutFraction: 0, seed: 0)
        let sample = dataset.checkSample(split: split, count: 3)
        XCTAssertEqual(sample, dataset.checkSample(split: split, count: 3), "the sample is fixed")
        XCTAssertThrowsError(try checkEmojiModel(pipeline: pipeline, styleJudge: styleJudge, identityJudge: ConvJudge(classes: 4, channels: 3, generator: &g),
                                                 dataset: dataset, tasks: tasks, sample: sample)) {
            XCTAssert("\($0)".contains("5"), "the tasks name 5 classes: \($0)")
        }
        let result = try checkEmojiModel(pipeline: pipeline, styleJudge: styleJudge, identityJudge: ConvJudge(classes: 5, channels: 3, generator: &g),
                                         dataset: dataset, tasks: tasks, sample: sample, imagesPerStyle: 3, imagesPerIdentity: 2, steps: 2)
        XCTAssertEqual(Set(result.per_style_accuracy.keys), ["Noto", "Twemoji", "OpenMoji", "Symbola"])
        XCTAssertEqual(Set(result.per_identity_accuracy.keys), ["Santa Claus", "ghost"])
        XCTAssert(result.kid.isFinite)
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(result)) as! [String: Any]
        for key in ["per_style_accuracy", "per_identity_accuracy", "mean_style_accuracy", "mean_identity_accuracy", "kid", "noise_mean_tracking"] {
            XCTAssertNotNil(json[key], key)
        }
        let tracking = try XCTUnwrap(result.noise_mean_tracking)
        XCTAssertEqual(tracking.map(\.timestep), [960, 800, 500])
        for row in tracking { XCTAssert(row.slope.isFinite && Swift.abs(row.correlation) <= 1, "\(row)") }

        // A UNet whose conv_out is zero predicts ε̂ = 0 everywhere: it follows no noise mean.
        let probe = dataset.batch(Array(0..<8))
        for (name, p) in unet.namedParameters() where name.hasPrefix("conv_out.") { p.assign(Tensor.zeros(p.shape)) }
        let flat = noiseMeanTracking(unet: unet, scheduler: pipeline.scheduler, clean: probe, textEncoder: HashingTextEncoder())
        XCTAssertEqual(flat.map(\.slope), [0, 0, 0])
        XCTAssertEqual(flat.map(\.correlation), [0, 0, 0])
    }
}
