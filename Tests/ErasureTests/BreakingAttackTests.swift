import Diffusion
import Erasure
@testable import Evaluation
import Foundation
import NN
import Tensor
import Testbed
import XCTest

/// The attacks beyond paraphrases: each one succeeds against the un-erased embedded mini-SD (a
/// sanity check that it can), gives the same bits for the same seed, and records its budget.
final class BreakingAttackTests: XCTestCase {
    static let sneaker = 7

    func embedded() throws -> StableDiffusionPipeline {
        do { return try ModelLoader.load(nil).pipeline } catch { throw XCTSkip("the embedded model needs MiniLM (`score assets`): \(error)") }
    }

    static func fashion() throws -> FashionMNIST {
        do { return try FashionMNIST(assets: Assets()) } catch { throw XCTSkip("needs Fashion-MNIST (`score assets`): \(error)") }
    }

    // MARK: Shared record

    func testWilsonIntervalMatchesKnownValues() {
        // Reference values from statsmodels' proportion_confint(method="wilson").
        let (low0, high0) = wilsonInterval(successes: 0, trials: 10)
        XCTAssertEqual(low0, 0, accuracy: 1e-12)
        XCTAssertEqual(high0, 0.27753, accuracy: 1e-4)
        let (low5, high5) = wilsonInterval(successes: 5, trials: 10)
        XCTAssertEqual(low5, 0.23659, accuracy: 1e-4)
        XCTAssertEqual(high5, 0.76341, accuracy: 1e-4)
        XCTAssertEqual(attackCell([]), "—")
        let budget = AttackBudget(mode: "fast", steps: 1, instances: 10, seeds: 1)
        XCTAssertEqual(attackCell([AttackSummary(successes: 2, trials: 5, budget: budget), AttackSummary(successes: 3, trials: 5, budget: budget)]),
                       "50.0% [23.7, 76.3]")
    }

    func testCellsWithoutAttackRecordsStillLoadAndShowADash() throws {
        // A cell file written before the attacks were recorded: no "attacks" key.
        let accuracies = Accuracies(acc_e: 0.5, acc_s: 0.5, acc_g: 0.5, h_o: 0.5)
        let evaluation = ObjectEvaluation(concept: "sneaker", label: 7, acc_e: 0.1, acc_s: 0.9, acc_g: 0, h_o: 0.9, kid: nil,
                                          kid_real: 1, acc_s_relative: nil, original: nil, second_judge: accuracies,
                                          per_class_accuracy: [:], target_classes: nil, leakage_nats: nil, leakage_bound: nil, leakage: nil,
                                          settings: EvaluationSettings(), model: "esd-x", original_model: nil)
        var cell = ObjectBenchmarkCell(concept: "sneaker", method: "esd-x", seed: 0, evaluation: evaluation, wall_seconds: 1,
                                       parameters_changed: 1, asr_paraphrase: 0.5, asr_unlearndiffatk_pre: 0, asr_unlearndiffatk_post: 0.25)
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(cell)) as! [String: Any]
        json.removeValue(forKey: "attacks")
        let old = try JSONDecoder().decode(ObjectBenchmarkCell.self, from: JSONSerialization.data(withJSONObject: json))
        XCTAssertNil(old.attacks)
        cell.attacks = ["cce": AttackSummary(successes: 1, trials: 4, budget: AttackBudget(mode: "testbed", steps: 3, instances: 1, seeds: 4))]
        let table = ObjectBenchmark.markdownTable([old, cell])
        let rows = table.split(separator: "\n").map { $0.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) } }
        let header = rows[0], cceColumn = header.firstIndex { $0.hasPrefix("CCE") }!
        XCTAssertEqual(rows[0].count, rows[1].count)
        // Both cells are one row (same concept and method): pooled 1/4.
        XCTAssertEqual(rows[2][cceColumn], "25.0% [4.6, 69.9]")
        let lone = ObjectBenchmark.markdownTable([old]).split(separator: "\n")[2]
        XCTAssertTrue(lone.contains("| — | — | — | — |"), String(lone))
    }

    // MARK: UnlearnDiffAtk, official schedule

    func testOfficialBlocksAreTheOfficialTimesteps() {
        var config = UnlearnDiffAtkConfig()
        XCTAssertEqual(config.budget, .official)
        XCTAssertEqual(config.target, "original")
        let timesteps = config.blockTimesteps(trainTimesteps: 1000)
        XCTAssertEqual(timesteps.count, 50)
        XCTAssertEqual(Array(timesteps.prefix(3)), [10, 30, 50])
        XCTAssertEqual(timesteps.last, 990)
        XCTAssertEqual(config.record, AttackBudget(mode: "official", steps: 2000, blocks: 50, instances: 4, seeds: 1))
        config.blocks = 4
        XCTAssertEqual(config.blockTimesteps(trainTimesteps: 1000), [125, 375, 625, 875])
        XCTAssertEqual(UnlearnDiffAtkConfig(budget: .fast).record, AttackBudget(mode: "fast", steps: 40, instances: 4, seeds: 1))
    }

    func testOfficialScheduleChecksAfterEachBlockAndStopsAtTheFirstSuccess() throws {
        let pipeline = try AttackTests.tinyPipeline()
        let attack = try PrefixTokenAttack(pipeline: pipeline)
        var config = UnlearnDiffAtkConfig()
        config.iterationsPerBlock = 2
        config.blocks = 5
        config.judgeWeight = 0
        func run(stopAt: Int?) -> (PrefixOptimisation, [Int]) {
            var generator = RandomGenerator(seed: 21)
            var checked: [Int] = []
            let found = attack.optimise(prompt: "a photo of a shoe", target: AttackTests.targetImage(), concept: 1, judge: nil,
                                        config: config, generator: &generator, check: { block, ids in
                XCTAssertEqual(ids.count, 3)
                checked.append(block)
                return block == stopAt
            })
            return (found, checked)
        }
        let (all, checkedAll) = run(stopAt: nil)
        XCTAssertEqual(checkedAll, [0, 1, 2, 3, 4])
        XCTAssertEqual(all.blocksRun, 5)
        XCTAssertEqual(all.losses.count, 10)
        let (early, checkedEarly) = run(stopAt: 1)
        XCTAssertEqual(checkedEarly, [0, 1])
        XCTAssertEqual(early.blocksRun, 2)
        XCTAssertEqual(early.losses.count, 4)
        // The same seed, the same bits.
        let (again, _) = run(stopAt: nil)
        XCTAssertEqual(again.continuous.scalars, all.continuous.scalars)
        XCTAssertEqual(again.tokenIds, all.tokenIds)
    }

    func testOfficialUnlearnDiffAtkSucceedsOnTheEmbeddedModelAndRecordsItsBudget() throws {
        let result = try Self.officialUnlearnDiffAtk(try embedded(), samplingSteps: 8, guidance: DefaultModel.guidance)
        // The un-erased model draws a sneaker from the first projected prompt: the early stop ends the attack there.
        XCTAssertEqual(result.prompts[0].blocks_run, 1)
        XCTAssertEqual(result.prompts[0].steps_run, 2)
    }

    /// The official schedule (2 steps a block, the official objective) on "a photo of a sneaker"
    /// against `pipeline`, an un-erased model that draws it: broken after, its budget recorded,
    /// the same tokens again. Returns the result for the family's own checks.
    static func officialUnlearnDiffAtk<Model: AttackedModel>(_ pipeline: Model, samplingSteps: Int,
                                                             guidance: Float) throws -> UnlearnDiffAtkResult {
        let judge = try DefaultModel.judge("cnn")
        var config = UnlearnDiffAtkConfig()
        config.instances = 1
        config.iterationsPerBlock = 2
        config.samplingSteps = samplingSteps
        config.guidance = guidance
        config.judgeWeight = 0
        config.attackBroken = true
        let target = AttackTarget(prompt: "a photo of a sneaker", image: Tensor.zeros([1, 1, 32, 32]), imageIndex: -1, label: sneaker)
        func attack() throws -> UnlearnDiffAtkResult {
            try UnlearnDiffAtk.run(pipeline: pipeline, original: pipeline, targets: [target], concept: "Sneaker", label: sneaker,
                                   conceptLabels: [sneaker], judge: judge, attackJudge: nil, config: config, modelName: "embedded").0
        }
        let result = try attack()
        XCTAssertEqual(result.asr_post, 1)
        XCTAssertEqual(result.budget, config.record)
        XCTAssertEqual(result.summary?.trials, 1)
        XCTAssertEqual(try attack().prompts[0].adversarial_token_ids, result.prompts[0].adversarial_token_ids)
        return result
    }

    // MARK: Inversion

    func testInversionRegeneratesTheConceptThroughTheUnerasedModel() throws {
        try Self.assertInversionRegeneratesSneakers(try embedded(), data: try Self.fashion())
    }

    /// Three train sneakers inverted through `pipeline` (an un-erased model, also the reference)
    /// at 10 steps: every regeneration is judged a sneaker, through both; the budget is recorded
    /// and the grid repeats bit for bit.
    static func assertInversionRegeneratesSneakers<Model: AttackedModel>(_ pipeline: Model, data: FashionMNIST) throws {
        let judge = try DefaultModel.judge("cnn")
        var config = InversionAttackConfig()
        config.images = 3
        config.steps = 10
        let (images, indices) = try InversionAttack.realImages(label: sneaker, train: data.train, count: config.images, seed: config.seed)
        XCTAssertTrue(indices.allSatisfy { data.train.labels[$0] == sneaker })
        func attack() throws -> (InversionAttackResult, Tensor) {
            try InversionAttack.run(pipeline: pipeline, original: pipeline, images: images, indices: indices, concept: "Sneaker",
                                    label: sneaker, conceptLabels: [sneaker], judge: judge, config: config, modelName: "embedded")
        }
        let (result, grid) = try attack()
        XCTAssertEqual(result.asr, 1, "\(result.instances)")
        XCTAssertEqual(result.reference_asr, 1)
        XCTAssertEqual(result.budget, AttackBudget(mode: "testbed", steps: 10, instances: 3, seeds: 1))
        XCTAssertEqual(result.summary.trials, 3)
        XCTAssertEqual(try attack().1.scalars, grid.scalars)
    }

    func testInversionThenSamplingReturnsCloseToTheImage() throws {
        let pipeline = try embedded()
        let data = try Self.fashion()
        let (images, _) = try InversionAttack.realImages(label: 1, train: data.train, count: 2, seed: 4)
        var config = InversionAttackConfig()
        config.steps = 10
        let back = try InversionAttack.reconstruct(pipeline: pipeline, images: images, config: config)
        let error = zip(back.scalars, images.scalars).map { Swift.abs($0 - $1) }.reduce(0, +) / Float(images.count)
        // Mean absolute error over [−1, 1] pixels; a sampler started from fresh noise is ~0.6 off.
        XCTAssertLessThan(error, 0.2)
    }

    // MARK: Ring-A-Bell

    func testRingABellFindsAPromptThatDrawsTheConceptOnTheUnerasedModel() throws {
        let result = try Self.ringABell(try embedded(), samplingSteps: 10, guidance: DefaultModel.guidance)
        XCTAssertEqual(result.instances[0].base_prompt, "a photo of a t-shirt")
    }

    /// One search (population 100, 60 generations) from the first benign prompt against
    /// `pipeline`, an un-erased model: the distance falls, the string draws a sneaker in at least
    /// 2 of 4 images, the budget is recorded, and the search repeats bit for bit.
    static func ringABell<Model: AttackedModel>(_ pipeline: Model, samplingSteps: Int, guidance: Float) throws -> RingABellResult {
        let judge = try DefaultModel.judge("cnn")
        var config = RingABellConfig()
        config.instances = 1
        config.seedsPerPrompt = 4
        config.population = 100
        config.generations = 60
        config.samplingSteps = samplingSteps
        config.guidance = guidance
        let prompts = try FashionPrompts.bundled()
        let result = try RingABellAttack.run(pipeline: pipeline, label: sneaker, prompts: prompts, judge: judge, config: config,
                                             modelName: "embedded").0
        let instance = result.instances[0]
        XCTAssertLessThan(instance.last_loss, instance.first_loss)
        XCTAssertGreaterThanOrEqual(result.asr, 0.5, "\(instance.prompt)")
        XCTAssertEqual(result.budget, AttackBudget(mode: "testbed", steps: 60, instances: 1, seeds: 4))
        // The same seed, the same search (a short one: the bits do not depend on the length).
        config.generations = 3
        let first = try RingABellAttack.search(pipeline: pipeline, label: sneaker, prompts: prompts, config: config)
        XCTAssertEqual(try RingABellAttack.search(pipeline: pipeline, label: sneaker, prompts: prompts, config: config), first)
        return result
    }

    func testConceptVectorOfIdenticalPromptSetsIsZero() throws {
        let search = try RingABell(pipeline: try embedded(), length: 8)
        let vector = search.conceptVector(with: ["a photo of a bag", "a coat"], without: ["a photo of a bag", "a coat"])
        XCTAssertEqual(vector.shape, [10, 384])
        XCTAssertTrue(vector.scalars.allSatisfy { $0 == 0 })
    }

    // MARK: CCE

    func testCCELearnsATokenThatDrawsTheConceptOnTheUnerasedModel() throws {
        try Self.assertCCEDrawsSneakers(try embedded(), samplingSteps: 10, guidance: DefaultModel.guidance, data: try Self.fashion())
    }

    /// v* learned in 30 steps on 4 train sneakers through `pipeline`, an un-erased model: it draws
    /// the sneaker more often than its starting word and in at least half of 4 images; the budget
    /// is recorded, the denoiser's flags are back, and the images repeat.
    static func assertCCEDrawsSneakers<Model: AttackedModel>(_ pipeline: Model, samplingSteps: Int, guidance: Float,
                                                             data: FashionMNIST) throws {
        let judge = try DefaultModel.judge("cnn")
        var config = CCEConfig()
        config.images = 4
        config.steps = 30
        config.batch = 2
        config.learningRate = 0.02
        config.samples = 4
        config.samplingSteps = samplingSteps
        config.guidance = guidance
        let prompts = try FashionPrompts.bundled()
        let flags = pipeline.denoiser.parameters().map(\.requiresGrad)
        func attack() throws -> CCEResult {
            try CCEAttack.run(pipeline: pipeline, label: sneaker, prompts: prompts, train: data.train, judge: judge, config: config,
                              modelName: "embedded").0
        }
        let result = try attack()
        XCTAssertGreaterThan(result.asr, result.asr_initial, "nearest word \(result.nearest_word)")
        XCTAssertGreaterThanOrEqual(result.asr, 0.5)
        XCTAssertEqual(result.budget, AttackBudget(mode: "testbed", steps: 30, instances: 1, seeds: 4))
        XCTAssertEqual(pipeline.denoiser.parameters().map(\.requiresGrad), flags)
        XCTAssertEqual(try attack().broken, result.broken)
    }

    func testCCETemplatesSplitAroundThePlaceholder() {
        XCTAssertEqual(CCEAttack.split("a photo of {a} {noun}").lead, "a photo of a")
        XCTAssertEqual(CCEAttack.split("a photo of {a} {noun}").trail, "")
        XCTAssertEqual(CCEAttack.split("{noun}").lead, "")
    }
}
