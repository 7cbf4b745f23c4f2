import CKernels
import Foundation
import Kernels
import TestSupport
import XCTest

/// Kernels.sgemmIm2col packs a convolution's column matrix straight from the image. It must give
/// the bits of Kernels.sgemm on the materialised matrix, for every geometry, transpose, column
/// window, thread count and kernel variant: the packed panels hold the same values, so any
/// difference is a packing bug.
final class Im2colGemmTests: XCTestCase {
    struct Geometry {
        var channels: Int, height: Int, width: Int, kernelH: Int, kernelW: Int, stride: Int, padding: Int
    }

    static let geometries: [Geometry] = [
        Geometry(channels: 3, height: 5, width: 7, kernelH: 3, kernelW: 3, stride: 1, padding: 1),
        Geometry(channels: 2, height: 1, width: 1, kernelH: 3, kernelW: 3, stride: 1, padding: 1),   // image smaller than the kernel
        Geometry(channels: 2, height: 2, width: 3, kernelH: 5, kernelW: 5, stride: 1, padding: 2),
        Geometry(channels: 1, height: 6, width: 4, kernelH: 3, kernelW: 5, stride: 1, padding: 2),   // non-square kernel
        Geometry(channels: 2, height: 8, width: 8, kernelH: 3, kernelW: 3, stride: 2, padding: 1),
        Geometry(channels: 7, height: 17, width: 13, kernelH: 3, kernelW: 3, stride: 2, padding: 1),
        Geometry(channels: 2, height: 5, width: 6, kernelH: 3, kernelW: 3, stride: 1, padding: 0),
        Geometry(channels: 4, height: 3, width: 3, kernelH: 1, kernelW: 1, stride: 1, padding: 0),
        Geometry(channels: 16, height: 32, width: 32, kernelH: 3, kernelW: 3, stride: 1, padding: 1),
        Geometry(channels: 300, height: 9, width: 11, kernelH: 3, kernelW: 3, stride: 1, padding: 1), // K split in blocks
        Geometry(channels: 3, height: 70, width: 70, kernelH: 3, kernelW: 3, stride: 1, padding: 1),  // N over one NC block
        // output rows a whole number of panels wide: packed straight from the image rows
        Geometry(channels: 4, height: 18, width: 18, kernelH: 3, kernelW: 3, stride: 1, padding: 0),
        Geometry(channels: 2, height: 16, width: 16, kernelH: 5, kernelW: 5, stride: 1, padding: 2),
        Geometry(channels: 3, height: 64, width: 64, kernelH: 3, kernelW: 3, stride: 1, padding: 1),
    ]

    /// The column matrix by its definition.
    func columns(_ g: Geometry, image: [Float]) -> [Float] {
        let outH = (g.height + 2 * g.padding - g.kernelH) / g.stride + 1
        let outW = (g.width + 2 * g.padding - g.kernelW) / g.stride + 1
        var out: [Float] = []
        for c in 0..<g.channels { for ky in 0..<g.kernelH { for kx in 0..<g.kernelW {
            for oy in 0..<outH { for ox in 0..<outW {
                let iy = oy * g.stride - g.padding + ky, ix = ox * g.stride - g.padding + kx
                let inside = iy >= 0 && iy < g.height && ix >= 0 && ix < g.width
                out.append(inside ? image[(c * g.height + iy) * g.width + ix] : 0)
            } }
        } } }
        return out
    }

    func withThreads<T>(_ count: Int, _ f: () -> T) -> T {
        let saved = Kernels.threadCount
        Kernels.threadCount = count
        defer { Kernels.threadCount = saved }
        return f()
    }

    /// C = alpha · A · op(columns) + beta · C both ways, on the columns window
    /// [first, first + n); returns (implicit, materialised) bits.
    func run(_ g: Geometry, transB: Bool, m: Int, first: Int, width n: Int, beta: Float,
             threads: Int, seed: UInt64) -> ([UInt32], [UInt32]) {
        var rng = TestRandom(seed: seed)
        let image = rng.floats(g.channels * g.height * g.width)
        let cols = columns(g, image: image)
        let patch = g.channels * g.kernelH * g.kernelW, spatial = cols.count / patch
        let k = transB ? spatial : patch
        let a = rng.floats(m * k), c0 = rng.floats(m * n)
        var implicit = c0, explicit = c0
        image.withUnsafeBufferPointer { pi in
            cols.withUnsafeBufferPointer { pc in
                a.withUnsafeBufferPointer { pa in
                    let source = Kernels.ConvolutionImage(image: pi.baseAddress!, channels: g.channels, height: g.height,
                                                          width: g.width, kernelH: g.kernelH, kernelW: g.kernelW,
                                                          stride: g.stride, padding: g.padding)
                    withThreads(threads) {
                        implicit.withUnsafeMutableBufferPointer { out in
                            Kernels.sgemmIm2col(transB: transB, m: m, n: n, k: k, alpha: 0.75, a: pa.baseAddress!, lda: k,
                                                columnsOf: source, beta: beta, c: out.baseAddress!, ldc: n)
                        }
                        // The window: columns first..<first+n of the matrix, or rows of its transpose.
                        let b = transB ? pc.baseAddress! + first * spatial : pc.baseAddress! + first
                        explicit.withUnsafeMutableBufferPointer { out in
                            Kernels.sgemm(transA: false, transB: transB, m: m, n: n, k: k, alpha: 0.75,
                                          a: pa.baseAddress!, lda: k, b: b, ldb: spatial, beta: beta,
                                          c: out.baseAddress!, ldc: n)
                        }
                    }
                }
            }
        }
        return (implicit.map(\.bitPattern), explicit.map(\.bitPattern))
    }

    func testImplicitColumnsMatchMaterialisedColumnsBitwise() {
        forEachVariant { variant in
            for (index, g) in Self.geometries.enumerated() {
                let patch = g.channels * g.kernelH * g.kernelW
                let spatial = ((g.height + 2 * g.padding - g.kernelH) / g.stride + 1)
                    * ((g.width + 2 * g.padding - g.kernelW) / g.stride + 1)
                for transB in [false, true] {
                    let n = transB ? patch : spatial
                    for (m, beta, threads) in [(5, Float(0), 1), (37, Float(0.5), 2), (64, Float(0), 3)] {
                        let (implicit, explicit) = run(g, transB: transB, m: m, first: 0, width: n, beta: beta,
                                                       threads: threads, seed: UInt64(index * 10 + m))
                        XCTAssertEqual(implicit, explicit, "\(variant) \(g) transB \(transB) m \(m) threads \(threads)")
                    }
                }
            }
        }
    }

    /// sgemmIm2col starts at column 0 of the matrix; the threaded split's column offsets are
    /// covered by 2 and 3 threads above. This checks the C entry point's own b_col0 with a
    /// window that does not start on a panel edge, against the materialised window.
    func testColumnWindowsOfTheCEntryPoint() {
        let g = Self.geometries[5]
        let patch = g.channels * g.kernelH * g.kernelW
        let outH = (g.height + 2 * g.padding - g.kernelH) / g.stride + 1
        let outW = (g.width + 2 * g.padding - g.kernelW) / g.stride + 1
        var rng = TestRandom(seed: 5)
        let image = rng.floats(g.channels * g.height * g.width)
        let cols = columns(g, image: image)
        for transB in [false, true] {
            let k = transB ? outH * outW : patch, total = transB ? patch : outH * outW
            let m = 9, first = 7, n = total - first - 3
            let a = rng.floats(m * k)
            var implicit = [Float](repeating: 0, count: m * n), explicit = implicit
            image.withUnsafeBufferPointer { pi in
                var geometry = score_conv_geometry(
                    image: pi.baseAddress!, channels: Int64(g.channels), height: Int64(g.height), width: Int64(g.width),
                    kernel_h: Int64(g.kernelH), kernel_w: Int64(g.kernelW), stride: Int64(g.stride),
                    padding: Int64(g.padding), out_h: Int64(outH), out_w: Int64(outW))
                implicit.withUnsafeMutableBufferPointer { out in
                    score_sgemm_im2col(0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), 1, a, Int64(k), &geometry,
                                       Int64(first), 0, out.baseAddress!, Int64(n))
                }
            }
            cols.withUnsafeBufferPointer { pc in
                let b = transB ? pc.baseAddress! + first * outH * outW : pc.baseAddress! + first
                explicit.withUnsafeMutableBufferPointer { out in
                    Kernels.sgemm(transA: false, transB: transB, m: m, n: n, k: k, a: a, lda: k, b: b,
                                  ldb: outH * outW, c: out.baseAddress!, ldc: n)
                }
            }
            XCTAssertEqual(implicit.map(\.bitPattern), explicit.map(\.bitPattern), "transB \(transB)")
        }
    }
}
