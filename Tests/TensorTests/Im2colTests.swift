import XCTest
import Tensor

/// The unfold behind every convolution, against a plain per-element definition. A convolution
/// whose output channel (c, ky, kx) has weight 1 at (c, ky, kx) and 0 elsewhere returns the
/// unfolded image itself (each sum has one non-zero term), so it must match bit for bit —
/// including the shifted-plane path for stride 1 with the output as wide as the input, on images
/// narrower than the kernel and with non-square kernels.
final class Im2colTests: XCTestCase {
    func testUnfoldMatchesItsDefinitionOnEveryGeometry() {
        let cases: [(c: Int, h: Int, w: Int, kh: Int, kw: Int, stride: Int, padding: Int)] = [
            (3, 5, 7, 3, 3, 1, 1), (2, 1, 1, 3, 3, 1, 1), (2, 2, 3, 5, 5, 1, 2), (1, 6, 4, 3, 5, 1, 2),
            (2, 8, 8, 3, 3, 2, 1), (2, 5, 6, 3, 3, 1, 0), (4, 3, 3, 1, 1, 1, 0), (1, 4, 9, 1, 3, 1, 1),
        ]
        for g in cases {
            let outH = (g.h + 2 * g.padding - g.kh) / g.stride + 1, outW = (g.w + 2 * g.padding - g.kw) / g.stride + 1
            let patch = g.c * g.kh * g.kw
            var rng = RandomGenerator(seed: 3)
            let image = rng.normal([1, g.c, g.h, g.w])
            var oneHot = [Float](repeating: 0, count: patch * patch)
            for r in 0..<patch { oneHot[r * patch + r] = 1 }
            let weight = Tensor(shape: [patch, g.c, g.kh, g.kw], scalars: oneHot)
            let columns = conv2d(image, weight: weight, stride: g.stride, padding: g.padding).scalars
            let x = image.scalars
            var expected: [Float] = []
            for c in 0..<g.c { for ky in 0..<g.kh { for kx in 0..<g.kw {
                for oy in 0..<outH { for ox in 0..<outW {
                    let iy = oy * g.stride - g.padding + ky, ix = ox * g.stride - g.padding + kx
                    let inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w
                    expected.append(inside ? x[(c * g.h + iy) * g.w + ix] : 0)
                } }
            } } }
            XCTAssertEqual(columns, expected, "\(g)")
        }
    }
}
