import Diffusion
import Erasure
import Foundation
import NN
import Tensor
import XCTest

/// The LoRA files diffusers checked (Tests/DiffusionTests/Fixtures/lora, tools/verify_lora.py):
/// the tiny SD1 UNet fixture with one module of every kind LoRA reaches fine-tuned (full-rank
/// changes) and a bias changed, exported at rank 4 in both layouts. DiffusionTests'
/// LoRAParityTests merges them and compares with diffusers' fused weights; the test here checks
/// that the exporter still writes what diffusers checked.
final class LoRAFixtureTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("DiffusionTests/Fixtures")

    static let changed = [
        "conv_in", "conv_out", "time_embedding.linear_1",
        "down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.time_emb_proj", "down_blocks.0.downsamplers.0.conv",
        "down_blocks.1.resnets.0.conv_shortcut",
        "down_blocks.0.attentions.0.proj_in", "down_blocks.0.attentions.0.proj_out",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k", "mid_block.resnets.1.conv2",
        "up_blocks.0.upsamplers.0.conv", "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_v",
    ]

    /// The export behind the fixture files.
    static func export() throws -> (LoRA, LoRAExtraction.Report) {
        let folder = fixtures.appendingPathComponent("unet_sd1")
        let base = try UNet2DConditionModel(directory: folder), erased = try UNet2DConditionModel(directory: folder)
        var g = RandomGenerator(seed: 2026)
        let parameters = erased.stateDict()
        noGrad {
            for name in changed.map({ $0 + ".weight" }) + ["conv_in.bias"] {
                let p = parameters[name]!
                p.assign(p + g.normal(p.shape, std: 0.05))
            }
        }
        return try LoRAExtraction.extract(erased: erased, base: base, choice: .rank(4))
    }

    /// With SCORE_LORA_FIXTURES set, writes peft.safetensors and kohya.safetensors there (then run
    /// tools/verify_lora.py on that folder). Alpha is r/2 with B doubled (the same product), so
    /// the parity check covers the alpha/r scale each layout stores.
    func testWriteFixtures() throws {
        guard let path = ProcessInfo.processInfo.environment["SCORE_LORA_FIXTURES"] else {
            throw XCTSkip("set SCORE_LORA_FIXTURES to write the LoRA files tools/verify_lora.py checks")
        }
        let folder = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let (exported, report) = try Self.export()
        let lora = LoRA(exported.modules.mapValues { modules in
            modules.mapValues { LoRAFactors(down: $0.down, up: $0.up * 2, alpha: Float($0.rank) / 2) }
        })
        for layout in LoRALayout.allCases {
            try lora.write(to: folder.appendingPathComponent("\(layout).safetensors"), layout: layout)
        }
        print("wrote \(folder.path): \(lora.count) modules, relative error \(report.relative_error)")
    }

    /// The committed files hold what the exporter writes today (products B·A, free of the SVD's
    /// sign choices, within Float32 rounding).
    func testExporterStillWritesTheCheckedFixtures() throws {
        let (lora, report) = try Self.export()
        XCTAssertEqual(Set(lora.modules[.unet]!.keys), Set(Self.changed))
        XCTAssertEqual(report.omitted.map(\.name), ["conv_in.bias"])
        let unet = try UNet2DConditionModel(directory: Self.fixtures.appendingPathComponent("unet_sd1"))
        for layout in LoRALayout.allCases {
            let committed = try LoRA.read(from: Self.fixtures.appendingPathComponent("lora/\(layout).safetensors"), for: [.unet: unet])
            XCTAssertEqual(Set(committed.modules[.unet]!.keys), Set(Self.changed), "\(layout)")
            for (path, factors) in lora.modules[.unet]! {
                guard let stored = committed.modules[.unet]?[path] else { continue }
                XCTAssertEqual(stored.rank, factors.rank, path)
                XCTAssertEqual(stored.scale, 0.5, path)
                let (a, b) = ((stored.product() * stored.scale).scalars, factors.product().scalars)
                let scale = b.map(abs).max()!
                XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()! / scale, 1e-5, "\(layout): \(path)")
            }
        }
    }
}
