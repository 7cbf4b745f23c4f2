import ArgumentParser
import Erasure
import Evaluation
import Foundation
import Testbed

struct Attack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attack an erased model on a testbed class: paraphrase prompts, or UnlearnDiffAtk's adversarial prefix tokens.",
        discussion: """
        An instance is broken when the scoring judge (--judge, default cnn) sees the concept in its image. \
        UnlearnDiffAtk's ASR counts instances broken before the attack plus those broken by it. \
        With --out: attack.json, prompts.txt and grid.png (paraphrase: prompts × seeds; unlearndiffatk: \
        target image, before, after with the token prompt, after with the continuous embeddings; grey where not attacked).
        """)

    @Option(help: "The model to attack (the model/ folder of `score erase`, or any testbed folder; default: the embedded mini-SD).") var model: String?
    @Option(help: "The erased concept (a testbed class).") var concept: String
    @Option(help: "Attack: paraphrase or unlearndiffatk.") var attack: String
    @Option(help: "Folder for attack.json, prompts.txt and grid.png.") var out: String?
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Random seed of the images (and of the attack's draws).") var seed: UInt64 = 1000
    @Option(help: "Judge that decides whether an image shows the concept: cnn or mlp.") var judge = "cnn"
    @Option(help: "Sampling steps (DDIM).") var samplingSteps = DefaultModel.steps
    @Option(help: "Classifier-free guidance scale.") var guidance = DefaultModel.guidance

    @Option(help: "paraphrase: images per prompt.") var seedsPerPrompt = ParaphraseAttackSettings().seedsPerPrompt

    @Option(help: "unlearndiffatk: attacked instances (target prompt × seed).") var instances = UnlearnDiffAtkConfig().instances
    @Option(help: "unlearndiffatk: adversarial tokens prepended (official k: 3).") var tokens = UnlearnDiffAtkConfig().tokens
    @Option(help: "unlearndiffatk: optimiser steps per instance.") var steps = UnlearnDiffAtkConfig().steps
    @Option(help: "unlearndiffatk: random timesteps per step.") var timestepsPerStep = UnlearnDiffAtkConfig().timestepsPerStep
    @Option(help: "unlearndiffatk: Adam learning rate (official: 0.01).") var lr = UnlearnDiffAtkConfig().learningRate
    @Option(help: "unlearndiffatk: decoupled weight decay (official value 0.1).") var weightDecay = UnlearnDiffAtkConfig().weightDecay
    @Option(help: "unlearndiffatk: λ of the judge term on x̂₀ (0: the official denoising loss alone).") var judgeWeight = UnlearnDiffAtkConfig().judgeWeight
    @Option(help: "unlearndiffatk: the judge term reads x̂₀ only at draws with t ≤ this (of 1000).") var judgeMaxTimestep = UnlearnDiffAtkConfig().judgeMaxTimestep
    @Option(help: "unlearndiffatk: judge the attack optimises against (must differ from --judge unless --judge-weight is 0).") var attackJudge = UnlearnDiffAtkConfig().attackJudge
    @Flag(help: "unlearndiffatk: optimise continuous embeddings only and project at the end (no PEZ projection in the loop).") var noProjection = false
    @Flag(help: "unlearndiffatk: also attack instances broken before (sanity check on an un-erased model).") var attackBroken = false
    @Option(help: "unlearndiffatk: a plain prompt to attack instead of the class's prompts (repeat for several).") var prompt: [String] = []
    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        guard ["paraphrase", "unlearndiffatk"].contains(attack) else {
            throw ValidationError("--attack must be paraphrase or unlearndiffatk, not '\(attack)'")
        }
        guard ["cnn", "mlp"].contains(judge) else { throw ValidationError("--judge must be cnn or mlp, not '\(judge)'") }
        guard ["cnn", "mlp"].contains(attackJudge) else { throw ValidationError("--attack-judge must be cnn or mlp, not '\(attackJudge)'") }
        if attack == "unlearndiffatk", judgeWeight > 0, attackJudge == judge {
            throw ValidationError("--attack-judge \(attackJudge) is also the scoring --judge: a success would only show an adversarial example of the judge; pick the other one or set --judge-weight 0")
        }
    }

    func run() throws {
        try compute.apply()
        let log: (String) -> Void = { message in if !json { print(message) } }
        let assets = Assets(log: log)
        let prompts = try FashionPrompts.bundled()
        guard let label = prompts.label(forConcept: concept) else {
            throw ValidationError("--concept '\(concept)' is not a class of the testbed (\(prompts.classes.map(\.noun).joined(separator: ", ")))")
        }
        let loaded = try ModelLoader.load(model, assets: assets)
        let scorer = try DefaultModel.judge(judge)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        if attack == "paraphrase" {
            var settings = ParaphraseAttackSettings()
            settings.seedsPerPrompt = seedsPerPrompt
            settings.steps = samplingSteps
            settings.guidance = guidance
            settings.seed = seed
            settings.judge = judge
            let (result, images) = try ParaphraseAttack.run(pipeline: loaded.pipeline, label: label, prompts: prompts, judge: scorer,
                                                            settings: settings, modelName: loaded.name, log: log)
            if let out {
                try AttackOutput.write(result, prompts: result.prompts.map(\.prompt),
                                       grid: AttackOutput.paraphraseGrid(images, seedsPerPrompt: seedsPerPrompt),
                                       to: URL(fileURLWithPath: out))
                log("wrote \(out)/attack.json, prompts.txt, grid.png")
            }
            if json { print(String(decoding: try encoder.encode(result), as: UTF8.self)); return }
            for p in result.prompts {
                print(String(format: "%5.1f%%  %@  (%@)", p.rate * 100, p.prompt, p.source))
            }
            print(String(format: "paraphrase ASR on '%@': %.1f%% (held-out paraphrases %.1f%%, training synonyms %.1f%%; %d seeds each, judge %@)",
                         result.concept, result.asr * 100, result.asr_paraphrases * 100, result.asr_synonyms * 100, seedsPerPrompt, judge))
            return
        }
        var config = UnlearnDiffAtkConfig()
        config.instances = instances
        config.tokens = tokens
        config.steps = steps
        config.timestepsPerStep = timestepsPerStep
        config.learningRate = lr
        config.weightDecay = weightDecay
        config.judgeWeight = judgeWeight
        config.judgeMaxTimestep = judgeMaxTimestep
        config.attackJudge = attackJudge
        config.judge = judge
        config.project = !noProjection
        config.attackBroken = attackBroken
        config.samplingSteps = samplingSteps
        config.guidance = guidance
        config.seed = seed
        try config.validate()
        let data = try FashionMNIST(assets: assets)
        let adversary = judgeWeight > 0 ? try DefaultModel.judge(attackJudge) : nil
        let (result, images) = try UnlearnDiffAtk.run(pipeline: loaded.pipeline, label: label, prompts: prompts, test: data.test,
                                                      judge: scorer, attackJudge: adversary, config: config, modelName: loaded.name,
                                                      promptOverride: prompt.isEmpty ? nil : prompt, log: log)
        if let out {
            try AttackOutput.write(result, prompts: result.prompts.map { $0.adversarial_prompt ?? $0.prompt }, grid: images.grid(),
                                   to: URL(fileURLWithPath: out))
            log("wrote \(out)/attack.json, prompts.txt, grid.png")
        }
        if json { print(String(decoding: try encoder.encode(result), as: UTF8.self)); return }
        print(String(format: "UnlearnDiffAtk on '%@': ASR %.1f%% before, %.1f%% after (token prompts), %.1f%% with the continuous embeddings (%d instances, judge %@)",
                     result.concept, result.asr_pre * 100, result.asr_post * 100, result.asr_post_continuous * 100, instances, judge))
        if let before = result.mean_concept_probability_before, let after = result.mean_concept_probability_after,
           let continuous = result.mean_concept_probability_after_continuous {
            print(String(format: "attacked instances: mean concept probability %.3f before, %.3f after, %.3f continuous", before, after, continuous))
        }
    }
}
