import Diffusion
import Foundation
import NN
import Tensor

/// The embedded default: the mini-SD and judges trained by this project on Fashion-MNIST,
/// shipped in the tool's resources (`Resources/default/`) with their training records.
public enum DefaultModel {
    /// Sampler settings every figure of the testbed is measured with. The guidance is diffusers'
    /// default and the scale ESD and UCE evaluate at; the embedded model draws the prompted class
    /// about 99% of the time there and at 4 (docs/TESTBED.md, "The default sampler settings").
    public static let steps = 25
    public static let guidance = StableDiffusionPipeline.defaultGuidance

    /// The diffusers-layout folder of the embedded mini-SD.
    public static func folder() throws -> URL {
        let remedy = "train one with `score train unet` and pass --model runs/mini-sd/model"
        let url = try bundledResource("default/mini-sd", asset: "embedded mini-SD", remedy: remedy)
        guard FileManager.default.fileExists(atPath: url.appendingPathComponent("model_index.json").path) else {
            throw AssetError(asset: "embedded mini-SD", reason: "\(url.path) has no model_index.json", remedy: remedy)
        }
        return url
    }

    /// The diffusers-layout folder of the embedded mini-FLUX (the flow family's default, sampled
    /// at `MiniFlux.steps` and `MiniFlux.guidance`).
    public static func fluxFolder() throws -> URL {
        let remedy = "train one with `score train flux` and pass --model runs/mini-flux/model"
        let url = try bundledResource("default/mini-flux", asset: "embedded mini-FLUX", remedy: remedy)
        guard FileManager.default.fileExists(atPath: url.appendingPathComponent("model_index.json").path) else {
            throw AssetError(asset: "embedded mini-FLUX", reason: "\(url.path) has no model_index.json", remedy: remedy)
        }
        return url
    }

    /// A pipeline over a testbed model folder (default: the embedded one), with MiniLM from the
    /// asset cache and DDIM that recomputes ε from the clipped x̂₀ (docs/TESTBED.md says why).
    public static func pipeline(folder: URL? = nil, assets: Assets = Assets(), variant: String? = nil) throws -> StableDiffusionPipeline {
        let directory = try folder ?? self.folder()
        let pipeline = try StableDiffusionPipeline(directory: directory, textEncoder: try MiniSD.textEncoder(assets: assets), variant: variant)
        if let ddim = pipeline.scheduler as? DDIMScheduler {
            var clipped = ddim
            clipped.useClippedModelOutput = true
            pipeline.scheduler = clipped
        }
        return pipeline
    }

    /// A judge's weights: the embedded ones, or `<folder>/judge-<arch>.safetensors`. The ResNet
    /// (trained on mirrored images) reads each image and its mirror (`MirrorAveragedJudge`).
    public static func judge(_ architecture: String = "cnn", folder: URL? = nil) throws -> any Judge {
        let directory = try folder ?? bundledResource("default/judges", asset: "embedded judges",
                                                      remedy: "train them with `score train judge --arch resnet --augment`, `--arch cnn` and `--arch mlp`")
        let judge = try loadJudge(architecture, from: directory.appendingPathComponent("judge-\(architecture).safetensors"))
        return architecture == "resnet" ? MirrorAveragedJudge(judge) : judge
    }
}

/// How well a testbed model draws what it is asked: per-class judge accuracy of images from the
/// canonical prompts, and KID against real test images in the judge's feature space.
public struct ModelCheck: Codable, Sendable {
    public var per_class_accuracy: [String: Double]
    public var mean_accuracy: Double
    public var kid: Double
    public var images_per_class: Int
    public var steps: Int
    public var guidance: Float
    public var seed: UInt64
    public var judge: String
    public var judge_test_accuracy: Double?
    /// The judge's accuracy on each class's real test images: how well it can recognise the
    /// class at all, beside how often it recognises the generated images.
    public var judge_test_per_class_accuracy: [String: Double]?
    /// Mean grey level (0–255) of the generated images' border (`borderWidth` pixels along each
    /// edge of the 32×32 frame), beside the same figure for as many real test images: a haze
    /// where the data has black background shows here before a judge notices it.
    public var mean_border_pixel: Double?
    public var real_mean_border_pixel: Double?
    public var sampler: String
}

/// Pixels from each edge that `meanBorderPixel` averages: Fashion-MNIST's 2-pixel padding and
/// the outer 2 pixels of its 28×28 images.
public let borderWidth = 4

/// Mean grey level (0–255) of the pixels within `width` of the edge of images [N, C, H, W] in [−1, 1].
public func meanBorderPixel(_ images: Tensor, width: Int = borderWidth) -> Double {
    precondition(images.rank == 4, "meanBorderPixel needs NCHW images, got \(images.shape)")
    let (h, w) = (images.shape[2], images.shape[3])
    let planes = images.shape[0] * images.shape[1]
    let values = images.scalars
    var total = 0.0, count = 0
    for plane in 0..<planes {
        for y in 0..<h {
            for x in 0..<w where y < width || y >= h - width || x < width || x >= w - width {
                total += Double(values[(plane * h + y) * w + x])
                count += 1
            }
        }
    }
    return (total / Double(max(count, 1)) + 1) * 127.5
}

/// Where the judge places the images of one prompt: the fraction of `count` images judged as
/// each class ("" gives the unconditional model's class mix, which is where an erasure that
/// makes a concept's images look like the unconditional ones sends them).
public func classDistribution(pipeline: StableDiffusionPipeline, judge: any Judge, prompts: FashionPrompts, prompt: String,
                              count: Int, steps: Int = DefaultModel.steps, guidance: Float = DefaultModel.guidance,
                              seed: UInt64 = 0) throws -> [String: Double] {
    let images = try pipeline.generate(prompts: Array(repeating: prompt, count: count), steps: steps, guidance: guidance, seed: seed)
    let predicted = judge.predict(images)
    return Dictionary(uniqueKeysWithValues: prompts.classes.map { c in
        (c.name, Double(predicted.filter { $0 == c.label }.count) / Double(count))
    })
}

public func checkModel(pipeline: StableDiffusionPipeline, judge: any Judge, prompts: FashionPrompts, test: LabelledImages,
                       imagesPerClass: Int, steps: Int = DefaultModel.steps, guidance: Float = DefaultModel.guidance,
                       seed: UInt64 = 0, log: (String) -> Void = { _ in }) throws -> ModelCheck {
    try checkModel(sampler: "DDIM (eta 0, clipped x̂₀ with ε recomputed), \(type(of: pipeline.scheduler))", judge: judge, prompts: prompts,
                   test: test, imagesPerClass: imagesPerClass, steps: steps, guidance: guidance, seed: seed, log: log) { prompts, seed in
        try pipeline.generate(prompts: prompts, steps: steps, guidance: guidance, seed: seed)
    }
}

/// `checkModel` for any model family: `generate(prompts, seed)` draws one image per prompt in
/// [−1, 1] at the given sampler settings (which are recorded, with `sampler`, in the result).
public func checkModel(sampler: String, judge: any Judge, prompts: FashionPrompts, test: LabelledImages,
                       imagesPerClass: Int, steps: Int, guidance: Float, seed: UInt64 = 0, log: (String) -> Void = { _ in },
                       generate: (_ prompts: [String], _ seed: UInt64) throws -> Tensor) throws -> ModelCheck {
    var perClass: [String: Double] = [:]
    var generated: [Tensor] = []
    for c in prompts.classes {
        let prompt = prompts.canonicalPrompt(c.label)
        let images = try generate(Array(repeating: prompt, count: imagesPerClass), seed &+ UInt64(c.label) &* 1_000_003)
        let predicted = judge.predict(images)
        let accuracy = Double(predicted.filter { $0 == c.label }.count) / Double(imagesPerClass)
        perClass[c.name] = accuracy
        generated.append(images)
        log(String(format: "%-12@ %5.1f%%  (\"%@\")", c.name as NSString, accuracy * 100, prompt))
    }
    let all = Tensor.concat(generated, axis: 0)
    var g = RandomGenerator(seed: seed)
    let realIndices = Array(g.permutation(test.count).prefix(all.shape[0]))
    let real = test.batch(realIndices)
    let kid = kernelDistance(judge.featureBatches(all), judge.featureBatches(real))
    return ModelCheck(per_class_accuracy: perClass, mean_accuracy: perClass.values.reduce(0, +) / Double(perClass.count),
                      kid: kid, images_per_class: imagesPerClass, steps: steps, guidance: guidance, seed: seed,
                      judge: judge.architecture, judge_test_accuracy: nil, judge_test_per_class_accuracy: nil,
                      mean_border_pixel: meanBorderPixel(all), real_mean_border_pixel: meanBorderPixel(real),
                      sampler: sampler)
}
