import Diffusion
@testable import Erasure
import Foundation
import Tensor
import XCTest

/// `--gradient-checkpointing` (EraseJob.gradientCheckpointing) recomputes the UNet's block
/// activations in the backward pass; a fine-tuning erasure must end with the same weights, bit
/// for bit, and run.json records the setting.
final class GradientCheckpointingEraseTests: XCTestCase {
    func erase(_ method: any ErasureMethod, checkpointing: Bool, name: String) throws -> (weights: [String: [Float]], record: ErasureRecord) {
        let folder = Tiny.temporaryFolder("checkpointing-\(name)-\(checkpointing)")
        let base = folder.appendingPathComponent("base")
        let pipeline = try Tiny.pipeline()
        try Tiny.save(pipeline, to: base)
        var job = EraseJob(method: method, request: SCORETests.request, baseFolder: base, baseName: base.path,
                           output: folder.appendingPathComponent("out"))
        job.leakage = nil
        job.gradientCheckpointing = checkpointing
        let record = try XCTUnwrap(try job.run(pipeline: pipeline, log: { _ in }))
        XCTAssertFalse(pipeline.unet.gradientCheckpointing, "the job leaves the model as it found it")
        let saved = try ErasureRecord.read(from: folder.appendingPathComponent("out/run.json"))
        return (pipeline.unet.stateDict().mapValues(\.scalars), saved)
    }

    func testCheckpointingGivesTheSameWeights() throws {
        let methods: [(String, () -> any ErasureMethod)] = [
            ("score", { SCORE(config: SCORETests.tinyConfig(steps: 2)) }),
            ("esd", { ESD(config: BaselineTests.tinyESD(iterations: 2)) }),
        ]
        for (name, make) in methods {
            let plain = try erase(make(), checkpointing: false, name: name)
            let checkpointed = try erase(make(), checkpointing: true, name: name)
            XCTAssertEqual(plain.record.gradient_checkpointing, false)
            XCTAssertEqual(checkpointed.record.gradient_checkpointing, true)
            XCTAssertGreaterThan(plain.record.parameters_changed, 0, name)
            XCTAssertEqual(plain.weights.keys.sorted(), checkpointed.weights.keys.sorted())
            for (key, values) in plain.weights {
                XCTAssertEqual(values, checkpointed.weights[key], "\(name): \(key) differs with gradient checkpointing")
            }
        }
    }
}
