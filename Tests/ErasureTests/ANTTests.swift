import Diffusion
@testable import Erasure
import Foundation
import NN
import Tensor
import XCTest

/// ANT on the tiny model: its loss against a direct computation, the three places where it
/// follows the paper rather than the official code, its mask, resume and effect.
final class ANTTests: XCTestCase {
    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of cat", "a cat"], anchor: "")],
        retainPrompts: ["dog"])

    static func tinyConfig(iterations: Int = 4) -> ANTConfig {
        var c = ANTConfig()
        c.iterations = iterations
        c.learningRate = 1e-2
        c.samplingSteps = 6
        c.splitStep = 2
        c.saliencySeeds = [24, 42]
        c.saliencyVariants = 2
        c.saliencyIterations = 2
        c.checkpointEvery = 2
        return c
    }

    /// ε of `model` for `text` at `input` and the schedule's step `step`.
    func epsilon(_ pipeline: StableDiffusionPipeline, _ text: String, _ input: Tensor, _ timestep: Float) -> [Float] {
        let (states, mask) = pipeline.encodePrompts([text])
        return noGrad { pipeline.predictNoise(latents: input, timestep: timestep, states: states, mask: mask).scalars }
    }

    func testLossIsTheDirectComputationOnOneTrajectory() throws {
        let pipeline = try Tiny.pipeline()
        let reference = try Tiny.pipeline()   // θ₀, kept apart from the run
        var config = Self.tinyConfig()
        config.saliencyRatio = 1
        config.eta = 1.5
        let run = try ANTRun(config: config, request: Self.request, pipeline: pipeline, log: { _ in })
        // As if training had moved the model: targets must still come from θ₀, predictions from θ.
        for (_, p) in pipeline.unet.namedParameters() { for i in 0..<p.count { p.pointer[i] += 0.03 } }

        let prompt = try XCTUnwrap(run.table.index(of: "a photo of cat"))
        let draw = ANTRun.Draw(prompt: prompt, earlyStep: 1, lateStep: 4)
        let (early, late) = try run.states(draw, seed: 3, stream: 5, model: run.frozen)
        // The two states lie on one trajectory: the late one is the same run taken further.
        var generators = [StableDiffusionPipeline.imageGenerator(seed: 3, index: 5)]
        let shape = try pipeline.latentShape(batch: 1, height: pipeline.defaultHeight, width: pipeline.defaultWidth)
        let noise = initialNoise(shape: shape, schedule: run.schedule, generators: &generators)
        let (c, u) = (reference.encodePrompts(["a photo of cat"]), reference.encodePrompts([""]))
        let direct = try noGrad {
            try reference.denoise(noise, conditional: c, unconditional: u, guidance: 3, schedule: run.schedule, steps: 0..<4,
                                  generators: &generators)
        }
        XCTAssertEqual(late.scalars, direct.scalars)

        let terms = run.terms(draw, early: early, late: late)
        func mse(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } / Float(a.count) }
        var expected: [Float] = []
        for (input, step, sign) in [(early, 1, Float(1)), (late, 4, Float(-1))] {
            let t = run.schedule.timesteps[step]
            let (c0, u0) = (epsilon(reference, "a photo of cat", input, t), epsilon(reference, "", input, t))
            let (c1, u1) = (epsilon(pipeline, "a photo of cat", input, t), epsilon(pipeline, "", input, t))
            let target = zip(c0, u0).map { $1 + sign * 1.5 * ($0 - $1) }
            expected += [mse(c1, target), mse(u1, u0)]
        }
        XCTAssertEqual(terms.early.item, expected[0], accuracy: 1e-5 * max(1, expected[0]))
        XCTAssertEqual(terms.earlyUnconditional.item, expected[1], accuracy: 1e-5 * max(1, expected[1]))
        XCTAssertEqual(terms.late.item, expected[2], accuracy: 1e-5 * max(1, expected[2]))
        XCTAssertEqual(terms.lateUnconditional.item, expected[3], accuracy: 1e-5 * max(1, expected[3]))
        let total = expected[2] + 0.5 * expected[3] + 1 * (expected[0] + 0.5 * expected[1])
        XCTAssertEqual(run.total(terms).item, total, accuracy: 1e-5 * max(1, total))

        // The unconditional terms train the model (the official ones carry no gradient).
        terms.earlyUnconditional.backward()
        let gradient = run.trainable.reduce(Float(0)) { sum, p in sum + (p.tensor.grad?.scalars.map(abs).reduce(0, +) ?? 0) }
        XCTAssertGreaterThan(gradient, 0)
    }

    func testEarlyStepsAreTheHighNoiseOnes() throws {
        let run = try ANTRun(config: { var c = Self.tinyConfig(); c.saliencyRatio = 1; return c }(), request: Self.request,
                             pipeline: try Tiny.pipeline(), log: { _ in })
        var g = RandomGenerator(seed: 1)
        var seenEarly = Set<Int>(), seenLate = Set<Int>()
        for _ in 0..<200 {
            let d = run.draw(from: [1, 2], generator: &g)
            XCTAssertTrue((0..<2).contains(d.earlyStep))
            XCTAssertTrue((2..<6).contains(d.lateStep))
            // Counted from noise: the early state is denoised at a larger timestep than the late one.
            XCTAssertGreaterThan(run.schedule.timesteps[d.earlyStep], run.schedule.timesteps[d.lateStep])
            seenEarly.insert(d.earlyStep)
            seenLate.insert(d.lateStep)
        }
        XCTAssertEqual(seenEarly, [0, 1])
        XCTAssertEqual(seenLate, [2, 3, 4, 5])
    }

    func testMaskKeepsTheLargestSummedGradientsOfEveryMap() throws {
        var config = Self.tinyConfig()
        config.saliencySeeds = [24]
        config.saliencyVariants = 1
        let pipeline = try Tiny.pipeline()
        let run = try ANTRun(config: config, request: Self.request, pipeline: pipeline, log: { _ in })
        XCTAssertEqual(Set(run.masks.keys), Set(pipeline.unet.namedParameters().map(\.name)))

        // One map (one variant, one seed): the top half of |Σ gradients| of each tensor, recomputed here.
        var g = RandomGenerator(seed: 24).fork(1)
        var sums: [String: [Float]] = [:]
        for i in 0..<config.saliencyIterations {
            let d = run.draw(from: [run.targetIndices[0][0]], generator: &g)
            let (early, late) = try run.states(d, seed: 24, stream: i, model: run.frozen)
            run.total(run.terms(d, early: early, late: late)).backward()
            for (name, p) in run.trainable {
                let grad = p.grad?.scalars ?? Array(repeating: 0, count: p.count)
                sums[name] = zip(sums[name] ?? Array(repeating: 0, count: grad.count), grad).map { $0 + $1 }
            }
            pipeline.unet.zeroGrad()
        }
        var checked = 0
        for (name, p) in pipeline.unet.namedParameters() {
            let mask = try XCTUnwrap(run.masks[name]).scalars
            XCTAssertEqual(run.masks[name]!.shape, p.shape, name)
            let scores = sums[name]!.map(abs)
            XCTAssertEqual(Int(mask.reduce(0, +)), Int((0.5 * Double(p.count)).rounded(.up)), name)
            let kept = scores.indices.filter { mask[$0] == 1 }.map { scores[$0] }
            let dropped = scores.indices.filter { mask[$0] == 0 }.map { scores[$0] }
            if let low = kept.min(), let high = dropped.max() {
                XCTAssertGreaterThanOrEqual(low, high, "\(name) keeps a smaller gradient than one it drops")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 0)

        // More maps intersect: never more than one map keeps.
        let intersected = try ANTRun(config: Self.tinyConfig(), request: Self.request, pipeline: try Tiny.pipeline(), log: { _ in })
        let (one, all) = (Saliency.count(run.masks).kept, Saliency.count(intersected.masks).kept)
        XCTAssertLessThan(all, one)
        XCTAssertGreaterThan(all, 0)
    }

    func testRunMovesOnlyMaskedEntriesAndResumeGivesIdenticalBits() throws {
        let config = Self.tinyConfig(iterations: 6)
        let twoConcepts = ErasureRequest(
            concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of cat"], anchor: ""),
                       Concept(name: "car", targetPrompts: ["car"], anchor: "")],
            retainPrompts: ["dog"])
        let straight = try Tiny.pipeline()
        let before = straight.unet.stateDict().mapValues { $0.copy() }
        let full = try ANT(config: config).erase(twoConcepts, pipeline: straight,
                                                 context: ErasureContext(output: Tiny.temporaryFolder("ant-straight")))
        for term in ["late", "early", "late_unconditional", "early_unconditional", "total"] {
            XCTAssertEqual(full.losses[term]?.count, 6, term)
        }
        var moved = 0
        for (name, p) in straight.unet.namedParameters() {
            let mask = try XCTUnwrap(full.masks[name])
            for i in 0..<p.count where p.pointer[i] != before[name]!.pointer[i] {
                XCTAssertEqual(mask.pointer[i], 1, "\(name)[\(i)] moved outside the mask")
                moved += 1
            }
        }
        XCTAssertGreaterThan(moved, 0)

        let folder = Tiny.temporaryFolder("ant-resumed")
        let partial = try ANT(config: config).erase(twoConcepts, pipeline: try Tiny.pipeline(),
                                                    context: ErasureContext(output: folder, stopAfter: 3))
        XCTAssertTrue(partial.stoppedEarly)
        let resumed = try Tiny.pipeline()
        let outcome = try ANT(config: config).erase(twoConcepts, pipeline: resumed, context: ErasureContext(output: folder, resume: true))
        XCTAssertEqual(outcome.steps, 6)
        XCTAssertEqual(outcome.losses["total"], full.losses["total"])
        let reference = straight.unet.stateDict()
        var differing: [String] = []
        for (name, p) in resumed.unet.namedParameters() where p.scalars != reference[name]!.scalars { differing.append(name) }
        XCTAssertEqual(differing, [])
    }

    /// The concept's score on the tiny model: how far its guidance direction at late states,
    /// ε(c) − ε(∅), still points along the original one (1: as θ₀; below 0: reversed).
    func guidanceAlignment(_ pipeline: StableDiffusionPipeline, reference: StableDiffusionPipeline, run: ANTRun) throws -> Float {
        var along: Float = 0, norm: Float = 0
        var g = RandomGenerator(seed: 77)
        for i in 0..<6 {
            let d = run.draw(from: [run.targetIndices[0][1]], generator: &g)
            let (_, late) = try run.states(d, seed: 99, stream: i, model: run.frozen)
            let t = run.schedule.timesteps[d.lateStep]
            let (c, u) = (epsilon(pipeline, "a photo of cat", late, t), epsilon(pipeline, "", late, t))
            let (c0, u0) = (epsilon(reference, "a photo of cat", late, t), epsilon(reference, "", late, t))
            for k in c.indices {
                along += (c[k] - u[k]) * (c0[k] - u0[k])
                norm += (c0[k] - u0[k]) * (c0[k] - u0[k])
            }
        }
        return along / norm
    }

    func testTrainingReversesTheConceptsLateGuidance() throws {
        var config = Self.tinyConfig(iterations: 30)
        config.saliencyRatio = 1
        config.learningRate = 3e-3
        let pipeline = try Tiny.pipeline(), reference = try Tiny.pipeline()
        let probe = try ANTRun(config: config, request: Self.request, pipeline: try Tiny.pipeline(), log: { _ in })
        XCTAssertEqual(try guidanceAlignment(pipeline, reference: reference, run: probe), 1, accuracy: 1e-5)
        _ = try ANT(config: config).erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
        XCTAssertLessThan(try guidanceAlignment(pipeline, reference: reference, run: probe), 0.5)
    }

    func testBadSettingsAndAnchorsGiveClearErrors() throws {
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        var config = ANTConfig()
        config.splitStep = 50
        XCTAssertTrue(message { try config.validate() }.contains("splitStep"))
        config = ANTConfig()
        config.saliencySeeds = []
        XCTAssertTrue(message { try config.validate() }.contains("saliency"))
        let anchored = ErasureRequest(concepts: [Concept(name: "cat", targetPrompts: ["cat"], anchor: "dog")], retainPrompts: [])
        XCTAssertTrue(message { _ = try ANT().erase(anchored, pipeline: try Tiny.pipeline(), context: ErasureContext(output: nil)) }
            .contains("no anchor"))
        XCTAssertEqual(try ErasureMethods.make("ant").name, "ant")
    }

    func testDefaultsAreTheOfficialConfigs() {
        let c = ANTConfig()
        XCTAssertEqual(c.iterations, 250)
        XCTAssertEqual(c.learningRate, 5e-4)
        XCTAssertEqual(c.eta, 1)
        XCTAssertEqual(c.alpha1, 1)
        XCTAssertEqual(c.alpha2, 0.5)
        XCTAssertEqual(c.samplingSteps, 50)
        XCTAssertEqual(c.splitStep, 7)
        XCTAssertEqual(c.samplingGuidance, 3)
        XCTAssertEqual(c.saliencyRatio, 0.5)
        XCTAssertEqual(c.saliencySeeds, [24, 42, 98, 403, 3407])
        XCTAssertEqual(c.saliencyIterations, 10)
        XCTAssertEqual(c.trainable, .full)
    }
}
