import Diffusion
import Foundation
import Kernels
import Tensor
import Testbed
import XCTest

/// The embedded mini-SD's ε̂ under `InferencePrecision.withBF16`, against fp32 on the same
/// inputs: close (the relative errors docs/BENCHMARKS.md quotes are printed) and not identical
/// (the bf16 path ran).
final class BF16InferenceTests: XCTestCase {
    func testEmbeddedUNetNoisePredictionUnderBF16() throws {
        try XCTSkipIf(Kernels.bf16Unavailable != nil, "bf16 unavailable: \(Kernels.bf16Unavailable ?? "")")
        let pipeline: StableDiffusionPipeline
        do { pipeline = try DefaultModel.pipeline() } catch { throw XCTSkip("needs MiniLM (`score assets`): \(error)") }
        let prompts = ["a photo of a sneaker", "a photo of a bag", "a photo of a dress", "a photo of a shirt", "", ""]
        let (states, mask) = pipeline.encodePrompts(prompts)
        var g = RandomGenerator(seed: 0)
        var relative: [Double] = [], worstElement = 0.0
        for t in [20, 250, 500, 750, 980] {
            let latents = g.normal([prompts.count, 1, 32, 32])
            let fp32 = noGrad { pipeline.predictNoise(latents: latents, timestep: Float(t), states: states, mask: mask) }
            let bf16 = try InferencePrecision.withBF16 {
                noGrad { pipeline.predictNoise(latents: latents, timestep: Float(t), states: states, mask: mask) }
            }
            let per = fp32.count / prompts.count
            let (a, b) = (fp32.scalars.map(Double.init), bf16.scalars.map(Double.init))
            for s in 0..<prompts.count {
                let range = s * per..<(s + 1) * per
                let norm = range.reduce(0) { $0 + a[$1] * a[$1] }.squareRoot()
                let error = range.reduce(0) { $0 + (b[$1] - a[$1]) * (b[$1] - a[$1]) }.squareRoot()
                relative.append(error / norm)
                let rms = norm / Double(per).squareRoot()
                worstElement = max(worstElement, range.map { abs(b[$0] - a[$0]) / rms }.max()!)
            }
        }
        let mean = relative.reduce(0, +) / Double(relative.count), worst = relative.max()!
        print(String(format: "mini-SD ε̂ bf16 vs fp32 over %d samples: relative L2 error mean %.2e, max %.2e; largest element error %.2e of ε̂'s rms",
                     relative.count, mean, worst, worstElement))
        XCTAssertGreaterThan(worst, 0, "bf16 gave fp32's bits")
        XCTAssertLessThan(mean, 0.01)
        XCTAssertLessThan(worst, 0.03)
    }
}
