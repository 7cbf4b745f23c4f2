import Foundation
import XCTest
@testable import Diffusion

/// The memory estimate that refuses hopeless runs before they allocate.
final class MemoryEstimateTests: XCTestCase {
    let sd15 = UNet2DConditionConfig.stableDiffusion15

    func testSD15ActivationsAreInTheMeasuredRange() {
        // SD 1.5 at 64² latents, batch 1: sampling holds the skips and one module's maps (tens to
        // hundreds of MB); a training step keeps every map: a measured run put
        // score's forward+backward at 10.5 GB peak, 6.9 GB of it weights and gradients.
        let sampling = sd15.activationBytes(batch: 1, height: 64, width: 64, contextTokens: 77, mode: .sampling)
        let training = sd15.activationBytes(batch: 1, height: 64, width: 64, contextTokens: 77, mode: .training(gradientCheckpointing: false))
        let checkpointed = sd15.activationBytes(batch: 1, height: 64, width: 64, contextTokens: 77, mode: .training(gradientCheckpointing: true))
        XCTAssert(sampling > 2e7 && sampling < 1e9, "sampling \(sampling / 1e9) GB")
        XCTAssert(training > 1.5e9 && training < 8e9, "training \(training / 1e9) GB")
        XCTAssert(checkpointed < training / 3, "checkpointing \(checkpointed / 1e9) GB vs \(training / 1e9) GB")
        XCTAssert(checkpointed > sampling, "checkpointing still keeps each block's input and one block's maps")
        let estimate = sd15.memoryEstimate(batch: 1, height: 64, width: 64, contextTokens: 77, mode: .training(gradientCheckpointing: false))
        XCTAssertEqual(estimate.weights, 4 * sd15.parameterCount)
        XCTAssertEqual(estimate.trainingState, 3 * estimate.weights, "gradients and AdamW's two moments")
    }

    func testActivationsScaleWithBatchAndPixels() {
        for mode in [ActivationMode.sampling, .training(gradientCheckpointing: false), .training(gradientCheckpointing: true)] {
            let one = sd15.activationBytes(batch: 1, height: 64, width: 64, contextTokens: 77, mode: mode)
            XCTAssertEqual(sd15.activationBytes(batch: 6, height: 64, width: 64, contextTokens: 77, mode: mode) / one, 6, accuracy: 1e-9)
            let large = sd15.activationBytes(batch: 1, height: 128, width: 128, contextTokens: 77, mode: mode)
            XCTAssert(large > 3.5 * one && large < 4.1 * one, "\(mode): 4× the pixels gives \(large / one)×")
        }
    }

    func testFluxEstimate() {
        var dev = FluxTransformer2DConfig()  // FLUX.1's defaults
        dev.guidanceEmbeds = true
        XCTAssertEqual(dev.approximateParameterCount / 11.9e9, 1, accuracy: 0.03, "FLUX.1-dev has 11.9 B parameters")
        // 1024² images: 64² packed tokens plus 512 T5 states.
        let sampling = dev.activationBytes(batch: 1, imageTokens: 4096, textTokens: 512, mode: .sampling)
        let training = dev.activationBytes(batch: 1, imageTokens: 4096, textTokens: 512, mode: .training(gradientCheckpointing: false))
        let checkpointed = dev.activationBytes(batch: 1, imageTokens: 4096, textTokens: 512, mode: .training(gradientCheckpointing: true))
        XCTAssert(sampling > 1e8 && sampling < 4e9, "\(sampling / 1e9) GB")
        XCTAssert(checkpointed < training / 10)
        let estimate = dev.memoryEstimate(batch: 1, imageTokens: 4096, textTokens: 512, mode: .sampling)
        XCTAssertEqual(estimate.total, estimate.weights + sampling)
    }

    func testTheErrorNamesTheRunTheNumbersAndTheFlags() {
        let estimate = sd15.memoryEstimate(batch: 8, height: 64, width: 64, contextTokens: 77, mode: .training(gradientCheckpointing: false))
        XCTAssertNoThrow(try estimate.check("a step", advice: "lower --batch", available: estimate.total + 1))
        expectError(try estimate.check("training with batch 8", advice: "lower --batch or add --gradient-checkpointing", available: 4e9),
                    mentioning: ["training with batch 8", "GB", "activations", "4.0 GB is available", "--batch", "--gradient-checkpointing"],
                    "too large")
        let infinite = MemoryEstimate(weights: .infinity, activations: 0)
        XCTAssertThrowsError(try infinite.check("x", advice: "y", available: 1e12))
    }
}
