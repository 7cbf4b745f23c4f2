import Foundation
import XCTest
import Diffusion
import NN
import Tensor

/// `UNet2DConditionModel.enableGradientCheckpointing()` recomputes each resnet's and
/// transformer's activations in the backward pass; the output and every gradient must keep
/// their bits.
final class GradientCheckpointingTests: XCTestCase {
    func gradients(_ name: String, checkpointing: Bool) throws -> [String: [Float]] {
        let unet = try UNet2DConditionModel(directory: Fixtures.folder(name))
        if checkpointing { unet.enableGradientCheckpointing() }
        let io = try Fixtures.io(name)
        let sample = try io.tensor("sample"), context = try io.tensor("encoder_hidden_states")
        let mask = io.contains("encoder_attention_mask") ? try io.tensor("encoder_attention_mask") : nil
        sample.requiresGrad = true
        context.requiresGrad = true
        let out = unet(sample, timestep: try io.tensor("timestep").scalars, encoderHiddenStates: context,
                       encoderAttentionMask: mask)
        out.backward(try io.tensor("gout"))
        var result = ["out": out.scalars, "sample": sample.grad!.scalars, "context": context.grad!.scalars]
        for (key, parameter) in unet.stateDict() { result[key] = parameter.grad?.scalars ?? [] }
        return result
    }

    func testCheckpointingKeepsTheBitsOfEveryGradient() throws {
        for name in ["unet_sd1", "unet_sd2"] {
            let plain = try gradients(name, checkpointing: false)
            let checkpointed = try gradients(name, checkpointing: true)
            XCTAssertEqual(plain.keys.sorted(), checkpointed.keys.sorted())
            XCTAssertGreaterThan(plain.count, 50)
            for (key, values) in plain {
                XCTAssertFalse(values.isEmpty, "\(name): no gradient for \(key)")
                XCTAssertEqual(values, checkpointed[key], "\(name): \(key) differs with checkpointing")
            }
        }
    }
}
