import CKernels
import Foundation
import Kernels
import TestSupport
import XCTest

/// Every GEMM variant this machine can execute: the dispatchable ISAs (the setter clamps
/// avx512 to avx2 on CPUs without it) plus the AVX-512 code compiled for AVX2.
func forEachVariant(_ body: (String) throws -> Void) rethrows {
    let saved = score_active_isa()
    defer { score_set_isa(saved) }
    var seen = Set<String>()
    for name in ["portable", "avx2", "avx512"] {
        Kernels.isa = name
        if seen.insert(Kernels.isa).inserted { try body(Kernels.isa) }
    }
    if score_set_isa_avx512_layout_on_avx2() != 0 { try body(Kernels.isa) }
}

/// Column-major-agnostic naive reference in Float64, with the magnitude sum for error bounds.
func referenceGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                   a: [Float], lda: Int, b: [Float], ldb: Int, beta: Float,
                   c: [Float], ldc: Int) -> (value: [Double], scale: [Double]) {
    var value = [Double](repeating: 0, count: c.count)
    var scale = [Double](repeating: 0, count: c.count)
    for i in 0..<m {
        for j in 0..<n {
            var sum = 0.0, mag = 0.0
            for p in 0..<k {
                let x = Double(transA ? a[p * lda + i] : a[i * lda + p])
                let y = Double(transB ? b[j * ldb + p] : b[p * ldb + j])
                sum += x * y
                mag += abs(x * y)
            }
            let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
            value[i * ldc + j] = Double(alpha) * sum + old
            scale[i * ldc + j] = abs(Double(alpha)) * mag + abs(old)
        }
    }
    return (value, scale)
}

final class GemmTests: XCTestCase {
    struct Case {
        var m: Int, n: Int, k: Int
        var alpha: Float = 1, beta: Float = 0
        var pad = 0  // extra elements per row of A, B and C (lda > width)
    }

    static let shapes: [(Int, Int, Int)] = [
        (1, 1, 1), (7, 13, 5), (65, 33, 129), (6, 16, 256), (14, 32, 384), (13, 35, 300),
        (150, 300, 700), (1, 100, 50), (100, 1, 50), (3, 4111, 5), (29, 47, 1000), (2, 3, 0),
    ]

    /// Runs one GEMM through Kernels.sgemm and checks every element of C (inside and outside
    /// the m×n window) against the Float64 reference.
    func check(_ t: Case, transA: Bool, transB: Bool, nanInC: Bool = false, seed: UInt64,
               variant: String, file: StaticString = #filePath, line: UInt = #line) {
        var rng = TestRandom(seed: seed)
        let lda = (transA ? t.m : t.k) + t.pad, ldb = (transB ? t.k : t.n) + t.pad
        let ldc = t.n + t.pad
        let a = rng.floats(max(1, (transA ? t.k : t.m) * lda))
        let b = rng.floats(max(1, (transB ? t.n : t.k) * ldb))
        var c = rng.floats(t.m * ldc)
        if nanInC { for i in 0..<t.m { for j in 0..<t.n { c[i * ldc + j] = .nan } } }
        let ref = referenceGemm(transA: transA, transB: transB, m: t.m, n: t.n, k: t.k,
                                alpha: t.alpha, a: a, lda: max(1, lda), b: b, ldb: max(1, ldb),
                                beta: t.beta, c: c, ldc: ldc)
        let original = c
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    Kernels.sgemm(transA: transA, transB: transB, m: t.m, n: t.n, k: t.k,
                                  alpha: t.alpha, a: pa.baseAddress!, lda: max(1, lda),
                                  b: pb.baseAddress!, ldb: max(1, ldb), beta: t.beta,
                                  c: pc.baseAddress!, ldc: ldc)
                }
            }
        }
        let eps = Double(Float.ulpOfOne)
        var failures = 0
        for i in 0..<t.m {
            for j in 0..<ldc {
                let idx = i * ldc + j
                if j >= t.n {  // padding columns of C must be untouched
                    if c[idx].bitPattern != original[idx].bitPattern { failures += 1 }
                    continue
                }
                let tol = 2 * Double(t.k + 2) * eps * ref.scale[idx] + 1e-30
                if !(abs(Double(c[idx]) - ref.value[idx]) <= tol) {
                    if failures < 3 {
                        XCTFail("\(variant) tA=\(transA) tB=\(transB) \(t): C[\(i),\(j)] = \(c[idx]), want \(ref.value[idx]) ± \(tol)",
                                file: file, line: line)
                    }
                    failures += 1
                }
            }
        }
        if failures > 3 { XCTFail("\(variant) \(t): \(failures) bad elements", file: file, line: line) }
    }

    func testShapesAllTransposesAllVariants() {
        forEachVariant { variant in
            var seed: UInt64 = 1
            for (m, n, k) in Self.shapes {
                for transA in [false, true] {
                    for transB in [false, true] {
                        seed += 1
                        check(Case(m: m, n: n, k: k), transA: transA, transB: transB, seed: seed, variant: variant)
                    }
                }
            }
        }
    }

    func testAlphaBetaAndLeadingDimensions() {
        let scalars: [(Float, Float)] = [(1, 0), (1.5, 0.5), (-0.7, 1), (2, -1), (0, 2), (0, 0)]
        forEachVariant { variant in
            var seed: UInt64 = 100
            for (alpha, beta) in scalars {
                for (m, n, k) in [(7, 13, 5), (65, 33, 129), (20, 40, 600)] {
                    for transA in [false, true] {
                        for transB in [false, true] {
                            seed += 1
                            check(Case(m: m, n: n, k: k, alpha: alpha, beta: beta, pad: 3),
                                  transA: transA, transB: transB, seed: seed, variant: variant)
                        }
                    }
                }
            }
        }
    }

    func testBetaZeroOverwritesNaN() {
        forEachVariant { variant in
            for (m, n, k) in [(7, 13, 5), (65, 33, 129), (2, 2, 0)] {
                for alpha: Float in [1, 0] {
                    check(Case(m: m, n: n, k: k, alpha: alpha, beta: 0, pad: 2), transA: false,
                          transB: true, nanInC: true, seed: 7, variant: variant)
                }
            }
        }
    }

    /// Runs f with threadCount temporarily set.
    func withThreads<T>(_ count: Int, _ f: () -> T) -> T {
        let saved = Kernels.threadCount
        Kernels.threadCount = count
        defer { Kernels.threadCount = saved }
        return f()
    }

    func gemmBits(_ m: Int, _ n: Int, _ k: Int, transA: Bool, transB: Bool, threads: Int) -> [UInt32] {
        var rng = TestRandom(seed: UInt64(m * 31 + n * 7 + k))
        let a = rng.floats(m * k), b = rng.floats(k * n)
        var c = rng.floats(m * n)
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    withThreads(threads) {
                        Kernels.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75,
                                      a: pa.baseAddress!, lda: transA ? m : k, b: pb.baseAddress!,
                                      ldb: transB ? k : n, beta: 0.25, c: pc.baseAddress!, ldc: n)
                    }
                }
            }
        }
        return c.map(\.bitPattern)
    }

    func testThreadCountDoesNotChangeBits() {
        forEachVariant { variant in
            for (m, n, k) in [(300, 200, 333), (64, 1000, 257), (1000, 40, 100), (97, 101, 513)] {
                for (transA, transB) in [(false, false), (true, true), (false, true)] {
                    let one = gemmBits(m, n, k, transA: transA, transB: transB, threads: 1)
                    for threads in [2, 3, 5] {
                        let many = gemmBits(m, n, k, transA: transA, transB: transB, threads: threads)
                        XCTAssertEqual(one, many, "\(variant) \(m)×\(n)×\(k) threads=\(threads)")
                    }
                }
            }
        }
    }

    /// Stronger than the thread test: any cut of C into blocks at arbitrary (unaligned)
    /// offsets, computed by separate score_sgemm calls, gives the bits of the whole.
    func testArbitraryBlocksMatchWholeBitwise() {
        forEachVariant { variant in
            let m = 61, n = 83, k = 530
            var rng = TestRandom(seed: 99)
            let a = rng.floats(m * k), b = rng.floats(n * k)
            let c0 = rng.floats(m * n)
            var whole = c0, pieces = c0
            score_sgemm(0, 1, Int64(m), Int64(n), Int64(k), 1.25, a, Int64(k), b, Int64(k), 0.5, &whole, Int64(n))
            a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                    pieces.withUnsafeMutableBufferPointer { pc in
                        for (r0, r1) in [(0, 5), (5, 20), (20, 61)] {
                            for (c0, c1) in [(0, 7), (7, 50), (50, 83)] {
                                score_sgemm(0, 1, Int64(r1 - r0), Int64(c1 - c0), Int64(k), 1.25,
                                            pa.baseAddress! + r0 * k, Int64(k),
                                            pb.baseAddress! + c0 * k, Int64(k), 0.5,
                                            pc.baseAddress! + r0 * n + c0, Int64(n))
                            }
                        }
                    }
                }
            }
            XCTAssertEqual(whole.map(\.bitPattern), pieces.map(\.bitPattern), variant)
        }
    }

    func testBatchedMatchesSingleGemms() {
        let m = 33, n = 45, k = 70, batch = 5
        var rng = TestRandom(seed: 5)
        let a = rng.floats(batch * m * k), b = rng.floats(k * n)  // B shared: strideB = 0
        let c0 = rng.floats(batch * m * n)
        for threads in [1, 2] {
            for batchSize in [1, 2, batch] {
                var batched = c0, single = c0
                withThreads(threads) {
                    Kernels.sgemmBatched(transA: false, transB: false, m: m, n: n, k: k, alpha: 2,
                                         a: a, lda: k, strideA: m * k, b: b, ldb: n, strideB: 0,
                                         beta: 1, c: &batched, ldc: n, strideC: m * n,
                                         batchCount: batchSize)
                }
                a.withUnsafeBufferPointer { pa in
                    single.withUnsafeMutableBufferPointer { pc in
                        for i in 0..<batchSize {
                            score_sgemm(0, 0, Int64(m), Int64(n), Int64(k), 2, pa.baseAddress! + i * m * k,
                                        Int64(k), b, Int64(n), 1, pc.baseAddress! + i * m * n, Int64(n))
                        }
                    }
                }
                XCTAssertEqual(batched.map(\.bitPattern), single.map(\.bitPattern), "threads=\(threads) batch=\(batchSize)")
            }
        }
    }

    func testSplitPlannerCoversCAndStaysSmallForTinyProblems() {
        XCTAssertEqual(Kernels.gemmSplit(m: 4, n: 4, k: 4, threads: 8, mr: 6, nr: 16).rowBlocks, 1)
        for (m, n, k) in [(1024, 1024, 1024), (256, 4096, 512), (4096, 64, 512), (7, 5000, 300)] {
            for threads in [1, 2, 3, 4, 16] {
                let s = Kernels.gemmSplit(m: m, n: n, k: k, threads: threads, mr: 6, nr: 16)
                XCTAssertLessThanOrEqual(s.rowBlocks * s.colBlocks, threads)
                XCTAssertGreaterThanOrEqual(s.rowBlocks * s.rowsPerBlock, m)
                XCTAssertGreaterThanOrEqual(s.colBlocks * s.colsPerBlock, n)
                XCTAssertLessThan((s.rowBlocks - 1) * s.rowsPerBlock, m)
                XCTAssertLessThan((s.colBlocks - 1) * s.colsPerBlock, n)
            }
        }
        // The wide problem is cut along N (each thread packs all of the small A).
        let wide = Kernels.gemmSplit(m: 256, n: 4096, k: 512, threads: 2, mr: 6, nr: 16)
        XCTAssertEqual(wide.colBlocks, 2)
    }

    func testParallelForRunsEveryIndexOnce() {
        for threads in [1, 2, 7] {
            withThreads(threads) {
                let counts = UnsafeMutablePointer<Int>.allocate(capacity: 1000)
                counts.initialize(repeating: 0, count: 1000)
                defer { counts.deallocate() }
                Kernels.parallelFor(1000) { i in counts[i] += 1 }
                XCTAssertTrue((0..<1000).allSatisfy { counts[$0] == 1 })
                // Nested regions run inline and still cover everything.
                Kernels.parallelFor(10) { i in Kernels.parallelFor(100) { j in counts[i * 100 + j] += 1 } }
                XCTAssertTrue((0..<1000).allSatisfy { counts[$0] == 2 })
            }
        }
    }
}
