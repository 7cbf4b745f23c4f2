import Foundation
import XCTest
import Diffusion
import NN
import Tensor

/// AutoencoderKL against diffusers (float64 reference) on a tiny random model.
final class VAEParityTests: XCTestCase {
    func testEncodeMatchesDiffusers() throws {
        let vae = try AutoencoderKL(directory: Fixtures.folder("vae"))
        let io = try Fixtures.io("vae")
        let image = try io.tensor("image")
        image.requiresGrad = true
        let posterior = vae.encode(image)
        assertClose(posterior.mean, try io.tensor("mean"), tolerance: 1e-4, "mean")
        assertClose(posterior.logvar, try io.tensor("logvar"), tolerance: 1e-4, "logvar")
        posterior.mean.backward(try io.tensor("gmean"))
        assertClose(image.grad, try io.tensor("grad.image"), tolerance: 1e-3, "d mean / d image")
    }

    func testDecodeMatchesDiffusers() throws {
        let vae = try AutoencoderKL(directory: Fixtures.folder("vae"))
        let io = try Fixtures.io("vae")
        let latent = try io.tensor("latent")
        latent.requiresGrad = true
        let decoded = vae.decode(latent)
        assertClose(decoded, try io.tensor("decoded"), tolerance: 1e-4, "decoded")
        decoded.backward(try io.tensor("gdecoded"))
        assertClose(latent.grad, try io.tensor("grad.latent"), tolerance: 1e-3, "d decoded / d latent")
    }

    func testSamplingUsesMeanAndStandardDeviation() throws {
        let vae = try AutoencoderKL(directory: Fixtures.folder("vae"))
        let io = try Fixtures.io("vae")
        let posterior = noGrad { vae.encode(try! io.tensor("image")) }
        var generator = RandomGenerator(seed: 42)
        let sample = posterior.sample(generator: &generator)
        var replay = RandomGenerator(seed: 42)
        let noise = replay.normal(posterior.mean.shape)
        let expected = posterior.mean + (posterior.logvar * 0.5).exp() * noise
        XCTAssertEqual(sample.scalars, expected.scalars)
        XCTAssertEqual(vae.scalingFactor, 0.18215)
        XCTAssertEqual(posterior.mode.scalars, posterior.mean.scalars)
        XCTAssertEqual(posterior.klToStandardNormal().shape, [2])
    }

    func testParameterNamesAreTheCheckpointKeys() throws {
        let folder = Fixtures.folder("vae")
        var generator = RandomGenerator(seed: 1)
        let vae = try AutoencoderKL(config: AutoencoderKLConfig(contentsOf: folder.appendingPathComponent("config.json")),
                                    generator: &generator)
        let names = vae.namedParameters().map(\.name)
        XCTAssertEqual(Set(names).count, names.count, "duplicate parameter names")
        let checkpoint = try TensorArchive(contentsOf: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        XCTAssertEqual(Set(names), Set(checkpoint.names))
    }

    func testLegacyAttentionKeysLoad() throws {
        let folder = Fixtures.folder("vae")
        let legacyURL = folder.appendingPathComponent("legacy.safetensors")
        let legacy = try TensorArchive(contentsOf: legacyURL)
        XCTAssertTrue(legacy.contains("encoder.mid_block.attentions.0.query.weight"))
        XCTAssertEqual(try legacy.shape("decoder.mid_block.attentions.0.proj_attn.weight"), [16, 16, 1, 1])

        var generator = RandomGenerator(seed: 1)
        let vae = try AutoencoderKL(config: AutoencoderKLConfig(contentsOf: folder.appendingPathComponent("config.json")),
                                    generator: &generator)
        try loadModule(vae, from: legacyURL)
        let reference = try AutoencoderKL(directory: folder)
        XCTAssertEqual(vae.stateDict().mapValues(\.scalars), reference.stateDict().mapValues(\.scalars))

        // Without the rule the old names are unexpected and the new ones missing.
        var fresh = RandomGenerator(seed: 1)
        let strictVAE = try AutoencoderKL(config: vae.config, generator: &fresh)
        XCTAssertThrowsError(try loadModule(strictVAE, from: legacyURL, rules: [])) { error in
            let e = error as! CheckpointError
            XCTAssertTrue(e.unexpected.contains("encoder.mid_block.attentions.0.query.weight"))
            XCTAssertTrue(e.missing.contains("encoder.mid_block.attentions.0.to_q.weight"))
        }
    }

    func testKeyRewriteRules() {
        let legacy = KeyRewriteRule.legacyAttentionNames
        XCTAssertEqual(legacy.apply("decoder.mid_block.attentions.0.proj_attn.bias"), .rename("decoder.mid_block.attentions.0.to_out.0.bias"))
        XCTAssertEqual(legacy.apply("encoder.mid_block.attentions.0.key.weight"), .rename("encoder.mid_block.attentions.0.to_k.weight"))
        XCTAssertEqual(legacy.apply("encoder.mid_block.attentions.0.to_k.weight"), .noMatch)
        XCTAssertEqual(legacy.apply("key.weight"), .noMatch)
        XCTAssertEqual(KeyRewriteRule.stripPrefix("text_model.").apply("text_model.encoder.x"), .rename("encoder.x"))
        XCTAssertEqual(KeyRewriteRule.ignoreSuffix("position_ids").apply("embeddings.position_ids"), .ignore)
    }

    func testConfigDefaultsAndSDValues() throws {
        let json = """
        {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
         "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
         "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
         "sample_size": 512, "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}
        """
        let config = try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data(json.utf8))
        XCTAssertNoThrow(try config.validate())
        XCTAssertEqual(config.scalingFactor, 0.18215)
        XCTAssertEqual(config.downscaleFactor, 8)
        XCTAssertTrue(config.useQuantConv && config.usePostQuantConv && config.midBlockAddAttention)
        let bad = try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data(#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#.utf8))
        XCTAssertThrowsError(try bad.validate()) { error in
            XCTAssertEqual(error as? DiffusionConfigError, .unsupported(field: "down_block_types", value: "AttnDownEncoderBlock2D"))
        }
    }
}
