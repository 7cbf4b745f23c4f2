import CKernels
import Kernels
import Tensor
import XCTest

/// `InferencePrecision.withBF16`: untracked forward products in bf16, close to fp32 and not equal
/// to it; anything on the tape, every backward pass and `withFP32` bit for bit fp32; and an error
/// where the instructions are unavailable.
final class InferencePrecisionTests: XCTestCase {
    /// Largest |a − b| over the largest |b|.
    func relativeDifference(_ a: Tensor, _ b: Tensor) -> Float {
        let (x, y) = (a.scalars, b.scalars)
        XCTAssertEqual(x.count, y.count)
        let scale = y.map(abs).max() ?? 0
        return zip(x, y).map { abs($0 - $1) }.max()! / max(scale, .leastNormalMagnitude)
    }

    func testForwardOpsRunInBF16OnlyOutsideTheTape() throws {
        try XCTSkipIf(Kernels.bf16Unavailable != nil, "bf16 unavailable: \(Kernels.bf16Unavailable ?? "")")
        var g = RandomGenerator(seed: 3)
        let x = g.normal([2, 8, 12, 12]), w = g.normal([16, 8, 3, 3], std: 0.2), bias = g.normal([16])
        let pointwise = g.normal([4, 8, 1, 1], std: 0.3)
        let features = g.normal([5, 40]), weight = g.normal([24, 40], std: 0.2)
        let q = g.normal([1, 2, 33, 16]), k = g.normal([1, 2, 20, 16]), v = g.normal([1, 2, 20, 8])
        let ops: [(String, () -> Tensor)] = [
            ("conv2d", { conv2d(x, weight: w, bias: bias, padding: 1) }),
            ("conv2d 1×1", { conv2d(x, weight: pointwise) }),
            ("linear", { linear(features, weight: weight) }),
            ("matmul", { matmul(features, weight.transposed(0, 1)) }),
            ("attention", { scaledDotProductAttention(q, k, v) }),
        ]
        for (name, op) in ops {
            let fp32 = noGrad(op)
            let bf16 = try InferencePrecision.withBF16 { noGrad(op) }
            let difference = relativeDifference(bf16, fp32)
            XCTAssertGreaterThan(difference, 0, "\(name): bf16 gave fp32's bits")
            XCTAssertLessThan(difference, 0.02, "\(name): bf16 too far from fp32")
            // Nested in withFP32 (a training loop inside an evaluation): fp32's bits.
            let forced = try InferencePrecision.withBF16 { InferencePrecision.withFP32 { noGrad(op) } }
            XCTAssertEqual(forced.scalars.map(\.bitPattern), fp32.scalars.map(\.bitPattern), name)
        }
        // A tracked input records the op, whose forward then stays fp32.
        w.requiresGrad = true
        defer { w.requiresGrad = false }
        let recorded = try InferencePrecision.withBF16 { conv2d(x, weight: w, bias: bias, padding: 1) }
        XCTAssertEqual(recorded.scalars.map(\.bitPattern), noGrad { conv2d(x, weight: w, bias: bias, padding: 1) }.scalars.map(\.bitPattern))
    }

    /// One SGD step of a small network (convolution, checkpointed block, attention, linear head)
    /// against a frozen teacher run under `noGrad` in `withFP32`, as `TrainingRun.train` does:
    /// inside a bf16 scope it gives the same loss, gradients and weights, bit for bit.
    func testTrainingStepIsBitIdenticalUnderTheBF16Scope() throws {
        try XCTSkipIf(Kernels.bf16Unavailable != nil, "bf16 unavailable: \(Kernels.bf16Unavailable ?? "")")
        func step() -> [[UInt32]] {
            var g = RandomGenerator(seed: 11)
            let x = g.normal([2, 4, 8, 8])
            let w1 = g.normal([8, 4, 3, 3], std: 0.3), w2 = g.normal([8, 8, 3, 3], std: 0.2), head = g.normal([3, 8], std: 0.3)
            let teacher = g.normal([3, 8], std: 0.3)
            for p in [w1, w2, head] { p.requiresGrad = true }
            let target = noGrad { linear(conv2d(x, weight: w1, padding: 1).mean(axes: [2, 3]), weight: teacher) }
            let h = conv2d(x, weight: w1, padding: 1).silu()
            let block = checkpoint([h]) { inputs in conv2d(inputs[0], weight: w2, padding: 1).silu() }
            let tokens = block.reshaped([2, 1, 8, 64]).transposed(2, 3)
            let attended = scaledDotProductAttention(tokens, tokens, tokens).mean(axes: [1, 2])
            let out = linear(attended, weight: head)
            let loss = ((out - target) * (out - target)).mean()
            loss.backward()
            let grads = [w1, w2, head].map { $0.grad!.scalars.map(\.bitPattern) }
            noGrad { for p in [w1, w2, head] { p.assign(p - p.grad! * 0.1) } }
            return [loss.scalars.map(\.bitPattern)] + grads + [w1, w2, head].map { $0.scalars.map(\.bitPattern) }
        }
        let fp32 = step()
        let scoped = try InferencePrecision.withBF16 { InferencePrecision.withFP32 { step() } }
        XCTAssertEqual(scoped, fp32, "the step under withBF16 + withFP32 changed bits")
        // Without withFP32 only the untracked teacher runs in bf16: the loss moves, the tape does not.
        let unprotected = try InferencePrecision.withBF16 { step() }
        XCTAssertNotEqual(unprotected[0], fp32[0], "the teacher's forward did not run in bf16")
    }

    /// Runs on every machine: with the kernels capped below avx512 the scope is refused, naming
    /// why, and nothing runs.
    func testBF16IsRefusedWhereUnavailable() {
        let saved = score_active_isa()
        defer { score_set_isa(saved) }
        Kernels.isa = "avx2"
        var ran = false
        XCTAssertThrowsError(try InferencePrecision.withBF16 { ran = true }) { error in
            let message = "\(error)"
            XCTAssert(message.contains("bf16 inference is unavailable"), message)
            XCTAssert(message.contains("avx512") || message.contains("AVX512-BF16") || message.contains("x86-64"), message)
        }
        XCTAssertFalse(ran)
        XCTAssertFalse(InferencePrecision.isBF16)
    }
}
