// Kernels: the Swift face of the CKernels C target. The Tensor layer calls these with raw
// pointers; this file adds threading (Dispatch concurrentPerform over disjoint blocks) on top of
// the single-threaded, ISA-dispatched C kernels. Why the kernels are C: see the top of
// Sources/CKernels/kernels.c.
import CKernels
import Dispatch
import Foundation

public enum Kernels {
    // MARK: Threads

    nonisolated(unsafe) private static var _threadCount: Int = defaultThreadCount()

    private static func defaultThreadCount() -> Int {
        if let text = ProcessInfo.processInfo.environment["SCORE_THREADS"],
           let value = Int(text.trimmingCharacters(in: .whitespaces)), value > 0 {
            return value
        }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// Worker threads for parallel kernels. Default: the active processor count, or the
    /// environment variable SCORE_THREADS. Values below 1 become 1. Set it at startup or
    /// between calls, not while kernels run on other threads.
    public static var threadCount: Int {
        get { _threadCount }
        set { _threadCount = max(1, newValue) }
    }

    /// The instruction set the C kernels use: "avx512", "avx2", "portable" (or
    /// "avx512-layout-on-avx2", a test-only variant). Setting "portable", "avx2" or "avx512"
    /// selects that variant, clamped to what the CPU supports.
    public static var isa: String {
        get { String(cString: score_active_isa_name()) }
        set {
            switch newValue {
            case "portable": score_set_isa(SCORE_ISA_PORTABLE)
            case "avx2": score_set_isa(SCORE_ISA_AVX2)
            case "avx512": score_set_isa(SCORE_ISA_AVX512)
            default: preconditionFailure("Kernels.isa: unknown instruction set \(newValue)")
            }
        }
    }

    /// Runs body(0..<n) on at most threadCount workers (Dispatch concurrentPerform); each index
    /// runs exactly once. Runs inline when threadCount == 1, n == 1, or when called from inside
    /// another parallelFor body (nested regions would oversubscribe the cores).
    public static func parallelFor(_ n: Int, _ body: (Int) -> Void) {
        if n <= 0 { return }
        let workers = min(n, threadCount)
        if workers <= 1 || score_thread_in_parallel() != 0 {
            for i in 0..<n { body(i) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            let wasInside = score_thread_in_parallel()
            score_thread_set_in_parallel(1)
            defer { score_thread_set_in_parallel(wasInside) }
            var i = worker
            while i < n {
                body(i)
                i += workers
            }
        }
    }

    // MARK: GEMM

    /// The arithmetic of a GEMM: fp32 (the default, and the only one gradients ever use), or
    /// operands rounded to bf16 with fp32 accumulation (AVX512-BF16; see `bf16Unavailable`).
    public enum Precision: String, Sendable {
        case fp32, bf16
    }

    /// nil when the bf16 GEMM can run here; otherwise why not ("this CPU lacks AVX512-BF16 …",
    /// or the instruction set capped below avx512 by SCORE_ISA or `isa`).
    public static var bf16Unavailable: String? {
        score_bf16_unavailable_reason().map { String(cString: $0) }
    }

    /// One block of C by the C kernel of `precision`.
    @inline(__always)
    static func gemmBlock(_ precision: Precision, _ transA: Int32, _ transB: Int32, _ m: Int, _ n: Int, _ k: Int,
                          _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                          _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        switch precision {
        case .fp32:
            score_sgemm(transA, transB, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
        case .bf16:
            score_sgemm_bf16(transA, transB, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
        }
    }

    private static func checkPrecision(_ precision: Precision) {
        if precision == .bf16, let reason = bf16Unavailable {
            preconditionFailure("bf16 GEMM requested but unavailable: \(reason)")
        }
    }

    /// Row-major SGEMM: C[m×n] = alpha · op(A)·op(B) + beta · C.
    /// op(A) is A (m×k, row stride lda) or, with transA, Aᵀ where A is k×m (row stride lda);
    /// op(B) is B (k×n, row stride ldb) or, with transB, Bᵀ where B is n×k (row stride ldb).
    /// beta == 0 overwrites C without reading it. Multithreaded over disjoint blocks of C (split
    /// along M and/or N, never K), so results are bitwise identical for any threadCount.
    /// `precision: .bf16` rounds op(A) and op(B) to bf16 (accumulating in fp32); it must be
    /// available (`bf16Unavailable == nil`).
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
                             precision: Precision = .fp32) {
        checkGemmArguments(transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc)
        checkPrecision(precision)
        sgemmThreaded(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                      b: b, ldb: ldb, beta: beta, c: c, ldc: ldc, threads: threadCount, precision: precision)
    }

    /// batchCount independent GEMMs; GEMM i uses a + i·strideA, b + i·strideB, c + i·strideC
    /// (a stride of 0 reuses one matrix for every GEMM). Threads run over the batch when it is
    /// large enough to balance, otherwise inside each GEMM; either way the bits are the same.
    public static func sgemmBatched(transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
                                    alpha: Float = 1,
                                    a: UnsafePointer<Float>, lda: Int, strideA: Int,
                                    b: UnsafePointer<Float>, ldb: Int, strideB: Int,
                                    beta: Float = 0,
                                    c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int,
                                    batchCount: Int, precision: Precision = .fp32) {
        precondition(batchCount >= 0, "sgemmBatched: negative batchCount")
        checkGemmArguments(transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc)
        checkPrecision(precision)
        if batchCount == 0 || m == 0 || n == 0 { return }
        let threads = threadCount
        let cBlock = (m - 1) * ldc + n  // elements one C matrix spans
        // Parallel over the batch only when C matrices are disjoint (strideC == 0 accumulates
        // every GEMM into one C and must stay sequential).
        let disjoint = abs(strideC) >= cBlock
        let flops = 2.0 * Double(m) * Double(n) * Double(k)
        let overBatch = disjoint && threads > 1 && batchCount > 1 &&
            (batchCount >= 2 * threads || batchCount % threads == 0 || flops < minFlopsPerThread * 2)
        if overBatch {
            parallelFor(batchCount) { i in
                gemmBlock(precision, transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha,
                          a + i * strideA, lda, b + i * strideB, ldb, beta, c + i * strideC, ldc)
            }
        } else {
            for i in 0..<batchCount {
                sgemmThreaded(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                              a: a + i * strideA, lda: lda, b: b + i * strideB, ldb: ldb,
                              beta: beta, c: c + i * strideC, ldc: ldc, threads: threads, precision: precision)
            }
        }
    }

    /// Below this many flops per thread, a thread costs more to start than it saves (~10 µs).
    public static let minFlopsPerThread = 1_000_000.0

    private static func checkGemmArguments(transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
                                           lda: Int, ldb: Int, ldc: Int) {
        precondition(m >= 0 && n >= 0 && k >= 0, "sgemm: negative dimension")
        precondition(lda >= max(1, transA ? m : k), "sgemm: lda \(lda) too small")
        precondition(ldb >= max(1, transB ? k : n), "sgemm: ldb \(ldb) too small")
        precondition(ldc >= max(1, n), "sgemm: ldc \(ldc) too small")
    }

    /// How sgemm cuts C into a grid of blocks, one per thread (public for tests and for
    /// callers that want to see the plan).
    public struct GemmSplit: Equatable, Sendable {
        public var rowBlocks: Int, colBlocks: Int
        public var rowsPerBlock: Int, colsPerBlock: Int
    }

    /// Picks the grid (rowBlocks × colBlocks <= threads) that minimises the modelled time of the
    /// slowest thread: its multiply-adds on micro-tile-padded blocks, plus packing its A rows and
    /// B columns (a packed element costs about as much as 20 multiply-adds), plus a fixed cost
    /// per extra thread. Splitting N duplicates the packing of A in every thread, splitting M
    /// that of B, so the model prefers cutting the dimension whose packed panel is cheaper.
    public static func gemmSplit(m: Int, n: Int, k: Int, threads: Int, mr: Int, nr: Int) -> GemmSplit {
        func roundUp(_ x: Int, _ q: Int) -> Int { (x + q - 1) / q * q }
        var best = GemmSplit(rowBlocks: 1, colBlocks: 1, rowsPerBlock: m, colsPerBlock: n)
        var bestCost = Double.infinity
        let total = 2.0 * Double(m) * Double(n) * Double(k)
        let maxThreads = max(1, min(threads, Int(total / minFlopsPerThread)))
        for rowBlocks in 1...maxThreads {
            for colBlocks in 1...(maxThreads / rowBlocks) {
                let rows = roundUp((m + rowBlocks - 1) / rowBlocks, mr)
                let cols = roundUp((n + colBlocks - 1) / colBlocks, nr)
                let usedRows = (m + rows - 1) / rows, usedCols = (n + cols - 1) / cols
                if usedRows != rowBlocks || usedCols != colBlocks { continue }  // empty blocks
                let compute = 2.0 * Double(rows) * Double(cols) * Double(k)
                let packing = 40.0 * Double(min(rows, m) + min(cols, n)) * Double(k)
                let startup = Double(rowBlocks * colBlocks - 1) * minFlopsPerThread
                let cost = compute + packing + startup
                if cost < bestCost * 0.999 {  // ties keep the earlier, fewer-thread grid
                    bestCost = cost
                    best = GemmSplit(rowBlocks: rowBlocks, colBlocks: colBlocks,
                                     rowsPerBlock: min(rows, m), colsPerBlock: min(cols, n))
                }
            }
        }
        return best
    }

    private static func sgemmThreaded(transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
                                      alpha: Float, a: UnsafePointer<Float>, lda: Int,
                                      b: UnsafePointer<Float>, ldb: Int, beta: Float,
                                      c: UnsafeMutablePointer<Float>, ldc: Int, threads: Int,
                                      precision: Precision) {
        let tA: Int32 = transA ? 1 : 0, tB: Int32 = transB ? 1 : 0
        forEachBlock(m: m, n: n, k: k, threads: threads) { row0, rows, col0, cols in
            // op(A) rows row0..: row offset in A, or column offset in the stored Aᵀ.
            let aBlock = transA ? a + row0 : a + row0 * lda
            let bBlock = transB ? b + col0 * ldb : b + col0
            gemmBlock(precision, tA, tB, rows, cols, k, alpha, aBlock, lda, bBlock, ldb, beta, c + row0 * ldc + col0, ldc)
        }
    }

    /// Runs body(row0, rows, col0, cols) for each block of C's grid (gemmSplit), in parallel.
    private static func forEachBlock(m: Int, n: Int, k: Int, threads: Int,
                                     _ body: (_ row0: Int, _ rows: Int, _ col0: Int, _ cols: Int) -> Void) {
        let split = threads > 1 && score_thread_in_parallel() == 0
            ? gemmSplit(m: m, n: n, k: k, threads: threads,
                        mr: Int(score_sgemm_mr()), nr: Int(score_sgemm_nr()))
            : GemmSplit(rowBlocks: 1, colBlocks: 1, rowsPerBlock: m, colsPerBlock: n)
        if split.rowBlocks * split.colBlocks == 1 {
            body(0, m, 0, n)
            return
        }
        parallelFor(split.rowBlocks * split.colBlocks) { block in
            let row0 = (block / split.colBlocks) * split.rowsPerBlock
            let col0 = (block % split.colBlocks) * split.colsPerBlock
            body(row0, min(split.rowsPerBlock, m - row0), col0, min(split.colsPerBlock, n - col0))
        }
    }

    // MARK: Convolution GEMM

    /// One image of a 2-D convolution, NCHW with symmetric zero padding: the source of an
    /// implicit column matrix ("im2col", a row per (channel, kernel row, kernel column), a column
    /// per output position) that sgemmIm2col packs from directly instead of materialising it.
    public struct ConvolutionImage {
        public var image: UnsafePointer<Float>
        public var channels: Int, height: Int, width: Int
        public var kernelH: Int, kernelW: Int, stride: Int, padding: Int
        public var outH: Int { (height + 2 * padding - kernelH) / stride + 1 }
        public var outW: Int { (width + 2 * padding - kernelW) / stride + 1 }
        /// Rows of the column matrix.
        public var patchSize: Int { channels * kernelH * kernelW }

        public init(image: UnsafePointer<Float>, channels: Int, height: Int, width: Int,
                    kernelH: Int, kernelW: Int, stride: Int, padding: Int) {
            self.image = image
            (self.channels, self.height, self.width) = (channels, height, width)
            (self.kernelH, self.kernelW, self.stride, self.padding) = (kernelH, kernelW, stride, padding)
        }

        var geometry: score_conv_geometry {
            score_conv_geometry(image: image, channels: Int64(channels), height: Int64(height),
                                width: Int64(width), kernel_h: Int64(kernelH), kernel_w: Int64(kernelW),
                                stride: Int64(stride), padding: Int64(padding),
                                out_h: Int64(outH), out_w: Int64(outW))
        }
    }

    /// sgemm with op(B) the column matrix of `columnsOf`: C[m×n] = alpha · op(A) · B + beta · C
    /// with B = columns (transB false: k = patchSize, n = outH·outW; a convolution's output
    /// from its weight) or columnsᵀ (transB true: k = outH·outW, n = patchSize; its weight
    /// gradient from the output gradient). The same bits as sgemm on the materialised columns,
    /// without writing them: for a 3×3 kernel they are 9× the image.
    public static func sgemmIm2col(transA: Bool = false, transB: Bool, m: Int, n: Int, k: Int,
                                   alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                                   columnsOf source: ConvolutionImage, beta: Float = 0,
                                   c: UnsafeMutablePointer<Float>, ldc: Int, precision: Precision = .fp32) {
        let outSize = source.outH * source.outW
        precondition(source.outH > 0 && source.outW > 0, "sgemmIm2col: kernel larger than the padded image")
        precondition(k == (transB ? outSize : source.patchSize) && n <= (transB ? source.patchSize : outSize),
                     "sgemmIm2col: k \(k), n \(n) do not fit the column matrix [\(source.patchSize), \(outSize)]")
        checkGemmArguments(transA: transA, transB: false, m: m, n: n, k: k, lda: lda, ldb: max(1, n), ldc: ldc)
        checkPrecision(precision)
        let tA: Int32 = transA ? 1 : 0, tB: Int32 = transB ? 1 : 0
        withUnsafePointer(to: source.geometry) { geometry in
            forEachBlock(m: m, n: n, k: k, threads: threadCount) { row0, rows, col0, cols in
                let aBlock = transA ? a + row0 : a + row0 * lda
                let im2col = precision == .bf16 ? score_sgemm_im2col_bf16 : score_sgemm_im2col
                im2col(tA, tB, Int64(rows), Int64(cols), Int64(k), alpha, aBlock, Int64(lda),
                       geometry, Int64(col0), beta, c + row0 * ldc + col0, Int64(ldc))
            }
        }
    }

    // MARK: Row and element-wise kernels

    /// Splits count elements into chunks (multiples of 1024, so every chunk but the last is a
    /// whole number of vectors) and runs them in parallel when there is enough work.
    private static func chunked(_ count: Int, _ body: (_ start: Int, _ length: Int) -> Void) {
        let minChunk = 1 << 15
        let chunks = min(threadCount, max(1, count / minChunk))
        if chunks <= 1 {
            body(0, count)
            return
        }
        let step = (count + chunks - 1) / chunks
        let aligned = (step + 1023) / 1024 * 1024
        parallelFor((count + aligned - 1) / aligned) { i in
            let start = i * aligned
            body(start, min(aligned, count - start))
        }
    }

    /// y = softmax over each row of a rows×cols row-major matrix (max-subtracted, sums in double).
    /// x and y may be the same buffer.
    public static func softmaxRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                   rows: Int, cols: Int) {
        precondition(rows >= 0 && cols >= 0, "softmaxRows: negative size")
        if rows == 0 || cols == 0 { return }
        let rowsPerChunk = max(1, (1 << 14) / cols)
        let chunks = min(threadCount, (rows + rowsPerChunk - 1) / rowsPerChunk)
        if chunks <= 1 {
            score_softmax_rows(x, y, Int64(rows), Int64(cols))
            return
        }
        let step = (rows + chunks - 1) / chunks
        parallelFor(chunks) { i in
            let r0 = i * step
            if r0 < rows {
                score_softmax_rows(x + r0 * cols, y + r0 * cols, Int64(min(step, rows - r0)), Int64(cols))
            }
        }
    }

    /// y[i] = exp(x[i]) (relative error < 1e-6 over [-87, 88]). x and y may be the same buffer.
    public static func exp(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        precondition(count >= 0, "exp: negative count")
        chunked(count) { start, length in score_vexp(x + start, y + start, Int64(length)) }
    }

    /// y[i] = x[i] · sigmoid(x[i]). x and y may be the same buffer.
    public static func silu(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        precondition(count >= 0, "silu: negative count")
        chunked(count) { start, length in score_silu(x + start, y + start, Int64(length)) }
    }
}
