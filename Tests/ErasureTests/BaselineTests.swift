import Diffusion
@testable import Erasure
import Foundation
import NN
import Tensor
import XCTest

/// Like `WordHashTextEncoder`, but every prompt is wrapped in start and end tokens, as CLIP and
/// MiniLM wrap theirs (the `TextEncoder` contract UCE's token choice relies on).
final class WordHashEndTokenEncoder: TextEncoder {
    let hiddenSize = 8
    let length = 6

    /// The state of `token` (the same wherever it appears: this encoder has no context).
    static func vector(_ token: String) -> [Float] {
        var seed: UInt64 = 1469598103934665603
        for byte in token.utf8 { seed = (seed ^ UInt64(byte)) &* 1099511628211 }
        var g = RandomGenerator(seed: seed)
        return g.normal([8]).scalars
    }

    func encode(prompts: [String]) -> (hiddenStates: Tensor, attentionMask: Tensor) {
        var states: [Float] = [], mask: [Float] = []
        for prompt in prompts {
            let tokens = ["<s>"] + prompt.split(separator: " ").prefix(length - 2).map(String.init) + ["</s>"]
            for position in 0..<length {
                states += position < tokens.count ? Self.vector(tokens[position]) : Array(repeating: 0, count: hiddenSize)
                mask.append(position < tokens.count ? 1 : 0)
            }
        }
        return (Tensor(shape: [prompts.count, length, hiddenSize], scalars: states),
                Tensor(shape: [prompts.count, length], scalars: mask))
    }
}

/// ESD and UCE on tiny models and random matrices: seconds.
final class BaselineTests: XCTestCase {
    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of cat"], anchor: "")],
        retainPrompts: ["dog", "a photo of car"])

    static func endTokenPipeline() throws -> StableDiffusionPipeline {
        let base = try Tiny.pipeline()
        return try StableDiffusionPipeline(textEncoder: WordHashEndTokenEncoder(), unet: base.unet, vae: nil,
                                           scheduler: base.scheduler, passesAttentionMask: true)
    }

    static func tinyESD(iterations: Int = 4) -> ESDConfig {
        var c = ESDConfig()
        c.iterations = iterations
        c.learningRate = 1e-2
        c.samplingSteps = 4
        c.checkpointEvery = 2
        return c
    }

    static func randomVectors(_ count: Int, _ width: Int, _ g: inout RandomGenerator) -> [[Double]] {
        (0..<count).map { _ in g.normal([width]).scalars.map(Double.init) }
    }

    // MARK: Linear algebra

    func testCholeskySolvesPositiveDefiniteSystemsAndRejectsOthers() throws {
        var g = RandomGenerator(seed: 11)
        let n = 7
        let m = Matrix64(rows: n, columns: n, values: g.normal([n * n]).scalars.map(Double.init))
        var a = Matrix64.identity(n, scale: 0.1)
        for k in 0..<n {
            let column = (0..<n).map { m[$0, k] }
            a.addOuterProduct(column, column)
        }
        let x = (0..<n).map { Double($0) - 3.5 }
        let solved = try Cholesky(a).solve(a.times(x))
        for (u, v) in zip(solved, x) { XCTAssertEqual(u, v, accuracy: 1e-10) }

        XCTAssertThrowsError(try Cholesky(Matrix64(rows: 2, columns: 2, values: [1, 0, 0, -1]))) { error in
            XCTAssertEqual(error as? LinearAlgebraError, .notPositiveDefinite(pivot: 1, value: -1))
        }
        XCTAssertThrowsError(try Cholesky(Matrix64(rows: 2, columns: 2, values: [2, 1, 0, 2]))) { error in
            XCTAssertEqual(error as? LinearAlgebraError, .notSymmetric(row: 1, column: 0))
        }
    }

    // MARK: UCE

    /// The closed form against an independent solve of the same problem: each row of W is a
    /// weighted ridge regression, solved here by QR (modified Gram–Schmidt) of the stacked design
    /// [√e·cᵢᵀ; √p·cⱼᵀ; √λ·I] without ever forming the normal equations.
    func testClosedFormEqualsADirectLeastSquaresSolve() throws {
        var g = RandomGenerator(seed: 5)
        let (d, out) = (6, 4)
        let edits = Self.randomVectors(2, d, &g), guides = Self.randomVectors(2, d, &g), preserve = Self.randomVectors(3, d, &g)
        let (lambda, e, p) = (0.5, 1.5, 0.7)
        let w0 = Matrix64(rows: out, columns: d, values: g.normal([out * d]).scalars.map(Double.init))
        let w = try UCEClosedForm(edits: edits, guides: guides, preserve: preserve, lambda: lambda, eraseScale: e,
                                  preserveScale: p).apply(to: w0)

        // Design rows and, per output row r, targets.
        var design: [[Double]] = edits.map { $0.map { $0 * e.squareRoot() } } + preserve.map { $0.map { $0 * p.squareRoot() } }
        for k in 0..<d { design.append((0..<d).map { $0 == k ? lambda.squareRoot() : 0 }) }
        for r in 0..<out {
            var y = guides.map { w0.times($0)[r] * e.squareRoot() } + preserve.map { w0.times($0)[r] * p.squareRoot() }
            y += (0..<d).map { w0[r, $0] * lambda.squareRoot() }
            let expected = leastSquaresByQR(design: design, target: y)
            for k in 0..<d { XCTAssertEqual(w[r, k], expected[k], accuracy: 1e-9, "W[\(r), \(k)]") }
        }

        // And the objective's gradient vanishes at W:
        // e·Σ(Wcᵢ − W₀gᵢ)cᵢᵀ + p·Σ(Wcⱼ − W₀cⱼ)cⱼᵀ + λ(W − W₀) = 0.
        var gradient = Matrix64(rows: out, columns: d, values: zip(w.values, w0.values).map { lambda * ($0 - $1) })
        for (c, guide) in zip(edits, guides) { gradient.addOuterProduct(zip(w.times(c), w0.times(guide)).map { $0 - $1 }, c, scale: e) }
        for c in preserve { gradient.addOuterProduct(zip(w.times(c), w0.times(c)).map { $0 - $1 }, c, scale: p) }
        XCTAssertLessThan(gradient.values.map(abs).max()!, 1e-10)
    }

    /// argmin‖X w − y‖ by modified Gram–Schmidt QR of X (rows × columns, full column rank).
    private func leastSquaresByQR(design x: [[Double]], target y: [Double]) -> [Double] {
        let (m, n) = (x.count, x[0].count)
        var q = (0..<n).map { k in (0..<m).map { x[$0][k] } }   // columns
        var r = Array(repeating: Array(repeating: 0.0, count: n), count: n)
        for k in 0..<n {
            for j in 0..<k {
                let dot = zip(q[j], q[k]).reduce(0) { $0 + $1.0 * $1.1 }
                r[j][k] = dot
                for i in 0..<m { q[k][i] -= dot * q[j][i] }
            }
            let norm = q[k].reduce(0) { $0 + $1 * $1 }.squareRoot()
            r[k][k] = norm
            for i in 0..<m { q[k][i] /= norm }
        }
        let qty = (0..<n).map { k in zip(q[k], y).reduce(0) { $0 + $1.0 * $1.1 } }
        var w = Array(repeating: 0.0, count: n)
        for k in stride(from: n - 1, through: 0, by: -1) {
            var sum = qty[k]
            for j in (k + 1)..<max(k + 1, n) { sum -= r[k][j] * w[j] }
            w[k] = sum / r[k][k]
        }
        return w
    }

    func testTokenEmbeddingIsTheLastTokenBeforeTheEndToken() throws {
        let pipeline = try Self.endTokenPipeline()
        let embeddings = UCE.tokenEmbeddings(of: ["a photo of cat", "dog", ""], pipeline: pipeline)
        XCTAssertEqual(embeddings["a photo of cat"], WordHashEndTokenEncoder.vector("cat").map(Double.init))
        XCTAssertEqual(embeddings["dog"], WordHashEndTokenEncoder.vector("dog").map(Double.init))
        XCTAssertEqual(embeddings[""], WordHashEndTokenEncoder.vector("<s>").map(Double.init), "\"\" is its start token, as in the official code")
    }

    /// Relative change of the K/V outputs W·c of `text`'s embedding over every edited weight (the largest).
    private func drift(of text: String, before: [String: Tensor], after pipeline: StableDiffusionPipeline,
                       towards guide: String? = nil) -> Double {
        let c = WordHashEndTokenEncoder.vector(text).map(Double.init)
        let target = guide.map { WordHashEndTokenEncoder.vector($0).map(Double.init) }
        var worst = 0.0
        for (name, p) in pipeline.unet.namedParameters() where UCE.edits(name) {
            let w0 = Matrix64(rows: p.shape[0], columns: p.shape[1], values: before[name]!.scalars.map(Double.init))
            let w = Matrix64(rows: p.shape[0], columns: p.shape[1], values: p.scalars.map(Double.init))
            let reference = w0.times(target ?? c)
            let norm = { (x: [Double]) in x.reduce(0) { $0 + $1 * $1 }.squareRoot() }
            let relative = norm(zip(w.times(c), reference).map { $0 - $1 })
                / (target == nil ? norm(reference) : norm(zip(w0.times(c), reference).map { $0 - $1 }))
            worst = max(worst, relative)
        }
        return worst
    }

    func testLargePreserveScaleKeepsPreservedKeysAndValues() throws {
        func run(preserveScale: Double) throws -> (StableDiffusionPipeline, [String: Tensor]) {
            let pipeline = try Self.endTokenPipeline()
            let before = pipeline.unet.stateDict().mapValues { $0.copy() }
            var config = UCEConfig()
            config.preserveScale = preserveScale
            config.eraseScale = 10
            _ = try UCE(config: config).erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
            return (pipeline, before)
        }
        let (kept, keptBefore) = try run(preserveScale: 1e5)
        let (free, freeBefore) = try run(preserveScale: 0)
        for text in ["dog", "car"] {
            XCTAssertLessThan(drift(of: text, before: keptBefore, after: kept), 1e-4, "'\(text)' K/V moved despite preserve scale 1e5")
            XCTAssertGreaterThan(drift(of: text, before: freeBefore, after: free), 1e-2, "without preservation '\(text)' should move")
        }
        // The erased concept's K/V went most of the way to the guide's ("" → the start token).
        XCTAssertLessThan(drift(of: "cat", before: keptBefore, after: kept, towards: "<s>"), 0.2)
    }

    func testUCEEditsOnlyCrossAttentionKeysAndValues() throws {
        let pipeline = try Self.endTokenPipeline()
        let before = pipeline.unet.stateDict().mapValues { $0.copy() }
        let outcome = try UCE().erase(Self.request, pipeline: pipeline, context: ErasureContext(output: nil))
        var changed: Set<String> = [], edited: Set<String> = [], editedEntries = 0
        for (name, p) in pipeline.unet.namedParameters() {
            if p.scalars != before[name]!.scalars { changed.insert(name) }
            if name.contains("attn2.to_k.weight") || name.contains("attn2.to_v.weight") {
                edited.insert(name)
                editedEntries += p.count
            }
        }
        XCTAssertFalse(edited.isEmpty)
        XCTAssertEqual(changed, edited)
        XCTAssertEqual(outcome.steps, 0)
        XCTAssertTrue(outcome.losses.isEmpty)
        XCTAssertEqual(outcome.trainableParameters, editedEntries)
    }

    // MARK: ESD

    func testESDTargetIsNegativeGuidanceFromTheFrozenModel() throws {
        let pipeline = try Tiny.pipeline()
        let reference = try Tiny.pipeline()   // the same weights: θ₀, kept apart from the run
        let run = try ESDRun(config: Self.tinyESD(), request: Self.request, pipeline: pipeline)
        // As if training had moved the model: the target must still come from θ₀.
        for (_, p) in pipeline.unet.namedParameters() { for i in 0..<p.count { p.pointer[i] += 0.05 } }

        var g = RandomGenerator(seed: 9)
        let z = g.normal([2, 1, 8, 8])
        let prompt = try XCTUnwrap(run.table.index(of: "a photo of cat"))
        let target = run.target(latents: z, timestep: 601, prompt: prompt)

        func epsilon(_ text: String) -> [Float] {
            let (states, mask) = reference.encodePrompts([text, text])
            return noGrad { reference.predictNoise(latents: z, timestep: 601, states: states, mask: mask).scalars }
        }
        let (conditional, unconditional) = (epsilon("a photo of cat"), epsilon(""))
        XCTAssertNotEqual(conditional, unconditional)
        XCTAssertEqual(target.shape, z.shape)
        for i in 0..<target.count {
            // The official esd_sd.py target at its default --negative_guidance 2, written on ε₀(c).
            let official = conditional[i] - 2 * (conditional[i] - unconditional[i])
            XCTAssertEqual(target.scalars[i], official, accuracy: 1e-5, "entry \(i)")
        }
    }

    func testESDTrainableSetsFollowTheOfficialScript() throws {
        let unet = try Tiny.pipeline().unet
        let all = Set(unet.namedParameters().map(\.name))
        let x = trainableNames(unet, method: .esdX, family: .unet)
        let u = trainableNames(unet, method: .esdU, family: .unet)
        let everything = trainableNames(unet, method: .esdAll, family: .unet)
        let strict = trainableNames(unet, method: .esdXStrict, family: .unet)
        XCTAssertFalse(x.isEmpty)
        XCTAssertTrue(x.allSatisfy { $0.contains("attn2.") })
        XCTAssertEqual(x, all.filter { $0.contains("attn2.") }, "attn2 holds only linear layers")
        XCTAssertTrue(u.allSatisfy { !$0.contains("attn2.") })
        XCTAssertTrue(u.contains("conv_in.weight"))
        XCTAssertEqual(strict, all.filter { $0.contains("attn2.to_k.") || $0.contains("attn2.to_v.") })
        XCTAssertEqual(everything, x.union(u))
        // Only linear and convolution layers train: the normalisation layers stay.
        let left = all.subtracting(everything)
        XCTAssertFalse(left.isEmpty)
        XCTAssertTrue(left.allSatisfy { $0.contains("norm") }, "\(left.sorted())")
    }

    func testESDXChangesOnlyCrossAttention() throws {
        let pipeline = try Tiny.pipeline()
        let before = pipeline.unet.stateDict().mapValues { $0.copy() }
        let outcome = try ESD(config: Self.tinyESD(iterations: 3)).erase(Self.request, pipeline: pipeline,
                                                                          context: ErasureContext(output: nil))
        XCTAssertEqual(outcome.steps, 3)
        XCTAssertEqual(outcome.losses["erase"]?.count, 3)
        XCTAssertTrue(outcome.losses["erase"]!.allSatisfy { $0.isFinite && $0 > 0 })
        var changed: [String] = []
        for (name, p) in pipeline.unet.namedParameters() where p.scalars != before[name]!.scalars { changed.append(name) }
        XCTAssertFalse(changed.isEmpty)
        XCTAssertEqual(changed.filter { !$0.contains("attn2.") }, [])
        let attn2 = pipeline.unet.namedParameters().filter { $0.name.contains("attn2.") }
        XCTAssertEqual(outcome.trainableParameters, attn2.reduce(0) { $0 + $1.tensor.count })
    }

    func testESDResumeAfterAStopGivesIdenticalBits() throws {
        var config = Self.tinyESD(iterations: 6)
        config.samplingModel = .trained   // xₜ then depends on the weights too
        let twoConcepts = ErasureRequest(
            concepts: [Concept(name: "cat", targetPrompts: ["cat", "a photo of cat"], anchor: ""),
                       Concept(name: "car", targetPrompts: ["car"], anchor: "")],
            retainPrompts: ["dog"])
        let straight = try Tiny.pipeline()
        let full = try ESD(config: config).erase(twoConcepts, pipeline: straight,
                                                 context: ErasureContext(output: Tiny.temporaryFolder("esd-straight")))

        let folder = Tiny.temporaryFolder("esd-resumed")
        let partial = try ESD(config: config).erase(twoConcepts, pipeline: try Tiny.pipeline(),
                                                    context: ErasureContext(output: folder, stopAfter: 3))
        XCTAssertTrue(partial.stoppedEarly)
        XCTAssertEqual(partial.steps, 3)
        let resumed = try Tiny.pipeline()
        let outcome = try ESD(config: config).erase(twoConcepts, pipeline: resumed,
                                                    context: ErasureContext(output: folder, resume: true))
        XCTAssertEqual(outcome.steps, 6)
        XCTAssertEqual(outcome.losses["erase"], full.losses["erase"])
        XCTAssertEqual(full.earlierSeconds, 0)
        XCTAssertGreaterThan(outcome.earlierSeconds, 0, "the stopped piece's time, read from the checkpoint")
        let reference = straight.unet.stateDict()
        var differing: [String] = []
        for (name, p) in resumed.unet.namedParameters() where p.scalars != reference[name]!.scalars { differing.append(name) }
        XCTAssertEqual(differing, [])

        var other = config
        other.eta = 2
        XCTAssertThrowsError(try ESD(config: other).erase(twoConcepts, pipeline: try Tiny.pipeline(),
                                                          context: ErasureContext(output: folder, resume: true))) {
            XCTAssertTrue("\($0)".contains("different config"), "\($0)")
        }
    }

    func testESDStopsOnANonFiniteLoss() throws {
        let pipeline = try Tiny.pipeline()
        pipeline.unet.conv_out.weight.pointer[0] = .nan
        var config = Self.tinyESD()
        config.samplingSteps = 1   // xₜ is the initial noise: the loss, not the sampling, meets the NaN
        XCTAssertThrowsError(try ESD(config: config).erase(Self.request, pipeline: pipeline,
                                                                   context: ErasureContext(output: nil))) { error in
            guard case let ErasureError.nonFinite(term, step, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(term, "erase")
            XCTAssertEqual(step, 1)
        }
    }

    // MARK: Configuration

    func testBadBaselineSettingsGiveClearErrors() throws {
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        var esd = ESDConfig()
        esd.iterations = 0
        XCTAssertTrue(message { try esd.validate() }.contains("iterations must be at least 1"))
        esd = ESDConfig()
        esd.learningRate = 0
        XCTAssertTrue(message { try esd.validate() }.contains("learningRate must be positive"))
        esd = ESDConfig()
        esd.eta = -.infinity
        XCTAssertTrue(message { try esd.validate() }.contains("eta"))
        esd = ESDConfig()
        esd.samplingSteps = 0
        XCTAssertTrue(message { try esd.validate() }.contains("samplingSteps"))
        XCTAssertNoThrow(try ESDConfig().validate())

        var uce = UCEConfig()
        uce.lambda = 0
        XCTAssertTrue(message { try uce.validate() }.contains("lambda must be positive"))
        uce = UCEConfig()
        uce.eraseScale = -1
        XCTAssertTrue(message { try uce.validate() }.contains("eraseScale"))
        uce = UCEConfig()
        uce.preserveScale = .nan
        XCTAssertTrue(message { try uce.validate() }.contains("preserveScale"))
        XCTAssertNoThrow(try UCEConfig().validate())

        let anchored = ErasureRequest(concepts: [Concept(name: "cat", targetPrompts: ["cat"], anchor: "dog")], retainPrompts: [])
        XCTAssertTrue(message { _ = try ESD(config: Self.tinyESD()).erase(anchored, pipeline: try Tiny.pipeline(),
                                                                         context: ErasureContext(output: nil)) }
            .contains("ESD has no anchor"))
        uce = UCEConfig()
        uce.guide = "Cat"
        XCTAssertTrue(message { _ = try UCE(config: uce).erase(Self.request, pipeline: try Self.endTokenPipeline(),
                                                              context: ErasureContext(output: nil)) }
            .contains("--uce-guide 'Cat' is the concept 'cat'"))
        esd = ESDConfig()
        esd.iterations = -1
        XCTAssertTrue(message { _ = try ESD(config: esd).erase(Self.request, pipeline: try Tiny.pipeline(),
                                                              context: ErasureContext(output: nil)) }
            .contains("iterations"))

        XCTAssertEqual(try ErasureMethods.make("score").name, "score")
        XCTAssertEqual(try ErasureMethods.make("esd").name, "esd")
        XCTAssertEqual(try ErasureMethods.make("uce").name, "uce")
        XCTAssertTrue(message { _ = try ErasureMethods.make("esd-x") }.contains("available: score, esd, uce"))
    }

    func testDefaultsAreTheOfficialScripts() {
        let esd = ESDConfig()
        XCTAssertEqual(esd.iterations, 200)
        XCTAssertEqual(esd.learningRate, 5e-5)
        // The official --negative_guidance 2 on ε₀(c): η = 1 on ε₀(∅).
        XCTAssertEqual(esd.eta, 1)
        XCTAssertEqual(esd.batchSize, 1)
        XCTAssertEqual(esd.samplingSteps, 50)
        XCTAssertEqual(esd.samplingGuidance, 3)
        XCTAssertEqual(esd.trainMethod, .esdX)
        let uce = UCEConfig()
        XCTAssertEqual(uce.lambda, 0.5)
        XCTAssertEqual(uce.eraseScale, 1)
        XCTAssertEqual(uce.preserveScale, 1)
        XCTAssertNil(uce.guide)
    }
}
