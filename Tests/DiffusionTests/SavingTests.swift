import Foundation
import XCTest
@testable import Diffusion
import NN
import SafeTensors
import Tensor

/// Saving models in diffusers layout and changed-tensors files (LoRA files: LoRATests).
/// tools/verify_saving.py checks the same files with diffusers / PEFT (see `testExportForDiffusers`).
final class SavingTests: XCTestCase {
    let toK = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    let toV = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
    let projIn = "down_blocks.0.attentions.0.proj_in"  // a 1×1 convolution in SD1-style UNets

    func tinyUNet() throws -> UNet2DConditionModel { try UNet2DConditionModel(directory: Fixtures.folder("unet_sd1")) }

    /// Adds small noise to the named parameters.
    func perturb(_ module: Module, _ names: [String], seed: UInt64 = 1) {
        var generator = RandomGenerator(seed: seed)
        let parameters = module.stateDict()
        noGrad {
            for name in names {
                let p = parameters[name]!
                p.assign(p + generator.normal(p.shape, std: 0.01))
            }
        }
    }

    func assertSameParameters(_ a: Module, _ b: Module, file: StaticString = #filePath, line: UInt = #line) {
        let other = b.stateDict()
        XCTAssertEqual(a.namedParameters().count, other.count, file: file, line: line)
        for (name, tensor) in a.namedParameters() {
            guard let t = other[name] else { XCTFail("missing \(name)", file: file, line: line); continue }
            assertSameBits(t, tensor, name, file: file, line: line)
        }
    }

    // MARK: Full folders

    func testUNetFolderRoundTripsInF32AndF16() throws {
        let dir = try temporaryDirectory(self)
        let unet = try tinyUNet()
        perturb(unet, [toK + ".weight", "conv_in.bias"])  // no longer F16-exact
        try unet.save(to: dir.appendingPathComponent("unet32"))
        let loaded = try UNet2DConditionModel(directory: dir.appendingPathComponent("unet32"))
        assertSameParameters(loaded, unet)
        XCTAssertEqual(loaded.config, unet.config)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("unet32/config.json"))) as! [String: Any]
        XCTAssertEqual(config["_class_name"] as? String, "UNet2DConditionModel")
        XCTAssertEqual(config["cross_attention_dim"] as? Int, 24)
        let archive = try SafeTensorsArchive(url: dir.appendingPathComponent("unet32/diffusion_pytorch_model.safetensors"))
        XCTAssertEqual(archive.metadata["format"], "pt")
        XCTAssertEqual(try archive.info(toK + ".weight").dtype, .f32)

        for dtype in [DType.f16, .bf16] {
            let folder = dir.appendingPathComponent("unet-\(dtype)")
            try unet.save(to: folder, dtype: dtype)
            let half = try UNet2DConditionModel(directory: folder)
            XCTAssertEqual(try SafeTensorsArchive(url: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
                .info("conv_in.weight").dtype, dtype)
            for (name, tensor) in half.namedParameters() {
                XCTAssertLessThanOrEqual(relativeError(tensor, unet.stateDict()[name]!), dtype == .f16 ? 1e-3 : 1e-2, name)
            }
        }
        // Saving again over the folder works; a competing weights file of the same variant (here a
        // sharded index the loader would read first) is refused; another variant's file may stay.
        try unet.save(to: dir.appendingPathComponent("unet32"))
        try Tensor.save([:], to: dir.appendingPathComponent("unet32/diffusion_pytorch_model.fp16.safetensors"))
        try unet.save(to: dir.appendingPathComponent("unet32"))
        try Data("{}".utf8).write(to: dir.appendingPathComponent("unet32/diffusion_pytorch_model.safetensors.index.json"))
        expectError(try unet.save(to: dir.appendingPathComponent("unet32")),
                    mentioning: ["diffusion_pytorch_model.safetensors.index.json", "another weights file"], "conflict")
        expectError(try unet.save(to: dir.appendingPathComponent("x"), dtype: .i64), mentioning: ["F32, F16 or BF16"], "dtype")
    }

    func testCLIPTextModelFolderRoundTrips() throws {
        let dir = try temporaryDirectory(self)
        let model = try CLIPTextModel.load(from: Fixtures.folder("text/clip_sd1/text_encoder"))
        perturb(model, ["encoder.layers.0.self_attn.q_proj.weight"])
        try model.save(to: dir)
        let archive = try TensorArchive(contentsOf: dir.appendingPathComponent("model.safetensors"))
        XCTAssertTrue(archive.names.allSatisfy { $0.hasPrefix("text_model.") })
        let loaded = try CLIPTextModel.load(from: dir)
        XCTAssertEqual(loaded.config, model.config)
        assertSameParameters(loaded, model)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("config.json"))) as! [String: Any]
        XCTAssertEqual(config["model_type"] as? String, "clip_text_model")
        XCTAssertEqual(config["hidden_act"] as? String, "quick_gelu")
    }

    // MARK: Changed tensors only

    func testChangedTensorsOnlyRoundTrip() throws {
        let dir = try temporaryDirectory(self)
        let base = try tinyUNet(), edited = try tinyUNet()
        let names = [toV + ".weight", toK + ".weight"]
        perturb(edited, names)
        let file = dir.appendingPathComponent("delta.safetensors")
        let saved = try changedParameterNames(edited, reference: base)
        try saveWeights(of: edited, names: saved, to: file, metadata: ["score_method": "test"])
        XCTAssertEqual(Set(saved), Set(names))
        let archive = try TensorArchive(contentsOf: file)
        XCTAssertEqual(Set(archive.names), Set(names))
        XCTAssertEqual(archive.metadata["score_content"], "partial")
        XCTAssertEqual(archive.metadata["score_method"], "test")

        let restored = try tinyUNet()
        try loadChangedWeights(into: restored, from: file)
        assertSameParameters(restored, edited)

        // By name, and with the CLIP prefix, which loading strips.
        let clip = try CLIPTextModel.load(from: Fixtures.folder("text/clip_sd1/text_encoder"))
        let clipBase = try CLIPTextModel.load(from: Fixtures.folder("text/clip_sd1/text_encoder"))
        perturb(clip, ["final_layer_norm.weight"])
        let clipFile = dir.appendingPathComponent("clip-delta.safetensors")
        try saveWeights(of: clip, names: ["final_layer_norm.weight"], to: clipFile, dtype: .f32, keyPrefix: "text_model.")
        XCTAssertEqual(try TensorArchive(contentsOf: clipFile).names, ["text_model.final_layer_norm.weight"])
        try loadChangedWeights(into: clipBase, from: clipFile)
        assertSameParameters(clipBase, clip)

        // A key the model does not have: an error naming it, and nothing changes.
        let bad = dir.appendingPathComponent("bad.safetensors")
        try Tensor.save(["conv_in.bias": Tensor.zeros([16]), "no.such.weight": Tensor.zeros([2])], to: bad)
        let untouched = try tinyUNet()
        expectError(try loadChangedWeights(into: untouched, from: bad), mentioning: [bad.path, "no.such.weight"], "unknown key")
        assertSameParameters(untouched, base)
        expectError(try saveWeights(of: base, names: ["nope"], to: bad), mentioning: ["nope"], "unknown name")
        expectError(try changedParameterNames(base, reference: clip), mentioning: ["reference"], "other model")
    }

    // MARK: Files for tools/verify_saving.py

    /// With SCORE_EXPORT_DIR set, writes the files tools/verify_saving.py checks with diffusers:
    /// a full UNet folder (F32 and F16) of an edited tiny UNet, its changed tensors, an edited CLIP
    /// text-encoder folder, a LoRA file for UNet and text encoder, and Swift's outputs (edited,
    /// LoRA-merged UNet; edited CLIP) on fixed inputs.
    func testExportForDiffusers() throws {
        guard let path = ProcessInfo.processInfo.environment["SCORE_EXPORT_DIR"] else {
            throw XCTSkip("set SCORE_EXPORT_DIR to write the files tools/verify_saving.py checks")
        }
        let dir = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let base = try tinyUNet(), edited = try tinyUNet()
        perturb(edited, [toK + ".weight", toV + ".weight", "conv_in.bias"])
        try edited.save(to: dir.appendingPathComponent("unet_f32"))
        try edited.save(to: dir.appendingPathComponent("unet_f16"), dtype: .f16)
        try saveWeights(of: edited, names: try changedParameterNames(edited, reference: base), to: dir.appendingPathComponent("unet_changed.safetensors"))

        var factors = LoRATests.factors(seed: 7)
        for key in factors.keys { factors[key]!.up = factors[key]!.up * 0.05 }
        var g = RandomGenerator(seed: 8)
        let textFactors = ["encoder.layers.1.self_attn.v_proj": LoRAFactors(down: g.normal([2, 32]), up: g.normal([32, 2]) * 0.05, alpha: 4)]
        try LoRA([.unet: factors, .textEncoder: textFactors]).write(to: dir.appendingPathComponent("pytorch_lora_weights.safetensors"),
                                                                  layout: .peft)
        let merged = try tinyUNet()
        try LoRA([.unet: factors]).merge(into: [.unet: merged])

        let clip = try CLIPTextModel.load(from: Fixtures.folder("text/clip_sd1/text_encoder"))
        perturb(clip, ["encoder.layers.1.self_attn.v_proj.weight", "final_layer_norm.bias"])
        try clip.save(to: dir.appendingPathComponent("text_encoder"))
        let ids = [[0, 5, 17, 301, 2, 1, 1], [0, 42, 7, 2, 1, 1, 1]]

        let io = try Fixtures.io("unet_sd1")
        let sample = try io.tensor("sample"), context = try io.tensor("encoder_hidden_states")
        let timestep = try io.tensor("timestep").scalars
        try noGrad {
            try Tensor.save([
                "sample": sample, "timestep": Tensor(shape: [timestep.count], scalars: timestep),
                "encoder_hidden_states": context,
                "out_edited": edited(sample, timestep: timestep, encoderHiddenStates: context),
                "out_merged": merged(sample, timestep: timestep, encoderHiddenStates: context),
                "clip_input_ids": Tensor(shape: [2, 7], scalars: ids.flatMap { $0.map(Float.init) }),
                "clip_out": clip(inputIds: ids).lastHiddenState,
            ], to: dir.appendingPathComponent("swift_outputs.safetensors"))
        }
        print("wrote \(dir.path)")
    }
}
