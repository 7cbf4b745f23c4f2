import Foundation
import Kernels
import Tensor

/// Times of the engine's hot ops, the figures of `score bench engine`.
public struct EngineBenchmarkResult: Codable, Sendable {
    public var gemm_1024_gflops: Double
    public var gemm_256x4096x512_gflops: Double
    public var conv_fwd_bwd_ms: Double
    public var attention_fwd_bwd_ms: Double
    public var groupnorm_fwd_bwd_ms: Double
    public var threads: Int
    public var isa: String
}

/// Median wall time of `body` in seconds, after `warmup` untimed runs.
public func medianSeconds(runs: Int, warmup: Int = 1, _ body: () -> Void) -> Double {
    for _ in 0..<warmup { body() }
    var times: [Double] = []
    for _ in 0..<max(runs, 1) {
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    times.sort()
    return times[times.count / 2]
}

/// The engine benchmark: the same shapes as tools/bench_engine_torch.py.
public enum EngineBenchmark {
    public static func run(runs: Int = 7, progress: (String) -> Void = { _ in }) -> EngineBenchmarkResult {
        var generator = RandomGenerator(seed: 0)

        func gemmGFLOPs(m: Int, n: Int, k: Int) -> Double {
            let a = generator.normal([m, k]), b = generator.normal([k, n]), c = Tensor.zeros([m, n])
            let seconds = medianSeconds(runs: runs) {
                Kernels.sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a.pointer, lda: k,
                              b: b.pointer, ldb: n, c: c.pointer, ldc: n)
            }
            return 2 * Double(m) * Double(n) * Double(k) / seconds / 1e9
        }
        progress("gemm 1024³")
        let gemm1024 = gemmGFLOPs(m: 1024, n: 1024, k: 1024)
        progress("gemm 256×4096×512")
        let gemmWide = gemmGFLOPs(m: 256, n: 4096, k: 512)

        progress("conv2d forward+backward")
        let x = generator.normal([8, 64, 32, 32]), w = generator.normal([64, 64, 3, 3], std: 0.05)
        let bias = generator.normal([64])
        for t in [x, w, bias] { t.requiresGrad = true }
        // Each measurement's output gradient is made once, outside the timed runs, as
        // tools/bench_engine_torch.py does.
        let convSeed = generator.normal([8, 64, 32, 32])
        let convSeconds = medianSeconds(runs: runs) {
            let y = conv2d(x, weight: w, bias: bias, padding: 1)
            y.backward(convSeed)
            for t in [x, w, bias] { t.grad = nil }
        }

        progress("attention forward+backward")
        let q = generator.normal([2, 8, 1024, 64]), k = generator.normal([2, 8, 1024, 64]), v = generator.normal([2, 8, 1024, 64])
        for t in [q, k, v] { t.requiresGrad = true }
        let attentionSeed = generator.normal([2, 8, 1024, 64])
        let attentionSeconds = medianSeconds(runs: runs) {
            let y = scaledDotProductAttention(q, k, v)
            y.backward(attentionSeed)
            for t in [q, k, v] { t.grad = nil }
        }

        progress("GroupNorm forward+backward")
        let gx = generator.normal([8, 64, 32, 32]), gamma = Tensor.ones([64]), beta = Tensor.zeros([64])
        for t in [gx, gamma, beta] { t.requiresGrad = true }
        let groupNormSeed = generator.normal([8, 64, 32, 32])
        let groupNormSeconds = medianSeconds(runs: runs) {
            let y = gx.groupNorm(groups: 32, weight: gamma, bias: beta)
            y.backward(groupNormSeed)
            for t in [gx, gamma, beta] { t.grad = nil }
        }

        return EngineBenchmarkResult(
            gemm_1024_gflops: gemm1024, gemm_256x4096x512_gflops: gemmWide,
            conv_fwd_bwd_ms: convSeconds * 1e3, attention_fwd_bwd_ms: attentionSeconds * 1e3,
            groupnorm_fwd_bwd_ms: groupNormSeconds * 1e3, threads: Kernels.threadCount, isa: Kernels.isa)
    }
}
