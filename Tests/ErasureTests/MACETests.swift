import Diffusion
@testable import Erasure
import Foundation
import NN
import Tensor
import XCTest

/// The tiny pixel-space pipeline with a tiny BERT as its text encoder (MACE and AdvUnlearn reach
/// below the prompts: token ids, word embeddings, encoder layers).
enum TinyBert {
    static let vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "photo", "of", "the", "cat", "dog",
                             "car", "drawing", "picture", "tree", "house"]

    static func pipeline(seed: UInt64 = 0) throws -> StableDiffusionPipeline {
        let folder = Tiny.temporaryFolder("tiny-bert")
        let url = folder.appendingPathComponent("vocab.txt")
        try vocabulary.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
        let tokenizer = try WordPieceTokenizer(vocabularyURL: url)
        var generator = RandomGenerator(seed: seed &+ 100)
        let model = BertModel(config: BertConfig(vocabSize: vocabulary.count, hiddenSize: 8, numHiddenLayers: 1, numAttentionHeads: 2,
                                                 intermediateSize: 16, maxPositionEmbeddings: 16),
                              generator: &generator)
        let encoder = try BertTextEncoder(model: model, tokenizer: tokenizer)
        encoder.zeroPaddedStates = true
        let tiny = try Tiny.pipeline(seed: seed)
        return try StableDiffusionPipeline(textEncoder: encoder, unet: tiny.unet, vae: nil, scheduler: tiny.scheduler,
                                           passesAttentionMask: true)
    }

    static func parameters(_ module: Module) -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: module.namedParameters().map { ($0.name, $0.tensor.scalars) })
    }
}

/// MACE on the tiny model: the closed form against a direct solve, the official token matching,
/// the attention loss against a direct computation, the LoRA chain rule against finite
/// differences, resume and effect.
final class MACETests: XCTestCase {
    static let request = ErasureRequest(
        concepts: [Concept(name: "cat", targetPrompts: ["a photo of the cat", "a drawing of a cat", "cat"], anchor: "dog")],
        retainPrompts: ["a photo of a tree", "a house"])

    static func tinyConfig(iterations: Int = 4) -> MACEConfig {
        var c = MACEConfig()
        c.iterations = iterations
        c.learningRate = 1e-2
        c.trainingImages = 2
        c.imageSteps = 4
        c.imageGuidance = 3
        c.checkpointEvery = 2
        c.lambda = 1
        c.trainPreserveScale = 0.5
        c.fusePreserveScale = 0.5
        // The tiny model's samples are noise: every pixel passes any small threshold or none; keep
        // a real mask by a threshold in the middle.
        c.maskThreshold = 0.5
        return c
    }

    func testClosedFormIsTheRegularisedLeastSquaresSolution() throws {
        var g = RandomGenerator(seed: 5)
        let (d, out, n) = (6, 4, 5)
        let contexts = (0..<n).map { _ in g.normal([d]).scalars.map(Double.init) }
        let values = (0..<n).map { _ in g.normal([out]).scalars.map(Double.init) }
        let scales: [Double] = [1, 1, 2, 0.5, 0]
        let base = Matrix64(rows: out, columns: d, values: g.normal([out * d]).scalars.map(Double.init))
        let lambda = 0.7
        let w = try RidgeEdit.mace(contexts: contexts, scales: scales, lambda: lambda).solve(base: base, values: values)
        // Direct: each row solves the normal equations (Σ sᵢcᵢcᵢᵀ + λI) w = Σ sᵢ vᵢ[r] cᵢ + λ base[r],
        // here by Gaussian elimination with partial pivoting.
        for r in 0..<out {
            var a = (0..<d).map { i in (0..<d).map { j in (i == j ? lambda : 0) + zip(contexts, scales).reduce(0) { $0 + $1.1 * $1.0[i] * $1.0[j] } } }
            var b = (0..<d).map { i in lambda * base[r, i] + (0..<n).reduce(0) { $0 + scales[$1] * values[$1][r] * contexts[$1][i] } }
            for col in 0..<d {
                let pivot = (col..<d).max { abs(a[$0][col]) < abs(a[$1][col]) }!
                a.swapAt(col, pivot); b.swapAt(col, pivot)
                for row in (col + 1)..<d {
                    let f = a[row][col] / a[col][col]
                    for k in col..<d { a[row][k] -= f * a[col][k] }
                    b[row] -= f * b[col]
                }
            }
            var x = [Double](repeating: 0, count: d)
            for i in stride(from: d - 1, through: 0, by: -1) {
                x[i] = (b[i] - ((i + 1)..<d).reduce(0) { $0 + a[i][$1] * x[$1] }) / a[i][i]
            }
            for i in 0..<d { XCTAssertEqual(w[r, i], x[i], accuracy: 1e-9) }
        }
        // A state with scale 0 does not count: its value may be anything.
        var changed = values
        changed[4] = changed[4].map { $0 + 100 }
        XCTAssertEqual(try RidgeEdit.mace(contexts: contexts, scales: scales, lambda: lambda).solve(base: base, values: changed), w)
    }

    func testMatchingPositionsAreTheOfficialOnes() {
        // "a photo of a cat" → "a photo of a dog": everything but the concept, as find_matching_indices.
        let swapped = MACE.matchingPositions([101, 1, 2, 3, 1, 9, 102], [101, 1, 2, 3, 1, 8, 102], paddedLength: nil)
        XCTAssertEqual(swapped.old, [0, 1, 2, 3, 4, 6])
        XCTAssertEqual(swapped.new, [0, 1, 2, 3, 4, 6])
        // To "" (shorter), with CLIP's padding: the official extension over the remaining positions.
        let dropped = MACE.matchingPositions([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 6], paddedLength: 10)
        XCTAssertEqual(dropped.old, [0, 1, 2, 3, 4, 6, 7, 8, 9])
        XCTAssertEqual(dropped.new, [0, 1, 2, 3, 4, 5, 6, 7, 8])
        // A longer anchor ("cat" → "house cat").
        let longer = MACE.matchingPositions([0, 5, 6, 9], [0, 5, 6, 7, 8, 9], paddedLength: 8)
        XCTAssertEqual(longer.old, [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(longer.new, [0, 1, 2, 5, 6, 7])
        XCTAssertEqual(MACE.replacing(["cat"], in: "a photo of the Cat", with: "dog"), "a photo of the dog")
    }

    /// A concept worded several ways (the testbed's trouser: its name, its noun and a synonym, each
    /// bare and in a template): every prompt is named by its own phrase, as whole words.
    func testEachPromptIsNamedByItsOwnPhrase() throws {
        let trouser = Concept(name: "trouser", targetPrompts: ["trouser", "a photo of a trouser", "pair of trousers",
                                                               "a photo of a pair of trousers", "pair of pants", "a photo of a pair of pants"],
                              anchor: "")
        XCTAssertEqual(MACE.phrases(of: trouser), ["pair of trousers", "pair of pants", "trouser"])
        XCTAssertEqual(try MACE.trainingPrompts(of: trouser), trouser.targetPrompts)
        XCTAssertEqual(MACE.replacing(MACE.phrases(of: trouser), in: "a photo of a pair of trousers", with: ""), "a photo of a ")
        XCTAssertEqual(MACE.replacing(MACE.phrases(of: trouser), in: "a photo of a pair of pants", with: "dog"), "a photo of a dog")
        XCTAssertEqual(MACE.replacing(MACE.phrases(of: trouser), in: "trouser", with: "dog"), "dog")
        // Whole words first; a phrase inside a longer word only where nothing else names the concept.
        XCTAssertNil(MACE.wordRange(of: "cat", in: "a category of cats"))
        XCTAssertEqual(MACE.replacing(["cat"], in: "two cats", with: "dog"), "two dogs")
        XCTAssertThrowsError(try MACE.trainingPrompts(of: Concept(name: "cat", targetPrompts: ["a dog"], anchor: ""))) { error in
            XCTAssertTrue("\(error)".contains("'cat'"), "\(error)")
        }
    }

    func testObjectMaskAndItsNearestResize() {
        // A dark 4×4 image with a bright 2×2 block: the block is the object.
        var pixels = [Float](repeating: -1, count: 16)
        for k in [5, 6, 9, 10] { pixels[k] = 0.6 }
        let mask = MACE.objectMask(Tensor(shape: [1, 4, 4], scalars: pixels), threshold: 0.1)
        XCTAssertEqual(mask, [0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0])
        XCTAssertEqual(MACE.resize(mask, height: 4, width: 4, rows: 2, columns: 2), [0, 0, 0, 1])
        // Blank: all of it.
        XCTAssertEqual(MACE.objectMask(Tensor(shape: [1, 2, 2], scalars: [0, 0, 0, 0]), threshold: 0.1), [1, 1, 1, 1])
        let p = MACE.importance(count: 1000)
        XCTAssertEqual(p.reduce(0, +), 1, accuracy: 1e-9)
        XCTAssertGreaterThan(p[300], 100 * p[50])
        XCTAssertGreaterThan(p[300], 100 * p[700])
    }

    func makeRun(_ pipeline: StableDiffusionPipeline, config: MACEConfig) throws -> MACERun {
        let access = try EncoderAccess(pipeline.textEncoder)
        let layers = MACELayers(pipeline.unet)
        let prompts = try Self.request.concepts.map { try MACE.trainingPrompts(of: $0) }
        let data = try MACEData(config: config, prompts: prompts, pipeline: pipeline)
        return try MACERun(config: config, request: Self.request, pipeline: pipeline, prompts: prompts, data: data, layers: layers,
                           refined: layers.weights.map { $0.tensor.detachedCopy() }, access: access)
    }

    func testAttentionLossIsTheDirectComputation() throws {
        let pipeline = try TinyBert.pipeline()
        let run = try makeRun(pipeline, config: Self.tinyConfig())
        XCTAssertEqual(try MACE.trainingPrompts(of: Self.request.concepts[0]).count, 3)
        // Token flags: "cat" and [SEP] in "a drawing of a cat".
        XCTAssertEqual(run.positions[0][1].prefix(7), [0, 0, 0, 0, 0, 1, 1])

        var captured: [[Float]] = [], shapes: [[Int]] = []
        for (_, attention) in run.layers.attentions {
            let own = attention.probabilityObserver
            attention.probabilityObserver = { p in own?(p); captured.append(p.scalars); shapes.append(p.shape) }
        }
        let d = run.draw(concept: 0)
        let loss = try run.attentionLoss(concept: 0, d).item
        XCTAssertFalse(captured.isEmpty)
        var direct: Float = 0
        let (mask, tokens) = (run.masks[0][d.image], run.positions[0][d.prompt])
        for (p, shape) in zip(captured, shapes) {
            let (heads, n, m) = (shape[1], shape[2], shape[3])
            let side = Int(Double(n).squareRoot())
            let pixels = MACE.resize(mask, height: run.imageSize.height, width: run.imageSize.width, rows: side, columns: side)
            var sum: Float = 0
            for h in 0..<heads { for i in 0..<n { var row: Float = 0; for j in 0..<m {
                let v = p[(h * n + i) * m + j]
                row += v
                if pixels[i] > 0.5, tokens[j] == 1 { sum += v * v }
            }
            XCTAssertEqual(row, 1, accuracy: 1e-5) } }
            if pixels.contains(1) { direct += sum.squareRoot() }
        }
        XCTAssertEqual(loss, direct, accuracy: 1e-5 * max(1, direct))
    }

    func testLoRAChainRuleMatchesFiniteDifferences() throws {
        let pipeline = try TinyBert.pipeline()
        var config = Self.tinyConfig()
        config.maxGradNorm = 0
        let run = try makeRun(pipeline, config: config)
        var g = RandomGenerator(seed: 9)
        for adapter in run.adapters[0] { adapter.up.assign(g.normal(adapter.up.shape, std: 0.3)) }
        let d = run.draw(concept: 0)
        func loss() throws -> Float {
            run.applyFactors(concept: 0)
            return try noGrad { try run.attentionLoss(concept: 0, d).item }
        }
        run.applyFactors(concept: 0)
        let value = try run.attentionLoss(concept: 0, d)
        value.backward()
        run.currentConcept = 0
        run.beforeUpdate()
        var checked = 0
        for layer in [0, run.adapters[0].count - 2] {
            for tensor in [run.adapters[0][layer].down, run.adapters[0][layer].up] {
                let analytic = try XCTUnwrap(tensor.grad).scalars
                let index = analytic.indices.max { abs(analytic[$0]) < abs(analytic[$1]) }!
                let h: Float = 1e-2
                let saved = tensor.pointer[index]
                tensor.pointer[index] = saved + h
                let plus = try loss()
                tensor.pointer[index] = saved - h
                let minus = try loss()
                tensor.pointer[index] = saved
                let numeric = (plus - minus) / (2 * h)
                XCTAssertEqual(analytic[index], numeric, accuracy: 0.03 * abs(numeric) + 1e-4, "layer \(layer) \(tensor.shape)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 4)
    }

    func testResumeGivesIdenticalBitsAndTheLossFalls() throws {
        let config = Self.tinyConfig(iterations: 6)
        let twoConcepts = ErasureRequest(
            concepts: [Concept(name: "cat", targetPrompts: ["a photo of the cat", "cat"], anchor: "dog"),
                       Concept(name: "car", targetPrompts: ["a drawing of a car"], anchor: "")],
            retainPrompts: ["a house"])
        let straight = try TinyBert.pipeline()
        let before = TinyBert.parameters(straight.unet)
        let full = try MACE(config: config).erase(twoConcepts, pipeline: straight, context: ErasureContext(output: Tiny.temporaryFolder("mace-straight")))
        XCTAssertEqual(full.losses["attention"]?.count, 12)
        XCTAssertEqual(full.losses["concept"], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
        let after = TinyBert.parameters(straight.unet)
        let changed = after.keys.filter { after[$0] != before[$0] }.sorted()
        XCTAssertEqual(changed, MACELayers(straight.unet).weights.map(\.name).sorted())

        let folder = Tiny.temporaryFolder("mace-resumed")
        let partial = try MACE(config: config).erase(twoConcepts, pipeline: try TinyBert.pipeline(), context: ErasureContext(output: folder, stopAfter: 7))
        XCTAssertTrue(partial.stoppedEarly)
        let resumed = try TinyBert.pipeline()
        let outcome = try MACE(config: config).erase(twoConcepts, pipeline: resumed, context: ErasureContext(output: folder, resume: true))
        XCTAssertEqual(outcome.losses["attention"], full.losses["attention"])
        XCTAssertEqual(TinyBert.parameters(resumed.unet), after)
    }

    func testTrainingLowersTheConceptsAttentionInsideTheMask() throws {
        let pipeline = try TinyBert.pipeline()
        var config = Self.tinyConfig(iterations: 25)
        config.learningRate = 5e-2
        let run = try makeRun(pipeline, config: config)
        var draws: [MACERun.Draw] = []
        for _ in 0..<4 { draws.append(run.draw(concept: 0)) }
        func mean() throws -> Float {
            var sum: Float = 0
            for d in draws { sum += try noGrad { try run.attentionLoss(concept: 0, d).item } }
            return sum / Float(draws.count)
        }
        run.applyFactors(concept: 0)
        let before = try mean()
        for step in 0..<config.iterations {
            let loss = try run.losses(step: step).total
            loss.backward()
            run.beforeUpdate()
            run.optimizer.step()
            pipeline.unet.zeroGrad()
        }
        run.applyFactors(concept: 0)
        XCTAssertLessThan(try mean(), 0.8 * before)
    }

    func testBadSettingsGiveClearErrorsAndDefaultsAreTheOfficialObjectConfigs() throws {
        var c = MACEConfig()
        XCTAssertEqual(c.iterations, 50); XCTAssertEqual(c.learningRate, 1e-5); XCTAssertEqual(c.rank, 1)
        XCTAssertEqual(c.lambda, 100); XCTAssertEqual(c.trainPreserveScale, 0); XCTAssertEqual(c.trainingImages, 8)
        XCTAssertTrue(c.usePooler); XCTAssertTrue(c.importanceSampling)
        c.lambda = 0
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("lambda")) }
        let noName = ErasureRequest(concepts: [Concept(name: "cat", targetPrompts: ["kitten"], anchor: "")], retainPrompts: [])
        XCTAssertThrowsError(try MACE(config: Self.tinyConfig()).erase(noName, pipeline: try TinyBert.pipeline(), context: ErasureContext(output: nil))) {
            XCTAssertTrue("\($0)".contains("contains 'cat'"))
        }
        XCTAssertThrowsError(try MACE(config: Self.tinyConfig()).erase(Self.request, pipeline: try Tiny.pipeline(), context: ErasureContext(output: nil))) {
            XCTAssertTrue("\($0)".contains("BERT (MiniLM) or CLIP"))
        }
    }
}
