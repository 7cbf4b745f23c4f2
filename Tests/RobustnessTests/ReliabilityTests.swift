import Diffusion
import Erasure
import Evaluation
import Foundation
import NN
import SafeTensors
import Tensor
import XCTest

/// The promises behind the bad-input table that need more than one input: estimates that must be
/// exact, paths that must resolve from anywhere, and writes that leave nothing behind.
final class ReliabilityTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("score-reliability-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    /// real_configs/<name>.json: a diffusers config and the parameter shapes diffusers builds from it.
    func realConfig(_ name: String) throws -> (config: Data, parameters: Double) {
        let url = ParserFuzzTests.fixtures.appendingPathComponent("real_configs/\(name).json")
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let shapes = object["parameters"] as! [String: [Int]]
        let count = shapes.values.reduce(0.0) { $0 + Double($1.reduce(1, *)) }
        return (try JSONSerialization.data(withJSONObject: object["config"]!), count)
    }

    /// The memory estimate counts exactly the parameters diffusers builds, without building.
    func testParameterCountsFromConfigsEqualDiffusers() throws {
        let sd15 = try realConfig("sd15_unet"), sd21 = try realConfig("sd21_unet"), vae = try realConfig("sd_vae")
        XCTAssertEqual(sd15.parameters, 859_520_964)
        XCTAssertEqual(try JSONDecoder().decode(UNet2DConditionConfig.self, from: sd15.config).parameterCount, sd15.parameters)
        XCTAssertEqual(try JSONDecoder().decode(UNet2DConditionConfig.self, from: sd21.config).parameterCount, sd21.parameters)
        XCTAssertEqual(try JSONDecoder().decode(AutoencoderKLConfig.self, from: vae.config).parameterCount, vae.parameters)
        XCTAssertEqual(UNet2DConditionConfig.stableDiffusion15.parameterCount, sd15.parameters)
        XCTAssertEqual(UNet2DConditionConfig.stableDiffusion21.parameterCount, sd21.parameters)
    }

    /// A model too large for the memory is refused before allocation; `validate()` does not
    /// depend on the machine.
    func testMemoryIsCheckedBeforeAllocationButNotByValidate() throws {
        setenv("SCORE_MEMORY_LIMIT_BYTES", "1000000000", 1)
        defer { unsetenv("SCORE_MEMORY_LIMIT_BYTES") }
        let sd15 = UNet2DConditionConfig.stableDiffusion15
        XCTAssertNoThrow(try sd15.validate())
        var generator = RandomGenerator(seed: 0)
        XCTAssertThrowsError(try UNet2DConditionModel(config: sd15, generator: &generator)) { error in
            XCTAssertEqual("\(error)", "config describes a UNet whose weights alone need 3.4 GB, more than the 1.0 GB of memory available")
        }
    }

    /// Small models of every block kind: the estimate equals the built model's count.
    func testParameterCountsEqualBuiltModels() throws {
        var generator = RandomGenerator(seed: 0)
        var variants: [UNet2DConditionConfig] = []
        var base = UNet2DConditionConfig()
        base.blockOutChannels = [8, 16, 16]
        base.downBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]
        base.upBlockTypes = ["CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"]
        base.normNumGroups = 4
        base.crossAttentionDim = .one(12)
        base.attentionHeadDim = .one(2)
        variants.append(base)
        var perBlock = base
        perBlock.layersPerBlock = .many([1, 2, 3])
        perBlock.transformerLayersPerBlock = .many([.one(2), .one(1), .many([1, 2, 0])])
        perBlock.reverseTransformerLayersPerBlock = [[1, 2, 0, 1], [1, 1, 1], [3, 1]]
        perBlock.onlyCrossAttention = .many([true, false, false])
        perBlock.crossAttentionDim = .many([12, 8, 4])
        perBlock.useLinearProjection = true
        perBlock.convInKernel = 5
        perBlock.convOutKernel = 1
        perBlock.timeEmbeddingDim = nil
        variants.append(perBlock)
        var noMid = base
        noMid.midBlockType = nil
        noMid.onlyCrossAttention = .one(true)
        variants.append(noMid)
        for config in variants {
            let model = try UNet2DConditionModel(config: config, generator: &generator)
            XCTAssertEqual(Double(model.parameterCount), config.parameterCount, "\(config)")
        }
        var vae = AutoencoderKLConfig()
        vae.blockOutChannels = [8, 16, 16]
        vae.downBlockTypes = Array(repeating: "DownEncoderBlock2D", count: 3)
        vae.upBlockTypes = Array(repeating: "UpDecoderBlock2D", count: 3)
        vae.normNumGroups = 4
        vae.layersPerBlock = 2
        for (quant, attention) in [(true, true), (false, false)] {
            vae.useQuantConv = quant
            vae.usePostQuantConv = quant
            vae.midBlockAddAttention = attention
            XCTAssertEqual(Double(try AutoencoderKL(config: vae, generator: &generator).parameterCount), vae.parameterCount)
        }
        let clip = CLIPTextConfig(vocabSize: 50, hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 2, numAttentionHeads: 2,
                                  maxPositionEmbeddings: 9)
        XCTAssertEqual(Double(CLIPTextModel(config: clip).parameterCount), clip.parameterCount)
        let bert = BertConfig(vocabSize: 40, hiddenSize: 8, numHiddenLayers: 2, numAttentionHeads: 2, intermediateSize: 12,
                              maxPositionEmbeddings: 16)
        XCTAssertEqual(Double(BertModel(config: bert).parameterCount), bert.parameterCount)
    }

    /// Every field survives encode → decode, and an encoded config lists every key, nulls included.
    func testConfigsRoundTripWithEveryKey() throws {
        var unet = UNet2DConditionConfig.stableDiffusion21
        unet.midBlockType = nil
        unet.transformerLayersPerBlock = .many([.one(1), .many([1, 2]), .one(1), .one(1)])
        let data = try JSONEncoder().encode(unet)
        XCTAssertEqual(try JSONDecoder().decode(UNet2DConditionConfig.self, from: data), unet)
        let object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        XCTAssertEqual(Set(object.keys), Set(UNet2DConditionConfig.fields.map(\.key)))
        XCTAssertTrue(object["mid_block_type"] is NSNull)
        let vae = AutoencoderKLConfig()
        XCTAssertEqual(try JSONDecoder().decode(AutoencoderKLConfig.self, from: JSONEncoder().encode(vae)), vae)
        let clip = CLIPTextConfig(eosTokenId: 2, padTokenId: nil)
        XCTAssertEqual(try JSONDecoder().decode(CLIPTextConfig.self, from: JSONEncoder().encode(clip)), clip)
        let bert = BertConfig(padTokenId: nil)
        XCTAssertEqual(try JSONDecoder().decode(BertConfig.self, from: JSONEncoder().encode(bert)), bert)
        // null keeps the default of a non-optional field and clears an optional one.
        let nulls = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data(#"{"in_channels": null, "norm_num_groups": null}"#.utf8))
        XCTAssertEqual(nulls.inChannels, 4)
        XCTAssertNil(nulls.normNumGroups)
        // Configs built in code are range-checked by validate(), as decoded ones are.
        var negative = UNet2DConditionConfig()
        negative.layersPerBlock = .one(-1)
        XCTAssertThrowsError(try negative.validate()) { XCTAssertTrue("\($0)".contains("layers_per_block"), "\($0)") }
    }

    /// An erased model keeps working from another working directory: erasure.json stores the base
    /// as an absolute path, and one written relative to its own folder resolves against it.
    func testErasedModelBaseResolvesFromAnyWorkingDirectory() throws {
        let erased = folder.appendingPathComponent("runs/erased")
        try FileManager.default.createDirectory(at: erased, withIntermediateDirectories: true)
        let base = folder.appendingPathComponent("models/base")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: base.appendingPathComponent("model_index.json"))

        func manifest(_ baseModel: String) throws -> ErasedModel.Manifest {
            let text = #"{"base_model": "\#(baseModel)", "method": "uce", "concepts": [], "tensors_changed": 0, "parameters_changed": 0}"#
            try Data(text.utf8).write(to: erased.appendingPathComponent("erasure.json"))
            return try XCTUnwrap(ErasedModel.manifest(in: erased))
        }
        let here = FileManager.default.currentDirectoryPath
        defer { FileManager.default.changeCurrentDirectoryPath(here) }
        FileManager.default.changeCurrentDirectoryPath("/")
        XCTAssertEqual(try manifest(base.path).baseFolder(relativeTo: erased)?.path, base.standardizedFileURL.path)
        XCTAssertEqual(try manifest("../../models/base").baseFolder(relativeTo: erased)?.path, base.standardizedFileURL.path)
        XCTAssertNil(try manifest("embedded").baseFolder(relativeTo: erased))
        // An older file's path relative to the directory it was written from still loads from there.
        FileManager.default.changeCurrentDirectoryPath(folder.path)
        XCTAssertEqual(try manifest("models/base").baseFolder(relativeTo: erased)?.standardizedFileURL.path,
                       base.standardizedFileURL.path)
    }

    /// Atomic writes leave no temporary file on failure, remove those of killed writers, and keep
    /// those of writers still running.
    func testAtomicWritesCleanTemporaryFiles() throws {
        let target = folder.appendingPathComponent("weights.safetensors")
        // A writer killed mid-write (pid 2³¹−2 does not run) and one of an older naming.
        let stale = folder.appendingPathComponent(".weights.safetensors.2147483646.77.tmp")
        let old = folder.appendingPathComponent(".weights.safetensors.C0FFEE.tmp")
        let live = folder.appendingPathComponent(".weights.safetensors.\(getpid()).5.tmp")
        for url in [stale, old, live] { try Data("half".utf8).write(to: url) }
        try writeSafeTensors([(name: "w", shape: [2], values: [1, 2])], to: target)
        let left = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
        XCTAssertEqual(left, [live.lastPathComponent, "weights.safetensors"])

        // A write that fails part-way (a value count that does not fit the shape is found before
        // any byte; an unwritable folder fails at creation) leaves the old file and no temp file.
        XCTAssertThrowsError(try writeSafeTensors([(name: "w", shape: [3], values: [1, 2])], to: target))
        XCTAssertEqual(try SafeTensorsFile(url: target).floats("w"), [1, 2])
        try FileManager.default.removeItem(at: live)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), ["weights.safetensors"])
    }

    /// The FIFO row of the table, end to end: the FIFO is still a FIFO afterwards.
    func testOutputsNeverReplaceSpecialFiles() throws {
        let fifo = folder.appendingPathComponent("out.png")
        XCTAssertEqual(mkfifo(fifo.path, 0o644), 0)
        XCTAssertThrowsError(try PNG.write(PixelImage(width: 1, height: 1, channels: 1, pixels: [0]), to: fifo))
        var status = stat()
        XCTAssertEqual(lstat(fifo.path, &status), 0)
        XCTAssertEqual(status.st_mode & S_IFMT, S_IFIFO)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), ["out.png"])
    }
}
