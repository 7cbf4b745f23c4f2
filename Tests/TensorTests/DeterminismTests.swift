import XCTest
import Kernels
import Tensor

final class DeterminismTests: XCTestCase {
    func withThreads<T>(_ n: Int, _ body: () -> T) -> T {
        let saved = Kernels.threadCount
        Kernels.threadCount = n
        defer { Kernels.threadCount = saved }
        return body()
    }

    func testRandomStreamsDependOnlyOnSeed() {
        let draw = { () -> [Float] in
            var g = RandomGenerator(seed: 123)
            return g.normal([100_003]).scalars + g.uniform([7]).scalars
        }
        XCTAssertEqual(withThreads(1, draw), withThreads(2, draw))
        var a = RandomGenerator(seed: 1), b = RandomGenerator(seed: 2)
        XCTAssertNotEqual(a.normal([8]).scalars, b.normal([8]).scalars)
    }

    func testRandomDrawsAreStatisticallySound() {
        var g = RandomGenerator(seed: 5)
        let n = g.normal([200_000])
        XCTAssertEqual(n.mean().item, 0, accuracy: 0.01)
        XCTAssertEqual(n.variance(axes: [0]).item, 1, accuracy: 0.01)
        let u = g.uniform([200_000]).scalars
        XCTAssert(u.allSatisfy { $0 >= 0 && $0 < 1 })
        XCTAssertEqual(u.reduce(0, +) / Float(u.count), 0.5, accuracy: 0.005)
        XCTAssertEqual(g.permutation(10).sorted(), Array(0..<10))
    }

    func testHeavyOpsGiveSameBitsOnOneAndTwoThreads() {
        func run() -> [Float] {
            var g = RandomGenerator(seed: 9)
            let x = g.normal([2, 8, 16, 16]), w = g.normal([8, 8, 3, 3])
            x.requiresGrad = true; w.requiresGrad = true
            let q = g.normal([2, 4, 64, 16]), k = g.normal([2, 4, 80, 16]), v = g.normal([2, 4, 80, 16])
            q.requiresGrad = true
            let y = conv2d(x, weight: w, padding: 1).groupNorm(groups: 4, weight: nil, bias: nil).silu()
            let a = scaledDotProductAttention(q, k, v)
            let m = matmul(g.normal([300, 200]), g.normal([200, 150]))
            (y.sum() + a.square().sum()).backward()
            return y.scalars + a.scalars + m.scalars + x.grad!.scalars + w.grad!.scalars + q.grad!.scalars
        }
        XCTAssertEqual(withThreads(1, run), withThreads(2, run))
    }

    /// Convolutions run images side by side when the batch splits evenly over the threads and
    /// one at a time otherwise: neither the thread count nor the batch around an image may
    /// change its bits (forward, input gradient of each kind, weight gradient).
    func testConvolutionBitsDependOnNeitherThreadsNorBatch() {
        for (stride, padding, kernel) in [(1, 1, 3), (2, 1, 3), (1, 0, 1)] {
            func run(batch: Int) -> (y: [Float], dx: [Float], dw: [Float]) {
                var g = RandomGenerator(seed: 21)
                let w = g.normal([5, 3, kernel, kernel]), b = g.normal([5]), x = g.normal([batch, 3, 9, 9])
                x.requiresGrad = true; w.requiresGrad = true
                let y = conv2d(x, weight: w, bias: b, stride: stride, padding: padding)
                (y * y).sum().backward()
                return (y.scalars, x.grad!.scalars, w.grad!.scalars)
            }
            for batch in [1, 3, 4, 9] {
                let one = withThreads(1) { run(batch: batch) }
                for threads in [2, 3] {
                    let many = withThreads(threads) { run(batch: batch) }
                    XCTAssertEqual(one.y, many.y, "stride \(stride) k \(kernel) batch \(batch) threads \(threads)")
                    XCTAssertEqual(one.dx, many.dx, "stride \(stride) k \(kernel) batch \(batch) threads \(threads)")
                    XCTAssertEqual(one.dw, many.dw, "stride \(stride) k \(kernel) batch \(batch) threads \(threads)")
                }
            }
            // The first image of a batch of 4 (side by side) is the image alone (one at a time).
            let four = withThreads(2) { run(batch: 4) }, alone = withThreads(2) { run(batch: 1) }
            XCTAssertEqual(Array(four.y.prefix(alone.y.count)), alone.y, "stride \(stride) k \(kernel)")
        }
    }

    /// 18 rows in 8 chunks of 3 leave the last chunk empty: a linear layer with bias, 1536 outputs (grain 2), on 18 rows
    /// (MiniLM's feed-forward on two prompts of 9 tokens, as UnlearnDiffAtk runs it) must not trap.
    func testLinearWithBiasOnRowCountsThatLeaveEmptyChunks() {
        var g = RandomGenerator(seed: 4)
        let x = g.normal([18, 8]), w = g.normal([1536, 8]), b = g.normal([1536])
        let threaded = withThreads(2) { linear(x, weight: w, bias: b) }
        let serial = withThreads(1) { linear(x, weight: w, bias: b) }
        XCTAssertEqual(threaded.scalars, serial.scalars)
    }
}
