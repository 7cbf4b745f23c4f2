import Foundation
import XCTest
@testable import Diffusion
import NN
import SafeTensors
import Tensor

/// LoRA files in the diffusers/PEFT and kohya layouts: keys, metadata, reading back, merging, and
/// the errors for files that do not fit the model. tools/verify_lora.py checks the same layouts
/// against diffusers (LoRAParityTests replays its fixtures).
final class LoRATests: XCTestCase {
    static let toK = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    static let toV = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
    static let projIn = "down_blocks.0.attentions.0.proj_in"  // a 1×1 convolution in SD1-style UNets
    static let conv1 = "down_blocks.0.resnets.0.conv1"  // 3×3, 16 → 16
    let (toK, toV, projIn, conv1) = (LoRATests.toK, LoRATests.toV, LoRATests.projIn, LoRATests.conv1)
    let qProj = "encoder.layers.0.self_attn.q_proj"

    func tinyUNet() throws -> UNet2DConditionModel { try UNet2DConditionModel(directory: Fixtures.folder("unet_sd1")) }
    func tinyCLIP() throws -> CLIPTextModel { try CLIPTextModel.load(from: Fixtures.folder("text/clip_sd1/text_encoder")) }

    static func factors(seed: UInt64) -> [String: LoRAFactors] {
        var g = RandomGenerator(seed: seed)
        return [
            toK: LoRAFactors(down: g.normal([4, 24]), up: g.normal([16, 4]), alpha: 4),     // to_k: 24 (cross) → 16
            toV: LoRAFactors(down: g.normal([4, 24]), up: g.normal([16, 4]), alpha: 4),     // up block: 24 → 16
            projIn: LoRAFactors(down: g.normal([2, 16, 1, 1]), up: g.normal([16, 2, 1, 1]), alpha: 1),
            conv1: LoRAFactors(down: g.normal([3, 16, 3, 3]), up: g.normal([16, 3, 1, 1]), alpha: 6),  // LoCon
        ]
    }

    func assertSameFactors(_ read: LoRA, _ written: [LoRAComponent: [String: LoRAFactors]], file: StaticString = #filePath, line: UInt = #line) {
        for (component, modules) in written {
            XCTAssertEqual(Set(read.modules[component]?.keys ?? [:].keys), Set(modules.keys), "\(component)", file: file, line: line)
            for (path, lora) in modules {
                guard let got = read.modules[component]?[path] else { continue }
                assertSameBits(got.down, lora.down, path, file: file, line: line)
                assertSameBits(got.up, lora.up, path, file: file, line: line)
                XCTAssertEqual(got.alpha, lora.alpha, path, file: file, line: line)
            }
        }
    }

    func testPEFTFileHasDiffusersKeysAndConfigAndReadsBack() throws {
        let dir = try temporaryDirectory(self)
        let unetFactors = Self.factors(seed: 2)
        var g = RandomGenerator(seed: 3)
        let textFactors = [qProj: LoRAFactors(down: g.normal([4, 32]), up: g.normal([32, 4]), alpha: 8)]
        let file = dir.appendingPathComponent("pytorch_lora_weights.safetensors")
        try LoRA([.unet: unetFactors, .textEncoder: textFactors]).write(to: file, layout: .peft, metadata: ["score_method": "uce"])

        let archive = try TensorArchive(contentsOf: file)
        XCTAssertEqual(Set(archive.names), Set([toK, toV, projIn, conv1].flatMap { ["unet.\($0).lora_A.weight", "unet.\($0).lora_B.weight"] } + [
            "text_encoder.text_model.\(qProj).lora_A.weight", "text_encoder.text_model.\(qProj).lora_B.weight",
        ]))
        XCTAssertEqual(try archive.shape("unet.\(toK).lora_A.weight"), [4, 24])
        XCTAssertEqual(try archive.shape("unet.\(toK).lora_B.weight"), [16, 4])
        XCTAssertEqual(try archive.shape("unet.\(conv1).lora_A.weight"), [3, 16, 3, 3])
        XCTAssertEqual(try archive.shape("unet.\(projIn).lora_B.weight"), [16, 2, 1, 1])
        XCTAssertEqual(archive.metadata["format"], "pt")
        XCTAssertEqual(archive.metadata["score_method"], "uce")
        let config = try JSONSerialization.jsonObject(with: Data(archive.metadata["lora_adapter_metadata"]!.utf8)) as! [String: Any]
        XCTAssertEqual(config["unet.r"] as? Int, 4)
        XCTAssertEqual(config["unet.lora_alpha"] as? Int, 4)
        XCTAssertEqual(config["unet.rank_pattern"] as? [String: Int], [projIn: 2, conv1: 3])
        XCTAssertEqual(config["unet.alpha_pattern"] as? [String: Int], [projIn: 1, conv1: 6])
        XCTAssertEqual(config["unet.target_modules"] as? [String], [toK, projIn, toV, conv1].sorted())
        XCTAssertEqual(config["text_encoder.r"] as? Int, 4)
        XCTAssertEqual(config["text_encoder.lora_alpha"] as? Int, 8)
        // Without `text_model.`: PEFT matches suffixes, so transformers 4 and 5 both find the module.
        XCTAssertEqual(config["text_encoder.target_modules"] as? [String], [qProj])

        let read = try LoRA.read(from: file, for: [.unet: tinyUNet(), .textEncoder: tinyCLIP()])
        assertSameFactors(read, [.unet: unetFactors, .textEncoder: textFactors])

        expectError(try LoRA([.unet: [toK: LoRAFactors(down: g.normal([4, 24]), up: g.normal([16, 3]), alpha: 1)]])
                        .write(to: dir.appendingPathComponent("bad.safetensors"), layout: .peft),
                    mentioning: [toK, "[16, 3]"], "rank mismatch")
    }

    func testKohyaFileHasFlattenedKeysAndAlphasAndReadsBack() throws {
        let dir = try temporaryDirectory(self)
        let unetFactors = Self.factors(seed: 4)
        var g = RandomGenerator(seed: 5)
        let textFactors = [qProj: LoRAFactors(down: g.normal([2, 32]), up: g.normal([32, 2]), alpha: 1)]
        let file = dir.appendingPathComponent("kohya.safetensors")
        try LoRA([.unet: unetFactors, .textEncoder: textFactors]).write(to: file, layout: .kohya)

        let archive = try TensorArchive(contentsOf: file)
        let flatK = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
        let flatConv = "lora_unet_down_blocks_0_resnets_0_conv1"
        let flatQ = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        XCTAssertEqual(archive.names.count, 5 * 3)
        for key in [flatK, flatConv, flatQ] {
            XCTAssert(archive.contains("\(key).lora_down.weight") && archive.contains("\(key).lora_up.weight"), key)
        }
        XCTAssertEqual(try archive.shape("\(flatK).alpha"), [])
        XCTAssertEqual(try archive.tensor("\(flatConv).alpha").scalars, [6])
        XCTAssertEqual(try archive.shape("\(flatConv).lora_down.weight"), [3, 16, 3, 3])
        XCTAssertEqual(archive.metadata["ss_network_module"], "networks.lora")

        let read = try LoRA.read(from: file, for: [.unet: tinyUNet(), .textEncoder: tinyCLIP()])
        assertSameFactors(read, [.unet: unetFactors, .textEncoder: textFactors])
    }

    func testMissingAlphaMeansScaleOneAndProcessorKeysAreRead() throws {
        let dir = try temporaryDirectory(self)
        var g = RandomGenerator(seed: 6)
        let attention = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
        let (a, b, c, d) = (g.normal([2, 16]), g.normal([16, 2]), g.normal([3, 16]), g.normal([16, 3]))
        let file = dir.appendingPathComponent("processors.safetensors")
        // diffusers' older attention-processor form, and a linear LoRA on SD1's 1×1 proj_in.
        try writeSafeTensors([
            TensorToWrite(name: "unet.\(attention).processor.to_q_lora.down.weight", shape: a.shape, data: .floats(a.scalars, storedAs: .f32)),
            TensorToWrite(name: "unet.\(attention).processor.to_q_lora.up.weight", shape: b.shape, data: .floats(b.scalars, storedAs: .f32)),
            TensorToWrite(name: "\(attention).processor.to_out_lora.down.weight", shape: a.shape, data: .floats(a.scalars, storedAs: .f32)),
            TensorToWrite(name: "\(attention).processor.to_out_lora.up.weight", shape: b.shape, data: .floats(b.scalars, storedAs: .f16)),
            TensorToWrite(name: "unet.\(projIn).lora_A.weight", shape: c.shape, data: .floats(c.scalars, storedAs: .f32)),
            TensorToWrite(name: "unet.\(projIn).lora_B.weight", shape: d.shape, data: .floats(d.scalars, storedAs: .f32)),
        ], to: file)
        let read = try LoRA.read(from: file, for: [.unet: tinyUNet()])
        XCTAssertEqual(Set(read.modules[.unet]!.keys), ["\(attention).to_q", "\(attention).to_out.0", projIn])
        XCTAssertEqual(read.modules[.unet]!["\(attention).to_q"]!.alpha, 2, "alpha = rank without one")
        XCTAssertEqual(read.modules[.unet]![projIn]!.down.shape, [3, 16, 1, 1])
        XCTAssertEqual(read.modules[.unet]![projIn]!.up.shape, [16, 3, 1, 1])
        XCTAssertEqual(read.modules[.unet]![projIn]!.scale, 1)
    }

    func testMergeAddsScaledProduct() throws {
        let unet = try tinyUNet(), reference = try tinyUNet()
        var factors = Self.factors(seed: 5)
        factors[toK]!.alpha = 2
        try LoRA([.unet: factors]).merge(into: [.unet: unet], scale: 0.5)
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
            assertClose(w, Tensor(shape: w0.shape, scalars: expected), tolerance: 1e-5, path)
        }
        for name in base.keys where !factors.keys.contains(where: { name == $0 + ".weight" }) {
            assertSameBits(merged[name]!, base[name]!, name)
        }
        // Unknown module or wrong shape: an error, and no weight changes.
        let untouched = try tinyUNet()
        var g = RandomGenerator(seed: 6)
        expectError(try LoRA([.unet: [toK: LoRAFactors(down: g.normal([2, 24]), up: g.normal([16, 2]), alpha: 1),
                                      "down_blocks.9.nothing": LoRAFactors(down: g.normal([2, 24]), up: g.normal([16, 2]), alpha: 1)]])
                        .merge(into: [.unet: untouched]),
                    mentioning: ["down_blocks.9.nothing.weight"], "unknown module")
        expectError(try LoRA([.unet: [toK: LoRAFactors(down: g.normal([2, 32]), up: g.normal([16, 2]), alpha: 1)]]).merge(into: [.unet: untouched]),
                    mentioning: [toK, "[16, 24]", "[16, 32]"], "shape")
        let other = untouched.stateDict()
        for (name, tensor) in reference.stateDict() { assertSameBits(other[name]!, tensor, name) }
    }

    func testFilesThatDoNotFitAreRefusedNamingFileAndKey() throws {
        let dir = try temporaryDirectory(self)
        let unet = try tinyUNet()
        var g = RandomGenerator(seed: 9)
        func file(_ name: String, _ tensors: [(String, Tensor)], dtype: DType = .f32) throws -> URL {
            let url = dir.appendingPathComponent(name)
            try writeSafeTensors(tensors.map { TensorToWrite(name: $0.0, shape: $0.1.shape, data: .floats($0.1.scalars, storedAs: dtype)) }, to: url)
            return url
        }
        let (a, b) = (g.normal([2, 24]), g.normal([16, 2]))
        let unknown = try file("unknown.safetensors", [("unet.down_blocks.0.nothing.lora_A.weight", a), ("unet.down_blocks.0.nothing.lora_B.weight", b)])
        expectError(try LoRA.read(from: unknown, for: [.unet: unet]),
                    mentioning: ["unknown.safetensors", "unet.down_blocks.0.nothing.lora_A.weight", "no weight down_blocks.0.nothing.weight"], "unknown PEFT module")
        let kohyaUnknown = try file("kohya-unknown.safetensors", [("lora_unet_down_blocks_0_nothing.lora_down.weight", a),
                                                                   ("lora_unet_down_blocks_0_nothing.lora_up.weight", b)])
        expectError(try LoRA.read(from: kohyaUnknown, for: [.unet: unet]),
                    mentioning: ["kohya-unknown.safetensors", "lora_unet_down_blocks_0_nothing.lora_down.weight", "down_blocks_0_nothing"], "unknown kohya module")
        let shape = try file("shape.safetensors", [("unet.\(toK).lora_A.weight", g.normal([2, 32])), ("unet.\(toK).lora_B.weight", b)])
        expectError(try LoRA.read(from: shape, for: [.unet: unet]),
                    mentioning: ["shape.safetensors", "unet.\(toK).lora_A.weight", "[16, 32]", "[16, 24]"], "shape mismatch")
        var poisoned = a.scalars
        poisoned[3] = .nan
        let nan = try file("nan.safetensors", [("unet.\(toK).lora_A.weight", Tensor(shape: a.shape, scalars: poisoned)), ("unet.\(toK).lora_B.weight", b)],
                           dtype: .f16)
        expectError(try LoRA.read(from: nan, for: [.unet: unet]), mentioning: ["nan.safetensors", "unet.\(toK).lora_A.weight", "nan", "element 3"], "NaN")
        let alone = try file("alone.safetensors", [("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight", b)])
        expectError(try LoRA.read(from: alone, for: [.unet: unet]), mentioning: ["alone.safetensors", "lora_up.weight", "no down"], "no partner")
        let loha = try file("loha.safetensors", [("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_a", b)])
        expectError(try LoRA.read(from: loha, for: [.unet: unet]), mentioning: ["loha.safetensors", "hada_w1_a", "LoHa"], "LoHa")
        let stranger = try file("stranger.safetensors", [("model.diffusion_model.input_blocks.0.0.weight", b)])
        expectError(try LoRA.read(from: stranger, for: [.unet: unet]), mentioning: ["stranger.safetensors", "model.diffusion_model", "not a LoRA key"], "not LoRA")
        let text = try file("text.safetensors", [("text_encoder.text_model.\(qProj).lora_A.weight", g.normal([2, 32])),
                                                  ("text_encoder.text_model.\(qProj).lora_B.weight", g.normal([32, 2]))])
        expectError(try LoRA.read(from: text, for: [.unet: unet]), mentioning: ["text.safetensors", "no text_encoder"], "no text encoder")
        let empty = try file("empty.safetensors", [])
        expectError(try LoRA.read(from: empty, for: [.unet: unet]), mentioning: ["empty.safetensors", "no LoRA factors"], "empty")
    }
}

/// Swift's merge of the committed LoRA files (written by the exporter, LoRAFixtureTests) against
/// diffusers' `load_lora_weights` + `fuse_lora` of the same files (tools/verify_lora.py): the
/// same modules, the same fused weights, the same UNet output.
final class LoRAParityTests: XCTestCase {
    func testMergeMatchesDiffusersFuseLoRA() throws {
        let io = try Fixtures.io("unet_sd1")
        let sample = try io.tensor("sample"), context = try io.tensor("encoder_hidden_states")
        let timestep = try io.tensor("timestep").scalars
        for layout in LoRALayout.allCases {
            let unet = try UNet2DConditionModel(directory: Fixtures.folder("unet_sd1"))
            let lora = try LoRA.read(from: Fixtures.folder("lora/\(layout).safetensors"), for: [.unet: unet])
            try lora.merge(into: [.unet: unet])
            let reference = try TensorArchive(contentsOf: Fixtures.folder("lora/diffusers_\(layout).safetensors"))
            XCTAssertEqual(Set(reference.names.filter { $0 != "out" }), Set(lora.modules[.unet]!.keys.map { $0 + ".weight" }), "\(layout)")
            let weights = unet.stateDict()
            for name in reference.names where name != "out" {
                assertClose(weights[name], try reference.tensor(name), tolerance: 1e-6, "\(layout): \(name)")
            }
            let out = noGrad { unet(sample, timestep: timestep, encoderHiddenStates: context) }
            assertClose(out, try reference.tensor("out"), tolerance: 1e-5, "\(layout): output")
        }
    }
}
