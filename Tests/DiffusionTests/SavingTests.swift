import Foundation
import XCTest
@testable import Diffusion
import NN
import SafeTensors
import Tensor

/// Saving models in diffusers layout, changed-tensors files, LoRA files and merging.
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
        let saved = try saveChangedWeights(of: edited, reference: base, to: file, metadata: ["score_method": "test"])
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

    // MARK: LoRA

    func loraFactors(seed: UInt64) -> [String: LoRAFactors] {
        var g = RandomGenerator(seed: seed)
        return [
            toK: LoRAFactors(down: g.normal([4, 24]), up: g.normal([16, 4]), alpha: 4),     // to_k: 24 (cross) → 16
            toV: LoRAFactors(down: g.normal([4, 24]), up: g.normal([16, 4]), alpha: 4),     // up block: 24 → 16
            projIn: LoRAFactors(down: g.normal([2, 16, 1, 1]), up: g.normal([16, 2, 1, 1]), alpha: 1),
        ]
    }

    func testLoRAFileHasDiffusersPEFTKeysAndConfig() throws {
        let dir = try temporaryDirectory(self)
        let unetFactors = loraFactors(seed: 2)
        var g = RandomGenerator(seed: 3)
        let textFactors = ["encoder.layers.0.self_attn.q_proj": LoRAFactors(down: g.normal([4, 32]), up: g.normal([32, 4]), alpha: 8)]
        let file = dir.appendingPathComponent("pytorch_lora_weights.safetensors")
        try saveLoRA([.unet: unetFactors, .textEncoder: textFactors], to: file)

        let archive = try TensorArchive(contentsOf: file)
        XCTAssertEqual(Set(archive.names), [
            "unet.\(toK).lora_A.weight", "unet.\(toK).lora_B.weight",
            "unet.\(toV).lora_A.weight", "unet.\(toV).lora_B.weight",
            "unet.\(projIn).lora_A.weight", "unet.\(projIn).lora_B.weight",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
        ])
        XCTAssertEqual(try archive.shape("unet.\(toK).lora_A.weight"), [4, 24])
        XCTAssertEqual(try archive.shape("unet.\(toK).lora_B.weight"), [16, 4])
        XCTAssertEqual(try archive.shape("unet.\(projIn).lora_B.weight"), [16, 2, 1, 1])
        XCTAssertEqual(archive.metadata["format"], "pt")
        let config = try JSONSerialization.jsonObject(with: Data(archive.metadata["lora_adapter_metadata"]!.utf8)) as! [String: Any]
        XCTAssertEqual(config["unet.r"] as? Int, 4)
        XCTAssertEqual(config["unet.lora_alpha"] as? Int, 4)
        XCTAssertEqual(config["unet.rank_pattern"] as? [String: Int], [projIn: 2])
        XCTAssertEqual(config["unet.alpha_pattern"] as? [String: Int], [projIn: 1])
        XCTAssertEqual(config["unet.target_modules"] as? [String], [toK, projIn, toV].sorted())
        XCTAssertEqual(config["text_encoder.r"] as? Int, 4)
        XCTAssertEqual(config["text_encoder.lora_alpha"] as? Int, 8)
        // Without `text_model.`: PEFT matches suffixes, so transformers 4 and 5 both find the module.
        XCTAssertEqual(config["text_encoder.target_modules"] as? [String], ["encoder.layers.0.self_attn.q_proj"])

        // Read back: same factors, alphas from the metadata, CLIP paths without `text_model.`.
        let loaded = try loadLoRA(from: file)
        XCTAssertEqual(Set(loaded[.unet]!.keys), Set(unetFactors.keys))
        for (path, lora) in unetFactors {
            assertSameBits(loaded[.unet]![path]!.down, lora.down, path)
            assertSameBits(loaded[.unet]![path]!.up, lora.up, path)
            XCTAssertEqual(loaded[.unet]![path]!.alpha, lora.alpha, path)
        }
        XCTAssertEqual(loaded[.textEncoder]?["encoder.layers.0.self_attn.q_proj"]?.alpha, 8)

        expectError(try saveLoRA([.unet: [toK: LoRAFactors(down: g.normal([4, 24]), up: g.normal([16, 3]), alpha: 1)]],
                                 to: dir.appendingPathComponent("bad.safetensors")),
                    mentioning: [toK, "[16, 3]"], "rank mismatch")
    }

    func testMergeLoRAAddsScaledProduct() throws {
        let unet = try tinyUNet(), reference = try tinyUNet()
        var factors = loraFactors(seed: 5)
        factors[toK]!.alpha = 2
        try mergeLoRA(factors, into: unet, scale: 0.5)
        let merged = unet.stateDict(), base = reference.stateDict()
        for (path, lora) in factors {
            let w = merged[path + ".weight"]!, w0 = base[path + ".weight"]!
            let (out, r) = (lora.up.shape[0], lora.rank)
            let inCount = lora.down.count / r
            // W' = W + 0.5 · (alpha/r) · B·A, written out element by element.
            var expected = w0.scalars
            let a = lora.down.scalars, b = lora.up.scalars
            for o in 0..<out {
                for i in 0..<inCount {
                    var sum: Float = 0
                    for k in 0..<r { sum += b[o * r + k] * a[k * inCount + i] }
                    expected[o * inCount + i] += 0.5 * lora.alpha / Float(r) * sum
                }
            }
            assertClose(w, Tensor(shape: w0.shape, scalars: expected), tolerance: 1e-6, path)
        }
        for name in base.keys where !factors.keys.contains(where: { name == $0 + ".weight" }) {
            assertSameBits(merged[name]!, base[name]!, name)
        }
        // Unknown module or wrong shape: an error, and no weight changes.
        let untouched = try tinyUNet()
        var g = RandomGenerator(seed: 6)
        expectError(try mergeLoRA([toK: LoRAFactors(down: g.normal([2, 24]), up: g.normal([16, 2]), alpha: 1),
                                   "down_blocks.9.nothing": LoRAFactors(down: g.normal([2, 24]), up: g.normal([16, 2]), alpha: 1)],
                                  into: untouched),
                    mentioning: ["down_blocks.9.nothing.weight"], "unknown module")
        expectError(try mergeLoRA([toK: LoRAFactors(down: g.normal([2, 32]), up: g.normal([16, 2]), alpha: 1)], into: untouched),
                    mentioning: [toK, "[16, 24]", "[16, 32]"], "shape")
        assertSameParameters(untouched, reference)
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
        try saveChangedWeights(of: edited, reference: base, to: dir.appendingPathComponent("unet_changed.safetensors"))

        var factors = loraFactors(seed: 7)
        for key in factors.keys { factors[key]!.up = factors[key]!.up * 0.05 }
        var g = RandomGenerator(seed: 8)
        let textFactors = ["encoder.layers.1.self_attn.v_proj": LoRAFactors(down: g.normal([2, 32]), up: g.normal([32, 2]) * 0.05, alpha: 4)]
        try saveLoRA([.unet: factors, .textEncoder: textFactors], to: dir.appendingPathComponent("pytorch_lora_weights.safetensors"))
        let merged = try tinyUNet()
        try mergeLoRA(factors, into: merged)

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
