import Diffusion
import Foundation
import Tensor

/// How well an emoji mini-SD draws what it is asked: the style judge on "{name} in {style} style"
/// over a fixed sample of emoji, the identity judge on the identity task's characters, and KID
/// against the real images of the same (emoji, style) pairs in the style judge's feature space.
public struct EmojiModelCheck: Codable, Sendable {
    public var per_style_accuracy: [String: Double]
    public var per_identity_accuracy: [String: Double]
    public var mean_style_accuracy: Double
    public var mean_identity_accuracy: Double
    public var kid: Double
    /// Whether ε̂ follows the per-channel mean of the noise (see `noiseMeanTracking`); nil in
    /// check files without this field.
    public var noise_mean_tracking: [NoiseMeanTracking]?
    public var style_sample: [String]
    public var images_per_style: Int
    public var images_per_identity: Int
    public var steps: Int
    public var guidance: Float
    public var seed: UInt64
    public var sampler: String
}

extension EmojiDataset {
    /// The check's fixed sample of `count` emoji: the sample-grid emoji, then emoji of the split's
    /// training side in an order drawn from `seed`.
    public func checkSample(split: EmojiSplit, count: Int = 16, seed: UInt64 = 0) -> [Int] {
        var sample = sampleEmojiIndices().filter { split.train.contains($0) }
        var g = RandomGenerator(seed: seed).fork(0xC4EC)
        for i in g.permutation(split.train.count) where sample.count < count {
            let e = split.train[i]
            if !sample.contains(e) { sample.append(e) }
        }
        return Array(sample.prefix(count))
    }
}

/// Generates and judges. Per style: `imagesPerStyle` images of "{name} in {style} style",
/// cycling over `sample`; per identity character: `imagesPerIdentity` images of
/// "{name} in {style} style", cycling over the styles. `identityJudge`'s classes must be
/// `tasks.identityJudgeClasses`.
public func checkEmojiModel(pipeline: StableDiffusionPipeline, styleJudge: any Judge, identityJudge: any Judge,
                            dataset: EmojiDataset, tasks: EmojiTasks, sample: [Int], imagesPerStyle: Int = 32,
                            imagesPerIdentity: Int = 8, steps: Int = DefaultModel.steps, guidance: Float = DefaultModel.guidance,
                            seed: UInt64 = 0, batchSize: Int = 64, log: (String) -> Void = { _ in }) throws -> EmojiModelCheck {
    let classes = tasks.identityJudgeClasses
    let identityOutputs = noGrad { identityJudge.logits(Tensor.zeros([1, 3, dataset.size, dataset.size])) }.shape[1]
    guard identityOutputs == classes.count else {
        throw EmojiTaskError(file: tasks.file, key: "identity.characters + unsafe.members",
                             reason: "the identity judge has \(identityOutputs) classes, the tasks name \(classes.count) (with \"other\"): retrain it with `score train judge --testbed emoji --task identity`")
    }
    let styleNames = dataset.styles.map(\.captionName)
    func generate(_ prompts: [String], seed: UInt64) throws -> Tensor {
        var parts: [Tensor] = []
        for start in stride(from: 0, to: prompts.count, by: batchSize) {
            let chunk = Array(prompts[start..<min(prompts.count, start + batchSize)])
            parts.append(try pipeline.generate(prompts: chunk, steps: steps, guidance: guidance, seed: seed, firstImageIndex: start))
        }
        return Tensor.concat(parts, axis: 0)
    }

    var perStyle: [String: Double] = [:]
    var generated: [Tensor] = [], real: [Int] = []
    for (s, style) in styleNames.enumerated() {
        let emoji = (0..<imagesPerStyle).map { sample[$0 % sample.count] }
        let prompts = emoji.map { tasks.style.prompt(name: EmojiCaptions.captionText(dataset.entries[$0].name), style: style) }
        let images = try generate(prompts, seed: seed &+ UInt64(s) &* 1_000_003)
        let accuracy = Double(styleJudge.predict(images).filter { $0 == s }.count) / Double(imagesPerStyle)
        perStyle[style] = accuracy
        generated.append(images)
        real += emoji.enumerated().map { i, e in dataset.index(emoji: e, style: s, copy: (i / sample.count) % dataset.copies) }
        log(String(format: "style    %@ %5.1f%%  (\"%@\", …)", style.padding(toLength: 12, withPad: " ", startingAt: 0), accuracy * 100, prompts[0]))
    }
    let kid = kernelDistance(styleJudge.featureBatches(Tensor.concat(generated, axis: 0)), styleJudge.featureBatches(dataset.batch(real)))

    var perIdentity: [String: Double] = [:]
    for (label, member) in tasks.identity.characters.enumerated() {
        let prompts = (0..<imagesPerIdentity).map { tasks.style.prompt(name: member.name, style: styleNames[$0 % styleNames.count]) }
        let images = try generate(prompts, seed: seed &+ 7_777 &+ UInt64(label) &* 1_000_003)
        let accuracy = Double(identityJudge.predict(images).filter { $0 == label }.count) / Double(imagesPerIdentity)
        perIdentity[member.name] = accuracy
        log(String(format: "identity %@ %5.1f%%", member.name.padding(toLength: 12, withPad: " ", startingAt: 0), accuracy * 100))
    }
    let probe = dataset.batch(sample.flatMap { e in dataset.styles.indices.map { dataset.index(emoji: e, style: $0, copy: 0) } })
    let tracking = noiseMeanTracking(unet: pipeline.unet, scheduler: pipeline.scheduler, clean: probe,
                                     textEncoder: pipeline.textEncoder, seed: seed)
    for row in tracking { log(String(format: "noise mean t=%d: slope %.3f, correlation %.3f", row.timestep, row.slope, row.correlation)) }
    return EmojiModelCheck(
        per_style_accuracy: perStyle, per_identity_accuracy: perIdentity,
        mean_style_accuracy: perStyle.values.reduce(0, +) / Double(max(1, perStyle.count)),
        mean_identity_accuracy: perIdentity.values.reduce(0, +) / Double(max(1, perIdentity.count)),
        kid: kid, noise_mean_tracking: tracking, style_sample: sample.map { EmojiCaptions.captionText(dataset.entries[$0].name) },
        images_per_style: imagesPerStyle, images_per_identity: imagesPerIdentity, steps: steps, guidance: guidance, seed: seed,
        sampler: "DDIM (eta 0, clipped x̂₀ with ε recomputed), \(type(of: pipeline.scheduler))")
}

/// How far a UNet's ε̂ follows the per-channel spatial mean of the noise it is given, at one
/// timestep: the least-squares slope and the correlation of ε̂'s channel means on ε's, over the
/// images × channels of a batch noised at that timestep (unconditional). A UNet that cannot
/// follow it (slope ≈ 0) turns the initial noise's channel means, amplified by 1/√ᾱ, into a
/// random tint of every sample (docs/EMOJI.md, "Why the backgrounds were tinted"). The ideal is
/// not 1 at high noise: there part of x_t's mean is the image's own, so the best ε̂ shrinks.
public struct NoiseMeanTracking: Codable, Sendable, Equatable {
    public var timestep: Int
    public var slope: Double
    public var correlation: Double
}

public func noiseMeanTracking(unet: UNet2DConditionModel, scheduler: any NoiseScheduler, clean: Tensor, textEncoder: any TextEncoder,
                              timesteps: [Int] = [960, 800, 500], seed: UInt64 = 0) -> [NoiseMeanTracking] {
    let n = clean.shape[0], plane = clean.shape[2] * clean.shape[3]
    let (states, mask) = noGrad { textEncoder.encode(prompts: Array(repeating: "", count: n)) }
    var generator = RandomGenerator(seed: seed).fork(0xDC)
    return timesteps.map { t in
        let noise = generator.normal(clean.shape)
        let noisy = scheduler.addNoise(original: clean, noise: noise, timesteps: Array(repeating: t, count: n))
        let predicted = noGrad { unet(noisy, timestep: Array(repeating: Float(t), count: n), encoderHiddenStates: states, encoderAttentionMask: mask) }
        func channelMeans(_ x: Tensor) -> [Double] {
            let v = x.scalars
            return stride(from: 0, to: v.count, by: plane).map { start in v[start..<(start + plane)].reduce(0.0) { $0 + Double($1) } / Double(plane) }
        }
        let (a, b) = (channelMeans(noise), channelMeans(predicted))
        let (meanA, meanB) = (a.reduce(0, +) / Double(a.count), b.reduce(0, +) / Double(b.count))
        var ab = 0.0, aa = 0.0, bb = 0.0
        for (x, y) in zip(a, b) { ab += (x - meanA) * (y - meanB); aa += (x - meanA) * (x - meanA); bb += (y - meanB) * (y - meanB) }
        return NoiseMeanTracking(timestep: t, slope: aa > 0 ? ab / aa : 0, correlation: aa > 0 && bb > 0 ? ab / (aa * bb).squareRoot() : 0)
    }
}

/// The emoji judges' weights: `judge-<task>-<arch>.safetensors` in a folder given, or in its
/// `emoji-<task>-<arch>/` subfolder (where `score train judge --testbed emoji` writes), else the
/// ones shipped in `Resources/emoji/`.
public enum EmojiJudges {
    public static func fileName(task: EmojiJudgeData.Task, architecture: String) -> String {
        "judge-\(task.rawValue)-\(architecture).safetensors"
    }

    public static func url(task: EmojiJudgeData.Task, architecture: String = "cnn", folder: URL? = nil) throws -> URL {
        let name = fileName(task: task, architecture: architecture)
        var candidates: [URL] = []
        if let folder {
            candidates = [folder.appendingPathComponent(name),
                          folder.appendingPathComponent("emoji-\(task.rawValue)-\(architecture)").appendingPathComponent(name)]
        } else {
            candidates = [try bundledResource("emoji", asset: "embedded emoji judges").appendingPathComponent(name)]
        }
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0.path) }) else {
            throw AssetError(asset: "emoji \(task.rawValue) judge", reason: "none of \(candidates.map(\.path)) exists",
                             remedy: "train it with `score train judge --testbed emoji --task \(task.rawValue) --arch \(architecture)` and pass --judges runs/judges")
        }
        return found
    }

    public static func load(task: EmojiJudgeData.Task, architecture: String = "cnn", folder: URL? = nil) throws -> any Judge {
        try loadJudge(architecture, from: try url(task: task, architecture: architecture, folder: folder))
    }
}
