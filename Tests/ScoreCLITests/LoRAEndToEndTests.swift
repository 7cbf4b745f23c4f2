import ArgumentParser
import Diffusion
import Erasure
import Evaluation
import Foundation
@testable import ScoreCLI
import SafeTensors
import Tensor
import Testbed
import XCTest

/// The whole LoRA path through the command line, as a user runs it: `score erase` on the embedded
/// model, `score export-lora` of its change, `score generate --lora` over the base. The merged
/// weights must equal the erased model's within the error export-lora reports, and so must the
/// images.
final class LoRAEndToEndTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("score-lora-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    func run(_ arguments: [String]) throws {
        var command = try Score.parseAsRoot(arguments)
        try command.run()
    }

    func testEraseExportAndGenerateWithTheLoRA() throws {
        let erased = folder.appendingPathComponent("erase")
        try run(["erase", "--method", "uce", "--concept", "sneaker", "--out", erased.path, "--no-leakage", "--threads", "1"])
        let model = erased.appendingPathComponent("model").path
        for (name, choice) in [("exact", ["--energy", "1"]), ("truncated", ["--rank", "1"])] {
            let lora = folder.appendingPathComponent("\(name).safetensors")
            try run(["export-lora", "--model", model, "--out", lora.path, "--threads", "1"] + choice)
            let png = folder.appendingPathComponent("\(name).png")
            try run(["generate", "a sneaker", "--lora", lora.path, "--out", png.path, "--steps", "4", "--threads", "1"])
            XCTAssertTrue(FileManager.default.fileExists(atPath: png.path))

            // The error export-lora reported is in the file; the merged weights carry exactly it.
            let reported = try XCTUnwrap(Double(try XCTUnwrap(try SafeTensorsArchive(url: lora).metadata["score_relative_error"])))
            var merged = try ModelLoader.load(nil)
            try merged.merge([LoRAFile(path: lora.path, scale: 1)])
            let target = try ModelLoader.load(model), base = try ModelLoader.load(nil)
            var error = 0.0, change = 0.0
            let baseWeights = base.pipeline.unet.stateDict(), mergedWeights = merged.pipeline.unet.stateDict()
            for (key, weight) in target.pipeline.unet.namedParameters() {
                let b = baseWeights[key]!.scalars, m = mergedWeights[key]!.scalars
                for (i, w) in weight.scalars.enumerated() {
                    error += Double(m[i] - w) * Double(m[i] - w)
                    change += (Double(w) - Double(b[i])) * (Double(w) - Double(b[i]))
                }
            }
            XCTAssertGreaterThan(change, 0)
            let measured = (error / change).squareRoot()
            // Float32 rounding of the merge adds ~1e-7 of the weights to the factorisation's error.
            XCTAssertLessThanOrEqual(measured, reported * 1.001 + 1e-4, "\(name): merged error \(measured), reported \(reported)")
            if name == "exact" { XCTAssertLessThan(reported, 1e-5) } else { XCTAssertGreaterThan(reported, 1e-3) }

            let a = try merged.pipeline.generate(prompts: ["a sneaker"], steps: 4, guidance: 3, seed: 1)
            let b = try target.pipeline.generate(prompts: ["a sneaker"], steps: 4, guidance: 3, seed: 1)
            let imageError = zip(a.scalars, b.scalars).map { abs($0 - $1) }.max() ?? 0
            if name == "exact" {
                XCTAssertLessThan(imageError, 1e-3, "the exact-rank LoRA gives the erased model's image")
            } else {
                let original = try base.pipeline.generate(prompts: ["a sneaker"], steps: 4, guidance: 3, seed: 1)
                let erasure = zip(original.scalars, b.scalars).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(imageError, max(erasure, 1e-3), "the rank-1 LoRA lands nearer the erased image than the base is")
            }
        }
    }
}
