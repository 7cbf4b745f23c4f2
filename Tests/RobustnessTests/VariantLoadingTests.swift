import Diffusion
import Erasure
import Evaluation
import Foundation
import SafeTensors
import Tensor
import XCTest

/// `--variant` wherever a folder is read (ModelLoader, so erase, evaluate, attack and generate),
/// with diffusers' rules, and `--save-variant` for a `--full` erased model.
final class VariantLoadingTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("score-variants-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    /// The tiny diffusers pipeline of DiffusionTests' fixtures, its UNet stored only as `variant`.
    func pipelineFolder(unetVariant variant: String, dtype: DType) throws -> URL {
        let fixtures = ParserFuzzTests.fixtures, fm = FileManager.default
        let pipeline = folder.appendingPathComponent("tiny-sd")
        try fm.createDirectory(at: pipeline.appendingPathComponent("vae"), withIntermediateDirectories: true)
        for part in ["unet", "scheduler", "model_index.json"] {
            try fm.copyItem(at: fixtures.appendingPathComponent("pipeline/\(part)"), to: pipeline.appendingPathComponent(part))
        }
        for part in ["text_encoder", "tokenizer"] {
            try fm.copyItem(at: fixtures.appendingPathComponent("text/clip_sd1/\(part)"), to: pipeline.appendingPathComponent(part))
        }
        for name in ["config.json", "diffusion_pytorch_model.safetensors"] {
            try fm.copyItem(at: fixtures.appendingPathComponent("vae/\(name)"), to: pipeline.appendingPathComponent("vae/\(name)"))
        }
        let unetFolder = pipeline.appendingPathComponent("unet")
        let unet = try UNet2DConditionModel(directory: unetFolder)
        try fm.removeItem(at: unetFolder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        try unet.save(to: unetFolder, dtype: dtype, variant: variant)
        return pipeline
    }

    func assertThrows(_ body: @autoclosure () throws -> Any, mentioning parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            for part in parts { XCTAssert("\(error)".contains(part), "'\(part)' not in: \(error)", file: file, line: line) }
        }
    }

    func testVariantsLoadAsDiffusersDoesAndErasedFoldersRememberTheirs() throws {
        let base = try pipelineFolder(unetVariant: "fp16", dtype: .f16)
        // Only the fp16 UNet: without --variant, diffusers' error (naming the variant to give).
        assertThrows(try ModelLoader.load(base.path), mentioning: ["unet", "holds the variant fp16", "--variant fp16"])
        assertThrows(try ModelLoader.load(base.path, variant: "bf16"), mentioning: ["no component", "bf16"])
        assertThrows(try ModelLoader.load(nil, variant: "fp16"), mentioning: ["--variant", "give --model"])
        let loaded = try ModelLoader.load(base.path, variant: "fp16")
        let stored = try TensorArchive(contentsOf: base.appendingPathComponent("unet/diffusion_pytorch_model.fp16.safetensors"))
        for (name, p) in loaded.pipeline.unet.namedParameters() { XCTAssertEqual(p.scalars, try stored.tensor(name).scalars, name) }

        // An erased folder of changed tensors records the variant its base was read with.
        let original = try loaded.pipeline.unet.copy()
        let weight = try XCTUnwrap(loaded.pipeline.unet.namedParameters().first { $0.name.hasSuffix("attn2.to_k.weight") }).tensor
        weight.pointer[0] += 0.25
        let erased = folder.appendingPathComponent("erased")
        try ErasedModel.write(unet: loaded.pipeline.unet, reference: original, baseFolder: base, baseName: base.path, method: "uce",
                              concepts: ["x"], full: false, baseVariant: "fp16", to: erased)
        XCTAssertEqual(try ErasedModel.manifest(in: erased)?.base_variant, "fp16")
        let reloaded = try ModelLoader.load(erased.path)
        let reloadedWeight = try XCTUnwrap(reloaded.pipeline.unet.namedParameters().first { $0.name.hasSuffix("attn2.to_k.weight") }).tensor
        XCTAssertEqual(reloadedWeight.scalars, weight.scalars)

        // A --full model saved as bf16: the variant's file name and precision, read back with --variant bf16.
        let full = folder.appendingPathComponent("full")
        try ErasedModel.write(unet: loaded.pipeline.unet, reference: original, baseFolder: base, baseName: base.path, method: "uce",
                              concepts: ["x"], full: true, runID: "run-1", saveVariant: "bf16", to: full)
        let saved = full.appendingPathComponent("unet/diffusion_pytorch_model.bf16.safetensors")
        XCTAssertFalse(FileManager.default.fileExists(atPath: full.appendingPathComponent("unet/diffusion_pytorch_model.safetensors").path))
        let archive = try SafeTensorsArchive(url: saved)
        XCTAssertEqual(try archive.info(archive.names[0]).dtype, .bf16)
        XCTAssertEqual(try ErasedModel.runID(in: full)?.id, "run-1")
        XCTAssertEqual(try ErasedModel.runID(in: full)?.file.lastPathComponent, saved.lastPathComponent)
        assertThrows(try ModelLoader.load(full.path), mentioning: ["holds the variant bf16", "--variant bf16"])
        let fromFull = try ModelLoader.load(full.path, variant: "bf16")
        let fullWeight = try XCTUnwrap(fromFull.pipeline.unet.namedParameters().first { $0.name.hasSuffix("attn2.to_k.weight") }).tensor
        let rounded = weight.scalars.map { Float(bitPattern: UInt32(bfloat16Bits(from: $0)) << 16) }
        XCTAssertEqual(fullWeight.scalars, rounded)

        // --save-variant needs --full and a variant with a precision.
        assertThrows(try ErasedModel.checkSaveVariant("fp16", full: false), mentioning: ["--save-variant", "--full"])
        assertThrows(try ErasedModel.checkSaveVariant("fp8", full: true), mentioning: ["'fp8'", "bf16 or fp16"])
    }
}
