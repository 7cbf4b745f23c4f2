import XCTest
import Tensor

/// Compares the engine's gradients with central finite differences.
///
/// The loss is Σ f(inputs) ⊙ w for a fixed random w, so every output element matters. The
/// engine computes in Float32; differences use a step of 1e-2 and the loss summed in Float64,
/// which bounds the numerical error well below the tolerances used.
func checkGradients(_ name: String, _ inputs: [Tensor], step: Float = 1e-2, tolerance: Float = 2e-2,
                    file: StaticString = #filePath, line: UInt = #line, _ f: ([Tensor]) -> Tensor) {
    for x in inputs { x.requiresGrad = true; x.grad = nil }
    var generator = RandomGenerator(seed: 99)
    let probe = f(inputs)
    let weights = generator.normal(probe.shape)
    (probe * weights).sum().backward()

    func loss() -> Double {
        noGrad {
            let y = f(inputs)
            var total: Double = 0
            for i in 0..<y.count { total += Double(y.pointer[i]) * Double(weights.pointer[i]) }
            return total
        }
    }
    for (index, x) in inputs.enumerated() {
        guard let analytic = x.grad else { XCTFail("\(name): input \(index) got no gradient", file: file, line: line); continue }
        var worst: Float = 0
        for i in 0..<x.count {
            let saved = x.pointer[i]
            x.pointer[i] = saved + step; let up = loss()
            x.pointer[i] = saved - step; let down = loss()
            x.pointer[i] = saved
            let numeric = Float((up - down) / Double(2 * step))
            let error = abs(numeric - analytic.pointer[i]) / max(1, abs(numeric))
            worst = max(worst, error)
        }
        XCTAssertLessThan(worst, tolerance, "\(name): input \(index) gradient differs from finite differences", file: file, line: line)
    }
}

final class GradientCheckTests: XCTestCase {
    var generator = RandomGenerator(seed: 7)

    func randn(_ shape: [Int]) -> Tensor { generator.normal(shape) }
    func positive(_ shape: [Int]) -> Tensor { generator.uniform(shape, low: 0.5, high: 2) }

    func testBinaryOpsWithBroadcasting() {
        checkGradients("add", [randn([2, 3, 4]), randn([3, 1])]) { $0[0] + $0[1] }
        checkGradients("sub", [randn([2, 3, 4]), randn([4])]) { $0[0] - $0[1] }
        checkGradients("mul", [randn([2, 3, 4]), randn([2, 1, 4])]) { $0[0] * $0[1] }
        checkGradients("div", [randn([2, 3, 4]), positive([1, 3, 1])]) { $0[0] / $0[1] }
        checkGradients("scalar ops", [randn([5])]) { (2 - $0[0] * 3 + 1) / 4 }
    }

    func testUnaryOps() {
        checkGradients("exp", [randn([3, 4])]) { $0[0].exp() }
        checkGradients("log", [positive([3, 4])]) { $0[0].log() }
        checkGradients("sqrt", [positive([3, 4])]) { $0[0].sqrt() }
        checkGradients("pow", [positive([3, 4])]) { $0[0].pow(2.5) }
        checkGradients("sigmoid", [randn([3, 4])]) { $0[0].sigmoid() }
        checkGradients("tanh", [randn([3, 4])]) { $0[0].tanh() }
        checkGradients("silu", [randn([3, 4])]) { $0[0].silu() }
        checkGradients("quickGELU", [randn([3, 4])]) { $0[0].quickGELU() }
        checkGradients("gelu erf", [randn([3, 4])]) { $0[0].gelu() }
        checkGradients("gelu tanh", [randn([3, 4])]) { $0[0].gelu(approximation: .tanh) }
        checkGradients("square", [randn([3, 4])]) { $0[0].square() }
    }

    func testReductions() {
        checkGradients("sum axes", [randn([2, 3, 4])]) { $0[0].sum(axes: [0, 2], keepDims: true) }
        checkGradients("sum all", [randn([2, 3])]) { $0[0].sum() }
        checkGradients("mean", [randn([2, 3, 4])]) { $0[0].mean(axes: [1]) }
        checkGradients("variance", [randn([3, 6])]) { $0[0].variance(axes: [-1], correction: 1) }
    }

    func testMatrixProducts() {
        checkGradients("matmul", [randn([5, 7]), randn([7, 3])]) { matmul($0[0], $0[1]) }
        checkGradients("batched matmul", [randn([2, 3, 4, 5]), randn([2, 3, 5, 2])]) { matmul($0[0], $0[1]) }
        checkGradients("matmul shared rhs", [randn([2, 3, 4, 5]), randn([5, 2])]) { matmul($0[0], $0[1]) }
        checkGradients("matmul shared lhs", [randn([4, 5]), randn([3, 5, 2])]) { matmul($0[0], $0[1]) }
        checkGradients("linear", [randn([2, 3, 6]), randn([5, 6]), randn([5])]) { linear($0[0], weight: $0[1], bias: $0[2]) }
    }

    func testConvolutionAndResampling() {
        checkGradients("conv2d", [randn([2, 3, 6, 6]), randn([4, 3, 3, 3]), randn([4])]) {
            conv2d($0[0], weight: $0[1], bias: $0[2], stride: 1, padding: 1)
        }
        checkGradients("conv2d stride 2", [randn([1, 2, 7, 7]), randn([3, 2, 3, 3])]) {
            conv2d($0[0], weight: $0[1], stride: 2, padding: 1)
        }
        checkGradients("conv2d 1x1", [randn([2, 4, 3, 3]), randn([2, 4, 1, 1]), randn([2])]) {
            conv2d($0[0], weight: $0[1], bias: $0[2])
        }
        checkGradients("upsample", [randn([1, 2, 3, 4])]) { $0[0].upsampleNearest2x() }
        checkGradients("avgpool", [randn([1, 2, 4, 6])]) { $0[0].avgPool2d(kernel: 2) }
    }

    func testNormalization() {
        checkGradients("groupNorm", [randn([2, 6, 3, 3]), randn([6]), randn([6])]) {
            $0[0].groupNorm(groups: 3, weight: $0[1], bias: $0[2])
        }
        checkGradients("layerNorm", [randn([3, 8]), randn([8]), randn([8])]) {
            $0[0].layerNorm(weight: $0[1], bias: $0[2])
        }
    }

    func testSoftmaxAndAttention() {
        checkGradients("softmax", [randn([3, 5])]) { $0[0].softmax() }
        checkGradients("softmax axis 0", [randn([3, 5])]) { $0[0].softmax(axis: 0) }
        checkGradients("logSoftmax", [randn([3, 5])]) { $0[0].logSoftmax() }
        checkGradients("attention", [randn([1, 2, 5, 4]), randn([1, 2, 6, 4]), randn([1, 2, 6, 3])]) {
            scaledDotProductAttention($0[0], $0[1], $0[2], queryChunk: 2)
        }
        let mask = Tensor(shape: [1, 1, 1, 6], scalars: [1, 1, 0, 1, 1, 0])
        checkGradients("masked attention", [randn([1, 2, 5, 4]), randn([1, 2, 6, 4]), randn([1, 2, 6, 4])]) {
            scaledDotProductAttention($0[0], $0[1], $0[2], mask: mask, queryChunk: 3)
        }
    }

    func testAttentionBackwardIsTheSameWithAndWithoutCachedProbabilities() {
        func gradients() -> [Float] {
            var g = RandomGenerator(seed: 3)
            let q = g.normal([2, 2, 37, 8]), k = g.normal([2, 2, 29, 8]), v = g.normal([2, 2, 29, 5])
            for t in [q, k, v] { t.requiresGrad = true }
            let mask = Tensor(shape: [2, 1, 1, 29], scalars: (0..<58).map { $0 % 7 == 3 ? 0 : 1 })
            scaledDotProductAttention(q, k, v, mask: mask, queryChunk: 16).square().sum().backward()
            return q.grad!.scalars + k.grad!.scalars + v.grad!.scalars
        }
        let saved = maxCachedAttentionProbabilities
        defer { maxCachedAttentionProbabilities = saved }
        maxCachedAttentionProbabilities = 0
        let recomputed = gradients()
        maxCachedAttentionProbabilities = 1 << 30
        XCTAssertEqual(recomputed, gradients())
    }

    func testViewsAndLosses() {
        checkGradients("permute", [randn([2, 3, 4])]) { $0[0].permuted([2, 0, 1]) }
        checkGradients("slice", [randn([4, 6])]) { $0[0].sliced([1..<3, 2..<5]) }
        checkGradients("concat", [randn([2, 3]), randn([2, 2])]) { Tensor.concat([$0[0], $0[1]], axis: 1) }
        checkGradients("split", [randn([2, 5])]) { x in
            let parts = x[0].split(sizes: [2, 3], axis: 1)
            return parts[0].sum(axis: 1) * parts[1].sum(axis: 1)
        }
        checkGradients("expand", [randn([3, 1])]) { $0[0].expanded(to: [2, 3, 4]) }
        checkGradients("mse", [randn([3, 4]), randn([3, 4])]) { mseLoss($0[0], $0[1]) }
        checkGradients("cross entropy", [randn([4, 5])]) { crossEntropy($0[0], targets: [0, 4, 2, 2]) }
        checkGradients("embedding", [randn([6, 3])]) { embedding($0[0], indices: [1, 5, 1, 0], shape: [2, 2]) }
    }
}
