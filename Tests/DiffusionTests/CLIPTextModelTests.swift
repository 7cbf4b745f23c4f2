import Foundation
import XCTest
import NN
import Tensor
@testable import Diffusion

/// CLIPTextModel against transformers (tools/make_text_fixtures.py): float64 reference, outputs
/// within 1e-4 and gradients within 1e-3 of the reference's scale.
final class CLIPTextModelTests: XCTestCase {
    static let forwardTolerance: Float = 1e-4
    static let gradientTolerance: Float = 1e-3

    func model(_ tag: String) throws -> CLIPTextModel {
        try CLIPTextModel.load(from: TextFixtures.url("clip_\(tag)/text_encoder"))
    }

    func testConfigsDecode() throws {
        let sd1 = try model("sd1").config
        XCTAssertEqual(sd1.hiddenAct, .quickGELU)
        XCTAssertEqual(sd1.eosTokenId, 2)
        XCTAssertEqual(sd1.numHiddenLayers, 3)
        let sd2 = try model("sd2").config
        XCTAssertEqual(sd2.hiddenAct, .gelu)
        XCTAssertEqual(sd2.eosTokenId, 801)
        XCTAssertEqual(sd2.vocabSize, 810)

        // Defaults, a list-valued eos id, and a full CLIPConfig with text_config.
        let partial = try JSONDecoder().decode(CLIPTextConfig.self, from: Data(#"{"hidden_size": 768, "eos_token_id": [7, 8]}"#.utf8))
        XCTAssertEqual(partial.hiddenSize, 768)
        XCTAssertEqual(partial.vocabSize, 49408)
        XCTAssertEqual(partial.eosTokenId, 7)
        let nested = try JSONDecoder().decode(CLIPTextConfig.self, from: Data(#"{"text_config": {"hidden_act": "gelu"}, "vision_config": {}}"#.utf8))
        XCTAssertEqual(nested.hiddenAct, .gelu)
        XCTAssertThrowsError(try JSONDecoder().decode(CLIPTextConfig.self, from: Data(#"{"hidden_act": "mish"}"#.utf8))) { error in
            XCTAssertTrue("\(error)".contains("mish"))
        }
        let roundTrip = try JSONDecoder().decode(CLIPTextConfig.self, from: JSONEncoder().encode(sd2))
        XCTAssertEqual(roundTrip, sd2)
    }

    func testParameterNamesEqualCheckpointKeys() throws {
        for tag in ["sd1", "sd2"] {
            let m = try model(tag)
            let names = m.namedParameters().map(\.name)
            XCTAssertEqual(names.count, Set(names).count)
            XCTAssertEqual(Set(names), Set(TextFixtures.index.models["clip_\(tag)"]!), tag)
            let archive = try TensorArchive(contentsOf: TextFixtures.url("clip_\(tag)/text_encoder/model.safetensors"))
            let stored = Set(archive.names.filter { !$0.hasSuffix("position_ids") }
                .map { $0.hasPrefix("text_model.") ? String($0.dropFirst("text_model.".count)) : $0 })
            XCTAssertEqual(Set(names), stored, tag)
        }
        // sd1 is stored with the prefix (and position_ids), sd2 without: both loaded above.
        let sd1Keys = try TensorArchive(contentsOf: TextFixtures.url("clip_sd1/text_encoder/model.safetensors")).names
        XCTAssertTrue(sd1Keys.allSatisfy { $0.hasPrefix("text_model.") })
        XCTAssertTrue(sd1Keys.contains("text_model.embeddings.position_ids"))
        let sd2Keys = try TensorArchive(contentsOf: TextFixtures.url("clip_sd2/text_encoder/model.safetensors")).names
        XCTAssertFalse(sd2Keys.contains { $0.hasPrefix("text_model.") })
    }

    func testPrefixedAndUnprefixedCheckpointsLoadTheSameWeights() throws {
        let m = try model("sd1")
        let dir = try temporaryDirectory(self)
        for prefixed in [true, false] {
            let url = dir.appendingPathComponent("w\(prefixed).safetensors")
            try Tensor.save(m.checkpointTensors(prefixed: prefixed), to: url)
            let other = CLIPTextModel(config: m.config)
            try other.load(from: url)
            for ((name, a), (_, b)) in zip(m.namedParameters(), other.namedParameters()) {
                XCTAssertEqual(a.scalars, b.scalars, name)
            }
        }
    }

    func testLoadingErrorsNameTheFile() throws {
        let m = try model("sd1")
        let dir = try temporaryDirectory(self)
        var tensors = m.checkpointTensors(prefixed: true)
        tensors["text_model.final_layer_norm.bias"] = nil
        tensors["text_model.extra.weight"] = Tensor.zeros([2])
        let url = dir.appendingPathComponent("broken.safetensors")
        try Tensor.save(tensors, to: url)
        XCTAssertThrowsError(try CLIPTextModel(config: m.config).load(from: url)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("broken.safetensors"), message)
            XCTAssertTrue(message.contains("final_layer_norm.bias"), message)
            XCTAssertTrue(message.contains("extra.weight"), message)
        }
        XCTAssertThrowsError(try CLIPTextModel.load(from: dir)) { error in
            XCTAssertTrue("\(error)".contains("config.json"), "\(error)")
        }
        try Data("{\"hidden_size\": \"big\"}".utf8).write(to: dir.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try CLIPTextModel.load(from: dir)) { error in
            XCTAssertTrue("\(error)".contains("config.json") && "\(error)".contains("hidden_size"), "\(error)")
        }
    }

    func testForwardMatchesTransformers() throws {
        let reference = try ReferenceTensors("clip_reference.safetensors")
        for tag in ["sd1", "sd2"] {
            let m = try model(tag)
            let ids = try reference.rows("\(tag).input_ids")
            let out = noGrad { m(inputIds: ids, outputHiddenStates: true) }
            assertClose(out.lastHiddenState, try reference.tensor("\(tag).last_hidden_state"), tolerance: Self.forwardTolerance, "\(tag) last")
            assertClose(out.pooledOutput, try reference.tensor("\(tag).pooled"), tolerance: Self.forwardTolerance, "\(tag) pooled")
            assertClose(out.penultimateHiddenState, try reference.tensor("\(tag).penultimate"), tolerance: Self.forwardTolerance, "\(tag) penultimate")
            assertClose(out.hiddenStates.first, try reference.tensor("\(tag).embeddings"), tolerance: Self.forwardTolerance, "\(tag) embeddings")
            XCTAssertEqual(out.hiddenStates.count, m.config.numHiddenLayers + 1)
        }
        // sd2's second row has ids above the eos id before its first eos: pooled at the eos.
        let sd2 = try model("sd2")
        XCTAssertEqual(sd2.poolingPositions(try reference.rows("sd2.input_ids"))[1], 5)
        XCTAssertEqual(try model("sd1").poolingPositions(try reference.rows("sd1.input_ids")),
                       try reference.rows("sd1.input_ids").map { row in row.firstIndex(of: row.max()!)! })
        // With a padding mask as well as the causal one.
        let masked = noGrad { sd2(inputIds: try! reference.rows("sd2.input_ids"), attentionMask: try! reference.rows("sd2.attention_mask")) }
        assertClose(masked.lastHiddenState, try reference.tensor("sd2.masked.last_hidden_state"), tolerance: Self.forwardTolerance, "sd2 masked")
    }

    func testClipSkipIsThePenultimateLayerThroughTheFinalNorm() throws {
        let reference = try ReferenceTensors("clip_reference.safetensors")
        let m = try model("sd1")
        let ids = try reference.rows("sd1.input_ids")
        let skipped = noGrad { m(inputIds: ids, layerCount: m.config.numHiddenLayers - 1).lastHiddenState }
        let expected = noGrad { m.finalLayerNorm(try! reference.tensor("sd1.penultimate")) }
        assertClose(skipped, expected, tolerance: Self.forwardTolerance, "clip skip")
    }

    func testGradientsMatchTransformers() throws {
        let reference = try ReferenceTensors("clip_reference.safetensors")
        for tag in ["sd1", "sd2"] {
            let m = try model(tag)
            let ids = try reference.rows("\(tag).input_ids")
            let gLast = try reference.tensor("\(tag).gout.last_hidden_state")
            let gPool = try reference.tensor("\(tag).gout.pooled")
            func loss(_ out: CLIPTextModelOutput) -> Tensor {
                (out.lastHiddenState * gLast).sum() + (out.pooledOutput * gPool).sum()
            }
            // With respect to the input embeddings (the token-embedding output).
            let embeds = noGrad { m.tokenEmbeddings(ids) }.detached()
            embeds.requiresGrad = true
            m.zeroGrad()
            loss(m(inputIds: ids, inputsEmbeds: embeds)).backward()
            assertClose(embeds.grad, try reference.tensor("\(tag).grad.embeds"), tolerance: Self.gradientTolerance, "\(tag) d/d embeds")
            let params = Dictionary(uniqueKeysWithValues: m.namedParameters().map { ($0.name, $0.tensor) })
            for key in reference.archive.names where key.hasPrefix("\(tag).grad.") && !key.hasPrefix("\(tag).grad.token") && key != "\(tag).grad.embeds" {
                let name = String(key.dropFirst("\(tag).grad.".count))
                assertClose(params[name]?.grad, try reference.tensor(key), tolerance: Self.gradientTolerance, "\(tag) d/d \(name)")
            }
            XCTAssertNil(m.embeddings.tokenEmbedding.weight.grad, "inputsEmbeds bypass the token embedding")

            // With respect to the token-embedding weight (rows of the ids used).
            m.zeroGrad()
            loss(m(inputIds: ids)).backward()
            let grad = try XCTUnwrap(m.embeddings.tokenEmbedding.weight.grad)
            let rows = try reference.integers("\(tag).grad.token_ids")
            let picked = Tensor.concat(rows.map { grad.sliced([$0..<($0 + 1)]) }, axis: 0)
            assertClose(picked, try reference.tensor("\(tag).grad.token_rows"), tolerance: Self.gradientTolerance, "\(tag) d/d token rows")
            let untouched = Set(0..<m.config.vocabSize).subtracting(rows)
            XCTAssertTrue(untouched.allSatisfy { r in (0..<m.config.hiddenSize).allSatisfy { grad.pointer[r * m.config.hiddenSize + $0] == 0 } })
        }
    }

    func testEncoderFromDiffusersFolder() throws {
        let reference = try ReferenceTensors("clip_reference.safetensors")
        let encoder = try CLIPTextEncoder(directory: TextFixtures.url("clip_sd1"))
        XCTAssertEqual(encoder.hiddenSize, 32)
        let prompts = ["a photo of a dog", String(repeating: "A painting of a CAT, don't you think? ", count: 2)]
        let (states, mask) = noGrad { encoder.encode(prompts: prompts) }
        XCTAssertEqual(states.shape, [2, 77, 32])
        XCTAssertEqual(mask.shape, [2, 77])
        XCTAssertEqual(Array(mask.scalars.prefix(8)), [1, 1, 1, 1, 1, 1, 1, 0])
        // The fixture's input ids were made by transformers' tokenizer from these prompts.
        XCTAssertEqual(encoder.tokenizer(prompts).inputIds, try reference.rows("sd1.input_ids"))
        assertClose(states, try reference.tensor("sd1.last_hidden_state"), tolerance: Self.forwardTolerance, "encoder states")

        let sd2 = try CLIPTextEncoder(directory: TextFixtures.url("clip_sd2"), clipSkip: 1)
        let (skipped, _) = noGrad { sd2.encode(prompts: ["a photo of a dog"]) }
        let ids = try reference.rows("sd2.input_ids")
        XCTAssertEqual(sd2.tokenizer(["a photo of a dog"]).inputIds[0], ids[0])
        let expected = noGrad { sd2.model.finalLayerNorm(try! reference.tensor("sd2.penultimate")) }.sliced([0..<1])
        assertClose(skipped, expected, tolerance: Self.forwardTolerance, "SD2 penultimate states")
        XCTAssertTrue((sd2 as TextEncoder).hiddenSize == 32)

        let small = CLIPTextModel(config: CLIPTextConfig(vocabSize: 100, hiddenSize: 8, intermediateSize: 8,
                                                         numHiddenLayers: 1, numAttentionHeads: 2))
        XCTAssertThrowsError(try CLIPTextEncoder(model: small, tokenizer: encoder.tokenizer)) { error in
            XCTAssertTrue("\(error)".contains("vocab_size is 100"), "\(error)")
        }
    }
}
