import CKernels
import Foundation
import Kernels
import TestSupport
import XCTest

/// x rounded to the nearest bf16 (ties to even), as a Float: the rounding the bf16 GEMM packs with.
func roundedToBF16(_ x: Float) -> Float {
    let bits = x.bitPattern
    return Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
}

/// Rounding to bf16 (8 significant bits) moves a value by at most 2⁻⁸ of it, a product of two
/// rounded values by at most 2⁻⁷ + 2⁻¹⁶ of the exact product.
let bf16Bound = 0x1p-7 + 0x1p-16

/// The bf16 GEMM (`Kernels.Precision.bf16`, AVX512-BF16): against a reference that rounds A and
/// B to bf16 and sums in Float64 (only fp32 accumulation may differ), against the fp32 GEMM
/// within bf16's error bound, and bit for bit across thread counts and between the implicit
/// im2col and the materialised column matrix.
final class BF16GemmTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(Kernels.bf16Unavailable != nil, "bf16 GEMM unavailable: \(Kernels.bf16Unavailable ?? "")")
    }

    func withThreads<T>(_ count: Int, _ body: () -> T) -> T {
        let saved = Kernels.threadCount
        Kernels.threadCount = count
        defer { Kernels.threadCount = saved }
        return body()
    }

    static let shapes: [(m: Int, n: Int, k: Int)] = [
        (1, 1, 1), (7, 13, 5), (14, 32, 2), (65, 33, 129), (13, 35, 301), (15, 33, 512), (150, 300, 1100),
        (3, 4111, 5), (29, 47, 1000), (300, 129, 64),
    ]

    func testMatchesTheBF16RoundedReferenceAndFP32WithinTheBound() {
        var fp32Differs = false
        for (s, shape) in Self.shapes.enumerated() {
            for transposes in 0..<4 {
                let transA = transposes & 1 == 1, transB = transposes & 2 == 2
                let (alpha, beta): (Float, Float) = s % 2 == 0 ? (1, 0) : (0.5, -0.75)
                let pad = s % 3
                var rng = TestRandom(seed: UInt64(100 * s + transposes))
                let (m, n, k) = shape
                let lda = (transA ? m : k) + pad, ldb = (transB ? k : n) + pad, ldc = n + pad
                let a = rng.floats((transA ? k : m) * lda), b = rng.floats((transB ? n : k) * ldb)
                let c0 = rng.floats(m * ldc)
                let rounded = referenceGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                            a: a.map(roundedToBF16), lda: lda, b: b.map(roundedToBF16), ldb: ldb,
                                            beta: beta, c: c0, ldc: ldc)
                let exact = referenceGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                          a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c0, ldc: ldc)
                var results: [[Float]] = []
                for (threads, precision) in [(1, Kernels.Precision.bf16), (2, .bf16), (2, .fp32)] {
                    var c = c0
                    withThreads(threads) {
                        Kernels.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                                      b: b, ldb: ldb, beta: beta, c: &c, ldc: ldc, precision: precision)
                    }
                    results.append(c)
                }
                let label = "\(m)×\(n)×\(k) transA \(transA) transB \(transB) α \(alpha) β \(beta)"
                XCTAssertEqual(results[0].map(\.bitPattern), results[1].map(\.bitPattern), "\(label): 1 and 2 threads differ")
                let bf16 = results[0], eps = Double(Float.ulpOfOne)
                for i in 0..<m {
                    for j in 0..<n {
                        let e = i * ldc + j, value = Double(bf16[e])
                        // Only the fp32 accumulation (k + 2 roundings) separates it from the reference.
                        XCTAssertLessThanOrEqual(abs(value - rounded.value[e]), Double(k + 2) * eps * rounded.scale[e] + 1e-30,
                                                 "\(label) (\(i), \(j)) vs the bf16-rounded reference")
                        XCTAssertLessThanOrEqual(abs(value - exact.value[e]), (bf16Bound + Double(k + 2) * eps) * exact.scale[e] + 1e-30,
                                                 "\(label) (\(i), \(j)) vs the exact product")
                        if bf16[e] != results[2][e] { fp32Differs = true }
                    }
                    for j in n..<ldc { XCTAssertEqual(bf16[i * ldc + j], c0[i * ldc + j], "\(label): padding written") }
                }
            }
        }
        XCTAssert(fp32Differs, "bf16 results equal to fp32's: the operands were not rounded")
    }

    func testBetaZeroOverwritesNaNAndZeroDepthScalesC() {
        var rng = TestRandom(seed: 7)
        let (m, n, k) = (17, 40, 9)
        let a = rng.floats(m * k), b = rng.floats(k * n)
        var c = [Float](repeating: .nan, count: m * n)
        Kernels.sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n, precision: .bf16)
        XCTAssert(c.allSatisfy(\.isFinite))
        var d = [Float](repeating: 2, count: m * n)
        Kernels.sgemm(transA: false, transB: false, m: m, n: n, k: 0, a: a, lda: 1, b: b, ldb: n, beta: 0.5, c: &d, ldc: n,
                      precision: .bf16)
        XCTAssert(d.allSatisfy { $0 == 1 })
    }

    /// The convolution variant packs from the image the values the materialised column matrix
    /// holds, so it gives the bits of the bf16 GEMM on that matrix, and stays within bf16's
    /// bound of the fp32 convolution.
    func testIm2colVariantMatchesMaterialisedColumnsAndFP32() {
        let geometries: [(channels: Int, height: Int, width: Int, kernel: Int, stride: Int, padding: Int)] = [
            (3, 5, 7, 3, 1, 1), (7, 17, 13, 3, 2, 1), (16, 32, 32, 3, 1, 1), (60, 9, 11, 3, 1, 1), (2, 16, 16, 5, 1, 2),
        ]
        for (g, geo) in geometries.enumerated() {
            var rng = TestRandom(seed: UInt64(g + 1))
            let image = rng.floats(geo.channels * geo.height * geo.width)
            let outH = (geo.height + 2 * geo.padding - geo.kernel) / geo.stride + 1
            let outW = (geo.width + 2 * geo.padding - geo.kernel) / geo.stride + 1
            let patch = geo.channels * geo.kernel * geo.kernel, spatial = outH * outW
            var columns = [Float](repeating: 0, count: patch * spatial)
            for c in 0..<geo.channels { for ky in 0..<geo.kernel { for kx in 0..<geo.kernel {
                let row = (c * geo.kernel + ky) * geo.kernel + kx
                for oy in 0..<outH { for ox in 0..<outW {
                    let iy = oy * geo.stride - geo.padding + ky, ix = ox * geo.stride - geo.padding + kx
                    if iy >= 0 && iy < geo.height && ix >= 0 && ix < geo.width {
                        columns[row * spatial + oy * outW + ox] = image[(c * geo.height + iy) * geo.width + ix]
                    }
                } }
            } } }
            for transB in [false, true] {
                let m = 19, (n, k) = transB ? (patch, spatial) : (spatial, patch)
                let weights = rng.floats(m * k)
                for threads in [1, 2] {
                    var implicit = [Float](repeating: 0, count: m * n), explicit = implicit, fp32 = implicit
                    withThreads(threads) {
                        image.withUnsafeBufferPointer { img in
                            let source = Kernels.ConvolutionImage(image: img.baseAddress!, channels: geo.channels, height: geo.height,
                                                                  width: geo.width, kernelH: geo.kernel, kernelW: geo.kernel,
                                                                  stride: geo.stride, padding: geo.padding)
                            Kernels.sgemmIm2col(transB: transB, m: m, n: n, k: k, a: weights, lda: k, columnsOf: source,
                                                c: &implicit, ldc: n, precision: .bf16)
                            Kernels.sgemmIm2col(transB: transB, m: m, n: n, k: k, a: weights, lda: k, columnsOf: source,
                                                c: &fp32, ldc: n)
                        }
                        Kernels.sgemm(transA: false, transB: transB, m: m, n: n, k: k, a: weights, lda: k, b: columns,
                                      ldb: spatial, c: &explicit, ldc: n, precision: .bf16)
                    }
                    let label = "geometry \(g) transB \(transB) threads \(threads)"
                    XCTAssertEqual(implicit.map(\.bitPattern), explicit.map(\.bitPattern), label)
                    let bound = referenceGemm(transA: false, transB: transB, m: m, n: n, k: k, alpha: 1, a: weights, lda: k,
                                              b: columns, ldb: spatial, beta: 0, c: fp32, ldc: n).scale
                    for e in 0..<m * n {
                        XCTAssertLessThanOrEqual(abs(Double(implicit[e]) - Double(fp32[e])),
                                                 (bf16Bound + Double(2 * k + 4) * Double(Float.ulpOfOne)) * bound[e] + 1e-30, "\(label) [\(e)]")
                    }
                }
            }
        }
    }
}

/// Where the instructions are missing, or the instruction set is capped below avx512, bf16 is
/// unavailable with a reason; runs on every machine.
final class BF16AvailabilityTests: XCTestCase {
    func testCappingTheInstructionSetMakesBF16Unavailable() {
        let saved = score_active_isa()
        defer { score_set_isa(saved) }
        for isa in ["portable", "avx2"] {
            Kernels.isa = isa
            let reason = Kernels.bf16Unavailable
            XCTAssertNotNil(reason, "bf16 available with the \(isa) kernels")
            XCTAssert(reason.map { $0.contains("avx512") || $0.contains("AVX512-BF16") || $0.contains("x86-64") } ?? false, reason ?? "")
        }
        score_set_isa(saved)
        if Kernels.isa == "avx512" && Kernels.bf16Unavailable != nil {
            XCTAssert(Kernels.bf16Unavailable!.contains("lacks") || Kernels.bf16Unavailable!.contains("OS"), Kernels.bf16Unavailable!)
        }
    }
}
