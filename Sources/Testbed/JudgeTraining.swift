import Foundation
import Kernels
import NN
import SafeTensors
import Tensor

/// How a model was trained: enough to reproduce it and to judge its figures.
public struct TrainingRecord: Codable, Sendable {
    public var model: String
    public var command: String
    public var seed: UInt64
    public var steps: Int
    public var batchSize: Int
    public var learningRate: Float
    public var dataSHA256: [String: String]
    public var wallSeconds: Double
    public var imagesPerSecond: Double
    public var finalLoss: Float
    public var parameters: Int
    public var metrics: [String: Double]
    public var threads: Int
    public var date: String
    /// Whether activations were recomputed in the backward pass (nil: not recorded).
    public var gradientCheckpointing: Bool? = nil

    public func write(to url: URL) throws { try writeJSON(self, to: url) }
}

/// Writes `value` as pretty-printed JSON with sorted keys (stable diffs), atomically.
public func writeJSON(_ value: some Encodable, to url: URL) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try writeAtomically(try encoder.encode(value), to: url)
}

/// Writes data to a temp file beside `url`, then renames it into place (creating the folder).
public func writeAtomically(_ data: Data, to url: URL) throws {
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try SafeTensors.writeAtomically(data, to: url)
}

public struct JudgeTrainingOptions {
    public var architecture = "cnn"
    public var steps = 1500
    public var batchSize = 128
    public var learningRate: Float = 2e-3
    public var seed: UInt64 = 0
    /// Random horizontal flips and shifts of up to `maxShift` pixels (edges filled with the
    /// background, −1) of every training image; recorded in the checkpoint, so a resume keeps it.
    public var augment = false
    public var maxShift = 2
    public var checkpointEvery = 500
    public var output: URL
    public var resume = false
    /// Stop (after checkpointing) once this step is reached, as if killed; for tests.
    public var stopAfter: Int?
    public var command = ""

    public init(output: URL) { self.output = output }
}

public func makeJudge(_ architecture: String, classes: Int = 10, channels: Int = 1, generator: inout RandomGenerator) throws -> any Judge {
    switch architecture {
    case "cnn": return ConvJudge(classes: classes, channels: channels, generator: &generator)
    case "mlp": return MLPJudge(classes: classes, channels: channels, generator: &generator)
    case "resnet": return ResNetJudge(classes: classes, channels: channels, generator: &generator)
    default: throw TrainingError.invalidOption("--arch must be resnet, cnn or mlp, not '\(architecture)'")
    }
}

/// Accuracy of a judge on labelled images.
public func judgeAccuracy(_ judge: any Judge, on data: LabelledImages, limit: Int? = nil) -> Double {
    let counts = judgeCounts(judge, on: data, limit: limit)
    return Double(counts.values.map(\.correct).reduce(0, +)) / Double(max(1, counts.values.map(\.total).reduce(0, +)))
}

/// The judge's accuracy on the images of each label (the ceiling a generated class is judged against).
public func judgePerClassAccuracy(_ judge: any Judge, on data: LabelledImages, limit: Int? = nil) -> [Int: Double] {
    judgeCounts(judge, on: data, limit: limit).mapValues { Double($0.correct) / Double($0.total) }
}

private func judgeCounts(_ judge: any Judge, on data: LabelledImages, limit: Int?) -> [Int: (correct: Int, total: Int)] {
    let n = min(limit ?? data.count, data.count)
    var counts: [Int: (correct: Int, total: Int)] = [:]
    for start in stride(from: 0, to: n, by: 500) {
        let indices = Array(start..<min(n, start + 500))
        for (predicted, label) in zip(judge.predict(data.batch(indices)), data.labels(indices)) {
            let count = counts[label] ?? (0, 0)
            counts[label] = (count.correct + (predicted == label ? 1 : 0), count.total + 1)
        }
    }
    return counts
}

/// Reads judge weights, taking the class count and input channels from the tensors' shapes
/// (`head.weight` [classes, 128]; `conv1.weight` [32, C, 3, 3] or `fc1.weight` [512, C·32·32]).
public func loadJudge(_ architecture: String, from url: URL) throws -> any Judge {
    let tensors = try TensorArchive(contentsOf: url).allTensors()
    guard let head = tensors["head.weight"], head.rank == 2 else {
        throw TrainingError.invalidFile(path: url.path, reason: "no head.weight: not a judge's weights (pass a file written by `score train judge`)")
    }
    let channels: Int
    switch architecture {
    case "cnn": channels = tensors["conv1.weight"]?.shape[1] ?? 1
    case "mlp": channels = (tensors["fc1.weight"]?.shape[1] ?? 1024) / 1024
    case "resnet": channels = tensors["stem.weight"]?.shape[1] ?? 1
    default: channels = 1
    }
    var generator = RandomGenerator(seed: 0)
    let judge = try makeJudge(architecture, classes: head.shape[0], channels: channels, generator: &generator)
    try judge.load(tensors, source: url.path)
    judge.eval()
    return judge
}

/// What judge training needs of a testbed: labelled training batches drawn from uniform numbers
/// and a held-out measurement. Fashion-MNIST (its train/test split) and the emoji judges
/// (`EmojiJudgeData`: style, split by emoji; identity, held-out copies) conform.
public protocol JudgeTrainingData {
    /// The record's model name: "judge-<arch>" for Fashion-MNIST, "judge-emoji-style-<arch>" …
    func modelName(architecture: String) -> String
    var classCount: Int { get }
    var channels: Int { get }
    /// SHA-256 of the data, for the training record.
    var digests: [String: String] { get }
    /// Uniform numbers one training image is drawn from.
    var drawsPerImage: Int { get }
    /// A training batch of `draws.count / drawsPerImage` images from uniform numbers in [0, 1).
    func trainBatch(draws: [Float]) -> (images: Tensor, labels: [Int])
    /// "test_accuracy" on held-out images, and whatever else the set measures.
    func heldOutMetrics(_ judge: any Judge) -> [String: Double]
    var heldOutDescription: String { get }
}

extension FashionMNIST: JudgeTrainingData {
    public func modelName(architecture: String) -> String { "judge-\(architecture)" }
    public var classCount: Int { 10 }
    public var channels: Int { 1 }
    public var drawsPerImage: Int { 1 }
    public func trainBatch(draws: [Float]) -> (images: Tensor, labels: [Int]) {
        let indices = draws.map { min(train.count - 1, Int($0 * Float(train.count))) }
        return (train.batch(indices), train.labels(indices))
    }
    public func heldOutMetrics(_ judge: any Judge) -> [String: Double] { ["test_accuracy": judgeAccuracy(judge, on: test)] }
    public var heldOutDescription: String { "\(test.count) test images" }
}

/// Trains a judge on the train split with Adam and a cosine schedule; checkpoints and resumes.
public func trainJudge(_ options: JudgeTrainingOptions, data: some JudgeTrainingData, log: @escaping (String) -> Void) throws -> (any Judge, TrainingRecord) {
    try options.validate()
    var generator = RandomGenerator(seed: options.seed)
    let judge = try makeJudge(options.architecture, classes: data.classCount, channels: data.channels, generator: &generator)
    let optimizer = Adam(judge.trainableParameters(), learningRate: options.learningRate)
    let schedule = CosineAnnealingLR(base: options.learningRate, period: options.steps, minimum: options.learningRate * 0.01)
    let checkpointURL = options.output.appendingPathComponent("checkpoint.safetensors")
    let settings = options.augment ? ["augment": "flip, shift \(options.maxShift)"] : [:]
    var state = TrainingCheckpoint(step: 0, generator: generator.fork(1), losses: [], settings: settings)
    if options.resume, FileManager.default.fileExists(atPath: checkpointURL.path) {
        state = try TrainingCheckpoint.load(from: checkpointURL, model: judge, optimizer: optimizer)
        guard state.settings == settings else {
            throw TrainingError.invalidFile(path: checkpointURL.path, reason: "was written with augmentation \(state.settings["augment"] ?? "off"), this run has \(settings["augment"] ?? "off") (resume with the checkpoint's --augment setting, or start a new --out)")
        }
        log("resumed from \(checkpointURL.path) at step \(state.step)")
    }
    let firstStep = state.step
    var progress = ProgressReporter(total: options.steps, print: log)
    let start = Date()
    while state.step < options.steps {
        var (images, labels) = data.trainBatch(draws: state.generator.uniform([options.batchSize * data.drawsPerImage]).scalars)
        if options.augment {
            images = flippedAndShifted(images, draws: state.generator.uniform([3 * options.batchSize]).scalars, maxShift: options.maxShift)
        }
        optimizer.learningRate = schedule.learningRate(at: state.step)
        let loss = crossEntropy(judge.logits(images), targets: labels)
        guard loss.item.isFinite else { throw TrainingError.nonFinite(what: "judge training", loss: loss.item, step: state.step, checkpoint: nil) }
        loss.backward()
        optimizer.step()
        judge.zeroGrad()
        state.step += 1
        state.losses.append(loss.item)
        progress.report(step: state.step, firstStep: firstStep, items: (state.step - firstStep) * options.batchSize, values: [("loss", loss.item)])
        if state.step % options.checkpointEvery == 0 || state.step == options.steps || state.step == options.stopAfter {
            try state.save(to: checkpointURL, model: judge, optimizer: optimizer)
        }
        if state.step == options.stopAfter { break }
    }
    let wall = Date().timeIntervalSince(start)
    let metrics = data.heldOutMetrics(judge)
    let accuracy = metrics["test_accuracy"] ?? .nan
    log(String(format: "%@ judge: held-out accuracy %.2f%% on %@", judge.architecture, accuracy * 100, data.heldOutDescription))
    let tail = state.losses.suffix(50)
    let record = TrainingRecord(
        model: data.modelName(architecture: judge.architecture), command: options.command, seed: options.seed, steps: options.steps,
        batchSize: options.batchSize, learningRate: options.learningRate, dataSHA256: data.digests,
        wallSeconds: wall, imagesPerSecond: Double((options.steps - firstStep) * options.batchSize) / wall,
        finalLoss: tail.reduce(0, +) / Float(max(tail.count, 1)), parameters: judge.parameterCount,
        metrics: metrics.merging(options.augment ? ["augment_max_shift": Double(options.maxShift)] : [:]) { a, _ in a },
        threads: Kernels.threadCount, date: ISO8601DateFormatter().string(from: Date()))
    return (judge, record)
}

/// Images [N, C, H, W] each mirrored left–right when its first draw is under ½ and moved by
/// (dx, dy) ∈ [−maxShift, maxShift]² from its next two; uncovered pixels take the background, −1.
/// `draws` holds 3·N uniform numbers in [0, 1).
public func flippedAndShifted(_ images: Tensor, draws: [Float], maxShift: Int) -> Tensor {
    precondition(images.rank == 4 && draws.count == 3 * images.shape[0], "flippedAndShifted: images \(images.shape), \(draws.count) draws")
    let (n, c, h, w) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
    let source = images.scalars
    let span = 2 * maxShift + 1
    return Tensor(shape: images.shape) { out in
        out.update(repeating: -1, count: n * c * h * w)
        for i in 0..<n {
            let flip = draws[3 * i] < 0.5
            let dx = min(span - 1, Int(draws[3 * i + 1] * Float(span))) - maxShift
            let dy = min(span - 1, Int(draws[3 * i + 2] * Float(span))) - maxShift
            for plane in (i * c)..<((i + 1) * c) {
                for y in max(0, dy)..<min(h, h + dy) {
                    for x in max(0, dx)..<min(w, w + dx) {
                        let sx = x - dx
                        out[(plane * h + y) * w + x] = source[(plane * h + y - dy) * w + (flip ? w - 1 - sx : sx)]
                    }
                }
            }
        }
    }
}
