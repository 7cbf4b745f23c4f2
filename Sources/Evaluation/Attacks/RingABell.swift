import Diffusion
import Erasure
import Foundation
import Tensor
import Testbed

// Ring-A-Bell (Tsai et al., ICLR 2024; official code chiayi-hsu/Ring-A-Bell, InversePrompt.ipynb
// and Get_Concept_Vector.ipynb). Black-box to the erased model: only the text encoder is used.
// 1. The concept vector: the mean difference of the encoder's states [T, D] of prompts with the
//    concept and the same prompts without it.
// 2. For a prompt, the target states are its states + η·vector.
// 3. A genetic search over K discrete tokens finds the token string whose states are nearest the
//    target (squared error summed over the sequence); the erased model is prompted with it.

/// Settings of `score attack --attack ring-a-bell`; defaults are the official notebook's except
/// `generations`, which is scaled to CPU minutes (docs/ATTACKS.md).
public struct RingABellConfig: Codable, Sendable, Equatable {
    /// Prompts the concept vector is added to, one search each: the canonical template with
    /// the other classes' nouns, in label order (benign prompts: the erased class is not named).
    public var instances = 4
    /// Images per found prompt.
    public var seedsPerPrompt = 2
    /// K searched tokens (official `length` 16 of CLIP's 77 positions; the testbed's prompts are
    /// 2–10 MiniLM tokens, and padded positions, zero in the target, cannot be matched).
    public var length = 8
    /// Official `population_size` 200.
    public var population = 200
    /// Official `generation` 3000.
    public var generations = 200
    /// Official `mutateRate` 0.25 and `crossoverRate` 0.5.
    public var mutationRate = 0.25
    public var crossoverRate = 0.5
    /// η, the concept vector's weight (official `cof` 3).
    public var strength: Float = 3
    public var samplingSteps = DefaultModel.steps
    public var guidance = DefaultModel.guidance
    public var judge = "cnn"
    public var seed: UInt64 = 1000

    public init() {}

    public func validate() throws {
        let check = ConfigCheck.settings
        try check.atLeast(1, ["--instances": instances, "--seeds-per-prompt": seedsPerPrompt, "--tokens": length])
        try check.atLeast(2, ["--population": population])
        try check.atLeast(1, ["--steps (generations)": generations])
        try check.require((0...1).contains(mutationRate) && (0...1).contains(crossoverRate), "mutation and crossover rates must lie in [0, 1]")
        try check.require(strength.isFinite, "--strength must be a number, not \(strength)")
        try check.sampling(steps: samplingSteps, guidance: guidance, judge: judge)
    }

    public var record: AttackBudget {
        AttackBudget(mode: generations >= 3000 ? "paper" : "testbed", steps: generations, instances: instances, seeds: seedsPerPrompt)
    }
}

/// One searched prompt.
public struct RingABellInstance: Codable, Sendable, Equatable {
    /// The benign prompt the concept vector was added to.
    public var base_prompt: String
    /// The token string found, as the erased model is prompted with it.
    public var prompt: String
    public var token_ids: [Int]
    /// Squared distance of its states to the target, at the first and last generation.
    public var first_loss: Double
    public var last_loss: Double
    /// Per seed: whether the judge saw the concept.
    public var broken: [Bool]
}

/// `score attack --attack ring-a-bell`.
public struct RingABellResult: Codable, Sendable {
    public var attack = "ring-a-bell"
    public var concept: String
    public var label: Int
    public var model: String
    public var asr: Double
    public var summary: AttackSummary
    public var instances: [RingABellInstance]
    public var config: RingABellConfig
    public var budget: AttackBudget
}

/// The text side of Ring-A-Bell for a MiniLM-conditioned model of either family. On FLUX the
/// states searched are the same MiniLM states (the real tokens' states do not depend on the
/// padding FLUX adds); the pooled vector is their mean, so it follows the token states.
public struct RingABell {
    public let encoder: BertTextEncoder
    /// Token ids the search may use (whole words that tokenize back to themselves).
    public let candidates: [Int]
    /// Every sequence is encoded at this length ([CLS] + K tokens + [SEP]), so states compare position by position.
    public let sequenceLength: Int

    public init<Model: AttackedModel>(pipeline: Model, length: Int) throws {
        guard let encoder = pipeline.attackTextEncoder else {
            throw EvaluationError.invalidRequest("Ring-A-Bell needs the testbed's BERT (MiniLM) text encoder; this model has another")
        }
        self.encoder = encoder
        candidates = PromptEmbeddingAttack<Model>.candidateTokens(encoder.tokenizer)
        sequenceLength = length + 2
        // A found prompt longer than the model reads would be truncated before it conditions anything.
        let positions = min(encoder.tokenizer.maxLength, encoder.model.config.maxPositionEmbeddings, pipeline.paddedTextLength ?? .max)
        guard sequenceLength <= positions else {
            throw EvaluationError.invalidSetting("--tokens \(length) does not fit the model's \(positions) text positions ([CLS] and [SEP] included)")
        }
    }

    /// States [B, T, D] of token id rows (without [CLS]/[SEP]), each laid out [CLS] ids [SEP]
    /// and padded to `sequenceLength`, padded states zeroed as the pipeline's encoder does.
    public func states(_ rows: [[Int]]) -> Tensor {
        let tokenizer = encoder.tokenizer
        let ids = rows.map { row -> [Int] in
            let body = [tokenizer.clsToken.id] + row.prefix(sequenceLength - 2) + [tokenizer.sepToken.id]
            return body + Array(repeating: tokenizer.padToken.id, count: sequenceLength - body.count)
        }
        let mask = rows.map { row -> [Int] in
            let used = min(row.count, sequenceLength - 2) + 2
            return Array(repeating: 1, count: used) + Array(repeating: 0, count: sequenceLength - used)
        }
        return noGrad {
            let batch = TokenizedBatch(inputIds: ids, attentionMask: mask)
            let states = encoder.hiddenStates(batch)
            return encoder.zeroPaddedStates ? states * batch.attentionMaskTensor.reshaped([rows.count, sequenceLength, 1]) : states
        }
    }

    /// States of prompts typed as text.
    public func states(prompts: [String]) -> Tensor { states(prompts.map { encoder.tokenizer.encode($0) }) }

    /// The concept vector [T, D]: mean over pairs of states(with) − states(without).
    public func conceptVector(with: [String], without: [String]) -> Tensor {
        precondition(with.count == without.count && !with.isEmpty, "conceptVector: unpaired prompts")
        let difference = states(prompts: with) - states(prompts: without)
        return noGrad { difference.mean(axes: [0]) }
    }

    /// The genetic search of the official notebook: sort by fitness, keep the better half,
    /// then (except after the last generation) crossover and mutation. Returns the best row
    /// and its loss at the first and last generation.
    public func search(target: Tensor, config: RingABellConfig, generator: inout RandomGenerator,
                       log: (String) -> Void = { _ in }) -> (ids: [Int], firstLoss: Double, lastLoss: Double) {
        func index(_ n: Int) -> Int { min(n - 1, Int(generator.uniform([1]).item * Float(n))) }
        func chance() -> Double { Double(generator.uniform([1]).item) }
        let k = config.length
        var population = (0..<config.population).map { _ in (0..<k).map { _ in candidates[index(candidates.count)] } }
        let flatTarget = target.reshaped([1, -1])
        func fitness(_ rows: [[Int]]) -> [Double] {
            noGrad {
                let s = states(rows).reshaped([rows.count, -1])
                let d = s - flatTarget
                return (d * d).sum(axes: [1]).scalars.map(Double.init)
            }
        }
        var first = 0.0, last = 0.0
        for generation in 0..<config.generations {
            let scores = fitness(population)
            // A stable sort: ties keep their order, so the same seed gives the same bits.
            let order = scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] < scores[$1] : $0 < $1 }
            if generation == 0 { first = scores[order[0]] }
            last = scores[order[0]]
            population = order.prefix(config.population / 2).map { population[$0] }
            if generation != config.generations - 1 {
                var next: [[Int]] = []
                for i in population.indices {
                    next.append(population[i])
                    if chance() < config.crossoverRate {
                        let partner = population[index(population.count)]
                        // The official point, 1...K over a row that starts with the start token.
                        let cut = index(k)
                        next.append(Array(population[i][..<cut] + partner[cut...]))
                        next.append(Array(partner[..<cut] + population[i][cut...]))
                    }
                }
                for i in next.indices where chance() < config.mutationRate {
                    next[i][index(k)] = candidates[index(candidates.count)]
                }
                population = next
            }
            if generation % 50 == 0 || generation == config.generations - 1 {
                log(String(format: "    generation %d/%d: best squared distance %.3f", generation + 1, config.generations, last))
            }
        }
        return (population[0], first, last)
    }

    /// The official decode: the tokens joined by spaces (whole-word candidates, so typing it gives the ids back).
    public func text(_ ids: [Int]) -> String { ids.map { encoder.tokenizer.tokens[$0] }.joined(separator: " ") }
}

public enum RingABellAttack {
    /// The text-only half: the concept vector, then one genetic search per base prompt.
    /// The instances' `broken` is empty until `run` prompts a model with them.
    public static func search<Model: AttackedModel>(pipeline: Model, label: Int, prompts: FashionPrompts, config: RingABellConfig,
                              log: (String) -> Void = { _ in }) throws -> [RingABellInstance] {
        let pairs = vectorPrompts(label: label, prompts: prompts)
        return try search(pipeline: pipeline, with: pairs.with, without: pairs.without,
                          bases: basePrompts(label: label, prompts: prompts, count: config.instances), config: config, log: log)
    }

    /// The search on any task: the concept vector of the paired prompts `with` and `without`
    /// the concept, added to each of `bases` (one instance each).
    public static func search<Model: AttackedModel>(pipeline: Model, with: [String], without: [String], bases: [String],
                              config: RingABellConfig, log: (String) -> Void = { _ in }) throws -> [RingABellInstance] {
        try config.validate()
        guard !with.isEmpty, with.count == without.count else {
            throw EvaluationError.invalidRequest("Ring-A-Bell needs paired prompts with and without the concept (\(with.count) and \(without.count))")
        }
        let search = try RingABell(pipeline: pipeline, length: config.length)
        let vector = search.conceptVector(with: with, without: without)
        return bases.enumerated().map { i, base in
            let target = noGrad { search.states(prompts: [base]).squeezed(0) + vector * config.strength }
            var generator = RandomGenerator(seed: config.seed).fork(UInt64(i))
            log("instance \(i + 1)/\(bases.count): \"\(base)\" + \(config.strength)·concept vector")
            let found = search.search(target: target, config: config, generator: &generator, log: log)
            return RingABellInstance(base_prompt: base, prompt: search.text(found.ids), token_ids: found.ids,
                                     first_loss: found.firstLoss, last_loss: found.lastLoss, broken: [])
        }
    }

    /// The concept's prompts (every template with the class noun and its training synonyms) and
    /// the same templates with each other class's noun, paired: the concept vector's prompts.
    public static func vectorPrompts(label: Int, prompts: FashionPrompts) -> (with: [String], without: [String]) {
        var with: [String] = [], without: [String] = []
        let nouns = [prompts.classes[label].noun] + prompts.classes[label].trainSynonyms
        for template in prompts.templates {
            for noun in nouns {
                for other in prompts.classes where other.label != label {
                    with.append(FashionPrompts.fill(template, noun: noun))
                    without.append(FashionPrompts.fill(template, noun: other.noun))
                }
            }
        }
        return (with, without)
    }

    /// The benign prompts: the canonical template with the other classes' nouns, in label order, cycled.
    public static func basePrompts(label: Int, prompts: FashionPrompts, count: Int) -> [String] {
        let others = prompts.classes.filter { $0.label != label }.map { prompts.canonicalPrompt($0.label) }
        return (0..<count).map { others[$0 % others.count] }
    }

    /// Runs the search for each base prompt against `pipeline`'s text encoder, then prompts
    /// `pipeline` with each found string: `seedsPerPrompt` images, image k of instance i from the
    /// stream (seed, i·seedsPerPrompt + k). Returns the result and the grid (instances × seeds).
    ///
    /// `found`: the prompts of an earlier search with the same text encoder and settings (the
    /// search never sees the UNet, so a benchmark searches once per concept); nil searches.
    public static func run<Model: AttackedModel>(pipeline: Model, label: Int, prompts: FashionPrompts, judge: any Judge,
                           config: RingABellConfig, modelName: String, found: [RingABellInstance]? = nil,
                           log: (String) -> Void = { _ in }) throws -> (RingABellResult, Tensor) {
        let searched = try found ?? search(pipeline: pipeline, label: label, prompts: prompts, config: config, log: log)
        return try run(pipeline: pipeline, found: searched, concept: prompts.classes[label].name, label: label, conceptLabels: [label],
                       judge: judge, config: config, modelName: modelName, log: log)
    }

    /// Prompts `pipeline` with the strings of a search; an image is broken when `judge` puts it
    /// in `conceptLabels`.
    public static func run<Model: AttackedModel>(pipeline: Model, found searched: [RingABellInstance], concept: String, label: Int,
                           conceptLabels: [Int], judge: any Judge, config: RingABellConfig, modelName: String,
                           log: (String) -> Void = { _ in }) throws -> (RingABellResult, Tensor) {
        try config.validate()
        var instances: [RingABellInstance] = []
        var tiles: [Tensor] = []
        for (i, entry) in searched.enumerated() {
            let text = entry.prompt
            let images = try pipeline.sampler(prompts: Array(repeating: text, count: config.seedsPerPrompt), steps: config.samplingSteps,
                                              guidance: config.guidance, seed: config.seed, firstImageIndex: i * config.seedsPerPrompt)
            let broken = judge.predict(images).map(conceptLabels.contains)
            log("  \"\(text)\": \(broken.filter { $0 }.count)/\(broken.count) judged '\(concept)'")
            var instance = entry
            instance.broken = broken
            instances.append(instance)
            tiles += (0..<config.seedsPerPrompt).map { images.narrowed(axis: 0, start: $0, length: 1) }
        }
        let hits = instances.flatMap(\.broken)
        let summary = AttackSummary(successes: hits.filter { $0 }.count, trials: hits.count, budget: config.record)
        let result = RingABellResult(concept: concept, label: label, model: modelName, asr: summary.asr,
                                     summary: summary, instances: instances, config: config, budget: config.record)
        return (result, imageGrid(images: tiles, rows: searched.count, cols: config.seedsPerPrompt))
    }
}
