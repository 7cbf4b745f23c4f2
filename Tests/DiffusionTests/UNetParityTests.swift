import Foundation
import XCTest
import Diffusion
import NN
import SafeTensors
import Tensor

/// UNet2DConditionModel against diffusers (float64 reference) on tiny random models:
/// forward output, input gradients, a few parameter gradients, key names and load errors.
final class UNetParityTests: XCTestCase {
    /// Loads the fixture's model, runs forward and backward with the stored inputs and compares.
    func checkParity(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let unet = try UNet2DConditionModel(directory: Fixtures.folder(name))
        let io = try Fixtures.io(name)
        let sample = try io.tensor("sample"), context = try io.tensor("encoder_hidden_states")
        let timestep = try io.tensor("timestep").scalars
        let mask = io.contains("encoder_attention_mask") ? try io.tensor("encoder_attention_mask") : nil

        assertClose(unet.timeProjection(timestep), try io.tensor("t_emb"), tolerance: 1e-4, "\(name) time_proj",
                    file: file, line: line)

        sample.requiresGrad = true
        context.requiresGrad = true
        let out = unet(sample, timestep: timestep, encoderHiddenStates: context, encoderAttentionMask: mask)
        assertClose(out, try io.tensor("out"), tolerance: 1e-4, "\(name) output", file: file, line: line)

        out.backward(try io.tensor("gout"))
        assertClose(sample.grad, try io.tensor("grad.sample"), tolerance: 1e-3, "\(name) d/d sample", file: file, line: line)
        assertClose(context.grad, try io.tensor("grad.encoder_hidden_states"), tolerance: 1e-3,
                    "\(name) d/d encoder_hidden_states", file: file, line: line)
        let parameters = unet.stateDict()
        for key in io.names where key.hasPrefix("param_grad.") {
            let parameter = String(key.dropFirst("param_grad.".count))
            assertClose(parameters[parameter]?.grad, try io.tensor(key), tolerance: 1e-3, "\(name) d/d \(parameter)",
                        file: file, line: line)
        }
    }

    func testSD1StyleUNetMatchesDiffusers() throws { try checkParity("unet_sd1") }

    func testSD2StyleUNetWithLinearProjectionAndMaskMatchesDiffusers() throws { try checkParity("unet_sd2") }

    func testParameterNamesAreTheCheckpointKeys() throws {
        for name in ["unet_sd1", "unet_sd2"] {
            let folder = Fixtures.folder(name)
            var generator = RandomGenerator(seed: 1)
            let unet = try UNet2DConditionModel(config: UNet2DConditionConfig(contentsOf: folder.appendingPathComponent("config.json")),
                                                generator: &generator)
            let names = unet.namedParameters().map(\.name)
            XCTAssertEqual(Set(names).count, names.count, "\(name): duplicate parameter names")
            let checkpoint = try TensorArchive(contentsOf: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
            XCTAssertEqual(Set(names), Set(checkpoint.names), name)
            for (key, tensor) in unet.namedParameters() {
                XCTAssertEqual(tensor.shape, try checkpoint.shape(key), key)
            }
        }
    }

    func testMaskedTokensAreIgnoredAndAnAllZeroMaskAttendsToEverything() throws {
        let unet = try UNet2DConditionModel(directory: Fixtures.folder("unet_sd2"))
        let io = try Fixtures.io("unet_sd2")
        let sample = try io.tensor("sample"), context = try io.tensor("encoder_hidden_states")
        let timestep = try io.tensor("timestep").scalars
        noGrad {
            let keep = Tensor(shape: [2, 7], scalars: [1, 1, 1, 1, 1, 0, 0] + [1, 1, 1, 1, 1, 0, 0])
            let masked = unet(sample, timestep: timestep, encoderHiddenStates: context, encoderAttentionMask: keep)
            // Changing the masked tokens changes nothing.
            let changed = context.copy()
            for b in 0..<2 { for j in 5..<7 { for d in 0..<24 { changed.pointer[(b * 7 + j) * 24 + d] += 3 } } }
            let again = unet(sample, timestep: timestep, encoderHiddenStates: changed, encoderAttentionMask: keep)
            XCTAssertEqual(relativeError(again, masked), 0)
            // diffusers adds −10000 to masked scores, so an all-zero mask equals no mask at all.
            let none = unet(sample, timestep: timestep, encoderHiddenStates: context)
            let zeros = unet(sample, timestep: timestep, encoderHiddenStates: context, encoderAttentionMask: Tensor.zeros([2, 7]))
            XCTAssertEqual(relativeError(zeros, none), 0)
            XCTAssertGreaterThan(relativeError(masked, none), 1e-4)
        }
    }

    // MARK: Loading errors

    /// Writes the fixture's weights, changed by `edit`, to a temporary file and loads them.
    func loadEdited(_ edit: (inout [String: Tensor]) -> Void) throws -> (UNet2DConditionModel, URL, Error?) {
        let folder = Fixtures.folder("unet_sd1")
        var weights = try TensorArchive(contentsOf: folder.appendingPathComponent("diffusion_pytorch_model.safetensors")).allTensors()
        edit(&weights)
        let url = try temporaryDirectory(self).appendingPathComponent("edited.safetensors")
        try Tensor.save(weights, to: url)
        var generator = RandomGenerator(seed: 5)
        let unet = try UNet2DConditionModel(config: UNet2DConditionConfig(contentsOf: folder.appendingPathComponent("config.json")),
                                            generator: &generator)
        do { try loadModule(unet, from: url) } catch { return (unet, url, error) }
        return (unet, url, nil)
    }

    func testMissingKeyIsNamedAndNothingChanges() throws {
        let key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        let (unet, url, error) = try loadEdited { $0[key] = nil }
        let e = try XCTUnwrap(error as? CheckpointError)
        XCTAssertEqual(e.missing, [key])
        XCTAssertTrue(e.unexpected.isEmpty && e.mismatched.isEmpty)
        XCTAssertTrue(e.description.contains(key) && e.description.contains(url.path), e.description)
        // The module keeps its random initialisation: nothing was loaded.
        var generator = RandomGenerator(seed: 5)
        let fresh = try UNet2DConditionModel(config: unet.config, generator: &generator)
        XCTAssertEqual(unet.stateDict().mapValues(\.scalars), fresh.stateDict().mapValues(\.scalars))
    }

    func testUnexpectedKeyIsNamed() throws {
        let key = "down_blocks.0.attentions.0.transformer_blocks.0.attn3.to_k.weight"
        let (_, _, error) = try loadEdited { $0[key] = Tensor.zeros([16, 24]) }
        let e = try XCTUnwrap(error as? CheckpointError)
        XCTAssertEqual(e.unexpected, [key])
        XCTAssertTrue(e.missing.isEmpty && e.mismatched.isEmpty)
        XCTAssertTrue(e.description.contains(key), e.description)
    }

    func testMisShapedTensorIsNamed() throws {
        let key = "mid_block.attentions.0.proj_in.weight"
        let (_, _, error) = try loadEdited { $0[key] = Tensor.zeros([32, 32]) }
        let e = try XCTUnwrap(error as? CheckpointError)
        XCTAssertEqual(e.mismatched.count, 1)
        XCTAssertTrue(e.mismatched[0].hasPrefix(key), e.mismatched[0])
        XCTAssertTrue(e.description.contains(key) && e.description.contains("[32, 32]"), e.description)
    }

    func testNonStrictLoadingToleratesMissingAndUnexpectedKeys() throws {
        let folder = Fixtures.folder("unet_sd1")
        var weights = try TensorArchive(contentsOf: folder.appendingPathComponent("diffusion_pytorch_model.safetensors")).allTensors()
        weights["conv_out.bias"] = nil
        weights["extra.weight"] = Tensor.zeros([1])
        let url = try temporaryDirectory(self).appendingPathComponent("partial.safetensors")
        try Tensor.save(weights, to: url)
        var generator = RandomGenerator(seed: 5)
        let unet = try UNet2DConditionModel(config: UNet2DConditionConfig(contentsOf: folder.appendingPathComponent("config.json")),
                                            generator: &generator)
        let bias = unet.conv_out.bias!.scalars
        try loadModule(unet, from: url, strict: false)
        XCTAssertEqual(unet.conv_out.bias!.scalars, bias)
        XCTAssertEqual(unet.conv_out.weight.scalars, weights["conv_out.weight"]!.scalars)
    }

    func testShardedCheckpointLoads() throws {
        let folder = Fixtures.folder("unet_sd1")
        let weights = try TensorArchive(contentsOf: folder.appendingPathComponent("diffusion_pytorch_model.safetensors")).allTensors()
        let directory = try temporaryDirectory(self)
        let names = weights.keys.sorted()
        let half = names.count / 2
        var weightMap: [String: String] = [:]
        for (index, part) in [Array(names[..<half]), Array(names[half...])].enumerated() {
            let shard = "diffusion_pytorch_model-0000\(index + 1)-of-00002.safetensors"
            try Tensor.save(Dictionary(uniqueKeysWithValues: part.map { ($0, weights[$0]!) }),
                            to: directory.appendingPathComponent(shard), dtype: .f16)
            for name in part { weightMap[name] = shard }
        }
        let index = try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": weightMap])
        try index.write(to: directory.appendingPathComponent("diffusion_pytorch_model.safetensors.index.json"))
        try FileManager.default.copyItem(at: folder.appendingPathComponent("config.json"),
                                         to: directory.appendingPathComponent("config.json"))
        let sharded = try UNet2DConditionModel(directory: directory)
        let single = try UNet2DConditionModel(directory: folder)
        XCTAssertEqual(sharded.stateDict().mapValues(\.scalars), single.stateDict().mapValues(\.scalars))
    }

    // MARK: Config

    func testConfigReadsSD1AndSD2StyleFields() throws {
        let sd15 = """
        {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
         "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
         "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
         "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
         "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
         "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
        """
        let c1 = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data(sd15.utf8))
        XCTAssertNoThrow(try c1.validate())
        XCTAssertEqual((0..<4).map { c1.heads(block: $0) }, [8, 8, 8, 8])
        XCTAssertEqual(c1.crossAttentionDim[2], 768)
        XCTAssertEqual(c1.midBlockType, "UNetMidBlock2DCrossAttn")
        XCTAssertEqual(c1.timeEmbedDim, 1280)
        XCTAssertEqual(c1.sampleSize, .one(64))

        let sd21 = """
        {"attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
         "use_linear_projection": true, "upcast_attention": true, "num_class_embeds": null, "dual_cross_attention": false,
         "transformer_layers_per_block": [1, 1, 2, 1], "sample_size": 96}
        """
        let c2 = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data(sd21.utf8))
        XCTAssertNoThrow(try c2.validate())
        XCTAssertEqual((0..<4).map { c2.heads(block: $0) }, [5, 10, 20, 20])
        XCTAssertTrue(c2.useLinearProjection)
        XCTAssertEqual(c2.transformerLayers(block: 2, layer: 1), 2)
        XCTAssertEqual(c2.upTransformerLayers(upBlock: 1, layer: 2), 2)

        // Round trip through the diffusers field names.
        let encoded = try JSONEncoder().encode(c2)
        XCTAssertEqual(try JSONDecoder().decode(UNet2DConditionConfig.self, from: encoded), c2)
        let object = try JSONSerialization.jsonObject(with: encoded) as! [String: Any]
        XCTAssertEqual(object["attention_head_dim"] as? [Int], [5, 10, 20, 20])

        let perLayer = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data("""
            {"transformer_layers_per_block": [[1, 2], [3, 4], [5, 6], [7, 8]],
             "reverse_transformer_layers_per_block": [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]}
            """.utf8))
        XCTAssertNoThrow(try perLayer.validate())
        XCTAssertEqual(perLayer.transformerLayers(block: 1, layer: 1), 4)
        XCTAssertEqual(perLayer.upTransformerLayers(upBlock: 3, layer: 2), 4)

        let noMid = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data(#"{"mid_block_type": null}"#.utf8))
        XCTAssertNil(noMid.midBlockType)
        XCTAssertEqual(try JSONDecoder().decode(UNet2DConditionConfig.self, from: JSONEncoder().encode(noMid)), noMid)
        // The fixture's config.json, as diffusers wrote it, survives a round trip.
        let written = try UNet2DConditionConfig(contentsOf: Fixtures.folder("unet_sd2").appendingPathComponent("config.json"))
        XCTAssertEqual(try JSONDecoder().decode(UNet2DConditionConfig.self, from: JSONEncoder().encode(written)), written)
    }

    func testUnsupportedConfigFieldsAreNamed() throws {
        func error(_ json: String) -> DiffusionConfigError? {
            do {
                let config = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data(json.utf8))
                try config.validate()
                return nil
            } catch { return error as? DiffusionConfigError }
        }
        XCTAssertEqual(error(#"{"class_embed_type": "timestep"}"#), .unsupported(field: "class_embed_type", value: "timestep"))
        XCTAssertEqual(error(#"{"addition_embed_type": "text_time"}"#), .unsupported(field: "addition_embed_type", value: "text_time"))
        XCTAssertEqual(error(#"{"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]}"#),
                       .unsupported(field: "down_block_types", value: "SimpleCrossAttnDownBlock2D"))
        XCTAssertEqual(error(#"{"attention_head_dim": [8, 8]}"#)?.description.contains("attention_head_dim"), true)
        XCTAssertEqual(error(#"{"attention_head_dim": 7}"#)?.description.contains("attention_head_dim"), true)
        XCTAssertNil(error(#"{"num_attention_heads": 8, "attention_head_dim": 40}"#))

        let missing = FileManager.default.temporaryDirectory.appendingPathComponent("no-such-unet-config.json")
        XCTAssertThrowsError(try UNet2DConditionConfig(contentsOf: missing)) { e in
            XCTAssertTrue("\(e)".contains("no-such-unet-config.json"), "\(e)")
        }
    }
}
