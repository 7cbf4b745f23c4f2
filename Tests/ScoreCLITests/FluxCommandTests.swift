import ArgumentParser
import Diffusion
import Evaluation
import Foundation
@testable import ScoreCLI
import Tensor
import Testbed
import XCTest

/// `score generate --model <FLUX folder>` and `score check-model --family flux`.
final class FluxCommandTests: XCTestCase {
    func tinyFluxFolder() throws -> URL { try Self.tinyFluxFolder(seed: 4, removedAfter: self) }

    /// A random tiny mini-FLUX folder (MiniLM-wide text inputs, 1 + 1 blocks), as `score train flux`
    /// writes one, removed when `test` ends.
    static func tinyFluxFolder(seed: UInt64, removedAfter test: XCTestCase) throws -> URL {
        var config = MiniFlux.transformerConfig()
        config.numLayers = 1
        config.numSingleLayers = 1
        config.attentionHeadDim = 8
        config.numAttentionHeads = 3
        config.axesDimsRope = [2, 2, 4]
        var g = RandomGenerator(seed: seed)
        let model = try FluxTransformer2DModel(config: config, generator: &g)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tiny-flux-\(UUID().uuidString)")
        test.addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        try MiniFlux.save(model, to: folder)
        return folder
    }

    func testGenerateDrawsFromAFluxFolder() throws {
        let folder = try tinyFluxFolder()
        let out = folder.appendingPathComponent("out/grid.png")
        var run = GenerationRun(output: out.path)
        run.model = folder.path
        run.prompt = "a photo of a bag"
        run.steps = 2
        run.numImages = 2
        var seen: [Int] = []
        let result: GenerationResult
        do {
            result = try run.run(assets: Assets()) { step, _ in seen.append(step) }
        } catch let error as AssetError {
            throw XCTSkip("MiniLM is not installed here (\(error)); run `score assets`")
        }
        XCTAssertEqual(seen, [1, 2])
        XCTAssertEqual(result.images, 2)
        XCTAssertEqual([result.width, result.height], [32, 32], "the mini-FLUX's default size")
        XCTAssert(FileManager.default.fileExists(atPath: out.path))

        // Same arguments, same bits.
        let again = folder.appendingPathComponent("out/again.png")
        var second = run
        second.output = again.path
        _ = try second.run(assets: Assets())
        XCTAssertEqual(try Data(contentsOf: out), try Data(contentsOf: again))

        // UNet-only options are refused, naming them.
        var withScheduler = run
        withScheduler.scheduler = .ddim
        XCTAssertThrowsError(try withScheduler.run(assets: Assets())) { XCTAssert("\($0)".contains("--scheduler"), "\($0)") }
    }

    func testAFluxFolderWithAnotherTextEncoderIsRefusedNamingTheFile() throws {
        let folder = try tinyFluxFolder()
        let index = folder.appendingPathComponent("model_index.json")
        let text = try String(contentsOf: index, encoding: .utf8).replacingOccurrences(of: "all-MiniLM-L6-v2", with: "T5EncoderModel")
        try text.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try MiniFlux.pipeline(folder: folder)) { error in
            XCTAssert("\(error)".contains("model_index.json") && "\(error)".contains("T5EncoderModel"), "\(error)")
        }
    }

    func testCheckModelFamilyFlag() throws {
        let flux = try CheckModel.parse(["--family", "flux", "--model", "/tmp/some-flux"]).check()
        XCTAssertEqual(flux.family, "flux")
        XCTAssertEqual(flux.steps, MiniFlux.steps)
        XCTAssertEqual(flux.guidance, MiniFlux.guidance)
        let sd = try CheckModel.parse([]).check()
        XCTAssertEqual(sd.family, "sd")
        XCTAssertEqual(sd.guidance, DefaultModel.guidance)
        XCTAssertEqual(try CheckModel.parse(["--family", "flux", "--model", "m", "--guidance", "2"]).check().guidance, 2)
        let embedded = try CheckModel.parse(["--family", "flux"]).check()
        XCTAssertNil(embedded.model, "no --model: the embedded mini-FLUX")
        XCTAssertEqual(embedded.steps, MiniFlux.steps)
        XCTAssertThrowsError(try CheckModel.parse(["--family", "dit", "--model", "m"])) { error in
            XCTAssert(CheckModel.message(for: error).contains("--family must be sd or flux"), CheckModel.message(for: error))
        }
    }
}
