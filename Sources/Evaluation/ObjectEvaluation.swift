import Diffusion
import Erasure
import Foundation
import Tensor
import Testbed

/// Sampler, sizes and judge of an evaluation; recorded with every number.
public struct EvaluationSettings: Codable, Sendable, Equatable {
    /// Images of the concept's canonical prompt (Acc_e).
    public var targetImages = 32
    /// Images over the held-out paraphrases (Acc_g), spread evenly.
    public var paraphraseImages = 30
    /// Images per retained class (Acc_s, KID).
    public var retainImagesPerClass = 10
    public var steps = DefaultModel.steps
    public var guidance = DefaultModel.guidance
    public var seed: UInt64 = 1000
    public var judge = "cnn"
    public var secondJudge = "mlp"

    public init() {}

    /// Checked before any model is loaded; messages name the flags of `score evaluate`.
    public func validate() throws {
        let check = ConfigCheck.settings
        try check.atLeast(1, ["--target-images": targetImages, "--paraphrase-images": paraphraseImages,
                              "--retain-images": retainImagesPerClass, "sampling steps": steps])
        try check.require(guidance.isFinite, "guidance must be a number, not \(guidance)")
        try check.require(judgeArchitectures.contains(judge) && judgeArchitectures.contains(secondJudge), "judges must be resnet, cnn or mlp")
    }
}

/// The judges an evaluation may name (`DefaultModel.judge` loads each).
public let judgeArchitectures = ["resnet", "cnn", "mlp"]

/// Judge accuracies of one set of prompts.
public struct Accuracies: Codable, Sendable {
    public var acc_e: Double
    public var acc_s: Double
    public var acc_g: Double
    public var h_o: Double
}

/// `score evaluate` on the object task: one erased concept of the Fashion-MNIST testbed.
public struct ObjectEvaluation: Codable, Sendable {
    public var concept: String
    public var label: Int
    public var acc_e: Double
    public var acc_s: Double
    public var acc_g: Double
    public var h_o: Double
    /// KID (judge features) of retained-prompt images vs the original model's, same prompts and noise.
    public var kid: Double?
    /// KID of retained-prompt images vs real test images of those classes.
    public var kid_real: Double
    /// Acc_s as a fraction of the original model's Acc_s.
    public var acc_s_relative: Double?
    public var original: Accuracies?
    /// The same images judged by the second judge architecture.
    public var second_judge: Accuracies
    public var per_class_accuracy: [String: Double]
    /// What the judge calls the concept's own (target-prompt) images: class name → fraction.
    /// Where an erased concept goes; SCORE's equilibrium is the anchor's mix, not "nothing".
    public var target_classes: [String: Double]?
    public var leakage_nats: Double?
    public var leakage_bound: Double?
    public var leakage: LeakageReport?
    public var settings: EvaluationSettings
    public var model: String
    public var original_model: String?
    /// The judge's class for every image (what the benchmark's intervals resample); nil in
    /// evaluations written before it was recorded.
    public var judged: JudgedImages? = nil
    /// The erased concept's nearest classes and how they were found (a benchmark sets them:
    /// the classes the judge confuses with it most on real test images).
    public var neighbours: [String]? = nil
    public var neighbours_by: String? = nil
}

/// Images generated for an evaluation, kept for the report's grids.
public struct EvaluationImages {
    public var target: Tensor
    public var paraphrase: Tensor
    public var paraphrasePrompts: [String]
    /// Retained classes, `retainImagesPerClass` each, class by class.
    public var retained: Tensor
    public var retainedLabels: [Int]
}

/// H_o: the harmonic mean of (1 − Acc_e, Acc_s, 1 − Acc_g); 0 when any is 0.
public func harmonicMean(_ values: [Double]) -> Double {
    guard values.allSatisfy({ $0 > 0 }) else { return 0 }
    return Double(values.count) / values.reduce(0) { $0 + 1 / $1 }
}

public enum ObjectEvaluator {
    /// One image per prompt; image k of the list comes from the stream (seed, k), so two models
    /// get the same noise for the same list.
    public static func generate(_ pipeline: StableDiffusionPipeline, prompts: [String], settings: EvaluationSettings,
                                log: (String) -> Void = { _ in }) throws -> Tensor {
        try generate(ImageSampler(pipeline), prompts: prompts, settings: settings, log: log)
    }

    /// The same for a model of either family.
    public static func generate(_ sampler: ImageSampler, prompts: [String], settings: EvaluationSettings,
                                log: (String) -> Void = { _ in }) throws -> Tensor {
        var parts: [Tensor] = []
        for start in stride(from: 0, to: prompts.count, by: 32) {
            let chunk = Array(prompts[start..<min(prompts.count, start + 32)])
            parts.append(try sampler(prompts: chunk, steps: settings.steps, guidance: settings.guidance,
                                     seed: settings.seed, firstImageIndex: start))
            log("  generated \(min(prompts.count, start + 32))/\(prompts.count) images")
        }
        return Tensor.concat(parts, axis: 0)
    }

    /// The prompt lists of an evaluation of class `label`.
    public static func promptSets(label: Int, prompts: FashionPrompts, settings: EvaluationSettings)
        -> (target: [String], paraphrase: [String], retained: [String], retainedLabels: [Int]) {
        let target = Array(repeating: prompts.canonicalPrompt(label), count: settings.targetImages)
        let variants = prompts.paraphrasePrompts(label)
        let paraphrase = (0..<settings.paraphraseImages).map { variants[$0 % variants.count] }
        let others = prompts.classes.map(\.label).filter { $0 != label }
        let retainedLabels = others.flatMap { Array(repeating: $0, count: settings.retainImagesPerClass) }
        return (target, paraphrase, retainedLabels.map { prompts.canonicalPrompt($0) }, retainedLabels)
    }

    public static func images(_ pipeline: StableDiffusionPipeline, label: Int, prompts: FashionPrompts,
                              settings: EvaluationSettings, log: (String) -> Void = { _ in }) throws -> EvaluationImages {
        try images(ImageSampler(pipeline), label: label, prompts: prompts, settings: settings, log: log)
    }

    public static func images(_ pipeline: ImageSampler, label: Int, prompts: FashionPrompts,
                              settings: EvaluationSettings, log: (String) -> Void = { _ in }) throws -> EvaluationImages {
        let sets = promptSets(label: label, prompts: prompts, settings: settings)
        return EvaluationImages(target: try generate(pipeline, prompts: sets.target, settings: settings, log: log),
                                paraphrase: try generate(pipeline, prompts: sets.paraphrase, settings: settings, log: log),
                                paraphrasePrompts: sets.paraphrase,
                                retained: try generate(pipeline, prompts: sets.retained, settings: settings, log: log),
                                retainedLabels: sets.retainedLabels)
    }

    /// `images(…)` of a model, kept in `file`: read back when the file was written for the same
    /// `key` (model, class, settings), else generated and written (atomically). A benchmark's
    /// processes and reruns then judge one set of original-model images instead of each
    /// sampling it again (minutes per concept on one core); the bits are those `images` returns.
    public static func cachedImages(file: URL, key: String, label: Int, prompts: FashionPrompts, settings: EvaluationSettings,
                                    generate: () throws -> EvaluationImages) throws -> EvaluationImages {
        let sets = promptSets(label: label, prompts: prompts, settings: settings)
        let names = ["target", "paraphrase", "retained"]
        let counts = [sets.target.count, sets.paraphrase.count, sets.retained.count]
        if FileManager.default.fileExists(atPath: file.path), let archive = try? TensorArchive(contentsOf: file),
           archive.metadata["key"] == key,
           let tensors = try? names.map({ try archive.tensor($0) }),
           zip(tensors, counts).allSatisfy({ $0.shape.first == $1 }) {
            return EvaluationImages(target: tensors[0], paraphrase: tensors[1], paraphrasePrompts: sets.paraphrase,
                                    retained: tensors[2], retainedLabels: sets.retainedLabels)
        }
        let images = try generate()
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Tensor.save(["target": images.target, "paraphrase": images.paraphrase, "retained": images.retained],
                        to: file, metadata: ["key": key])
        return images
    }

    /// The judge's class for every image of an evaluation.
    public static func judged(_ images: EvaluationImages, judge: any Judge) -> JudgedImages {
        JudgedImages(target: judge.predict(images.target), paraphrase: judge.predict(images.paraphrase),
                     retained: judge.predict(images.retained), retainedLabels: images.retainedLabels)
    }

    /// Acc_e, Acc_s, Acc_g and H_o of `images` under `judge`.
    public static func accuracies(_ images: EvaluationImages, label: Int, judge: any Judge) -> (Accuracies, [Int: Double]) {
        accuracies(judged(images, judge: judge), label: label)
    }

    /// Acc_e, Acc_s (the mean of the per-class rates), Acc_g and H_o of judged images.
    public static func accuracies(_ judged: JudgedImages, label: Int) -> (Accuracies, [Int: Double]) {
        func rate(_ predicted: [Int]) -> Double { Double(predicted.filter { $0 == label }.count) / Double(max(predicted.count, 1)) }
        let accE = rate(judged.target)
        let accG = rate(judged.paraphrase)
        var perClass: [Int: (hits: Int, total: Int)] = [:]
        for (i, truth) in judged.retained_labels.enumerated() {
            perClass[truth, default: (0, 0)].total += 1
            if judged.retained[i] == truth { perClass[truth, default: (0, 0)].hits += 1 }
        }
        let classAccuracy = perClass.mapValues { Double($0.hits) / Double($0.total) }
        let accS = classAccuracy.values.reduce(0, +) / Double(max(classAccuracy.count, 1))
        return (Accuracies(acc_e: accE, acc_s: accS, acc_g: accG, h_o: harmonicMean([1 - accE, accS, 1 - accG])), classAccuracy)
    }

    /// Evaluates `erased` on class `label`; with `original` (or its images, already generated
    /// with these settings), also the original model's accuracies and the KID between the two
    /// models' retained images. `erasedImages`: the erased model's images when already generated
    /// with these settings (the original model's cell of a benchmark evaluates its own images).
    public static func evaluate(erased: StableDiffusionPipeline, original: StableDiffusionPipeline?,
                                originalImages: EvaluationImages? = nil, erasedImages: EvaluationImages? = nil, label: Int,
                                prompts: FashionPrompts, test: LabelledImages, settings: EvaluationSettings,
                                modelName: String, originalName: String?,
                                log: (String) -> Void = { _ in }) throws -> (ObjectEvaluation, EvaluationImages, EvaluationImages?) {
        try evaluate(erased: ImageSampler(erased), original: original.map { ImageSampler($0) }, originalImages: originalImages,
                     erasedImages: erasedImages, label: label, prompts: prompts, test: test, settings: settings,
                     modelName: modelName, originalName: originalName, log: log)
    }

    /// The same for models of either family, drawn by their samplers.
    public static func evaluate(erased: ImageSampler, original: ImageSampler?,
                                originalImages: EvaluationImages? = nil, erasedImages: EvaluationImages? = nil, label: Int,
                                prompts: FashionPrompts, test: LabelledImages, settings: EvaluationSettings,
                                modelName: String, originalName: String?,
                                log: (String) -> Void = { _ in }) throws -> (ObjectEvaluation, EvaluationImages, EvaluationImages?) {
        let judge = try DefaultModel.judge(settings.judge)
        let second = try DefaultModel.judge(settings.secondJudge)
        if erasedImages == nil { log("generating images of the erased model") }
        let after = try erasedImages ?? images(erased, label: label, prompts: prompts, settings: settings, log: log)
        let judgedAfter = self.judged(after, judge: judge)
        let (accuracies, perClass) = self.accuracies(judgedAfter, label: label)
        let (secondAccuracies, _) = self.accuracies(after, label: label, judge: second)
        var before: EvaluationImages? = nil
        var originalAccuracies: Accuracies? = nil
        var kid: Double? = nil
        if originalImages != nil || original != nil {
            if originalImages == nil { log("generating images of the original model") }
            let reference = try originalImages ?? images(original!, label: label, prompts: prompts, settings: settings, log: log)
            originalAccuracies = self.accuracies(reference, label: label, judge: judge).0
            kid = kernelDistance(judge.featureBatches(after.retained), judge.featureBatches(reference.retained))
            before = reference
        }
        // Real test images of the retained classes, as many as generated.
        var generator = RandomGenerator(seed: settings.seed)
        let pool = generator.permutation(test.count).filter { test.labels[$0] != label }
        let real = test.batch(Array(pool.prefix(after.retained.shape[0])))
        let kidReal = kernelDistance(judge.featureBatches(after.retained), judge.featureBatches(real))
        let names = Dictionary(uniqueKeysWithValues: prompts.classes.map { ($0.label, $0.name) })
        let targetPredictions = judgedAfter.target
        let targetClasses = Dictionary(grouping: targetPredictions, by: { names[$0] ?? "\($0)" })
            .mapValues { Double($0.count) / Double(max(targetPredictions.count, 1)) }
        let result = ObjectEvaluation(
            concept: prompts.classes[label].name, label: label, acc_e: accuracies.acc_e, acc_s: accuracies.acc_s,
            acc_g: accuracies.acc_g, h_o: accuracies.h_o, kid: kid, kid_real: kidReal,
            acc_s_relative: originalAccuracies.map { $0.acc_s > 0 ? accuracies.acc_s / $0.acc_s : 0 },
            original: originalAccuracies, second_judge: secondAccuracies,
            per_class_accuracy: Dictionary(uniqueKeysWithValues: perClass.map { (names[$0.key] ?? "\($0.key)", $0.value) }),
            target_classes: targetClasses, leakage_nats: nil, leakage_bound: nil, leakage: nil, settings: settings, model: modelName,
            original_model: originalName, judged: judgedAfter)
        return (result, after, before)
    }
}
