import ArgumentParser
import Diffusion
import Erasure
import Evaluation
import Foundation
@testable import ScoreCLI
import XCTest

/// `export-lora` and the `--lora` options of generate, evaluate and attack.
extension ArgumentTests {
    func testExportLoRAParsesIntoTheRun() throws {
        let file = folder.appendingPathComponent("erased.safetensors").path
        let base = ["export-lora", "--model", folder.path, "--out", file]
        let byEnergy = try XCTUnwrap(try parse(base + ["--format", "kohya", "--energy", "0.9", "--dtype", "f16"]) as? ExportLoRA)
        let run = try byEnergy.export()
        XCTAssertEqual(run.layout, .kohya)
        XCTAssertEqual(run.choice, .energy(0.9))
        XCTAssertEqual(run.dtype, .f16)
        XCTAssertEqual(run.model, folder.path)
        let byRank = try XCTUnwrap(try parse(base + ["--rank", "8", "--base", "/somewhere"]) as? ExportLoRA).export()
        XCTAssertEqual(byRank.choice, .rank(8))
        XCTAssertEqual(byRank.layout, .peft)
        XCTAssertEqual(byRank.base, "/somewhere")
        XCTAssertEqual(try XCTUnwrap(try parse(base) as? ExportLoRA).export().choice, .energy(0.99))

        assertRefused(base + ["--rank", "0"], mentioning: "--rank")
        assertRefused(base + ["--energy", "1.5"], mentioning: "--energy")
        assertRefused(base + ["--energy", "0"], mentioning: "--energy")
        assertRefused(base + ["--rank", "4", "--energy", "0.9"], mentioning: "--rank or --energy")
        assertRefused(base + ["--dtype", "f64"], mentioning: "--dtype")
        assertRefused(["export-lora", "--model", folder.path, "--out", folder.path], mentioning: "--out")
        XCTAssertThrowsError(try parse(base + ["--format", "lycoris"]))
    }

    func testLoRAOptionsOfGenerateEvaluateAndAttack() throws {
        let first = folder.appendingPathComponent("a.safetensors"), second = folder.appendingPathComponent("b.safetensors")
        for file in [first, second] { try Data().write(to: file) }
        let png = folder.appendingPathComponent("a.png").path
        let generate = try XCTUnwrap(try parse(["generate", "a shoe", "--out", png, "--lora", first.path, "--lora", second.path,
                                                "--lora-scale", "0.5", "--lora-scale=-1"]) as? Generate)
        XCTAssertEqual(generate.generation().loras, [LoRAFile(path: first.path, scale: 0.5), LoRAFile(path: second.path, scale: -1)])
        let evaluate = try XCTUnwrap(try parse(["evaluate", "--model", folder.path, "--concept", "sneaker", "--out", out,
                                                "--lora", first.path, "--lora", second.path, "--lora-scale", "0.8"]) as? Evaluate)
        XCTAssertEqual(evaluate.evaluation().loras, [LoRAFile(path: first.path, scale: 0.8), LoRAFile(path: second.path, scale: 0.8)])
        let attack = try XCTUnwrap(try parse(["attack", "--concept", "sneaker", "--attack", "paraphrase", "--lora", first.path]) as? Attack)
        XCTAssertEqual(attack.attackRun().loras, [LoRAFile(path: first.path, scale: 1)])

        assertRefused(["generate", "a shoe", "--out", png, "--lora", folder.appendingPathComponent("none.safetensors").path],
                      mentioning: "none.safetensors")
        assertRefused(["generate", "a shoe", "--out", png, "--lora-scale", "2"], mentioning: "--lora-scale needs a --lora")
        assertRefused(["generate", "a shoe", "--out", png, "--lora", first.path, "--lora-scale", "1", "--lora-scale", "2"],
                      mentioning: "one per --lora")
        assertRefused(["attack", "--concept", "sneaker", "--attack", "paraphrase", "--lora", first.path, "--lora-scale", "nan"],
                      mentioning: "--lora-scale")
    }
}
