import Foundation
import Tensor

/// Which emoji are trained on and which are held out, decided per emoji (never per image, so
/// no drawing of a held-out emoji is seen in training).
///
/// An emoji is held out when the first uniform draw of a Philox stream forked on (seed, code
/// point) is below `heldOutFraction` (default 10%): its side depends only on its code point, so
/// a slice of the dataset splits as the full set does. Emoji in `keepInTraining` (the tasks'
/// emoji, which the model must know to have them erased) are always trained on.
public struct EmojiSplit: Equatable, Sendable {
    public static let defaultHeldOutFraction = 0.1
    /// Emoji indices (into `EmojiDataset.entries`), ascending.
    public let train: [Int]
    public let heldOut: [Int]

    public init(codepoints: [Int], heldOutFraction: Double = defaultHeldOutFraction, seed: UInt64 = 0,
                keepInTraining: Set<Int> = []) {
        let base = RandomGenerator(seed: seed)
        var train: [Int] = [], heldOut: [Int] = []
        for (i, cp) in codepoints.enumerated() {
            var g = base.fork(UInt64(cp))
            let u = Double(g.uniform([1]).scalars[0])
            if u < heldOutFraction && !keepInTraining.contains(cp) { heldOut.append(i) } else { train.append(i) }
        }
        self.train = train
        self.heldOut = heldOut
    }
}

extension EmojiDataset {
    /// Reads a built dataset file (checking its hash); a missing file says how to build it.
    public static func load(_ url: URL) throws -> EmojiDataset {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw AssetError(asset: "emoji dataset", reason: "\(url.path) does not exist",
                             remedy: "build it with `score dataset emoji` (or pass --dataset)")
        }
        return try EmojiDataset(contentsOf: url)
    }

    /// The testbed's split: `EmojiSplit` over this dataset's emoji, the tasks' emoji and the
    /// sample-grid emoji kept in training.
    public func split(tasks: EmojiTasks?, heldOutFraction: Double = EmojiSplit.defaultHeldOutFraction, seed: UInt64 = 0) -> EmojiSplit {
        let keep = Set((tasks?.taskEmoji.map(\.codepoint) ?? []) + EmojiDataset.sampleCodepoints)
        return EmojiSplit(codepoints: entries.map(\.codepoint), heldOutFraction: heldOutFraction, seed: seed, keepInTraining: keep)
    }

    /// Indices of the images of `emoji` (every style and copy), ascending.
    public func imageIndices(emoji wanted: [Int], copies wantedCopies: Range<Int>? = nil, styles wantedStyles: Set<Int>? = nil) -> [Int] {
        let copyRange = wantedCopies ?? 0..<copies
        var result: [Int] = []
        for e in wanted.sorted() {
            for s in styles.indices where wantedStyles?.contains(s) ?? true {
                for c in copyRange { result.append(index(emoji: e, style: s, copy: c)) }
            }
        }
        return result
    }

    /// The training records' data digest: the dataset's content SHA-256.
    public func digests() throws -> [String: String] { ["emoji-dataset": try contentHash()] }
}

/// The emoji set as mini-SD training data: RGB [3, size, size] in [-1, 1] (white 1) and, per
/// image, the dataset's caption forms: "{name} in {style} style", "{name}", and the same two
/// for each synonym; the trainer draws one uniformly per step (10% are replaced by "").
public struct EmojiTrainingData: MiniSDTrainingData {
    public let dataset: EmojiDataset
    /// Dataset image indices this view draws from.
    public let images: [Int]

    /// All images (every style and copy) of the given emoji; those of `emphasised` (dataset emoji
    /// indices, among `emoji`) `weight` times over, so a batch draws them `weight` times as often.
    /// The tasks' 26 characters and weapons are 3% of ~850 training emoji: at uniform draws a
    /// two-core training run shows each of their drawings too rarely to learn who is who.
    public init(dataset: EmojiDataset, emoji: [Int], emphasised: [Int] = [], weight: Int = 1) {
        self.dataset = dataset
        let chosen = Set(emoji)
        let extra = emphasised.filter { chosen.contains($0) }
        images = dataset.imageIndices(emoji: emoji)
            + Array(repeating: dataset.imageIndices(emoji: extra), count: max(0, weight - 1)).flatMap { $0 }
    }

    public var testbed: String { "emoji" }
    public var count: Int { images.count }
    public var imageShape: [Int] { [3, dataset.size, dataset.size] }
    public func batch(_ indices: [Int]) -> Tensor { dataset.batch(indices.map { images[$0] }) }
    public func captions(_ index: Int) -> [String] { dataset.captions(images[index]) }
    /// ~14k distinct captions over the full set: encoded per batch instead of into one table.
    public var allCaptions: [String]? { nil }
}

/// The emoji judges' data.
///
/// - **style** (4 classes: Noto, Twemoji, OpenMoji, Symbola): trained on every image of the
///   split's training emoji, measured on every image of its held-out emoji, so it must tell the
///   style of emoji it has never seen.
/// - **identity** (the tasks' emoji, then "other"): the task emoji's copies 0…copies−2 in every
///   style are trained on and the last copy of each (emoji, style) is held out; "other" is trained
///   on the split's other training emoji and measured on copy 0 of its held-out emoji. With
///   `heldOutStyle`, the task emoji are instead trained on the other three styles and measured on
///   every copy in that style (how well identity carries over to an unseen style).
///
/// Training batches draw a class uniformly, then an image of it (classes are balanced).
public struct EmojiJudgeData: JudgeTrainingData {
    public enum Task: String, CaseIterable, Sendable { case style, identity }

    public let task: Task
    public let dataset: EmojiDataset
    public let classNames: [String]
    public let trainByClass: [[Int]]
    public let heldOut: [Int]
    public let heldOutLabels: [Int]
    /// For identity: how many held-out images are task emoji (the first ones); the rest are "other".
    public let heldOutTaskImages: Int
    public let digests: [String: String]

    public static func style(dataset: EmojiDataset, split: EmojiSplit, digests: [String: String] = [:]) -> EmojiJudgeData {
        let train = dataset.imageIndices(emoji: split.train)
        let test = dataset.imageIndices(emoji: split.heldOut)
        var byClass = Array(repeating: [Int](), count: dataset.styles.count)
        for i in train { byClass[dataset.style[i]].append(i) }
        return EmojiJudgeData(task: .style, dataset: dataset, classNames: dataset.styles.map(\.captionName), trainByClass: byClass,
                              heldOut: test, heldOutLabels: test.map { dataset.style[$0] }, heldOutTaskImages: test.count, digests: digests)
    }

    public static func identity(dataset: EmojiDataset, tasks: EmojiTasks, split: EmojiSplit, heldOutStyle: Int? = nil,
                                digests: [String: String] = [:]) throws -> EmojiJudgeData {
        guard dataset.copies >= 2 || heldOutStyle != nil else {
            throw EmojiDatasetError(file: "identity judge", reason: "needs at least 2 copies per (emoji, style) to hold one out; the dataset has \(dataset.copies)")
        }
        let indexOf = Dictionary(dataset.entries.enumerated().map { ($1.codepoint, $0) }, uniquingKeysWith: { a, _ in a })
        let members = try tasks.taskEmoji.map { m -> Int in
            guard let e = indexOf[m.codepoint] else {
                throw EmojiTaskError(file: tasks.file, key: "identity/unsafe", reason: String(format: "U+%X (%@) is not in the dataset", m.codepoint, m.name))
            }
            return e
        }
        var byClass: [[Int]] = [], test: [Int] = [], labels: [Int] = []
        let allStyles = Set(dataset.styles.indices)
        for (label, e) in members.enumerated() {
            if let held = heldOutStyle {
                byClass.append(dataset.imageIndices(emoji: [e], styles: allStyles.subtracting([held])))
                let t = dataset.imageIndices(emoji: [e], styles: [held])
                test += t
                labels += Array(repeating: label, count: t.count)
            } else {
                byClass.append(dataset.imageIndices(emoji: [e], copies: 0..<(dataset.copies - 1)))
                let t = dataset.imageIndices(emoji: [e], copies: (dataset.copies - 1)..<dataset.copies)
                test += t
                labels += Array(repeating: label, count: t.count)
            }
        }
        let taskSet = Set(members)
        let otherLabel = members.count
        byClass.append(dataset.imageIndices(emoji: split.train.filter { !taskSet.contains($0) }))
        let taskImages = test.count
        let otherTest = dataset.imageIndices(emoji: split.heldOut.filter { !taskSet.contains($0) }, copies: 0..<1)
        test += otherTest
        labels += Array(repeating: otherLabel, count: otherTest.count)
        return EmojiJudgeData(task: .identity, dataset: dataset, classNames: tasks.identityJudgeClasses, trainByClass: byClass,
                              heldOut: test, heldOutLabels: labels, heldOutTaskImages: taskImages, digests: digests)
    }

    public func modelName(architecture: String) -> String { "judge-emoji-\(task.rawValue)-\(architecture)" }
    public var classCount: Int { classNames.count }
    public var channels: Int { 3 }
    public var drawsPerImage: Int { 2 }

    public func trainBatch(draws: [Float]) -> (images: Tensor, labels: [Int]) {
        let nonEmpty = trainByClass.indices.filter { !trainByClass[$0].isEmpty }
        var indices: [Int] = [], labels: [Int] = []
        for i in stride(from: 0, to: draws.count - 1, by: 2) {
            let label = nonEmpty[min(nonEmpty.count - 1, Int(draws[i] * Float(nonEmpty.count)))]
            let pool = trainByClass[label]
            indices.append(pool[min(pool.count - 1, Int(draws[i + 1] * Float(pool.count)))])
            labels.append(label)
        }
        return (dataset.batch(indices), labels)
    }

    /// Predictions on the held-out images, 256 at a time.
    public func heldOutPredictions(_ judge: any Judge) -> [Int] {
        stride(from: 0, to: heldOut.count, by: 256).flatMap { start in
            judge.predict(dataset.batch(Array(heldOut[start..<min(heldOut.count, start + 256)])))
        }
    }

    /// "test_accuracy": style — over every held-out image; identity — over the held-out images of
    /// the task emoji (and "other_accuracy" over held-out other emoji). Also "accuracy/<class>".
    public func heldOutMetrics(_ judge: any Judge) -> [String: Double] {
        let predicted = heldOutPredictions(judge)
        var metrics: [String: Double] = [:]
        func accuracy(_ range: Range<Int>) -> Double {
            Double(range.filter { predicted[$0] == heldOutLabels[$0] }.count) / Double(max(1, range.count))
        }
        metrics["test_accuracy"] = accuracy(0..<heldOutTaskImages)
        if task == .identity { metrics["other_accuracy"] = accuracy(heldOutTaskImages..<heldOut.count) }
        for (label, name) in classNames.enumerated() {
            let rows = heldOut.indices.filter { heldOutLabels[$0] == label }
            guard !rows.isEmpty else { continue }
            metrics["accuracy/\(name)"] = Double(rows.filter { predicted[$0] == label }.count) / Double(rows.count)
        }
        metrics["held_out_images"] = Double(heldOut.count)
        return metrics
    }

    public var heldOutDescription: String {
        switch task {
        case .style: return "\(heldOut.count) images of \(Set(heldOut.map { dataset.emoji[$0] }).count) held-out emoji"
        case .identity: return "\(heldOutTaskImages) held-out images of \(classCount - 1) task emoji (and \(heldOut.count - heldOutTaskImages) of held-out other emoji)"
        }
    }
}
