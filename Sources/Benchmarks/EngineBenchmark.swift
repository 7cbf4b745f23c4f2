import Foundation
import Kernels
import Tensor

/// Times of the engine's hot ops, the figures of `score bench engine`.
public struct EngineBenchmarkResult: Codable, Sendable {
    public var gemm_1024_gflops: Double
    public var gemm_256x4096x512_gflops: Double
    /// The same GEMMs with bf16 operands and fp32 accumulation (nil where bf16 is unavailable,
    /// `bf16_unavailable` saying why), timed alternately with the fp32 ones.
    public var gemm_1024_bf16_gflops: Double?
    public var gemm_256x4096x512_bf16_gflops: Double?
    public var bf16_unavailable: String?
    /// conv2d forward alone (no recording), fp32 and bf16, timed alternately.
    public var conv_fwd_ms: Double
    public var conv_fwd_bf16_ms: Double?
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

/// Median wall times of `fp32` and, when given, `bf16`, run alternately (one warm-up each) so
/// that a load that comes and goes on a shared machine touches both alike.
func medianSecondsSideBySide(runs: Int, _ fp32: () -> Void, bf16: (() -> Void)?) -> (fp32: Double, bf16: Double?) {
    fp32()
    bf16?()
    var a: [Double] = [], b: [Double] = []
    func timed(_ body: () -> Void) -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }
    for _ in 0..<max(runs, 1) {
        a.append(timed(fp32))
        if let bf16 { b.append(timed(bf16)) }
    }
    a.sort(); b.sort()
    return (a[a.count / 2], b.isEmpty ? nil : b[b.count / 2])
}

/// The engine benchmark: the same shapes as tools/bench_engine_torch.py.
public enum EngineBenchmark {
    public static func run(runs: Int = 7, progress: (String) -> Void = { _ in }) -> EngineBenchmarkResult {
        var generator = RandomGenerator(seed: 0)
        let bf16Unavailable = Kernels.bf16Unavailable

        func gemmGFLOPs(m: Int, n: Int, k: Int) -> (fp32: Double, bf16: Double?) {
            let a = generator.normal([m, k]), b = generator.normal([k, n]), c = Tensor.zeros([m, n])
            func gemm(_ precision: Kernels.Precision) -> () -> Void {
                { Kernels.sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a.pointer, lda: k,
                                b: b.pointer, ldb: n, c: c.pointer, ldc: n, precision: precision) }
            }
            let seconds = medianSecondsSideBySide(runs: runs, gemm(.fp32), bf16: bf16Unavailable == nil ? gemm(.bf16) : nil)
            let flops = 2 * Double(m) * Double(n) * Double(k)
            return (flops / seconds.fp32 / 1e9, seconds.bf16.map { flops / $0 / 1e9 })
        }
        progress("gemm 1024³")
        let gemm1024 = gemmGFLOPs(m: 1024, n: 1024, k: 1024)
        progress("gemm 256×4096×512")
        let gemmWide = gemmGFLOPs(m: 256, n: 4096, k: 512)

        let x = generator.normal([8, 64, 32, 32]), w = generator.normal([64, 64, 3, 3], std: 0.05)
        let bias = generator.normal([64])
        progress("conv2d forward")
        let convForward = { _ = noGrad { conv2d(x, weight: w, bias: bias, padding: 1) } }
        let convForwardSeconds = medianSecondsSideBySide(runs: runs, convForward, bf16: bf16Unavailable == nil ? {
            _ = try? InferencePrecision.withBF16(convForward)
        } : nil)

        progress("conv2d forward+backward")
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
            gemm_1024_gflops: gemm1024.fp32, gemm_256x4096x512_gflops: gemmWide.fp32,
            gemm_1024_bf16_gflops: gemm1024.bf16, gemm_256x4096x512_bf16_gflops: gemmWide.bf16,
            bf16_unavailable: bf16Unavailable,
            conv_fwd_ms: convForwardSeconds.fp32 * 1e3, conv_fwd_bf16_ms: convForwardSeconds.bf16.map { $0 * 1e3 },
            conv_fwd_bwd_ms: convSeconds * 1e3, attention_fwd_bwd_ms: attentionSeconds * 1e3,
            groupnorm_fwd_bwd_ms: groupNormSeconds * 1e3, threads: Kernels.threadCount, isa: Kernels.isa)
    }
}
