import ArgumentParser
import Evaluation
import Foundation
import Testbed

struct Attack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attack an erased model on a testbed class: paraphrases, UnlearnDiffAtk, inversion, Ring-A-Bell, CCE or P4D (docs/ATTACKS.md).",
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
    @Option(help: "Model family: sd or flux (without --model: the embedded mini-FLUX; a FLUX --model is attacked as flux, every attack at 25 Euler steps and true CFG 4, inversion by the flow's Euler inversion).") var family = "sd"
    @Option(help: "The erased concept (a testbed class).") var concept: String
    @Option(help: "Attack: paraphrase, unlearndiffatk, inversion, ring-a-bell, cce or p4d.") var attack: AttackRun.Kind
    @Option(help: "Folder for attack.json, prompts.txt and grid.png.") var out: String?
    @OptionGroup var output: JSONOption
    @Option(help: "Random seed of the images (and of the attack's draws).") var seed = paraphraseDefaults.seed
    @Option(help: "Judge that decides whether an image shows the concept: cnn or mlp.") var judge = paraphraseDefaults.judge
    @Option(help: "Sampling steps (DDIM).") var samplingSteps = paraphraseDefaults.steps
    @Option(help: "Classifier-free guidance scale.") var guidance = paraphraseDefaults.guidance

    @Option(help: "paraphrase, ring-a-bell: images per prompt (default 3, 2); cce: images with the learned token (8); p4d: images per prompt (3).") var seedsPerPrompt: Int?
    @Option(help: "The un-erased model (unlearndiffatk's target images, inversion's reference; default: the model's base_model).") var original: String?

    @Option(help: "unlearndiffatk, p4d: attacked instances (4); inversion, cce: real images (8); ring-a-bell: searched prompts (4).") var instances: Int?
    @Option(help: "unlearndiffatk: adversarial tokens prepended (official k: 3); ring-a-bell: tokens searched (8); p4d-n: learned tokens (16).") var tokens: Int?
    @Option(help: "unlearndiffatk: official (40 steps at each of 50 timestep blocks, early stop) or fast (the --steps budget).") var attackBudget = defaults.budget
    @Option(help: "unlearndiffatk: the denoising target, original (the original model's image of the prompt) or real (a test image).") var attackTarget: String?
    @Option(help: "unlearndiffatk official: Adam steps per timestep block.") var iterationsPerBlock = defaults.iterationsPerBlock
    @Option(help: "unlearndiffatk official: timestep blocks (t = 10, 30, …, 990 for 50).") var blocks = defaults.blocks
    @Option(help: "unlearndiffatk fast: optimiser steps (40); cce: textual-inversion steps (300); ring-a-bell: generations (200); p4d: steps (500).") var steps: Int?
    @Option(help: "unlearndiffatk fast: random timesteps per step (4); cce: draws per step (4).") var timestepsPerStep: Int?
    @Option(help: "unlearndiffatk: Adam learning rate (official: 0.01); cce: 5e-3; p4d: 0.1.") var lr: Float?
    @Option(help: "p4d: n (learned tokens alone) or k (the prompt with a learned token after every K).") var p4dVariant = P4DConfig().variant
    @Option(help: "p4d-k: a learned token after every K prompt tokens (official: 3).") var everyK = P4DConfig().everyK
    @Option(help: "p4d: generate and compare the projected prompt every this many steps (official: 50).") var evalEvery = P4DConfig().evalEvery
    @Option(help: "p4d: features the best prompt is chosen by: mlp, cnn (not the scoring --judge) or pixels.") var selector = P4DConfig().selector
    @Option(help: "ring-a-bell: GA population (official: 200).") var population = RingABellConfig().population
    @Option(help: "ring-a-bell: weight η of the concept vector (official cof: 3).") var strength = RingABellConfig().strength
    @Option(help: "cce: the word the learned token starts from.") var initializer = CCEConfig().initializer
    @Option(help: "unlearndiffatk, p4d: decoupled weight decay (official value 0.1).") var weightDecay = defaults.weightDecay
    @Option(help: "unlearndiffatk: λ of the judge term on x̂₀ (0: the official denoising loss alone).") var judgeWeight = defaults.judgeWeight
    @Option(help: "unlearndiffatk: the judge term reads x̂₀ only at draws with t ≤ this (of 1000).") var judgeMaxTimestep = defaults.judgeMaxTimestep
    @Option(help: "unlearndiffatk: judge the attack optimises against (must differ from --judge unless --judge-weight is 0).") var attackJudge = defaults.attackJudge
    @Flag(help: "unlearndiffatk: optimise continuous embeddings only and project at the end (no PEZ projection in the loop).") var noProjection = false
    @Flag(help: "unlearndiffatk, p4d: also attack instances broken before (sanity check on an un-erased model).") var attackBroken = false
    @Option(help: "unlearndiffatk, p4d: a plain prompt to attack instead of the class's prompts (repeat for several).") var prompt: [String] = []
    @OptionGroup var lora: LoRAOptions
    @OptionGroup var compute: ComputeOptions

    func attackRun() -> AttackRun {
        var run = AttackRun(kind: attack, model: model, concept: concept)
        run.loras = lora.files
        run.family = family
        run.output = out
        run.variant = variant
        run.original = original
        if let seedsPerPrompt { (run.paraphrase.seedsPerPrompt, run.ringABell.seedsPerPrompt, run.cce.samples, run.p4d.samples) = (seedsPerPrompt, seedsPerPrompt, seedsPerPrompt, seedsPerPrompt) }
        run.paraphrase.steps = samplingSteps
        run.paraphrase.guidance = guidance
        run.paraphrase.seed = seed
        run.paraphrase.judge = judge
        run.unlearnDiffAtk = UnlearnDiffAtkConfig(budget: attackBudget)
        if let attackTarget { run.unlearnDiffAtk.target = attackTarget }
        run.unlearnDiffAtk.iterationsPerBlock = iterationsPerBlock
        run.unlearnDiffAtk.blocks = blocks
        if let instances { (run.unlearnDiffAtk.instances, run.inversion.images, run.ringABell.instances, run.cce.images, run.p4d.instances) = (instances, instances, instances, instances, instances) }
        if let tokens { (run.unlearnDiffAtk.tokens, run.ringABell.length, run.p4d.tokens) = (tokens, tokens, tokens) }
        if let steps { (run.unlearnDiffAtk.steps, run.cce.steps, run.ringABell.generations, run.p4d.iterations) = (steps, steps, steps, steps) }
        if let timestepsPerStep { (run.unlearnDiffAtk.timestepsPerStep, run.cce.batch) = (timestepsPerStep, timestepsPerStep) }
        if let lr { (run.unlearnDiffAtk.learningRate, run.cce.learningRate, run.p4d.learningRate) = (lr, lr, lr) }
        (run.p4d.variant, run.p4d.everyK, run.p4d.evalEvery, run.p4d.selector) = (p4dVariant, everyK, evalEvery, selector)
        (run.p4d.weightDecay, run.p4d.attackBroken) = (weightDecay, attackBroken)
        run.ringABell.population = population
        run.ringABell.strength = strength
        run.cce.initializer = initializer
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
        let log = output.log
        switch try attackRun().run(assets: Assets(log: log), log: log) {
        case let .paraphrase(result):
            if output.json { return try printJSON(result) }
            for p in result.prompts {
                print(String(format: "%5.1f%%  %@  (%@)", p.rate * 100, p.prompt, p.source))
            }
            print(String(format: "paraphrase ASR on '%@': %.1f%% (held-out paraphrases %.1f%%, training synonyms %.1f%%; %d seeds each, judge %@)",
                         result.concept, result.asr * 100, result.asr_paraphrases * 100, result.asr_synonyms * 100, result.settings.seedsPerPrompt, judge))
        case let .unlearnDiffAtk(result):
            if output.json { return try printJSON(result) }
            print(String(format: "UnlearnDiffAtk (%@ budget) on '%@': ASR %.1f%% before, %.1f%% after (token prompts), %.1f%% with the continuous embeddings (%d instances, judge %@)",
                         result.config.budget.rawValue, result.concept, result.asr_pre * 100, result.asr_post * 100, result.asr_post_continuous * 100,
                         result.config.instances, judge))
            if let before = result.mean_concept_probability_before, let after = result.mean_concept_probability_after,
               let continuous = result.mean_concept_probability_after_continuous {
                print(String(format: "attacked instances: mean concept probability %.3f before, %.3f after, %.3f continuous", before, after, continuous))
            }
            if let summary = result.summary { print(Self.line("UnlearnDiffAtk ASR (token prompts)", summary)) }
        case let .inversion(result):
            if output.json { return try printJSON(result) }
            print(Self.line("inversion ASR on '\(result.concept)' (erased model)", result.summary))
            if let reference = result.reference_asr { print(String(format: "the same through the original model: %.1f%%", reference * 100)) }
        case let .ringABell(result):
            if output.json { return try printJSON(result) }
            for instance in result.instances { print("\(instance.broken.filter { $0 }.count)/\(instance.broken.count)  \(instance.prompt)  (from \"\(instance.base_prompt)\")") }
            print(Self.line("Ring-A-Bell ASR on '\(result.concept)'", result.summary))
        case let .cce(result):
            if output.json { return try printJSON(result) }
            print(Self.line("CCE ASR on '\(result.concept)' (learned token, nearest word \"\(result.nearest_word)\")", result.summary))
            print(String(format: "the initial word \"%@\" before learning: %.1f%%", result.config.initializer, result.asr_initial * 100))
        case let .p4d(result):
            if output.json { return try printJSON(result) }
            for instance in result.instances {
                let after = instance.broken_after_images.map { "\($0.filter { $0 }.count)/\($0.count)" } ?? "not attacked"
                print("\(instance.broken_before ? "broken before" : after)  \(instance.adversarial_prompt ?? instance.prompt)  (from \"\(instance.prompt)\")")
            }
            print(String(format: "P4D-%@ ASR before: %.1f%%", result.variant.uppercased(), result.asr_pre * 100))
            print(Self.line("P4D-\(result.variant.uppercased()) ASR on '\(result.concept)'", result.summary))
        }
    }

    static func line(_ title: String, _ s: AttackSummary) -> String {
        String(format: "%@: %.1f%% (%d/%d, 95%% CI %.1f–%.1f%%; budget %@: %d steps, %d instances × %d seeds)", title, s.asr * 100,
               s.successes, s.trials, s.ci_low * 100, s.ci_high * 100, s.budget.mode, s.budget.steps, s.budget.instances, s.budget.seeds)
    }
}

extension AttackRun.Kind: ExpressibleByArgument {}
extension UnlearnDiffAtkBudget: ExpressibleByArgument {}
extension P4DVariant: ExpressibleByArgument {}
