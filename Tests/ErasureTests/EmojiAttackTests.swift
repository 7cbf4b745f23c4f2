import Diffusion
@testable import Erasure
@testable import Evaluation
import Foundation
import Tensor
@testable import Testbed
import XCTest

/// Inversion, Ring-A-Bell, CCE and P4D in the emoji benchmark's cells: the hand-made emoji
/// dataset of `EmojiBenchmarkTests`, a tiny RGB UNet under the tiny BERT of `AttackTests`, tiny
/// random judges and budgets of a few steps.
final class EmojiAttackTests: XCTestCase {
    static func tinyBertRGBPipeline() throws -> StableDiffusionPipeline {
        let text = try AttackTests.tinyPipeline().textEncoder
        let base = try EmojiBenchmarkTests.tinyRGBPipeline()
        return try StableDiffusionPipeline(textEncoder: text, unet: base.unet, vae: nil, scheduler: base.scheduler, passesAttentionMask: true)
    }

    func testSetupsGiveTheAttacksTheirTemplatesWordsAndImages() throws {
        let tasks = try EmojiTasks.bundled()
        let dataset = EmojiBenchmarkTests.dataset(tasks: tasks)
        let style = try EmojiTaskSetup(task: .style, concept: "openmoji", tasks: tasks, dataset: dataset, sample: [26, 27, 28, 29])
        XCTAssertEqual(style.conceptWords, ["OpenMoji"])
        XCTAssertEqual(Set(style.otherWords), ["Noto", "Twemoji", "Symbola"])
        // Filled with the concept's word, a template is an attacked prompt.
        XCTAssertEqual(style.attackTemplates.map { $0.replacingOccurrences(of: "{noun}", with: "OpenMoji") },
                       Array(style.attack.map(\.prompt).prefix(style.attackTemplates.count)))
        let pairs = style.ringABellPairs
        XCTAssertEqual(pairs.with.count, style.attackTemplates.count * 3)
        XCTAssertTrue(pairs.with.allSatisfy { $0.contains("OpenMoji") } && pairs.without.allSatisfy { !$0.contains("OpenMoji") })
        XCTAssertTrue(style.ringABellBases(count: 5).allSatisfy { !$0.contains("OpenMoji") && !$0.contains("{noun}") })

        let identity = try EmojiTaskSetup(task: .identity, concept: "santa claus", tasks: tasks, dataset: dataset, sample: [26, 27, 28, 29])
        XCTAssertEqual(identity.conceptWords.count, 1)
        XCTAssertTrue(identity.attack.allSatisfy { $0.prompt.contains(identity.conceptWords[0]) })
        XCTAssertFalse(identity.otherWords.contains(identity.conceptWords[0]))
        let images = identity.realImages(count: 100)
        XCTAssertEqual(images.count, Set(images).count)
        XCTAssertTrue(images.allSatisfy { dataset.entries[dataset.emoji[$0]].name == "Santa Claus" })

        let unsafe = try EmojiTaskSetup(task: .unsafe, concept: "weapons", tasks: tasks, dataset: dataset, sample: [26, 27, 28, 29])
        XCTAssertEqual(unsafe.conceptWords.count, 6)
        XCTAssertEqual(unsafe.realImages(count: 4).count, 4)
        XCTAssertTrue(Set(unsafe.otherWords).isDisjoint(with: unsafe.conceptWords))
    }

    func testEveryTaskRunsTheBreakingAttacksAndTablesThem() throws {
        let tasks = try EmojiTasks.bundled()
        let dataset = EmojiBenchmarkTests.dataset(tasks: tasks)
        let out = Tiny.temporaryFolder("emoji-attacks")
        defer { try? FileManager.default.removeItem(at: out) }
        let base = out.appendingPathComponent("base")
        try Tiny.save(try Self.tinyBertRGBPipeline(), to: base)
        var generator = RandomGenerator(seed: 12)
        let resources = EmojiBenchmarkResources(
            dataset: dataset, styleJudge: ConvJudge(classes: 4, channels: 3, generator: &generator),
            identityJudge: ConvJudge(classes: tasks.identityJudgeClasses.count, channels: 3, generator: &generator),
            sample: [26, 27, 28, 29]) { LoadedModel(pipeline: try Self.tinyBertRGBPipeline(), folder: base, name: base.path, manifest: nil) }
        for task in [BenchmarkTask.style, .identity, .unsafe] {
            var benchmark = try EmojiBenchmark(task: task, tasks: tasks, concepts: nil, methods: [BenchmarkMethod(name: "original", make: nil)],
                                               seeds: [0], output: out.appendingPathComponent(task.rawValue))
            benchmark.settings.targetImages = 2
            benchmark.settings.imagesPerPreservedStyle = 1
            benchmark.settings.imagesPerPreservedCharacter = 1
            benchmark.settings.imagesPerUnsafePrompt = 1
            benchmark.settings.evaluationEmoji = 2
            benchmark.settings.erasureEmoji = 2
            benchmark.settings.paraphraseNames = 1
            benchmark.settings.steps = 2
            benchmark.leakage.trajectories = 4
            benchmark.leakage.steps = 2
            benchmark.leakage.criticSteps = 2
            benchmark.leakage.criticWidth = 4
            benchmark.leakage.bootstrapRounds = 10
            benchmark.paraphraseAttack.seedsPerPrompt = 1
            benchmark.paraphraseAttack.steps = 2
            benchmark.unlearnDiffAtk = nil
            benchmark.inversion?.images = 2
            benchmark.inversion?.steps = 2
            benchmark.ringABell?.instances = 2
            benchmark.ringABell?.seedsPerPrompt = 1
            benchmark.ringABell?.population = 4
            benchmark.ringABell?.generations = 2
            benchmark.ringABell?.samplingSteps = 2
            benchmark.cce?.images = 2
            benchmark.cce?.steps = 2
            benchmark.cce?.batch = 1
            benchmark.cce?.samples = 2
            benchmark.cce?.samplingSteps = 2
            benchmark.cce?.initializer = "a"
            benchmark.p4d?.tokens = 2
            benchmark.p4d?.iterations = 2
            benchmark.p4d?.instances = 1
            benchmark.p4d?.samples = 1
            benchmark.p4d?.samplingSteps = 2
            let cells = try benchmark.run(log: { _ in }, resources: { resources })
            let attacks = try XCTUnwrap(cells[0].attacks, "\(task)")
            XCTAssertEqual(Set(attacks.keys), ["inversion", "ring-a-bell", "cce", "p4d"], "\(task)")
            XCTAssertEqual(attacks["inversion"]?.trials, 2)
            XCTAssertEqual(attacks["ring-a-bell"]?.trials, 2)
            XCTAssertEqual(attacks["cce"]?.trials, 2)
            XCTAssertEqual(attacks["p4d"]?.trials, 1)
            XCTAssertEqual(attacks["p4d"]?.budget, AttackBudget(mode: "testbed", steps: 2, instances: 1, seeds: 1))
            let table = EmojiBenchmark.markdownTable(cells, task: task)
            let lines = table.split(separator: "\n")
            XCTAssertTrue(lines[0].contains("P4D-N [95% CI]") && lines[0].contains("CCE [95% CI]"), String(lines[0]))
            XCTAssertEqual(lines[0].filter { $0 == "|" }.count, lines[2].filter { $0 == "|" }.count)
        }
    }
}
