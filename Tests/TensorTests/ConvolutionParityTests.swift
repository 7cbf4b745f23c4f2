import XCTest
import Kernels
import Tensor

/// conv2d's output and its three gradients against a direct convolution in Float64, on every
/// kernel path: the implicit column matrix (forward and weight gradient), the flipped-kernel
/// input gradient (stride 1), col2im (strided), and the 1×1 plain GEMM; batches that run images
/// side by side and one at a time.
final class ConvolutionParityTests: XCTestCase {
    struct Case { var batch: Int, channels: Int, outChannels: Int, h: Int, w: Int, kh: Int, kw: Int, stride: Int, padding: Int }

    static let cases: [Case] = [
        Case(batch: 2, channels: 3, outChannels: 5, h: 9, w: 7, kh: 3, kw: 3, stride: 1, padding: 1),
        Case(batch: 3, channels: 4, outChannels: 6, h: 8, w: 8, kh: 3, kw: 3, stride: 2, padding: 1),
        Case(batch: 1, channels: 2, outChannels: 3, h: 6, w: 5, kh: 5, kw: 5, stride: 1, padding: 2),
        Case(batch: 4, channels: 5, outChannels: 4, h: 6, w: 6, kh: 1, kw: 1, stride: 1, padding: 0),
        Case(batch: 2, channels: 3, outChannels: 2, h: 7, w: 9, kh: 3, kw: 5, stride: 1, padding: 1),
        Case(batch: 5, channels: 8, outChannels: 7, h: 12, w: 10, kh: 3, kw: 3, stride: 1, padding: 0),
    ]

    func testOutputAndGradientsMatchADirectConvolution() {
        for t in Self.cases {
            var rng = RandomGenerator(seed: UInt64(t.h * 100 + t.kh * 10 + t.stride))
            let x = rng.normal([t.batch, t.channels, t.h, t.w]), w = rng.normal([t.outChannels, t.channels, t.kh, t.kw])
            let b = rng.normal([t.outChannels])
            for v in [x, w, b] { v.requiresGrad = true }
            let y = conv2d(x, weight: w, bias: b, stride: t.stride, padding: t.padding)
            let oh = (t.h + 2 * t.padding - t.kh) / t.stride + 1, ow = (t.w + 2 * t.padding - t.kw) / t.stride + 1
            XCTAssertEqual(y.shape, [t.batch, t.outChannels, oh, ow])
            let g = rng.normal(y.shape)
            y.backward(g)
            let (xs, ws, gs) = (x.scalars.map(Double.init), w.scalars.map(Double.init), g.scalars.map(Double.init))

            var yRef = [Double](repeating: 0, count: y.count), dx = [Double](repeating: 0, count: x.count)
            var dw = [Double](repeating: 0, count: w.count), db = [Double](repeating: 0, count: t.outChannels)
            for n in 0..<t.batch { for o in 0..<t.outChannels { for oy in 0..<oh { for ox in 0..<ow {
                let yi = ((n * t.outChannels + o) * oh + oy) * ow + ox
                var acc = Double(b.scalars[o])
                db[o] += gs[yi]
                for c in 0..<t.channels { for ky in 0..<t.kh { for kx in 0..<t.kw {
                    let iy = oy * t.stride - t.padding + ky, ix = ox * t.stride - t.padding + kx
                    guard iy >= 0, iy < t.h, ix >= 0, ix < t.w else { continue }
                    let xi = ((n * t.channels + c) * t.h + iy) * t.w + ix, wi = ((o * t.channels + c) * t.kh + ky) * t.kw + kx
                    acc += xs[xi] * ws[wi]
                    dx[xi] += gs[yi] * ws[wi]
                    dw[wi] += gs[yi] * xs[xi]
                } } }
                yRef[yi] = acc
            } } } }
            func check(_ name: String, _ got: [Float], _ want: [Double]) {
                let scale = max(1, want.map(abs).max() ?? 1)
                let worst = zip(got, want).map { abs(Double($0) - $1) }.max() ?? 0
                XCTAssertLessThan(worst / scale, 1e-5, "\(name) of \(t)")
            }
            check("y", y.scalars, yRef)
            check("dx", x.grad!.scalars, dx)
            check("dw", w.grad!.scalars, dw)
            check("db", b.grad!.scalars, db)
        }
    }
}
