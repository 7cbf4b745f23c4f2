import Diffusion
@testable import Erasure
import Foundation
import Kernels
import Tensor
import XCTest

/// Fine-tuning ignores an enclosing bf16 inference scope: `TrainingRun.train` runs in fp32, frozen
/// teachers and sampled xₜ included, so an erasure gives the same bits inside one.
final class BF16ScopeTests: XCTestCase {
    func testESDInsideABF16ScopeGivesTheFP32Bits() throws {
        try XCTSkipIf(Kernels.bf16Unavailable != nil, "bf16 unavailable: \(Kernels.bf16Unavailable ?? "")")
        var config = BaselineTests.tinyESD(iterations: 3)
        config.samplingModel = .trained
        let plain = try Tiny.pipeline(), scoped = try Tiny.pipeline()
        let reference = try ESD(config: config).erase(BaselineTests.request, pipeline: plain, context: ErasureContext(output: nil))
        let outcome = try InferencePrecision.withBF16 {
            try ESD(config: config).erase(BaselineTests.request, pipeline: scoped, context: ErasureContext(output: nil))
        }
        XCTAssertEqual(outcome.losses["erase"]?.map(\.bitPattern), reference.losses["erase"]?.map(\.bitPattern))
        let weights = plain.unet.stateDict()
        var differing: [String] = []
        for (name, p) in scoped.unet.namedParameters() where p.scalars.map(\.bitPattern) != weights[name]!.scalars.map(\.bitPattern) {
            differing.append(name)
        }
        XCTAssertEqual(differing, [])
        // The same pipeline's sampling inside the scope does take the bf16 path.
        let (states, _) = plain.encodePrompts(["a photo of cat"])
        var g = RandomGenerator(seed: 1)
        let latents = g.normal([1, plain.unet.config.inChannels, 16, 16])
        let fp32 = noGrad { plain.predictNoise(latents: latents, timestep: 500, states: states) }
        let bf16 = try InferencePrecision.withBF16 { noGrad { plain.predictNoise(latents: latents, timestep: 500, states: states) } }
        XCTAssertNotEqual(bf16.scalars, fp32.scalars)
    }
}
