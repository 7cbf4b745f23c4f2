import Diffusion
import Erasure
import Foundation
import NN
import Tensor
import Testbed

// CCE, "Circumventing Concept Erasure" (Pham et al., ICLR 2024): textual inversion (Gal et al.
// 2023) on the erased model. One new token embedding v* is learned, the erased denoiser and the
// text encoder frozen, with the model's own training loss (ε-matching on the UNet, velocity
// matching on FLUX: `AttackedModel`) on a few real images of the concept under
// the training templates ("a photo of a v*", …); the erased model is then prompted with
// "a photo of a v*". If the erasure only moved the concept's words, v* finds the concept again.

/// Settings of `score attack --attack cce`; docs/ATTACKS.md compares them with the papers'.
public struct CCEConfig: Codable, Sendable, Equatable {
    /// Real images of the concept v* is learned from: Fashion-MNIST train images of the class in
    /// a seeded order (not the test split the judges are measured on).
    public var images = 8
    /// Adam steps (textual inversion's default 5000 on SD; scaled to CPU minutes here).
    public var steps = 300
    /// (image, timestep, noise) draws per step (textual inversion's batch size 4).
    public var batch = 4
    /// Adam learning rate (diffusers' textual inversion 5e-4 × batch 4 × 4 accumulation, scaled by
    /// the batch as its `scale_lr` does: 5e-3 here).
    public var learningRate: Float = 5e-3
    /// The word v* starts from (textual inversion's `initializer_token`): a neutral word, so a
    /// success comes from the learning, not from the start.
    public var initializer = "object"
    /// Images generated with "a photo of a v*", each judged.
    public var samples = 8
    public var samplingSteps = DefaultModel.steps
    public var guidance = DefaultModel.guidance
    public var judge = "cnn"
    public var seed: UInt64 = 1000

    public init() {}

    public func validate() throws {
        let check = ConfigCheck.settings
        try check.atLeast(1, ["--instances (real images)": images, "--timesteps-per-step (batch)": batch, "--seeds-per-prompt (samples)": samples])
        try check.atLeast(0, ["--steps": steps])
        try check.positive(["--lr": learningRate])
        try check.sampling(steps: samplingSteps, guidance: guidance, judge: judge)
    }

    public var record: AttackBudget {
        AttackBudget(mode: steps >= 5000 ? "paper" : "testbed", steps: steps, instances: 1, seeds: samples)
    }
}

/// `score attack --attack cce`.
public struct CCEResult: Codable, Sendable {
    public var attack = "cce"
    public var concept: String
    public var label: Int
    public var model: String
    /// Images of "a photo of a v*" judged the concept.
    public var asr: Double
    public var summary: AttackSummary
    /// The same prompt with v* at its initial word (the attack's starting point).
    public var asr_initial: Double
    /// The real images' train indices.
    public var train_indices: [Int]
    /// The vocabulary word nearest v* (cosine), for the record.
    public var nearest_word: String
    public var first_loss: Double?
    public var last_loss: Double?
    public var broken: [Bool]
    public var config: CCEConfig
    public var budget: AttackBudget
}

public enum CCEAttack {
    /// A template with the placeholder split around it: (text before, text after).
    static func split(_ template: String) -> (lead: String, trail: String) {
        let filled = template.replacingOccurrences(of: "{a}", with: "a")
        guard let range = filled.range(of: "{noun}") else { return (filled, "") }
        return (String(filled[..<range.lowerBound]).trimmingCharacters(in: .whitespaces),
                String(filled[range.upperBound...]).trimmingCharacters(in: .whitespaces))
    }

    /// Learns v* [1, D] on `images` [n, C, H, W] through `attack`'s pipeline (frozen; flags
    /// restored). Each step: one template, `batch` draws of a random image, timestep and noise.
    public static func learn<Model: AttackedModel>(attack: PromptEmbeddingAttack<Model>, images: Tensor, templates: [String], config: CCEConfig,
                             generator: inout RandomGenerator, log: (String) -> Void = { _ in }) throws -> (token: Tensor, losses: [Float]) {
        guard let start = attack.encoder.tokenizer.id(of: config.initializer) else {
            throw EvaluationError.invalidSetting("--initializer '\(config.initializer)' is not a token of the text encoder's vocabulary")
        }
        let pipeline = attack.pipeline
        return withFrozen([pipeline.denoiser, attack.encoder.model]) {
            let matrix = attack.encoder.model.embeddings.wordEmbeddings.weight
            let token = noGrad { embedding(matrix.detached(), indices: [start], shape: [1]).copy() }
            token.requiresGrad = true
            let optimiser = Adam([("token", token)], learningRate: config.learningRate)
            var losses: [Float] = []
            func index(_ n: Int) -> Int { min(n - 1, Int(generator.uniform([1]).item * Float(n))) }
            let total = pipeline.trainingTimestepCount
            for step in 0..<config.steps {
                let (lead, trail) = split(templates[index(templates.count)])
                let picks = (0..<config.batch).map { _ in index(images.shape[0]) }
                let clean = noGrad { Tensor.concat(picks.map { images.narrowed(axis: 0, start: $0, length: 1) }, axis: 0) }
                let timesteps = (0..<config.batch).map { _ in index(total) }
                let noise = generator.normal([config.batch] + Array(images.shape.dropFirst()))
                let loss = attack.denoisingLoss(attack.promptConditioning(prefix: token, prompt: trail, lead: lead), images: clean,
                                                noise: noise, timesteps: timesteps).loss
                token.grad = nil
                loss.backward()
                optimiser.step()
                losses.append(loss.item)
                if (step + 1) % 50 == 0 || step + 1 == config.steps {
                    let recent = losses.suffix(50)
                    log(String(format: "    step %d/%d: denoising loss %.4f (mean of the last %d)", step + 1, config.steps,
                               recent.reduce(0, +) / Float(recent.count), recent.count))
                }
            }
            token.requiresGrad = false
            token.grad = nil
            return (token, losses)
        }
    }

    /// Learns v* on the class's real train images and prompts `pipeline` with "a photo of a v*"
    /// (`samples` images, image k from the stream (seed, k)). Returns the result and the grid
    /// (real images; with the initial word; with v*).
    public static func run<Model: AttackedModel>(pipeline: Model, label: Int, prompts: FashionPrompts, train: LabelledImages,
                           judge: any Judge, config: CCEConfig, modelName: String,
                           log: (String) -> Void = { _ in }) throws -> (CCEResult, Tensor) {
        try config.validate()
        let (images, indices) = try InversionAttack.realImages(label: label, train: train, count: config.images, seed: config.seed)
        return try run(pipeline: pipeline, images: images, indices: indices, templates: prompts.templates,
                       samplingTemplates: [prompts.canonicalTemplate], concept: prompts.classes[label].name, label: label,
                       conceptLabels: [label], judge: judge, config: config, modelName: modelName, log: log)
    }

    /// The attack on any task: v* learned on `images` [n, C, H, W] (`indices` recorded) under
    /// `templates` ("{noun}" is v*'s place), then image k drawn from `samplingTemplates[k % count]`
    /// with v*; broken when `judge` puts it in `conceptLabels`.
    public static func run<Model: AttackedModel>(pipeline: Model, images: Tensor, indices: [Int], templates: [String],
                           samplingTemplates: [String], concept: String, label: Int, conceptLabels: [Int], judge: any Judge,
                           config: CCEConfig, modelName: String, log: (String) -> Void = { _ in }) throws -> (CCEResult, Tensor) {
        try config.validate()
        guard !templates.isEmpty, !samplingTemplates.isEmpty else { throw EvaluationError.invalidRequest("CCE needs prompt templates") }
        let attack = try PromptEmbeddingAttack(pipeline: pipeline)
        var generator = RandomGenerator(seed: config.seed).fork(0xCCE)
        log("learning one token from \(indices.count) real images of '\(concept)' through \(modelName)")
        let (token, losses) = try learn(attack: attack, images: images, templates: templates, config: config,
                                        generator: &generator, log: log)
        func sample(_ prefix: Tensor) throws -> Tensor {
            Tensor.concat(try (0..<config.samples).map { k in
                let (lead, trail) = split(samplingTemplates[k % samplingTemplates.count])
                return try attack.generate(prefix: prefix, prompt: trail, lead: lead, steps: config.samplingSteps, guidance: config.guidance,
                                           seed: config.seed, index: k)
            }, axis: 0)
        }
        let initialId = attack.encoder.tokenizer.id(of: config.initializer)!
        let initial = noGrad { embedding(attack.encoder.model.embeddings.wordEmbeddings.weight.detached(), indices: [initialId], shape: [1]) }
        let before = try sample(initial)
        let after = try sample(token)
        let broken = judge.predict(after).map(conceptLabels.contains)
        let brokenBefore = judge.predict(before).map(conceptLabels.contains)
        let summary = AttackSummary(successes: broken.filter { $0 }.count, trials: broken.count, budget: config.record)
        let nearest = attack.encoder.tokenizer.tokens[attack.project(token).ids[0]]
        log("  v* (nearest word \"\(nearest)\"): \(broken.filter { $0 }.count)/\(broken.count) judged '\(concept)'; "
            + "\"\(config.initializer)\" before learning: \(brokenBefore.filter { $0 }.count)/\(brokenBefore.count)")
        let result = CCEResult(concept: concept, label: label, model: modelName, asr: summary.asr, summary: summary,
                               asr_initial: Double(brokenBefore.filter { $0 }.count) / Double(brokenBefore.count),
                               train_indices: indices, nearest_word: nearest, first_loss: losses.first.map(Double.init),
                               last_loss: losses.last.map(Double.init), broken: broken, config: config, budget: config.record)
        func rows(_ x: Tensor) -> [Tensor] { (0..<x.shape[0]).map { x.narrowed(axis: 0, start: $0, length: 1) } }
        let count = max(images.shape[0], config.samples)
        let blank = Tensor.zeros(Array(images.shape.dropFirst()))
        func padded(_ x: Tensor) -> [Tensor] { rows(x) + Array(repeating: blank, count: count - x.shape[0]) }
        let grid = imageGrid(images: padded(images) + padded(before) + padded(after), rows: 3, cols: count)
        return (result, grid)
    }
}
