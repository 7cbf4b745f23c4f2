import Diffusion
import Evaluation
import Foundation
import Testbed
import XCTest

/// The embedded mini-FLUX (the flow family's default): it draws the class it is asked for, and
/// `score generate --family flux` reaches it without --model.
final class EmbeddedFluxTests: XCTestCase {
    func testTheEmbeddedMiniFluxDrawsEachAskedClass() throws {
        let folder = try DefaultModel.fluxFolder()
        let pipeline: FluxPipeline
        do { pipeline = try MiniFlux.pipeline(folder: folder) } catch {
            throw XCTSkip("the embedded mini-FLUX needs MiniLM (`score assets`): \(error)")
        }
        let judge = try DefaultModel.judge("cnn", folder: nil)
        let prompts = try FashionPrompts.bundled()
        let asked = prompts.classes.filter { ["Trouser", "Sneaker", "Bag"].contains($0.name) }
        XCTAssertEqual(asked.count, 3)
        let images = try pipeline.generate(prompts: asked.flatMap { Array(repeating: prompts.canonicalPrompt($0.label), count: 4) },
                                           steps: MiniFlux.steps, guidance: MiniFlux.guidance, seed: 0,
                                           height: pipeline.defaultSize, width: pipeline.defaultSize)
        XCTAssertEqual(images.shape, [12, 1, 32, 32])
        let predicted = judge.predict(images)
        for (k, c) in asked.enumerated() {
            let hits = predicted[(4 * k)..<(4 * k + 4)].filter { $0 == c.label }.count
            XCTAssertGreaterThanOrEqual(hits, 3, "\(c.name): \(hits) of 4 judged as asked (\(predicted))")
        }
    }

    func testGenerateWithFamilyFluxUsesTheEmbeddedMiniFlux() throws {
        let embedded = try DefaultModel.fluxFolder()
        guard (try? MiniFlux.pipeline(folder: embedded)) != nil else {
            throw XCTSkip("the embedded mini-FLUX needs MiniLM (`score assets`)")
        }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("embedded-flux-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        var run = GenerationRun(output: folder.appendingPathComponent("sneaker.png").path)
        run.family = "flux"
        run.prompt = "a photo of a sneaker"
        run.steps = 4
        let result = try run.run()
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("sneaker.png").path))
        XCTAssertEqual([result.width, result.height, result.images], [32, 32, 1])

        var wrong = GenerationRun(output: folder.appendingPathComponent("x.png").path)
        wrong.family = "flux"
        wrong.prompt = "a sneaker"
        wrong.model = try DefaultModel.folder().path
        XCTAssertThrowsError(try wrong.validate()) { XCTAssertTrue("\($0)".contains("--family flux"), "\($0)") }
        wrong.family = "dit"
        XCTAssertThrowsError(try wrong.validate()) { XCTAssertTrue("\($0)".contains("--family must be sd or flux"), "\($0)") }
    }
}
