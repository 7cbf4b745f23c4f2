import CKernels
import Foundation
import Kernels
import XCTest
import TestSupport

final class RowKernelTests: XCTestCase {
    /// Relative error, with an absolute floor for values too small to matter (denormals).
    func relativeError(_ got: Float, _ want: Double) -> Double {
        if got.isNaN || want.isNaN { return got.isNaN && want.isNaN ? 0 : .infinity }
        if want.isInfinite { return Double(got) == want ? 0 : .infinity }
        let diff = abs(Double(got) - want)
        return abs(want) < 1e-35 ? diff / 1e-35 : diff / abs(want)
    }

    func testExpAccuracyOverRange() {
        // A dense sweep of [-87, 88] plus the exact ends and a few special values.
        var xs: [Float] = (0..<200_001).map { Float(-87.0 + 175.0 * Double($0) / 200_000.0) }
        xs += [0, -0.0, 1, -1, 88, -87, 1e-8, -1e-8, 0.5 * Float.ulpOfOne]
        forEachVariant { variant in
            var ys = [Float](repeating: 0, count: xs.count)
            Kernels.exp(xs, &ys, count: xs.count)
            var worst = 0.0, worstX: Float = 0
            for (x, y) in zip(xs, ys) {
                let e = relativeError(y, Foundation.exp(Double(x)))
                if e > worst { worst = e; worstX = x }
            }
            XCTAssertLessThan(worst, 1e-6, "\(variant): worst relative error \(worst) at x = \(worstX)")
        }
    }

    func testExpSpecialValues() {
        let xs: [Float] = [.nan, .infinity, -.infinity, 89, 1000, -88, -100, -104, -200, 88.72]
        forEachVariant { variant in
            var ys = [Float](repeating: 7, count: xs.count)
            score_vexp(xs, &ys, Int64(xs.count))
            XCTAssertTrue(ys[0].isNaN, variant)
            XCTAssertEqual(ys[1], .infinity, variant)
            XCTAssertEqual(ys[2], 0, variant)
            XCTAssertEqual(ys[3], .infinity, variant)
            XCTAssertEqual(ys[4], .infinity, variant)
            XCTAssertEqual(Double(ys[5]), Foundation.exp(-88.0), accuracy: 1e-6 * Foundation.exp(-88.0), variant)  // denormal-edge
            XCTAssertEqual(Double(ys[6]), Foundation.exp(-100.0), accuracy: 1.5e-45, variant)  // denormal
            XCTAssertLessThanOrEqual(ys[7], Float.leastNonzeroMagnitude, variant)
            XCTAssertEqual(ys[8], 0, variant)
            XCTAssertEqual(Double(ys[9]), Foundation.exp(Double(Float(88.72))), accuracy: 1e-6 * 3.4e38, variant)
        }
    }

    /// Every length and offset gives the same bits per element (tails use the vector code).
    func testTailsMatchVectorLanes() {
        var rng = TestRandom(seed: 3)
        let xs = (0..<100).map { _ in rng.float() * 20 }
        forEachVariant { variant in
            var full = [Float](repeating: 0, count: xs.count)
            score_vexp(xs, &full, Int64(xs.count))
            var siluFull = [Float](repeating: 0, count: xs.count)
            score_silu(xs, &siluFull, Int64(xs.count))
            for start in [0, 1, 5, 17] {
                for count in [1, 3, 8, 15, 16, 17, 33, 50] where start + count <= xs.count {
                    var part = [Float](repeating: 0, count: count)
                    xs.withUnsafeBufferPointer { score_vexp($0.baseAddress! + start, &part, Int64(count)) }
                    XCTAssertEqual(part.map(\.bitPattern), full[start..<start + count].map(\.bitPattern), "\(variant) exp \(start)+\(count)")
                    xs.withUnsafeBufferPointer { score_silu($0.baseAddress! + start, &part, Int64(count)) }
                    XCTAssertEqual(part.map(\.bitPattern), siluFull[start..<start + count].map(\.bitPattern), "\(variant) silu \(start)+\(count)")
                }
            }
        }
    }

    func testSiluAccuracy() {
        var xs: [Float] = (0..<100_001).map { Float(-80.0 + 160.0 * Double($0) / 100_000.0) }
        xs += [0, 1e-6, -1e-6, 0.5, -0.5]
        forEachVariant { variant in
            var ys = [Float](repeating: 0, count: xs.count)
            Kernels.silu(xs, &ys, count: xs.count)
            var worst = 0.0, worstX: Float = 0
            for (x, y) in zip(xs, ys) {
                let d = Double(x)
                let e = relativeError(y, d / (1 + Foundation.exp(-d)))
                if e > worst { worst = e; worstX = x }
            }
            XCTAssertLessThan(worst, 1e-6, "\(variant): worst relative error \(worst) at x = \(worstX)")
            var special: [Float] = [.nan, .infinity, -.infinity, 200]
            score_silu(special, &special, 4)
            XCTAssertTrue(special[0].isNaN, variant)
            XCTAssertEqual(special[1], .infinity, variant)
            XCTAssertEqual(special[2], 0, variant)
            XCTAssertEqual(special[3], 200, variant)
        }
    }

    /// GELU and the activation gradients against double-precision references. Absolute error
    /// (scaled by max(1, |reference|)): A&S erf is accurate to 1.5e-7 absolute, not relative.
    func testGeluAndActivationGradientsAccuracy() {
        var xs: [Float] = (0..<40_001).map { Float(-20.0 + 40.0 * Double($0) / 40_000.0) }
        xs += [0, 1e-6, -1e-6, 0.5, -0.5, 60, -60]
        let gs: [Float] = xs.indices.map { i in [1, -0.75, 2.5][i % 3] }
        func erfD(_ x: Double) -> Double { Foundation.erf(x) }
        let references: [(String, (Double, Double) -> Double, (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int64) -> Void)] = [
            ("gelu", { x, _ in 0.5 * x * (1 + erfD(x / 2.0.squareRoot())) }, { x, _, y, n in score_gelu(x, y, n) }),
            ("silu grad", { x, g in let s = 1 / (1 + Foundation.exp(-x)); return g * s * (1 + x * (1 - s)) }, score_silu_grad),
            ("gelu grad", { x, g in g * (0.5 * (1 + erfD(x / 2.0.squareRoot())) + x * Foundation.exp(-0.5 * x * x) / (2 * Double.pi).squareRoot()) },
             score_gelu_grad),
        ]
        forEachVariant { variant in
            for (name, reference, kernel) in references {
                var ys = [Float](repeating: 0, count: xs.count)
                kernel(xs, gs, &ys, Int64(xs.count))
                var worst = 0.0, worstX: Float = 0
                for i in xs.indices {
                    let want = reference(Double(xs[i]), Double(gs[i]))
                    let e = abs(Double(ys[i]) - want) / max(1, abs(want))
                    if e > worst { worst = e; worstX = xs[i] }
                }
                XCTAssertLessThan(worst, 1e-6, "\(variant) \(name): worst error \(worst) at x = \(worstX)")
                var nan: [Float] = [.nan]
                kernel(nan, [1], &nan, 1)
                XCTAssertTrue(nan[0].isNaN, "\(variant) \(name) keeps NaN")
            }
            // Tails use the vector code: any offset and length gives the same bits per element.
            var full = [Float](repeating: 0, count: 50)
            score_gelu_grad(xs, gs, &full, 50)
            var part = [Float](repeating: 0, count: 13)
            xs.withUnsafeBufferPointer { x in gs.withUnsafeBufferPointer { g in
                score_gelu_grad(x.baseAddress! + 5, g.baseAddress! + 5, &part, 13)
            } }
            XCTAssertEqual(part.map(\.bitPattern), full[5..<18].map(\.bitPattern), variant)
        }
    }

    /// A normalisation's statistics: mean and variance (forward), Σg and Σg·x̂ (backward), in
    /// double, against a plain double loop, for lengths with and without a vector tail.
    func testMomentsAndNormGradientSums() {
        var rng = TestRandom(seed: 17)
        forEachVariant { variant in
            for n in [1, 7, 16, 100, 1027] {
                // An offset of 300 makes a float accumulator lose digits; double must not.
                let x = (0..<n).map { _ in 300 + rng.float() * 2 }, g = (0..<n).map { _ in rng.float() }
                let mu = x.reduce(0.0) { $0 + Double($1) } / Double(n)
                let variance = x.reduce(0.0) { $0 + (Double($1) - mu) * (Double($1) - mu) } / Double(n)
                let got = Kernels.momentsSerial(x, count: n)
                XCTAssertEqual(got.mean, mu, accuracy: 1e-12 * abs(mu), "\(variant) n \(n)")
                XCTAssertEqual(got.variance, variance, accuracy: 1e-9 * max(variance, 1e-12), "\(variant) n \(n)")
                let (m, s) = (Float(mu), Float(1 / (variance + 1e-5).squareRoot()))
                let sums = Kernels.normGradSumsSerial(g, x, count: n, mean: m, rstd: s)
                let wantG = g.reduce(0.0) { $0 + Double($1) }
                let wantGX = zip(g, x).reduce(0.0) { $0 + Double($1.0 * ((($1.1 - m) * s))) }
                XCTAssertEqual(sums.sumG, wantG, accuracy: 1e-9 * Double(n), "\(variant) n \(n)")
                XCTAssertEqual(sums.sumGX, wantGX, accuracy: 1e-5 * Double(n), "\(variant) n \(n)")
            }
        }
    }

    func testSoftmaxRowsAccuracy() {
        forEachVariant { variant in
            var rng = TestRandom(seed: 11)
            for cols in [1, 2, 7, 16, 33, 1000, 4097] {
                let rows = 3
                // Wide spread (x·12) and a large offset: max subtraction must keep it finite.
                let xs = (0..<rows * cols).map { i in rng.float() * 12 + (i % 2 == 0 ? 1000 : 0) }
                var ys = [Float](repeating: 0, count: xs.count)
                Kernels.softmaxRows(xs, &ys, rows: rows, cols: cols)
                var worst = 0.0
                for r in 0..<rows {
                    let row = xs[r * cols..<(r + 1) * cols].map(Double.init)
                    let m = row.max()!
                    let total = row.reduce(0) { $0 + Foundation.exp($1 - m) }
                    for c in 0..<cols {
                        worst = max(worst, relativeError(ys[r * cols + c], Foundation.exp(row[c] - m) / total))
                    }
                }
                XCTAssertLessThan(worst, 1e-6, "\(variant) cols=\(cols)")
                // In place gives the same bits.
                var inPlace = xs
                inPlace.withUnsafeMutableBufferPointer { p in
                    Kernels.softmaxRows(p.baseAddress!, p.baseAddress!, rows: rows, cols: cols)
                }
                XCTAssertEqual(inPlace.map(\.bitPattern), ys.map(\.bitPattern), "\(variant) in place, cols=\(cols)")
            }
        }
    }

    func testThreadedRowKernelsMatchSingleThread() {
        var rng = TestRandom(seed: 8)
        let xs = (0..<300_003).map { _ in rng.float() * 30 }
        func run(_ threads: Int) -> [[UInt32]] {
            let saved = Kernels.threadCount
            Kernels.threadCount = threads
            defer { Kernels.threadCount = saved }
            var e = [Float](repeating: 0, count: xs.count), s = e, sm = e
            Kernels.exp(xs, &e, count: xs.count)
            Kernels.silu(xs, &s, count: xs.count)
            Kernels.softmaxRows(xs, &sm, rows: 3, cols: 100_001)
            return [e.map(\.bitPattern), s.map(\.bitPattern), sm.map(\.bitPattern)]
        }
        XCTAssertEqual(run(1), run(2))
        XCTAssertEqual(run(1), run(3))
    }
}
