@testable import Erasure
import Foundation
import Tensor
import XCTest

/// The randomized top-r factorisation behind LoRA export of SD-sized layers, against the exact
/// Jacobi solver on the same matrices.
final class RandomizedSVDTests: XCTestCase {
    /// rows × columns with singular values `sigma` (orthonormal factors from QR of Gaussians).
    func matrix(_ rows: Int, _ columns: Int, sigma: [Double], seed: UInt64) -> Matrix64 {
        var g = RandomGenerator(seed: seed)
        let k = sigma.count
        let u = LowRankFactorization.orthonormalizeColumns(g.normal([rows * k]).scalars.map(Double.init), count: rows, width: k)
        let v = LowRankFactorization.orthonormalizeColumns(g.normal([columns * k]).scalars.map(Double.init), count: columns, width: k)
        var m = Matrix64.zeros(rows, columns)
        for i in 0..<rows {
            for j in 0..<columns {
                var sum = 0.0
                for c in 0..<k { sum += u[i * k + c] * sigma[c] * v[j * k + c] }
                m[i, j] = sum
            }
        }
        return m
    }

    func squaredError(_ m: Matrix64, _ f: LowRankFactorization, rank r: Int) -> Double {
        let (b, a) = f.factors(rank: r)
        let product = b.multiplied(by: a)
        return zip(m.values, product.values).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
    }

    func testAMatrixOfLowRankComesOutExactly() throws {
        // A UCE-like edit: rank 6 in a 160 × 240 weight.
        let m = matrix(160, 240, sigma: [5, 3, 2, 1, 0.5, 0.25], seed: 1)
        let f = try LowRankFactorization(m, rank: 8)
        XCTAssertFalse(f.isExact)
        let norm = m.values.reduce(0) { $0 + $1 * $1 }
        XCTAssertLessThan(squaredError(m, f, rank: 6) / norm, 1e-24)
        XCTAssertEqual(f.rank(keeping: 1 - 1e-12), 6)
    }

    func testTheTopOfADecayingSpectrumMatchesTheExactSolver() throws {
        for (rows, columns) in [(200, 130), (130, 200)] {
            let sigma = (0..<130).map { pow(0.85, Double($0)) }
            let m = matrix(rows, columns, sigma: sigma, seed: UInt64(rows))
            let exact = try LowRankFactorization(m)
            let fast = try LowRankFactorization(m, rank: 12)
            XCTAssertTrue(exact.isExact)
            XCTAssertFalse(fast.isExact)
            XCTAssertEqual(fast.totalSquared, exact.totalSquared, accuracy: 1e-12 * exact.totalSquared)
            for i in 0..<12 {
                XCTAssertEqual(fast.squaredSingularValues[i], exact.squaredSingularValues[i],
                               accuracy: 1e-9 * exact.squaredSingularValues[0], "σ²[\(i)], \(rows)×\(columns)")
            }
            // Eckart–Young: the rank-12 error of the fast factors is the optimum to 1e-6.
            let optimum = exact.squaredSingularValues.dropFirst(12).reduce(0, +)
            XCTAssertEqual(squaredError(m, fast, rank: 12), optimum, accuracy: 1e-6 * optimum)
            XCTAssertEqual(squaredError(m, exact, rank: 12), optimum, accuracy: 1e-9 * optimum)
        }
    }

    func testEnergyChoosesTheExactSolversRank() throws {
        let sigma = (0..<150).map { pow(0.8, Double($0)) }
        let m = matrix(150, 220, sigma: sigma, seed: 7)
        let exact = try LowRankFactorization(m)
        for energy in [0.5, 0.9, 0.99] {
            let fast = try LowRankFactorization(m, energy: energy)
            XCTAssertEqual(fast.rank(keeping: energy), exact.rank(keeping: energy), "energy \(energy)")
        }
        // A flat spectrum needs most of the rank: the exact solver takes over.
        let flat = matrix(120, 120, sigma: Array(repeating: 1, count: 120), seed: 8)
        XCTAssertTrue(try LowRankFactorization(flat, energy: 0.99).isExact)
    }

    func testSameInputsSameBits() throws {
        let m = matrix(140, 180, sigma: (0..<140).map { 1 / Double($0 + 1) }, seed: 9)
        let a = try LowRankFactorization(m, rank: 10), b = try LowRankFactorization(m, rank: 10)
        XCTAssertEqual(a.factors(rank: 10).b, b.factors(rank: 10).b)
        XCTAssertEqual(a.factors(rank: 10).a, b.factors(rank: 10).a)
    }

    /// Timings for the report (not a test of speed): SCORE_SVD_TIMING=1 prints the exact and the
    /// randomized factorisation times on SD 1.5-sized weights.
    func testTimings() throws {
        guard ProcessInfo.processInfo.environment["SCORE_SVD_TIMING"] != nil else { throw XCTSkip("set SCORE_SVD_TIMING=1") }
        for (rows, columns, rank) in [(320, 768, 16), (1280, 1280, 64)] {
            var g = RandomGenerator(seed: 1)
            let m = Matrix64(rows: rows, columns: columns, values: g.normal([rows * columns]).scalars.map(Double.init))
            var start = Date()
            let fast = try LowRankFactorization(m, rank: rank)
            let fastSeconds = Date().timeIntervalSince(start)
            start = Date()
            let exact = try LowRankFactorization(m)
            let exactSeconds = Date().timeIntervalSince(start)
            let optimum = exact.squaredSingularValues.dropFirst(rank).reduce(0, +)
            print(String(format: "SVD %d×%d rank %d: exact %.2f s, randomized %.3f s (%.0f×); error / optimum %.6f",
                         rows, columns, rank, exactSeconds, fastSeconds, exactSeconds / fastSeconds,
                         squaredError(m, fast, rank: rank) / optimum))
        }
    }
}
