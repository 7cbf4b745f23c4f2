import Foundation
import XCTest
import Diffusion
import NN
import SafeTensors
import Tensor

/// FluxTransformer2DModel against diffusers (float64 reference) on tiny random models
/// (tools/make_flux_fixtures.py): forward output, input and parameter gradients, the rotary
/// tables, the conditioning vector, latent packing, key names, saving and config errors.
final class FluxTransformerTests: XCTestCase {
    static let names = ["flux_plain", "flux_guided"]

    func folder(_ name: String) -> URL { Fixtures.folder("flux").appendingPathComponent(name) }

    func io(_ name: String) throws -> TensorArchive {
        try TensorArchive(contentsOf: folder(name).appendingPathComponent("io.safetensors"))
    }

    func checkParity(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let model = try FluxTransformer2DModel(directory: folder(name))
        let io = try io(name)
        let hidden = try io.tensor("hidden_states"), text = try io.tensor("encoder_hidden_states")
        let pooled = try io.tensor("pooled_projections")
        let timestep = try io.tensor("timestep").scalars
        let guidance = io.contains("guidance") ? try io.tensor("guidance").scalars : nil
        let imageIds = try io.tensor("img_ids"), textIds = try io.tensor("txt_ids")

        let rope = model.posEmbed(Tensor.concat([textIds, imageIds], axis: 0))
        assertClose(rope.cos, try io.tensor("rope_cos"), tolerance: 1e-6, "\(name) rope cos", file: file, line: line)
        assertClose(rope.sin, try io.tensor("rope_sin"), tolerance: 1e-6, "\(name) rope sin", file: file, line: line)
        let temb = noGrad {
            model.time_text_embed(timestep: timestep.map { $0 * 1000 }, guidance: guidance?.map { $0 * 1000 }, pooled: pooled)
        }
        assertClose(temb, try io.tensor("temb"), tolerance: 1e-5, "\(name) temb", file: file, line: line)

        for x in [hidden, text, pooled] { x.requiresGrad = true }
        let out = model(hidden, encoderHiddenStates: text, pooledProjections: pooled, timestep: timestep,
                        imageIds: imageIds, textIds: textIds, guidance: guidance)
        assertClose(out, try io.tensor("out"), tolerance: 1e-4, "\(name) output", file: file, line: line)

        out.backward(try io.tensor("gout"))
        assertClose(hidden.grad, try io.tensor("grad.hidden_states"), tolerance: 1e-3, "\(name) d/d hidden_states", file: file, line: line)
        assertClose(text.grad, try io.tensor("grad.encoder_hidden_states"), tolerance: 1e-3,
                    "\(name) d/d encoder_hidden_states", file: file, line: line)
        assertClose(pooled.grad, try io.tensor("grad.pooled_projections"), tolerance: 1e-3,
                    "\(name) d/d pooled_projections", file: file, line: line)
        let parameters = model.stateDict()
        var checked = 0
        for key in io.names where key.hasPrefix("param_grad.") {
            let parameter = String(key.dropFirst("param_grad.".count))
            assertClose(parameters[parameter]?.grad, try io.tensor(key), tolerance: 1e-3, "\(name) d/d \(parameter)",
                        file: file, line: line)
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 5, "\(name): parameter gradients in the fixture", file: file, line: line)
    }

    func testUnguidedModelMatchesDiffusers() throws { try checkParity("flux_plain") }

    func testGuidanceEmbeddingModelMatchesDiffusers() throws { try checkParity("flux_guided") }

    func testPackingAndImageIdsMatchDiffusers() throws {
        for name in Self.names {
            let io = try io(name)
            let latents = try io.tensor("latents")
            let (h, w) = (latents.shape[2], latents.shape[3])
            XCTAssertEqual(FluxTransformer2DModel.packLatents(latents).scalars, try io.tensor("hidden_states").scalars, name)
            XCTAssertEqual(FluxTransformer2DModel.latentImageIds(height: h / 2, width: w / 2).scalars,
                           try io.tensor("img_ids").scalars, name)
            let unpacked = FluxTransformer2DModel.unpackLatents(try io.tensor("out"), height: h, width: w)
            XCTAssertEqual(unpacked.shape, try io.tensor("unpacked").shape, name)
            XCTAssertEqual(unpacked.scalars, try io.tensor("unpacked").scalars, name)
            XCTAssertEqual(FluxTransformer2DModel.unpackLatents(FluxTransformer2DModel.packLatents(latents), height: h, width: w).scalars,
                           latents.scalars, "\(name): unpack ∘ pack")
        }
    }

    func testParameterNamesAreTheCheckpointKeys() throws {
        for name in Self.names {
            var generator = RandomGenerator(seed: 1)
            let config = try FluxTransformer2DConfig(contentsOf: folder(name).appendingPathComponent("config.json"))
            let model = try FluxTransformer2DModel(config: config, generator: &generator)
            let names = model.namedParameters().map(\.name)
            XCTAssertEqual(Set(names).count, names.count, "\(name): duplicate parameter names")
            let checkpoint = try TensorArchive(contentsOf: folder(name).appendingPathComponent("diffusion_pytorch_model.safetensors"))
            XCTAssertEqual(Set(names), Set(checkpoint.names), name)
            for (key, tensor) in model.namedParameters() { XCTAssertEqual(tensor.shape, try checkpoint.shape(key), key) }
        }
    }

    func testConfigReadsDiffusersKeysAndDefaults() throws {
        let config = try FluxTransformer2DConfig(contentsOf: folder("flux_guided").appendingPathComponent("config.json"))
        XCTAssertEqual(config.numAttentionHeads, 5)
        XCTAssertEqual(config.attentionHeadDim, 6)
        XCTAssertEqual(config.numLayers, 2)
        XCTAssertEqual(config.numSingleLayers, 2)
        XCTAssertEqual(config.jointAttentionDim, 9)
        XCTAssertEqual(config.pooledProjectionDim, 7)
        XCTAssertEqual(config.outputChannels, 8)
        XCTAssertTrue(config.guidanceEmbeds)
        XCTAssertEqual(config.axesDimsRope, [2, 2, 2])
        let defaults = try JSONDecoder().decode(FluxTransformer2DConfig.self, from: Data("{\"out_channels\": null}".utf8))
        XCTAssertEqual(defaults, FluxTransformer2DConfig())
        XCTAssertEqual(defaults.innerDim, 3072)
        XCTAssertEqual(defaults.outputChannels, 64)
    }

    func testInvalidConfigsNameTheKey() throws {
        func field(_ edit: (inout FluxTransformer2DConfig) -> Void) -> String? {
            var config = FluxTransformer2DConfig()
            edit(&config)
            do { try config.validate(); return nil } catch let DiffusionConfigError.invalid(field, _) { return field } catch { return "\(error)" }
        }
        XCTAssertNil(field { _ in })
        XCTAssertEqual(field { $0.axesDimsRope = [16, 56, 48] }, "axes_dims_rope")   // sums to 120, not 128
        XCTAssertEqual(field { $0.axesDimsRope = [17, 55, 56] }, "axes_dims_rope")   // odd
        XCTAssertEqual(field { $0.numAttentionHeads = 0 }, "num_attention_heads")
        XCTAssertEqual(field { $0.numSingleLayers = -1 }, "num_single_layers")
        XCTAssertEqual(field { $0.outChannels = 0 }, "out_channels")
        XCTAssertEqual(field { $0.jointAttentionDim = 0 }, "joint_attention_dim")
        let error = DiffusionConfigError.invalid(field: "axes_dims_rope", reason: "sums to 120, not attention_head_dim 128")
        XCTAssertTrue(error.description.contains("axes_dims_rope"))
        // A malformed file is reported with its path.
        let directory = try temporaryDirectory(self)
        let url = directory.appendingPathComponent("config.json")
        try Data("{\"num_layers\": \"many\"}".utf8).write(to: url)
        XCTAssertThrowsError(try FluxTransformer2DConfig(contentsOf: url)) { error in
            XCTAssertTrue("\(error)".contains(url.path), "\(error)")
        }
    }

    func testSavedFolderLoadsBackWithTheSameOutputs() throws {
        let model = try FluxTransformer2DModel(directory: folder("flux_plain"))
        // SCORE_EXPORT_DIR keeps the folder for a check with diffusers' from_pretrained.
        let export = ProcessInfo.processInfo.environment["SCORE_EXPORT_DIR"].map { URL(fileURLWithPath: $0) }
        let directory = (try export ?? temporaryDirectory(self)).appendingPathComponent("flux_transformer")
        try model.save(to: directory)
        let loaded = try FluxTransformer2DModel(directory: directory)
        XCTAssertEqual(loaded.config, model.config)
        for ((name, a), (_, b)) in zip(loaded.namedParameters(), model.namedParameters()) {
            XCTAssertEqual(a.scalars, b.scalars, name)
        }
        let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("config.json"))) as! [String: Any]
        XCTAssertEqual(saved["_class_name"] as? String, "FluxTransformer2DModel")
        XCTAssertEqual(saved["axes_dims_rope"] as? [Int], [2, 2, 4])
        XCTAssertEqual(saved["out_channels"] as? Int, 20)
    }

    func testMissingKeyIsReportedByName() throws {
        let model = try FluxTransformer2DModel(directory: folder("flux_plain"))
        let directory = try temporaryDirectory(self)
        let weights = directory.appendingPathComponent("diffusion_pytorch_model.safetensors")
        let names = model.namedParameters().map(\.name).filter { $0 != "single_transformer_blocks.2.attn.norm_q.weight" }
        try saveWeights(of: model, names: names, to: weights)
        var generator = RandomGenerator(seed: 3)
        let fresh = try FluxTransformer2DModel(config: model.config, generator: &generator)
        XCTAssertThrowsError(try loadModule(fresh, from: weights)) { error in
            XCTAssertEqual((error as? CheckpointError)?.missing, ["single_transformer_blocks.2.attn.norm_q.weight"])
        }
    }
}
