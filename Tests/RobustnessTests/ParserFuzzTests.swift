import Diffusion
import Erasure
import Evaluation
import Foundation
import NN
import SafeTensors
import Tensor
import Testbed
import XCTest

/// Every parser of untrusted files, fed mutated and random inputs for `SCORE_FUZZ_SECONDS`
/// (default 2) each: safetensors files, the model and scheduler configs, model_index.json,
/// tokenizer vocabularies and merges, IDX (Fashion-MNIST), PNG (libpng) and erasure.json. A
/// parser may accept or throw; it must never trap, crash or hang. Configs it accepts are also
/// built when small, and the parameter count estimated from the config must equal the model's.
final class ParserFuzzTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        // Memory-backed when the system has it: the fuzzer writes thousands of files a second.
        let memory = URL(fileURLWithPath: "/dev/shm")
        let base = FileManager.default.isWritableFile(atPath: memory.path) ? memory : FileManager.default.temporaryDirectory
        folder = base.appendingPathComponent("score-fuzz-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    /// Tests/DiffusionTests/Fixtures (read in place: this target has no copy).
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("DiffusionTests/Fixtures")

    func fixture(_ path: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: Self.fixtures.appendingPathComponent(path)))
    }

    /// Writes `bytes` to `name` in the scratch folder (plainly: the fuzzer writes thousands) and
    /// returns its URL.
    func file(_ name: String, _ bytes: [UInt8]) -> URL {
        let url = folder.appendingPathComponent(name)
        if !FileManager.default.fileExists(atPath: url.deletingLastPathComponent().path) {
            try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        }
        try? Data(bytes).write(to: url)
        return url
    }

    /// The input that makes Foundation's `JSONDecoder` trap on Linux (it ends exactly at the
    /// decoder's nesting limit of 512) is refused by each JSON parser with an error instead.
    func testJSONEndingAtFoundationsNestingLimitIsRefused() throws {
        let bytes = Array("{\"num_layers\":".utf8) + Array(repeating: UInt8(ascii: "["), count: 512)
        XCTAssertThrowsError(try FluxTransformer2DConfig(contentsOf: file("transformer/config.json", bytes))) { error in
            XCTAssertTrue("\(error)".contains("transformer/config.json"), "\(error)")
        }
        XCTAssertThrowsError(try SchedulerConfig(json: Data(bytes), source: "scheduler_config.json"))
        XCTAssertThrowsError(try FashionPrompts.load(file("prompts.json", bytes)))
        XCTAssertThrowsError(try JSONInput.decode([String: Int].self, from: Data(bytes)))
    }

    func testNestingCheckCountsOnlyBracketsOutsideStrings() throws {
        let limit = JSONInput.maximumDepth
        let deepest = String(repeating: "[", count: limit) + String(repeating: "]", count: limit)
        XCTAssertNoThrow(try JSONInput.checkNesting(Data(deepest.utf8)))
        XCTAssertThrowsError(try JSONInput.checkNesting(Data(("[" + deepest + "]").utf8)))
        let quoted = "[\"" + String(repeating: "[{", count: limit) + "\\\"[\"]"
        XCTAssertNoThrow(try JSONInput.checkNesting(Data(quoted.utf8)))
        XCTAssertEqual(try JSONInput.decode([String].self, from: Data(quoted.utf8)).first?.count, 2 * limit + 2)
    }

    func testSafeTensorsFiles() throws {
        let small = folder.appendingPathComponent("seed.safetensors")
        try writeSafeTensors([
            TensorToWrite(name: "a.weight", shape: [2, 3], data: .floats([1, 2, 3, 4, 5, 6])),
            TensorToWrite(name: "b", shape: [2], data: .floats([1, -1], storedAs: .f16)),
            TensorToWrite(name: "c", shape: [1], data: .int64s([7])),
        ], metadata: ["format": "pt"], to: small)
        var fuzzer = Fuzzer("safetensors", seeds: [[UInt8](try Data(contentsOf: small)), try fixture("vae/io.safetensors")])
        let result = fuzzer.run { bytes in
            let archive = try SafeTensorsArchive(url: file("x.safetensors", bytes))
            try archive.validateAllShards()
            for name in archive.names {
                let info = try archive.info(name)
                _ = try archive.withRawBytes(name) { unusableWeightReason(in: $0, dtype: info.dtype) }
                _ = try? archive.floats(name)
            }
        }
        XCTAssertGreaterThan(result.accepted, 0)
    }

    func testUNetConfigs() throws {
        var fuzzer = Fuzzer("unet-config", seeds: [
            try fixture("unet_sd1/config.json"), try fixture("unet_sd2/config.json"), try fixture("pipeline/unet/config.json"),
        ])
        fuzzer.run { bytes in
            let config = try UNet2DConditionConfig(contentsOf: file("unet/config.json", bytes))
            try config.validate()
            if config.parameterCount < 300_000 {
                var generator = RandomGenerator(seed: 0)
                let model = try UNet2DConditionModel(config: config, generator: &generator)
                XCTAssertEqual(Double(model.parameterCount), config.parameterCount, "\(String(decoding: bytes, as: UTF8.self))")
            }
        }
    }

    func testVAEConfigs() throws {
        var fuzzer = Fuzzer("vae-config", seeds: [try fixture("vae/config.json")])
        fuzzer.run { bytes in
            let config = try AutoencoderKLConfig(contentsOf: file("vae/config.json", bytes))
            try config.validate()
            if config.parameterCount < 300_000 {
                var generator = RandomGenerator(seed: 0)
                let model = try AutoencoderKL(config: config, generator: &generator)
                XCTAssertEqual(Double(model.parameterCount), config.parameterCount, "\(String(decoding: bytes, as: UTF8.self))")
            }
        }
    }

    func testFluxConfigs() throws {
        var fuzzer = Fuzzer("flux-config", seeds: [try fixture("flux/flux_plain/config.json"), try fixture("flux/flux_guided/config.json")])
        fuzzer.run { bytes in _ = try FluxTransformer2DConfig(contentsOf: file("transformer/config.json", bytes)) }
    }

    func testTextEncoderConfigs() throws {
        var clip = Fuzzer("clip-config", seeds: [try fixture("text/clip_sd1/text_encoder/config.json"),
                                                 try fixture("text/clip_sd2/text_encoder/config.json")])
        clip.run { bytes in
            let config = try JSONDecoder().decode(CLIPTextConfig.self, from: Data(bytes))
            if config.parameterCount < 300_000 {
                XCTAssertEqual(Double(CLIPTextModel(config: config).parameterCount), config.parameterCount)
            }
        }
        var bert = Fuzzer("bert-config", seeds: [try fixture("text/bert/config.json")])
        bert.run { bytes in
            let config = try JSONDecoder().decode(BertConfig.self, from: Data(bytes))
            if config.parameterCount < 300_000 {
                XCTAssertEqual(Double(BertModel(config: config).parameterCount), config.parameterCount)
            }
        }
    }

    func testSchedulerConfigsAndModelIndex() throws {
        var scheduler = Fuzzer("scheduler-config", seeds: [try fixture("pipeline/scheduler/scheduler_config.json")])
        scheduler.run { bytes in _ = try SchedulerConfig(json: Data(bytes), source: "scheduler_config.json") }
        var index = Fuzzer("model-index", seeds: [try fixture("pipeline/model_index.json")])
        index.run { bytes in
            _ = file("pipeline/model_index.json", bytes)
            _ = try PipelineIndex(directory: folder.appendingPathComponent("pipeline"))
        }
    }

    func testTokenizerFiles() throws {
        let vocab = try fixture("text/clip_sd1/tokenizer/vocab.json"), merges = try fixture("text/clip_sd1/tokenizer/merges.txt")
        let prompts = ["a photo of a cat", "ÀÉ 東京 🙂 <|endoftext|>", "", String(repeating: "ab ", count: 40)]
        var clipVocab = Fuzzer("clip-vocab", seeds: [vocab])
        clipVocab.run { bytes in
            let tokenizer = try CLIPTokenizer(vocabularyURL: file("v/vocab.json", bytes), mergesURL: file("v/merges.txt", merges))
            for prompt in prompts { _ = tokenizer.encode(prompt) }
        }
        var clipMerges = Fuzzer("clip-merges", seeds: [merges])
        clipMerges.run { bytes in
            let tokenizer = try CLIPTokenizer(vocabularyURL: file("m/vocab.json", vocab), mergesURL: file("m/merges.txt", bytes))
            for prompt in prompts { _ = tokenizer.encode(prompt) }
        }
        var wordPiece = Fuzzer("wordpiece-vocab", seeds: [try fixture("text/bert/vocab.txt")])
        wordPiece.run { bytes in
            let tokenizer = try WordPieceTokenizer(vocabularyURL: file("w/vocab.txt", bytes))
            for prompt in prompts { _ = tokenizer.encode(prompt) }
        }
    }

    func testIDXFiles() throws {
        let images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2] + (0..<8).map { UInt8($0 * 30) }
        let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 2, 3, 9]
        var fuzzer = Fuzzer("idx", seeds: [images, labels])
        fuzzer.run { bytes in _ = try IDXArray(Data(bytes), file: "train-images-idx3-ubyte") }
    }

    func testPNGFiles() throws {
        let rgb = PixelImage(width: 5, height: 4, channels: 3, pixels: (0..<60).map { UInt8($0 * 4) })
        let grey = PixelImage(width: 3, height: 2, channels: 1, pixels: [0, 50, 100, 150, 200, 250])
        var fuzzer = Fuzzer("png", seeds: [[UInt8](PNG.encode(rgb)), [UInt8](PNG.encode(grey))])
        let result = fuzzer.run { bytes in _ = try decodePNG(Data(bytes), file: "x.png") }
        XCTAssertGreaterThan(result.accepted, 0)
    }

    func testErasureManifests() throws {
        let seed = Array("""
            {"base_model": "../base", "method": "score", "concepts": ["cat"], "tensors_changed": 3, "parameters_changed": 120}
            """.utf8)
        let erased = folder.appendingPathComponent("erased")
        try FileManager.default.createDirectory(at: erased, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: erased.appendingPathComponent("model_index.json"))
        var fuzzer = Fuzzer("erasure-json", seeds: [seed, Array(#"{"base_model": ".", "method": "uce", "concepts": [], "tensors_changed": 0, "parameters_changed": 0}"#.utf8)])
        fuzzer.run { bytes in
            try Data(bytes).write(to: erased.appendingPathComponent("erasure.json"))
            guard let manifest = try ErasedModel.manifest(in: erased), manifest.base_model != "embedded" else { return }
            _ = manifest.baseFolder(relativeTo: erased)
            // Resolving the chain: every base here is missing, malformed or a cycle, so it throws.
            XCTAssertThrowsError(try ModelLoader.load(erased.path))
        }
    }
}
