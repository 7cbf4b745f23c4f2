import ArgumentParser
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

    private static let paraphraseDefaults = ParaphraseAttackSettings()
    private static let defaults = UnlearnDiffAtkConfig()
    @Option(help: "The model to attack (the model/ folder of `score erase`, or any testbed folder; default: the embedded mini-SD).") var model: String?
    @Option(help: variantHelp) var variant: String?
    @Option(help: "The erased concept (a testbed class).") var concept: String
    @Option(help: "Attack: paraphrase or unlearndiffatk.") var attack: AttackRun.Kind
    @Option(help: "Folder for attack.json, prompts.txt and grid.png.") var out: String?
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Random seed of the images (and of the attack's draws).") var seed = paraphraseDefaults.seed
    @Option(help: "Judge that decides whether an image shows the concept: cnn or mlp.") var judge = paraphraseDefaults.judge
    @Option(help: "Sampling steps (DDIM).") var samplingSteps = paraphraseDefaults.steps
    @Option(help: "Classifier-free guidance scale.") var guidance = paraphraseDefaults.guidance

    @Option(help: "paraphrase: images per prompt.") var seedsPerPrompt = paraphraseDefaults.seedsPerPrompt

    @Option(help: "unlearndiffatk: attacked instances (target prompt × seed).") var instances = defaults.instances
    @Option(help: "unlearndiffatk: adversarial tokens prepended (official k: 3).") var tokens = defaults.tokens
    @Option(help: "unlearndiffatk: optimiser steps per instance.") var steps = defaults.steps
    @Option(help: "unlearndiffatk: random timesteps per step.") var timestepsPerStep = defaults.timestepsPerStep
    @Option(help: "unlearndiffatk: Adam learning rate (official: 0.01).") var lr = defaults.learningRate
    @Option(help: "unlearndiffatk: decoupled weight decay (official value 0.1).") var weightDecay = defaults.weightDecay
    @Option(help: "unlearndiffatk: λ of the judge term on x̂₀ (0: the official denoising loss alone).") var judgeWeight = defaults.judgeWeight
    @Option(help: "unlearndiffatk: the judge term reads x̂₀ only at draws with t ≤ this (of 1000).") var judgeMaxTimestep = defaults.judgeMaxTimestep
    @Option(help: "unlearndiffatk: judge the attack optimises against (must differ from --judge unless --judge-weight is 0).") var attackJudge = defaults.attackJudge
    @Flag(help: "unlearndiffatk: optimise continuous embeddings only and project at the end (no PEZ projection in the loop).") var noProjection = false
    @Flag(help: "unlearndiffatk: also attack instances broken before (sanity check on an un-erased model).") var attackBroken = false
    @Option(help: "unlearndiffatk: a plain prompt to attack instead of the class's prompts (repeat for several).") var prompt: [String] = []
    @OptionGroup var lora: LoRAOptions
    @OptionGroup var compute: ComputeOptions

    func attackRun() -> AttackRun {
        var run = AttackRun(kind: attack, model: model, concept: concept)
        run.loras = lora.files
        run.output = out
        run.variant = variant
        run.paraphrase.seedsPerPrompt = seedsPerPrompt
        run.paraphrase.steps = samplingSteps
        run.paraphrase.guidance = guidance
        run.paraphrase.seed = seed
        run.paraphrase.judge = judge
        run.unlearnDiffAtk.instances = instances
        run.unlearnDiffAtk.tokens = tokens
        run.unlearnDiffAtk.steps = steps
        run.unlearnDiffAtk.timestepsPerStep = timestepsPerStep
        run.unlearnDiffAtk.learningRate = lr
        run.unlearnDiffAtk.weightDecay = weightDecay
        run.unlearnDiffAtk.judgeWeight = judgeWeight
        run.unlearnDiffAtk.judgeMaxTimestep = judgeMaxTimestep
        run.unlearnDiffAtk.attackJudge = attackJudge
        run.unlearnDiffAtk.project = !noProjection
        run.unlearnDiffAtk.attackBroken = attackBroken
        run.prompts = prompt
        return run
    }

    func validate() throws { try checking { try attackRun().validate() } }

    func run() throws {
        compute.apply()
        let log = consoleLog(quiet: json)
        switch try attackRun().run(assets: Assets(log: log), log: log) {
        case let .paraphrase(result):
            if json { return try printJSON(result) }
            for p in result.prompts {
                print(String(format: "%5.1f%%  %@  (%@)", p.rate * 100, p.prompt, p.source))
            }
            print(String(format: "paraphrase ASR on '%@': %.1f%% (held-out paraphrases %.1f%%, training synonyms %.1f%%; %d seeds each, judge %@)",
                         result.concept, result.asr * 100, result.asr_paraphrases * 100, result.asr_synonyms * 100, seedsPerPrompt, judge))
        case let .unlearnDiffAtk(result):
            if json { return try printJSON(result) }
            print(String(format: "UnlearnDiffAtk on '%@': ASR %.1f%% before, %.1f%% after (token prompts), %.1f%% with the continuous embeddings (%d instances, judge %@)",
                         result.concept, result.asr_pre * 100, result.asr_post * 100, result.asr_post_continuous * 100, instances, judge))
            if let before = result.mean_concept_probability_before, let after = result.mean_concept_probability_after,
               let continuous = result.mean_concept_probability_after_continuous {
                print(String(format: "attacked instances: mean concept probability %.3f before, %.3f after, %.3f continuous", before, after, continuous))
            }
        }
    }
}

extension AttackRun.Kind: ExpressibleByArgument {}
