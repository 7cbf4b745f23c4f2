import XCTest
import Kernels
import Tensor

final class CheckpointTests: XCTestCase {
    /// A block whose input is also used after it (a skip connection) and whose parameters are
    /// read inside: checkpointing must give the same output and the same gradients, bit for bit.
    func testCheckpointedBlockGivesTheSameBits() {
        func run(checkpointed: Bool) -> [[Float]] {
            var g = RandomGenerator(seed: 3)
            let w1 = g.normal([6, 4, 3, 3]), w2 = g.normal([4, 6, 3, 3]), gamma = g.normal([6])
            let x0 = g.normal([2, 4, 8, 8]), ctx = g.normal([2, 5, 16])
            for t in [w1, w2, gamma, x0, ctx] { t.requiresGrad = true }
            let x = x0.silu()
            func block(_ inputs: [Tensor]) -> Tensor {
                let (h, c) = (inputs[0], inputs[1])
                var y = conv2d(h, weight: w1, padding: 1).groupNorm(groups: 2, weight: gamma, bias: nil).silu()
                y = conv2d(y, weight: w2, padding: 1)
                let q = y.reshaped([2, 1, 4, 64]).permuted([0, 1, 3, 2])
                let kv = c.reshaped([2, 1, 5, 16]).sliced([0..<2, 0..<1, 0..<5, 0..<4])
                let a = scaledDotProductAttention(q, kv, kv).permuted([0, 1, 3, 2]).reshaped([2, 4, 8, 8])
                return h + a + y
            }
            let out = checkpointed ? checkpoint([x, ctx]) { block($0) } : block([x, ctx])
            let loss = (out * x).sum() + (ctx * ctx).sum()
            loss.backward()
            return [out.scalars, x0.grad!.scalars, ctx.grad!.scalars, w1.grad!.scalars, w2.grad!.scalars, gamma.grad!.scalars]
        }
        let plain = run(checkpointed: false), checkpointed = run(checkpointed: true)
        for (a, b) in zip(plain, checkpointed) { XCTAssertEqual(a, b) }
    }

    /// Without gradient recording a checkpoint is just a call; nothing is recorded.
    func testCheckpointUnderNoGradRecordsNothing() {
        let x = Tensor(shape: [3], scalars: [1, 2, 3], requiresGrad: true)
        let y = noGrad { checkpoint([x]) { $0[0] * 2 } }
        XCTAssertFalse(y.isTracked)
        XCTAssertEqual(y.scalars, [2, 4, 6])
    }

    /// Parameters read inside a checkpoint get gradients even when no input is tracked.
    func testParametersInsideGetGradientsWithUntrackedInputs() {
        let w = Tensor(shape: [2], scalars: [3, -1], requiresGrad: true)
        let x = Tensor(shape: [2], scalars: [2, 5])
        checkpoint([x]) { ($0[0] * w).square() }.sum().backward()
        XCTAssertEqual(w.grad!.scalars, [2 * 6 * 2, 2 * -5 * 5])
    }
}
