import Foundation
import XCTest
import Tensor

/// RMSNorm and the rotary embedding (the ops FLUX adds): forward against the same arithmetic
/// written with existing ops, and gradients against finite differences.
final class FluxOpsTests: XCTestCase {
    var generator = RandomGenerator(seed: 11)

    func randn(_ shape: [Int]) -> Tensor { generator.normal(shape) }

    func maxDifference(_ a: Tensor, _ b: Tensor) -> Float {
        XCTAssertEqual(a.shape, b.shape)
        return zip(a.scalars, b.scalars).map { Swift.abs($0 - $1) }.max() ?? 0
    }

    func testRMSNormMatchesItsDefinition() {
        let x = randn([2, 3, 5, 8]), w = randn([8])
        let reference = x * (x.square().mean(axis: -1, keepDims: true) + 1e-6).pow(-0.5) * w
        XCTAssertLessThan(maxDifference(x.rmsNorm(weight: w, eps: 1e-6), reference), 1e-5)
        let unscaled = x * (x.square().mean(axis: -1, keepDims: true) + 1e-6).pow(-0.5)
        XCTAssertLessThan(maxDifference(x.rmsNorm(weight: nil, eps: 1e-6), unscaled), 1e-5)
    }

    func testRMSNormGradients() {
        checkGradients("rmsNorm", [randn([3, 4, 6]), randn([6])]) { $0[0].rmsNorm(weight: $0[1], eps: 1e-6) }
        checkGradients("rmsNorm without weight", [randn([5, 7])]) { $0[0].rmsNorm(weight: nil) }
        // More rows than one backward block (32), so the partial sums of dγ are combined.
        checkGradients("rmsNorm many rows", [randn([70, 4]), randn([4])]) { $0[0].rmsNorm(weight: $0[1]) }
    }

    /// The rotation of consecutive pairs, written out with slices and concatenation.
    func rotatedByDefinition(_ x: Tensor, cos: Tensor, sin: Tensor) -> Tensor {
        let (b, h, s, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let pairs = x.reshaped([b, h, s, d / 2, 2])
        let real = pairs.narrowed(axis: 4, start: 0, length: 1), imag = pairs.narrowed(axis: 4, start: 1, length: 1)
        let rotated = Tensor.concat([-imag, real], axis: 4).reshaped([b, h, s, d])
        return x * cos + rotated * sin
    }

    func testRotaryEmbeddingMatchesItsDefinition() {
        let x = randn([2, 3, 5, 6])
        // Tables as FLUX builds them: each angle repeated for its pair (cos and sin of the same angle).
        let angles = Tensor(shape: [5, 3]) { p in for i in 0..<15 { p[i] = Float(i) * 0.37 - 2 } }
        let repeated = Tensor.concat([angles.unsqueezed(2), angles.unsqueezed(2)], axis: 2).reshaped([5, 6])
        let cos = Tensor(shape: [5, 6]) { p in for i in 0..<30 { p[i] = Foundation.cos(repeated.pointer[i]) } }
        let sin = Tensor(shape: [5, 6]) { p in for i in 0..<30 { p[i] = Foundation.sin(repeated.pointer[i]) } }
        XCTAssertLessThan(maxDifference(x.rotaryEmbedding(cos: cos, sin: sin), rotatedByDefinition(x, cos: cos, sin: sin)), 1e-6)
        // A rotation keeps each pair's length.
        let y = x.rotaryEmbedding(cos: cos, sin: sin)
        XCTAssertLessThan(maxDifference(y.square().sum(), x.square().sum()), 1e-3)
    }

    func testRotaryEmbeddingGradients() {
        // Arbitrary tables (not a rotation) so that every term of the transposed map is checked.
        let cos = randn([4, 6]), sin = randn([4, 6])
        checkGradients("rotaryEmbedding", [randn([2, 2, 4, 6])]) { $0[0].rotaryEmbedding(cos: cos, sin: sin) }
    }
}
