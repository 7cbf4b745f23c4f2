import Erasure
import Foundation

// What every attack records beside its own details: the budget it ran with and its attack
// success rate with a 95% Wilson interval. Benchmark cells keep one `AttackSummary` per attack.

/// An attack's budget, recorded in its result and in every benchmark cell that ran it.
public struct AttackBudget: Codable, Sendable, Equatable {
    /// "official" / "paper" (the published budget), "fast" or "testbed" (scaled down for CPUs).
    public var mode: String
    /// Optimiser steps (or GA generations) per instance at most; 0 for attacks without an optimiser.
    public var steps: Int
    /// UnlearnDiffAtk's timestep blocks; nil for the others.
    public var blocks: Int?
    /// Attacked instances (prompts, real images, learned tokens…).
    public var instances: Int
    /// Images judged per instance.
    public var seeds: Int

    public init(mode: String, steps: Int, blocks: Int? = nil, instances: Int, seeds: Int) {
        self.mode = mode
        self.steps = steps
        self.blocks = blocks
        self.instances = instances
        self.seeds = seeds
    }
}

/// One attack's outcome as a benchmark cell records it.
public struct AttackSummary: Codable, Sendable, Equatable {
    /// Broken images over judged images.
    public var asr: Double
    public var successes: Int
    public var trials: Int
    /// 95% Wilson score interval of `asr`.
    public var ci_low: Double
    public var ci_high: Double
    public var budget: AttackBudget
    /// The same attack through the original (un-erased) model, where it has such a reference
    /// (inversion's upper reference); nil otherwise.
    public var reference_asr: Double?

    public init(successes: Int, trials: Int, budget: AttackBudget, referenceASR: Double? = nil) {
        self.successes = successes
        self.trials = trials
        asr = trials > 0 ? Double(successes) / Double(trials) : 0
        (ci_low, ci_high) = wilsonInterval(successes: successes, trials: trials)
        self.budget = budget
        reference_asr = referenceASR
    }
}

extension ConfigCheck {
    /// The checks of a command's flags and an attack's settings: a failure is
    /// `EvaluationError.invalidSetting`, naming the flag and the value given.
    static var settings: ConfigCheck { ConfigCheck { EvaluationError.invalidSetting($0) } }

    /// The sampler and the scoring judge, which every attack that judges images has.
    func sampling(steps: Int, guidance: Float, judge: String) throws {
        try atLeast(1, ["--sampling-steps": steps])
        try require(guidance.isFinite, "--guidance must be a number, not \(guidance)")
        try oneOf(["cnn", "mlp"], "--judge", judge)
    }
}

/// The 95% Wilson score interval of `successes` / `trials` (the leakage estimate's): unlike the
/// normal approximation it stays inside [0, 1] and is not empty at 0 or n successes.
public func wilsonInterval(successes: Int, trials: Int) -> (low: Double, high: Double) {
    Leakage.wilsonInterval(successes: Double(successes), samples: trials)
}

/// "62.5% [30.6, 86.3]" for a table cell: the pooled successes over the pooled trials of
/// `summaries` (one per seed), with their Wilson interval; "—" when none ran the attack.
func attackCell(_ summaries: [AttackSummary]) -> String {
    guard !summaries.isEmpty else { return "—" }
    let successes = summaries.map(\.successes).reduce(0, +), trials = summaries.map(\.trials).reduce(0, +)
    let (low, high) = wilsonInterval(successes: successes, trials: trials)
    let rate = trials > 0 ? Double(successes) / Double(trials) : 0
    return String(format: "%.1f%% [%.1f, %.1f]", rate * 100, low * 100, high * 100)
}
