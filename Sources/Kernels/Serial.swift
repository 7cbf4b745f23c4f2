import CKernels

// Single-threaded entry points for callers that already run in parallel (attention threads
// over heads and query chunks; nesting a second level of threads would oversubscribe the cores).
extension Kernels {
    public static func sgemmSerial(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                                   a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                   beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
                                   precision: Precision = .fp32) {
        if m == 0 || n == 0 { return }
        gemmBlock(precision, transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }

    public static func softmaxRowsSerial(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        if rows == 0 || cols == 0 { return }
        score_softmax_rows(x, y, Int64(rows), Int64(cols))
    }

    public static func expSerial(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        if count > 0 { score_vexp(x, y, Int64(count)) }
    }

    public static func siluSerial(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        if count > 0 { score_silu(x, y, Int64(count)) }
    }

    /// Mean and biased variance, accumulated in double.
    public static func momentsSerial(_ x: UnsafePointer<Float>, count: Int) -> (mean: Double, variance: Double) {
        var mean = 0.0, variance = 0.0
        score_moments(x, Int64(count), &mean, &variance)
        return (mean, variance)
    }

    /// Σ g and Σ g · (x − mean) · rstd, accumulated in double.
    public static func normGradSumsSerial(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, count: Int,
                                          mean: Float, rstd: Float) -> (sumG: Double, sumGX: Double) {
        var sumG = 0.0, sumGX = 0.0
        score_norm_grad_sums(g, x, Int64(count), mean, rstd, &sumG, &sumGX)
        return (sumG, sumGX)
    }

    public static func geluSerial(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        if count > 0 { score_gelu(x, y, Int64(count)) }
    }

    /// dx = g · silu′(x).
    public static func siluGradSerial(_ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int) {
        if count > 0 { score_silu_grad(x, g, dx, Int64(count)) }
    }

    /// dx = g · gelu′(x) (erf form).
    public static func geluGradSerial(_ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int) {
        if count > 0 { score_gelu_grad(x, g, dx, Int64(count)) }
    }
}
