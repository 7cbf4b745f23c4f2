import Diffusion
@testable import Erasure
import Evaluation
import Foundation
import NN
import Tensor
import Testbed
import XCTest

/// A word-per-token FLUX text encoder: "<s>" and then one token per word, padded to 6
/// positions with zero states; each word's state is a fixed random vector seeded by its id, the
/// pooled vector the mean of the unpadded states. It shows its token ids, as EraseAnything needs.
final class WordFluxEncoder: FluxTokenPositions {
    let stateWidth = 8
    let pooledWidth = 8
    let length = 6

    static func id(_ word: String) -> Int {
        var hash: UInt64 = 1469598103934665603
        for byte in word.utf8 { hash = (hash ^ UInt64(byte)) &* 1099511628211 }
        return 2 + Int(hash % 10_000)
    }

    func words(_ text: String) -> [String] { text.lowercased().split(separator: " ").map(String.init) }

    func tokenIds(_ prompt: String) -> [Int] {
        let ids = [1] + words(prompt).prefix(length - 1).map(Self.id)
        return ids + Array(repeating: 0, count: length - ids.count)
    }

    func phraseTokenIds(_ phrase: String) -> [Int] { words(phrase).map(Self.id) }

    func encode(prompts: [String]) -> (states: Tensor, pooled: Tensor) {
        var states: [Float] = [], pooled: [Float] = []
        for prompt in prompts {
            var sum = [Float](repeating: 0, count: stateWidth), used: Float = 0
            for id in tokenIds(prompt) {
                guard id != 0 else { states += Array(repeating: 0, count: stateWidth); continue }
                var g = RandomGenerator(seed: UInt64(id))
                let v = g.normal([stateWidth]).scalars
                states += v
                for i in 0..<stateWidth { sum[i] += v[i] }
                used += 1
            }
            pooled += sum.map { $0 / used }
        }
        return (Tensor(shape: [prompts.count, length, stateWidth], scalars: states),
                Tensor(shape: [prompts.count, pooledWidth], scalars: pooled))
    }
}

enum TokenTinyFlux {
    /// The flow-erasure tests' tiny FLUX with two double blocks (the attention map is read from the last).
    static func config() -> FluxTransformer2DConfig { TinyFlux.config(doubleBlocks: 2) }

    /// A random tiny pixel-space FLUX pipeline (8 × 8 one-channel images), the same for a seed.
    static func pipeline(seed: UInt64 = 0) throws -> FluxPipeline {
        var generator = RandomGenerator(seed: seed)
        let transformer = try FluxTransformer2DModel(config: config(), generator: &generator)
        let scheduler = try FlowMatchEulerDiscreteScheduler(config: MiniFlux.schedulerConfig())
        let pipeline = try FluxPipeline(textEncoder: WordFluxEncoder(), transformer: transformer, vae: nil, scheduler: scheduler)
        pipeline.defaultSize = 8
        return pipeline
    }
}

final class EraseAnythingTests: XCTestCase {
    let request = ErasureRequest(
        concepts: [Concept(name: "sneaker", targetPrompts: ["a photo of a sneaker", "a photo of a trainer"], anchor: "")],
        retainPrompts: ["a photo of a bag", "a photo of a shirt", "a photo of a coat", "a photo of a dress"])

    func config(steps: Int) -> EraseAnythingConfig {
        var c = EraseAnythingConfig()
        c.steps = steps
        c.samplingSteps = 3
        c.instanceImages = 2
        c.checkpointEvery = 1
        return c
    }

    func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("eraseanything-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// Softmax-normalised random attention maps [B, H, S, S].
    func maps(_ shape: [Int], seed: UInt64) -> Tensor {
        var g = RandomGenerator(seed: seed)
        return g.normal(shape).softmax(axis: -1)
    }

    /// Central differences of the scalar `f` at every entry of `x`, against its autodiff gradient.
    func assertGradientMatchesFiniteDifferences(_ name: String, _ x: Tensor, step: Float = 1e-3, tolerance: Float = 2e-2,
                                                _ f: (Tensor) -> Tensor) {
        x.requiresGrad = true
        x.grad = nil
        f(x).backward()
        guard let analytic = x.grad else { return XCTFail("\(name): no gradient") }
        var worst: Float = 0
        for i in 0..<x.count {
            let saved = x.pointer[i]
            x.pointer[i] = saved + step
            let up = Double(noGrad { f(x).item })
            x.pointer[i] = saved - step
            let down = Double(noGrad { f(x).item })
            x.pointer[i] = saved
            let numeric = Float((up - down) / Double(2 * step))
            worst = max(worst, abs(numeric - analytic.pointer[i]) / max(1, abs(numeric)))
        }
        XCTAssertLessThan(worst, tolerance, "\(name): gradient differs from finite differences")
    }

    // MARK: Loss terms

    func testAttentionLossIsTheSumOfTheConceptColumnsNormsOverBatchAndHeads() {
        let a = maps([2, 3, 5, 5], seed: 1)
        let positions = [1, 3]
        var expected = 0.0
        for q in 0..<5 {
            for k in positions {
                var squares = 0.0
                for b in 0..<2 { for h in 0..<3 { squares += pow(Double(a.scalars[((b * 3 + h) * 5 + q) * 5 + k]), 2) } }
                expected += squares.squareRoot()
            }
        }
        XCTAssertEqual(Double(EraseAnything.attentionLoss(a, positions: positions).item), expected, accuracy: 1e-5)
    }

    func testAttentionLossGradientMatchesFiniteDifferences() {
        var g = RandomGenerator(seed: 2)
        let logits = g.normal([2, 2, 4, 4])
        assertGradientMatchesFiniteDifferences("attention loss", logits) {
            EraseAnything.attentionLoss($0.softmax(axis: -1), positions: [0, 2])
        }
    }

    func testConceptAttentionIsHeadZerosMeanColumn() {
        let a = maps([1, 2, 4, 4], seed: 3)
        let vector = EraseAnything.conceptAttention(a, positions: [1, 2])
        XCTAssertEqual(vector.shape, [1, 4])
        for q in 0..<4 {
            let expected = (a.scalars[q * 4 + 1] + a.scalars[q * 4 + 2]) / 2
            XCTAssertEqual(vector.scalars[q], expected, accuracy: 1e-7)
        }
    }

    /// The official steer loss by hand: cosine similarities of the synonym with the centre and the
    /// irrelevant vectors over τ, and the centre's log-probability among them.
    func testContrastiveLossIsTheCentresLogProbabilitySeenFromTheSynonym() {
        var g = RandomGenerator(seed: 4)
        let center = g.uniform([2, 6]), synonym = g.uniform([2, 6])
        let irrelevant = [g.uniform([2, 6]), g.uniform([2, 6]), g.uniform([2, 6])]
        let tau = 0.07
        func row(_ t: Tensor, _ r: Int) -> [Double] { (0..<6).map { Double(t.scalars[r * 6 + $0]) } }
        func cosine(_ a: [Double], _ b: [Double]) -> Double {
            zip(a, b).map(*).reduce(0, +) / (a.map { $0 * $0 }.reduce(0, +).squareRoot() * b.map { $0 * $0 }.reduce(0, +).squareRoot())
        }
        var expected = 0.0
        for r in 0..<2 {
            let logits = ([center] + irrelevant).map { cosine(row(synonym, r), row($0, r)) / tau }
            expected += logits[0] - log(logits.map { exp($0) }.reduce(0, +))
        }
        expected /= 2
        let loss = EraseAnything.contrastiveLoss(center: center, synonym: synonym, irrelevant: irrelevant, temperature: Float(tau))
        XCTAssertEqual(Double(loss.item), expected, accuracy: 1e-4)
        // The centre equal to the synonym and the irrelevant vectors orthogonal to it: the
        // centre takes nearly all the probability, the loss is near its maximum 0.
        let e = Tensor(shape: [1, 3], scalars: [1, 0, 0])
        let others = [Tensor(shape: [1, 3], scalars: [0, 1, 0]), Tensor(shape: [1, 3], scalars: [0, 0, 1])]
        XCTAssertEqual(EraseAnything.contrastiveLoss(center: e, synonym: e, irrelevant: others, temperature: 0.07).item, 0, accuracy: 1e-5)
    }

    func testContrastiveLossGradientMatchesFiniteDifferences() {
        var g = RandomGenerator(seed: 5)
        let synonym = g.uniform([1, 5]), irrelevant = [g.uniform([1, 5]), g.uniform([1, 5])]
        // Through the attention maps, as in training: the centre is head 0's mean concept column.
        let logits = g.normal([1, 2, 5, 5])
        assertGradientMatchesFiniteDifferences("contrastive loss", logits, tolerance: 3e-2) {
            EraseAnything.contrastiveLoss(center: EraseAnything.conceptAttention($0.softmax(axis: -1), positions: [1, 3]),
                                          synonym: synonym, irrelevant: irrelevant, temperature: 0.07)
        }
        let center = g.uniform([1, 5])
        assertGradientMatchesFiniteDifferences("contrastive loss (centre)", center, tolerance: 3e-2) {
            EraseAnything.contrastiveLoss(center: $0, synonym: synonym, irrelevant: irrelevant, temperature: 0.07)
        }
    }

    func testPhrasesAreTheConceptsWordsInEachPrompt() {
        let concept = Concept(name: "sneaker", targetPrompts: ["a photo of a sneaker", "a picture of a sneaker",
                                                               "a photo of a running shoe", "an image of an item",
                                                               "a photo of sneakers"], anchor: "")
        let phrases = EraseAnything.phrases(of: concept).map(\.phrase)
        XCTAssertEqual(phrases, ["sneaker", "sneaker", "running shoe", "image item", "sneakers"])
        let encoder = WordFluxEncoder()
        XCTAssertEqual(encoder.positions(of: "running shoe", in: "a photo of a running shoe"), [5])  // the 6th token is cut
        XCTAssertEqual(encoder.positions(of: "sneaker", in: "sneaker photo a"), [1])
    }

    /// The testbed's own requests under MiniLM's WordPiece (the mini-FLUX's encoder, 16 text
    /// positions): every target prompt of every class holds its concept phrase's tokens.
    func testEveryTestbedClassLocatesItsConceptInItsPromptsWithMiniLM() throws {
        let encoder: PooledSentenceEncoder
        do { encoder = try MiniFlux.textEncoder(assets: Assets()) } catch { throw XCTSkip("needs MiniLM (`score assets`): \(error)") }
        let prompts = try FashionPrompts.bundled()
        for c in prompts.classes {
            let request = try Workflows.request(concepts: [c.noun], synonyms: [], anchors: [], retain: nil, prompts: prompts)
            let phrases = EraseAnything.phrases(of: request.concepts[0])
            XCTAssertGreaterThan(Set(phrases.map(\.phrase)).count, 1, "\(c.noun) has synonyms: \(phrases.map(\.phrase))")
            for (prompt, phrase) in phrases {
                XCTAssertFalse(encoder.positions(of: phrase, in: prompt).isEmpty, "\(c.noun): '\(phrase)' in '\(prompt)'")
                XCTAssertFalse(phrase.contains("photo") || phrase.contains("picture") || phrase.contains("image"), "\(c.noun): '\(phrase)'")
            }
        }
    }

    /// One erasure and one preservation step at the official settings on the mini-FLUX's
    /// architecture (random weights, MiniLM, 32 × 32): a smoke run at real shapes whose time the
    /// log shows. Set SCORE_EA_SMOKE to run it.
    func testAPairRunsAtTheMiniFluxShapes() throws {
        guard ProcessInfo.processInfo.environment["SCORE_EA_SMOKE"] != nil else {
            throw XCTSkip("set SCORE_EA_SMOKE to run a pair on the mini-FLUX architecture")
        }
        let encoder: PooledSentenceEncoder
        do { encoder = try MiniFlux.textEncoder(assets: Assets()) } catch { throw XCTSkip("needs MiniLM (`score assets`): \(error)") }
        var g = RandomGenerator(seed: 0)
        let transformer = try FluxTransformer2DModel(config: MiniFlux.transformerConfig(), generator: &g)
        let pipeline = try FluxPipeline(textEncoder: encoder, transformer: transformer, vae: nil,
                                        scheduler: try FlowMatchEulerDiscreteScheduler(config: MiniFlux.schedulerConfig()))
        pipeline.defaultSize = 32
        let request = try Workflows.request(concepts: ["sneaker"], synonyms: [], anchors: [], retain: nil, prompts: try FashionPrompts.bundled())
        var c = EraseAnythingConfig()
        c.steps = 2
        c.instanceImages = 1
        let started = Date()
        let outcome = try EraseAnything(config: c).erase(request, pipeline: pipeline, context: ErasureContext(output: nil, log: { print($0) }))
        print(String(format: "EraseAnything: one pair on the mini-FLUX architecture in %.1f s (one instance image included); ", Date().timeIntervalSince(started))
              + "\(outcome.losses.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" })")
        XCTAssertEqual(outcome.losses.count, 4)
        XCTAssertTrue(outcome.losses.values.allSatisfy { $0.allSatisfy(\.isFinite) })
    }

    // MARK: Steps on a tiny model

    /// One erasure and one preservation step's terms, recomputed from the same draws by separate
    /// (unbatched) model calls and the loss formulas written out.
    func testStepLossesMatchADirectComputation() throws {
        let pipeline = try TokenTinyFlux.pipeline()
        let c = config(steps: 2)
        let run = try EraseAnythingRun(config: c, request: request, pipeline: pipeline)
        run.applyFactors()
        let start = run.generator
        let erasure = try run.erasureLosses(concept: 0)

        run.generator = start
        let prompt = try run.drawPrompt(concept: 0)
        let stop = run.index(c.samplingSteps)
        XCTAssertEqual(stop, run.pairStopStep)
        let conditioning = pipeline.encodePrompts([prompt.text])
        let x = try run.sample(FluxTransformer2DModel.packLatents(run.generator.normal(run.latentShape)),
                               conditioning: conditioning, steps: 0..<stop)
        let t = run.schedule.timesteps[stop]
        func v(_ tokens: Tensor, _ text: String) -> Tensor {
            noGrad { pipeline.velocity(tokens: tokens, height: 8, width: 8, timestep: t, conditioning: pipeline.encodePrompts([text])) }
        }
        let (vc, va) = (v(x, prompt.text), v(x, ""))
        var esd = 0.0
        for i in 0..<vc.count {
            let target = Double(va.scalars[i]) - Double(c.eta) * (Double(vc.scalars[i]) - Double(va.scalars[i]))
            esd += pow(Double(vc.scalars[i]) - target, 2)
        }
        esd /= Double(vc.count)
        let noised = run.noisedInstance(concept: 0, step: stop)
        var observed: Tensor?
        run.attention.probabilityObserver = { observed = $0 }
        _ = v(noised.input, prompt.text)
        run.attention.probabilityObserver = nil
        let maps = try XCTUnwrap(observed)
        XCTAssertEqual(maps.shape, [1, 2, 6 + 16, 6 + 16], "[B, heads, text + image tokens, same]")
        var attention = 0.0
        for q in 0..<22 { for k in prompt.positions { attention += (0..<2).map { h in pow(Double(maps.scalars[(h * 22 + q) * 22 + k]), 2) }.reduce(0, +).squareRoot() } }
        XCTAssertEqual(erasure.checked.map(\.0), ["esd", "attention"])
        XCTAssertEqual(Double(erasure.checked[0].1), esd, accuracy: 1e-4 * max(1, esd))
        XCTAssertEqual(Double(erasure.checked[1].1), attention, accuracy: 1e-4 * attention)
        XCTAssertEqual(Double(erasure.total.item), Double(c.lambdaESD) * esd + Double(c.lambdaAttention) * attention,
                       accuracy: 1e-4 * max(1, esd))

        // Preservation at the same stop step: the flow-matching term by hand.
        let before = run.generator
        let preservation = try run.preservationLosses(concept: 0)
        run.generator = before
        let second = try run.drawPrompt(concept: 0)
        let instance = run.noisedInstance(concept: 0, step: stop)
        let prediction = v(instance.input, second.text)
        var flow = 0.0
        for i in 0..<prediction.count { flow += pow(Double(prediction.scalars[i]) - Double(instance.velocity.scalars[i]), 2) }
        flow /= Double(prediction.count)
        XCTAssertEqual(preservation.checked.map(\.0), ["lora", "contrastive"])
        XCTAssertEqual(Double(preservation.checked[0].1), flow, accuracy: 1e-4 * max(1, flow))
        XCTAssertLessThanOrEqual(preservation.checked[1].1, 0, "a log-probability")
        XCTAssertGreaterThan(preservation.checked[1].1, -log(Float(4)) - 2 / 0.07, "bounded by the cosine range")
    }

    func testOnlyTheLoRAChangesAndTheFileHoldsIt() throws {
        let pipeline = try TokenTinyFlux.pipeline()
        let before = Dictionary(uniqueKeysWithValues: pipeline.transformer.namedParameters().map { ($0.name, $0.tensor.copy()) })
        let out = try temporaryFolder()
        let (outcome, lora) = try EraseAnything(config: config(steps: 4)).train(request, pipeline: pipeline,
                                                                               context: ErasureContext(output: out))
        XCTAssertEqual(outcome.steps, 4)
        XCTAssertEqual(outcome.losses["esd"]?.count, 2, "even steps erase")
        XCTAssertEqual(outcome.losses["contrastive"]?.count, 2, "odd steps preserve")
        XCTAssertEqual(outcome.trainableParameters, 4 * 8 * (16 + 16), "rank 8 on 2 × 2 projections of 16 → 16")
        let modules = try XCTUnwrap(lora.modules[.transformer])
        XCTAssertEqual(Set(modules.keys), Set((0..<2).flatMap { b in ["add_q_proj", "add_k_proj"].map { "transformer_blocks.\(b).attn.\($0)" } }))
        for (name, tensor) in pipeline.transformer.namedParameters() {
            let old = before[name]!
            if let factors = modules[String(name.dropLast(".weight".count))], name.hasSuffix(".weight") {
                XCTAssertNotEqual(tensor.scalars, old.scalars, "\(name) carries the LoRA")
                XCTAssertEqual(tensor.scalars, noGrad { old + factors.product() * factors.scale }.scalars, "\(name) = W₀ + (α/r)·B·A")
                XCTAssertEqual(factors.rank, 8)
                XCTAssertEqual(factors.alpha, 8)
            } else {
                XCTAssertEqual(tensor.scalars, old.scalars, "\(name) must stay bit for bit")
            }
        }
        // diffusers' FLUX LoRA key names, read back and merged into a fresh copy of the base.
        let file = out.appendingPathComponent(EraseAnything.loraFileName)
        let names = try TensorArchive(contentsOf: file).names
        XCTAssertTrue(names.contains("transformer.transformer_blocks.1.attn.add_k_proj.lora_B.weight"), "\(names.sorted().prefix(3))")
        let fresh = try TokenTinyFlux.pipeline()
        try fresh.merge([LoRAFile(path: file.path)])
        let merged = Dictionary(uniqueKeysWithValues: fresh.transformer.namedParameters().map { ($0.name, $0.tensor) })
        for (name, tensor) in pipeline.transformer.namedParameters() {
            XCTAssertEqual(merged[name]!.scalars, tensor.scalars, "\(name) after merging the written LoRA")
        }
    }

    func testAResumedRunEqualsAnUninterruptedOne() throws {
        let c = config(steps: 6)
        let straight = try EraseAnything(config: c).train(request, pipeline: TokenTinyFlux.pipeline(),
                                                          context: ErasureContext(output: try temporaryFolder()))
        let out = try temporaryFolder()
        // Stopped after step 3 (an erasure step's pair still open), then resumed.
        let first = try EraseAnything(config: c).train(request, pipeline: TokenTinyFlux.pipeline(),
                                                       context: ErasureContext(output: out, stopAfter: 3))
        XCTAssertTrue(first.outcome.stoppedEarly)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.appendingPathComponent(EraseAnything.loraFileName).path))
        let resumed = try EraseAnything(config: c).train(request, pipeline: TokenTinyFlux.pipeline(),
                                                         context: ErasureContext(output: out, resume: true))
        XCTAssertEqual(resumed.outcome.losses, straight.outcome.losses)
        for (path, factors) in straight.lora.modules[.transformer]! {
            let other = try XCTUnwrap(resumed.lora.modules[.transformer]?[path])
            XCTAssertEqual(other.down.scalars, factors.down.scalars, path)
            XCTAssertEqual(other.up.scalars, factors.up.scalars, path)
        }
    }

    /// On a tiny model the target prompt's velocity moves toward the anchor's (the ESD term's fixed
    /// point is v(c) = v(a) when both come from the model being trained). Erasure steps only
    /// (λ₃ = λ₄ = 0, the official loop's all-upper case): on a random model the flow-matching
    /// term's pull toward the instance images is far larger than the small text-dependent gap.
    func testTheTargetsVelocityMovesTowardTheAnchors() throws {
        let pipeline = try TokenTinyFlux.pipeline(seed: 1)
        let request = ErasureRequest(
            concepts: [Concept(name: "sneaker", targetPrompts: ["a photo of a sneaker"], anchor: "a photo of a bag")],
            retainPrompts: ["a photo of a shirt", "a photo of a coat", "a photo of a dress"])
        var g = RandomGenerator(seed: 9)
        let probes = (0..<4).map { _ in FluxTransformer2DModel.packLatents(g.normal([1, 1, 8, 8])) }
        func gap() -> Double {
            noGrad {
                probes.enumerated().map { i, x in
                    let t: Float = [900, 700, 500, 300][i]
                    let vc = pipeline.velocity(tokens: x, height: 8, width: 8, timestep: t, conditioning: pipeline.encodePrompts(["a photo of a sneaker"]))
                    let va = pipeline.velocity(tokens: x, height: 8, width: 8, timestep: t, conditioning: pipeline.encodePrompts(["a photo of a bag"]))
                    return Double((vc - va).square().mean().item)
                }.reduce(0, +)
            }
        }
        let before = gap()
        var c = config(steps: 30)
        c.learningRate = 1e-2
        (c.lambdaLoRA, c.lambdaContrastive) = (0, 0)
        _ = try EraseAnything(config: c).erase(request, pipeline: pipeline, context: ErasureContext(output: nil))
        let after = gap()
        XCTAssertLessThan(after, 0.5 * before, "‖v(sneaker) − v(bag)‖² \(before) → \(after)")
    }

    func testRequestsItCannotServeAreRefusedWithTheReason() throws {
        let noRetain = ErasureRequest(concepts: request.concepts, retainPrompts: [])
        XCTAssertThrowsError(try EraseAnything(config: config(steps: 2)).erase(noRetain, pipeline: TokenTinyFlux.pipeline(),
                                                                                  context: ErasureContext(output: nil))) {
            XCTAssertTrue("\($0)".contains("retain"), "\($0)")
        }
        XCTAssertThrowsError(try EraseAnything(config: config(steps: 2)).erase(request, pipeline: Tiny.pipeline(),
                                                                                  context: ErasureContext(output: nil))) {
            XCTAssertTrue("\($0)".contains("FLUX"), "\($0)")
        }
        let method = try ErasureMethods.make("eraseanything")
        XCTAssertEqual(method.name, "eraseanything")
        // Through the family-generic entry point on a FLUX pipeline.
        let outcome = try EraseAnything(config: config(steps: 2)).erase(request, model: TokenTinyFlux.pipeline(), context: ErasureContext(output: nil))
        XCTAssertEqual(outcome.steps, 2)
        var c = config(steps: 2)
        c.targetModules = ["to_qkv"]
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("to_qkv"), "\($0)") }
    }
}
