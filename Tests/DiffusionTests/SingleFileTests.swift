import Foundation
import XCTest
@testable import Diffusion
import NN
import SafeTensors
import Tensor

/// SD 1.x/2.x single-file checkpoints (tools/make_single_file_fixtures.py): each fixture file is
/// a tiny diffusers pipeline in the original layout, checked by that script to load in diffusers'
/// `from_single_file` as exactly the folder's weights.
final class SingleFileTests: XCTestCase {
    static var fixtures: URL { Fixtures.folder("single_file") }

    /// The diffusers folder the fixture `name` (sd1, sd2) was written from, assembled as the script does.
    func folder(_ name: String) throws -> URL {
        if name == "sd1" { return try PipelineFixture.folder(self) }
        let folder = try temporaryDirectory(self).appendingPathComponent("tiny-sd2")
        let fm = FileManager.default
        try fm.createDirectory(at: folder, withIntermediateDirectories: true)
        let new = Self.fixtures.appendingPathComponent("sd2")
        for part in ["unet", "scheduler", "model_index.json"] {
            try fm.copyItem(at: new.appendingPathComponent(part), to: folder.appendingPathComponent(part))
        }
        for part in ["text_encoder", "tokenizer"] {
            try fm.copyItem(at: Fixtures.folder("text/clip_sd2").appendingPathComponent(part), to: folder.appendingPathComponent(part))
        }
        try fm.createDirectory(at: folder.appendingPathComponent("vae"), withIntermediateDirectories: true)
        for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
            try fm.copyItem(at: Fixtures.folder("vae").appendingPathComponent(file),
                            to: folder.appendingPathComponent("vae").appendingPathComponent(file))
        }
        return folder
    }

    func file(_ name: String) -> URL { Self.fixtures.appendingPathComponent("\(name).safetensors") }

    func assertSameWeights(_ a: Module, _ b: Module, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let left = a.namedParameters(), right = Dictionary(uniqueKeysWithValues: b.namedParameters().map { ($0.name, $0.tensor) })
        XCTAssertEqual(left.count, right.count, "\(what): parameter counts", file: file, line: line)
        for (name, tensor) in left {
            guard let other = right[name] else { XCTFail("\(what): \(name) missing", file: file, line: line); continue }
            assertSameBits(tensor, other, "\(what) \(name)", file: file, line: line)
        }
    }

    func clip(_ pipeline: StableDiffusionPipeline) -> CLIPTextModel { (pipeline.textEncoder as! CLIPTextEncoder).model }

    /// Loading the file with the folder as config gives the folder's weights bit for bit, and the
    /// same images.
    func testLoadsTheFolderWeightsExactly() throws {
        for name in ["sd1", "sd2"] {
            let folder = try folder(name)
            let reference = try StableDiffusionPipeline(directory: folder)
            let loaded = try StableDiffusionPipeline(singleFile: file(name), config: folder)
            XCTAssertEqual(try SingleFileCheckpoint(url: file(name)).family, name == "sd1" ? .sd1 : .sd2)
            assertSameWeights(loaded.unet, reference.unet, "\(name) unet")
            assertSameWeights(loaded.vae!, reference.vae!, "\(name) vae")
            assertSameWeights(clip(loaded), clip(reference), "\(name) text")
            let a = try reference.generate(prompts: ["a red bird"], steps: 2, guidance: 4, seed: 3)
            let b = try loaded.generate(prompts: ["a red bird"], steps: 2, guidance: 4, seed: 3)
            assertSameBits(b, a, "\(name) images")
        }
    }

    /// The file found beside its config folder (the published repositories' layout).
    func testFindsTheConfigFolderBesideTheFile() throws {
        let folder = try folder("sd2")
        let copy = folder.appendingPathComponent("model.safetensors")
        try FileManager.default.copyItem(at: file("sd2"), to: copy)
        let loaded = try StableDiffusionPipeline(singleFile: copy)
        XCTAssertEqual(loaded.unet.config.crossAttentionDim[0], 32)
        let alone = try temporaryDirectory(self).appendingPathComponent("alone.safetensors")
        try FileManager.default.copyItem(at: file("sd2"), to: alone)
        expectError(try StableDiffusionPipeline(singleFile: alone), mentioning: [alone.path, "tokenizer"], "no tokenizer")
    }

    /// Saving writes the original layout: the same keys, shapes and values as the fixture (the
    /// inverse map diffusers' converter reads), and loading that back is exact.
    func testSaveLoadRoundTrip() throws {
        for name in ["sd1", "sd2"] {
            let folder = try folder(name)
            let loaded = try StableDiffusionPipeline(singleFile: file(name), config: folder)
            let out = try temporaryDirectory(self).appendingPathComponent("\(name)-saved.safetensors")
            try loaded.saveSingleFile(to: out)
            let fixture = try SafeTensorsArchive(url: file(name)), saved = try SafeTensorsArchive(url: out)
            XCTAssertEqual(Set(saved.names), Set(fixture.names), "\(name): keys")
            for key in fixture.names {
                XCTAssertEqual(try saved.info(key).shape, try fixture.info(key).shape, "\(name) \(key)")
                XCTAssertEqual(try saved.floats(key), try fixture.floats(key), "\(name) \(key)")
            }
            let again = try StableDiffusionPipeline(singleFile: out, config: folder)
            assertSameWeights(again.unet, loaded.unet, "\(name) unet")
            assertSameWeights(again.vae!, loaded.vae!, "\(name) vae")
            assertSameWeights(clip(again), clip(loaded), "\(name) text")
        }
    }

    /// The architecture read from the keys and shapes matches the folder's configs wherever the
    /// file determines it (heads and group counts come from the family's published constants).
    func testInfersTheArchitecture() throws {
        for name in ["sd1", "sd2"] {
            let folder = try folder(name)
            let checkpoint = try SingleFileCheckpoint(url: file(name))
            let unet = try UNet2DConditionConfig(contentsOf: folder.appendingPathComponent("unet/config.json"))
            let inferred = try checkpoint.inferredUNetConfig()
            XCTAssertEqual(inferred.blockOutChannels, unet.blockOutChannels, name)
            XCTAssertEqual(inferred.layersPerBlock, unet.layersPerBlock, name)
            XCTAssertEqual(inferred.downBlockTypes, unet.downBlockTypes, name)
            XCTAssertEqual(inferred.upBlockTypes, unet.upBlockTypes, name)
            XCTAssertEqual(inferred.crossAttentionDim, unet.crossAttentionDim, name)
            XCTAssertEqual(inferred.useLinearProjection, unet.useLinearProjection, name)
            XCTAssertEqual(inferred.inChannels, unet.inChannels, name)
            XCTAssertEqual(inferred.outChannels, unet.outChannels, name)
            let layers = inferred.transformerLayersPerBlock, expected = unet.transformerLayersPerBlock
            for block in 0..<unet.blockOutChannels.count where unet.downBlockTypes[block].hasPrefix("CrossAttn") {
                XCTAssertEqual(layers[block][0], expected[block][0], "\(name) transformer layers of block \(block)")
            }
            let vae = try AutoencoderKLConfig(contentsOf: folder.appendingPathComponent("vae/config.json"))
            let inferredVAE = try checkpoint.inferredVAEConfig()
            XCTAssertEqual(inferredVAE.blockOutChannels, vae.blockOutChannels)
            XCTAssertEqual(inferredVAE.layersPerBlock, vae.layersPerBlock)
            XCTAssertEqual(inferredVAE.latentChannels, vae.latentChannels)
            let text = try CheckpointFiles.decode(CLIPTextConfig.self, from: folder.appendingPathComponent("text_encoder/config.json"), what: "")
            let inferredText = try checkpoint.inferredTextConfig()
            XCTAssertEqual(inferredText.hiddenSize, text.hiddenSize)
            XCTAssertEqual(inferredText.numHiddenLayers, text.numHiddenLayers)
            XCTAssertEqual(inferredText.intermediateSize, text.intermediateSize)
            XCTAssertEqual(inferredText.vocabSize, text.vocabSize)
            XCTAssertEqual(inferredText.hiddenAct, text.hiddenAct, name)
            XCTAssertEqual(checkpoint.family, name == "sd1" ? .sd1 : .sd2)
        }
        // SD 2.x defaults to v-prediction at 96² latents (the 768-px models); ε gives the 512-px bases' 64².
        let sd2 = try SingleFileCheckpoint(url: file("sd2"))
        XCTAssertEqual(try sd2.inferredUNetConfig().sampleSize, .one(96))
        XCTAssertEqual(try sd2.inferredUNetConfig(predictionType: .epsilon).sampleSize, .one(64))
        XCTAssertEqual(try sd2.inferredUNetConfig().upcastAttention, true)
    }

    /// Without component configs, the published constants are used (SD 1.x: 8 heads, 32 groups),
    /// and the scheduler is diffusers' single-file default with the family's prediction type.
    func testDefaultsWithoutComponentConfigs() throws {
        let folder = try temporaryDirectory(self).appendingPathComponent("tokenizer-only")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Fixtures.folder("text/clip_sd2/tokenizer"), to: folder.appendingPathComponent("tokenizer"))
        // The tiny models use 8 and 4 groups, which the original layout cannot say: loading with
        // SD's 32 groups fails on the group count, naming it, rather than building a wrong model.
        expectError(try StableDiffusionPipeline(singleFile: file("sd2"), config: folder), mentioning: ["norm_num_groups"], "32 groups")
    }

    func testRefusesPicklesAndOtherLayouts() throws {
        let directory = try temporaryDirectory(self)
        let pickle = directory.appendingPathComponent("model.ckpt")
        try Data([0x80, 0x02]).write(to: pickle)
        expectError(try SingleFileCheckpoint(url: pickle), mentioning: [pickle.path, ".safetensors"], "pickle")
        let unet = Fixtures.folder("pipeline/unet/diffusion_pytorch_model.safetensors")
        expectError(try SingleFileCheckpoint(url: unet), mentioning: ["model.diffusion_model"], "a diffusers file")

        // A key missing from the file is named.
        let archive = try SafeTensorsArchive(url: file("sd1"))
        let dropped = "model.diffusion_model.out.2.bias"
        let partial = directory.appendingPathComponent("partial.safetensors")
        try writeSafeTensors(archive.names.filter { $0 != dropped }.map {
            TensorToWrite(name: $0, shape: try archive.info($0).shape, data: .floats(try archive.floats($0)))
        }, to: partial)
        expectError(try StableDiffusionPipeline(singleFile: partial, config: try folder("sd1")), mentioning: [dropped], "missing key")
    }
}
