import Foundation
import Kernels

/// A dense row-major matrix of Float64, for closed-form edits that must not lose precision to
/// Float32 (UCE inverts a d × d Gram matrix whose entries span several orders of magnitude).
public struct Matrix64: Equatable, Sendable {
    public let rows: Int
    public let columns: Int
    public var values: [Double]

    public init(rows: Int, columns: Int, values: [Double]) {
        precondition(values.count == rows * columns, "Matrix64: \(values.count) values for \(rows)×\(columns)")
        self.rows = rows
        self.columns = columns
        self.values = values
    }

    public static func zeros(_ rows: Int, _ columns: Int) -> Matrix64 {
        Matrix64(rows: rows, columns: columns, values: Array(repeating: 0, count: rows * columns))
    }

    /// λ·I (n × n).
    public static func identity(_ n: Int, scale: Double = 1) -> Matrix64 {
        var m = zeros(n, n)
        for i in 0..<n { m[i, i] = scale }
        return m
    }

    public subscript(row: Int, column: Int) -> Double {
        get { values[row * columns + column] }
        set { values[row * columns + column] = newValue }
    }

    /// Row `r` as an array.
    public func row(_ r: Int) -> [Double] { Array(values[r * columns..<(r + 1) * columns]) }

    /// self · x for a vector x of `columns` entries.
    public func times(_ x: [Double]) -> [Double] {
        precondition(x.count == columns, "Matrix64.times: \(x.count) entries for \(columns) columns")
        return (0..<rows).map { r in
            var sum = 0.0
            for c in 0..<columns { sum += values[r * columns + c] * x[c] }
            return sum
        }
    }

    /// self += scale · u vᵀ (u of `rows` entries, v of `columns`).
    public mutating func addOuterProduct(_ u: [Double], _ v: [Double], scale: Double = 1) {
        precondition(u.count == rows && v.count == columns, "addOuterProduct: \(u.count)×\(v.count) into \(rows)×\(columns)")
        for r in 0..<rows {
            let a = scale * u[r]
            if a == 0 { continue }
            for c in 0..<columns { values[r * columns + c] += a * v[c] }
        }
    }
}

/// The Cholesky factorisation A = L Lᵀ of a symmetric positive-definite matrix, to solve A x = b
/// stably without forming A⁻¹ (no pivoting is needed for such matrices).
public struct Cholesky: Sendable {
    /// L, lower triangular (the upper triangle is zero).
    public let lower: Matrix64

    /// Factors `a`; throws when `a` is not square, not symmetric, or not positive definite
    /// (a non-positive pivot), naming the pivot.
    public init(_ a: Matrix64) throws {
        guard a.rows == a.columns else { throw LinearAlgebraError.notSquare(rows: a.rows, columns: a.columns) }
        let n = a.rows
        for i in 0..<n {
            for j in 0..<i {
                let (x, y) = (a[i, j], a[j, i])
                guard Swift.abs(x - y) <= 1e-9 * Swift.max(1, Swift.abs(x), Swift.abs(y)) else {
                    throw LinearAlgebraError.notSymmetric(row: i, column: j)
                }
            }
        }
        var l = Matrix64.zeros(n, n)
        for j in 0..<n {
            var diagonal = a[j, j]
            for k in 0..<j { diagonal -= l[j, k] * l[j, k] }
            guard diagonal > 0, diagonal.isFinite else { throw LinearAlgebraError.notPositiveDefinite(pivot: j, value: diagonal) }
            let pivot = diagonal.squareRoot()
            l[j, j] = pivot
            for i in (j + 1)..<Swift.max(j + 1, n) {
                var sum = a[i, j]
                for k in 0..<j { sum -= l[i, k] * l[j, k] }
                l[i, j] = sum / pivot
            }
        }
        lower = l
    }

    /// x with A x = b: forward substitution L y = b, then back substitution Lᵀ x = y.
    public func solve(_ b: [Double]) -> [Double] {
        let n = lower.rows
        precondition(b.count == n, "Cholesky.solve: \(b.count) entries for a \(n)×\(n) system")
        var x = b
        // Raw pointers: this runs once per output row of every edited weight (d² each).
        lower.values.withUnsafeBufferPointer { l in
            x.withUnsafeMutableBufferPointer { x in
                for i in 0..<n {
                    var sum = x[i]
                    for k in 0..<i { sum -= l[i * n + k] * x[k] }
                    x[i] = sum / l[i * n + i]
                }
                for i in stride(from: n - 1, through: 0, by: -1) {
                    var sum = x[i]
                    for k in (i + 1)..<Swift.max(i + 1, n) { sum -= l[k * n + i] * x[k] }
                    x[i] = sum / l[i * n + i]
                }
            }
        }
        return x
    }
}

/// The closed form of a ridge-regularised linear edit, as UCE, RECE and MACE solve it: for
/// contexts cᵢ with weights sᵢ, W = (λ W_base + Σᵢ sᵢ vᵢcᵢᵀ) A⁻¹ with A = λI + Σᵢ sᵢ cᵢcᵢᵀ
/// minimises Σᵢ sᵢ‖W cᵢ − vᵢ‖² + λ‖W − W_base‖²_F. A depends only on the contexts, so it is
/// factored once and serves every edited weight, each with its own base and values vᵢ.
public struct RidgeEdit: Sendable {
    public let contexts: [[Double]]
    public let scales: [Double]
    public let lambda: Double
    let factor: Cholesky

    /// d, the width of the contexts (the weights' input width).
    public var width: Int { factor.lower.rows }

    /// Factors A; throws `LinearAlgebraError` when it is not positive definite (λ ≤ 0 with too
    /// few contexts). A context of weight 0 does not count.
    public init(contexts: [[Double]], scales: [Double], lambda: Double) throws {
        precondition(contexts.count == scales.count, "RidgeEdit: \(contexts.count) contexts, \(scales.count) scales")
        precondition(!contexts.isEmpty, "RidgeEdit: no contexts")
        var a = Matrix64.identity(contexts[0].count, scale: lambda)
        for (c, s) in zip(contexts, scales) where s != 0 { a.addOuterProduct(c, c, scale: s) }
        factor = try Cholesky(a)
        self.contexts = contexts
        self.scales = scales
        self.lambda = lambda
    }

    /// W for the weight `base` [out, d] and the values vᵢ [out] its contexts should map to. As A
    /// is symmetric, each row w of W solves A w = (the same row of B = λ W_base + Σᵢ sᵢ vᵢcᵢᵀ).
    public func solve(base: Matrix64, values: [[Double]]) -> Matrix64 {
        precondition(values.count == contexts.count, "RidgeEdit.solve: \(values.count) values for \(contexts.count) contexts")
        precondition(base.columns == width, "RidgeEdit.solve: a weight of \(base.columns) columns for contexts of \(width)")
        var b = base
        for k in b.values.indices { b.values[k] *= lambda }
        for (i, c) in contexts.enumerated() where scales[i] != 0 { b.addOuterProduct(values[i], c, scale: scales[i]) }
        // Rows are independent solves; each worker writes its own rows of the result.
        var result = Matrix64.zeros(base.rows, width)
        result.values.withUnsafeMutableBufferPointer { out in
            Kernels.parallelFor(base.rows) { r in
                let w = factor.solve(b.row(r))
                for k in 0..<width { out[r * width + k] = w[k] }
            }
        }
        return result
    }
}

public enum LinearAlgebraError: Error, CustomStringConvertible, Equatable {
    case notSquare(rows: Int, columns: Int)
    case notSymmetric(row: Int, column: Int)
    case notPositiveDefinite(pivot: Int, value: Double)

    public var description: String {
        switch self {
        case let .notSquare(rows, columns): return "the matrix is \(rows)×\(columns), not square"
        case let .notSymmetric(row, column): return "the matrix is not symmetric at (\(row), \(column))"
        case let .notPositiveDefinite(pivot, value):
            return "the matrix is not positive definite (pivot \(pivot) is \(value))"
        }
    }
}

/// The eigen-decomposition A = V Λ Vᵀ of a symmetric matrix by cyclic Jacobi rotations: slow
/// (O(n³) per sweep, a handful of sweeps) but accurate to a few ulps even for tiny eigenvalues,
/// which is what truncating a weight change to low rank needs (LoRA export).
public struct SymmetricEigen: Sendable {
    /// Eigenvalues, largest first.
    public let values: [Double]
    /// Eigenvectors as the columns of an n × n matrix, in the order of `values`.
    public let vectors: Matrix64

    public init(_ a: Matrix64, maximumSweeps: Int = 60) throws {
        guard a.rows == a.columns else { throw LinearAlgebraError.notSquare(rows: a.rows, columns: a.columns) }
        let n = a.rows
        for i in 0..<n {
            for j in 0..<i where abs(a[i, j] - a[j, i]) > 1e-12 * max(abs(a[i, j]), abs(a[j, i]), 1e-300) {
                throw LinearAlgebraError.notSymmetric(row: i, column: j)
            }
        }
        var m = a.values
        var v = Matrix64.identity(n).values
        let scale = m.reduce(0) { $0 + $1 * $1 }
        for _ in 0..<maximumSweeps {
            var offDiagonal = 0.0
            for p in 0..<n { for q in (p + 1)..<n { offDiagonal += m[p * n + q] * m[p * n + q] } }
            if offDiagonal <= 1e-30 * scale || offDiagonal == 0 { break }
            for p in 0..<n {
                for q in (p + 1)..<n {
                    let apq = m[p * n + q]
                    if apq == 0 { continue }
                    // The rotation that zeroes (p, q): tan 2θ = 2 a_pq / (a_qq − a_pp), the smaller root.
                    let theta = (m[q * n + q] - m[p * n + p]) / (2 * apq)
                    let t = (theta >= 0 ? 1.0 : -1.0) / (abs(theta) + (theta * theta + 1).squareRoot())
                    let c = 1 / (t * t + 1).squareRoot(), s = t * c
                    for k in 0..<n {
                        let mkp = m[k * n + p], mkq = m[k * n + q]
                        m[k * n + p] = c * mkp - s * mkq
                        m[k * n + q] = s * mkp + c * mkq
                    }
                    for k in 0..<n {
                        let mpk = m[p * n + k], mqk = m[q * n + k]
                        m[p * n + k] = c * mpk - s * mqk
                        m[q * n + k] = s * mpk + c * mqk
                    }
                    for k in 0..<n {
                        let vkp = v[k * n + p], vkq = v[k * n + q]
                        v[k * n + p] = c * vkp - s * vkq
                        v[k * n + q] = s * vkp + c * vkq
                    }
                }
            }
        }
        let order = (0..<n).sorted { m[$0 * n + $0] > m[$1 * n + $1] }
        values = order.map { m[$0 * n + $0] }
        var sorted = Matrix64.zeros(n, n)
        for (column, source) in order.enumerated() {
            for k in 0..<n { sorted[k, column] = v[k * n + source] }
        }
        vectors = sorted
    }
}

/// The best rank-r approximation of a matrix M (rows × columns, Eckart–Young) as a product
/// B·A, B rows × r, A r × columns, kept as k pairs (left vector ℓ_c, right vector ρ_c) with
/// M ≈ Σ_c ℓ_c ρ_cᵀ, largest singular value first. Never divides by a singular value, so the
/// full-rank product is M to rounding, however small its trailing singular values.
///
/// Two ways to get there:
/// - exact (`init(_:)`, and any matrix whose smaller side is at most `exactLimit`): the
///   eigenvectors of the smaller Gram matrix by Jacobi rotations, all min(rows, columns) pairs;
///   with U the eigenvectors of M Mᵀ, ℓ = U and ρ = Uᵀ M (or, for M Mᵀ larger than Mᵀ M, ρ = V
///   and ℓ = M V). O(n³) per sweep: minutes for a 1280-wide SD layer.
/// - randomized (`init(_:rank:)`, `init(_:energy:)`): the top of the spectrum by a randomized
///   range finder with subspace iteration (Halko, Martinsson & Tropp 2011, algorithms 4.4 and
///   5.1): Q = orth(M Ω) for a Gaussian Ω with `oversampling` extra columns, refined by
///   `powerIterations` rounds of Q ← orth(M orth(Mᵀ Q)), then the exact solver on the small
///   B = Qᵀ M. O(rows · columns · k) per round. Exact for a matrix of rank below k (a UCE edit),
///   and within rounding of the optimum when the spectrum decays past k; the error the factors
///   actually have is what LoRA export measures and reports.
public struct LowRankFactorization: Sendable {
    /// Squared singular values, largest first: all min(rows, columns) of them when `isExact`,
    /// else the leading ones found.
    public let squaredSingularValues: [Double]
    /// ‖M‖²_F = Σ of all squared singular values.
    public let totalSquared: Double
    /// Whether every singular value was computed (the exact solver).
    public let isExact: Bool
    public let rows: Int
    public let columns: Int
    /// ℓ_c for c < count, each `rows` long, back to back.
    let left: [Double]
    /// ρ_c for c < count, each `columns` long, back to back.
    let right: [Double]

    /// Matrices whose smaller side is at most this are factorised exactly.
    public static let exactLimit = 96
    public static let oversampling = 10
    public static let powerIterations = 4

    /// The rank the factors reach (every singular value when exact).
    public var availableRank: Int { squaredSingularValues.count }

    /// The exact factorisation (every singular value).
    public init(_ m: Matrix64) throws {
        rows = m.rows
        columns = m.columns
        totalSquared = m.values.reduce(0) { $0 + $1 * $1 }
        isExact = true
        let usesColumns = m.columns < m.rows
        let n = usesColumns ? m.columns : m.rows
        var gram = Matrix64.zeros(n, n)
        for i in 0..<n {
            for j in 0...i {
                var sum = 0.0
                if usesColumns {
                    for k in 0..<m.rows { sum += m.values[k * m.columns + i] * m.values[k * m.columns + j] }
                } else {
                    let ri = i * m.columns, rj = j * m.columns
                    for k in 0..<m.columns { sum += m.values[ri + k] * m.values[rj + k] }
                }
                gram[i, j] = sum
                gram[j, i] = sum
            }
        }
        let eigen = try SymmetricEigen(gram)
        squaredSingularValues = eigen.values.map { max($0, 0) }
        // Column c of the eigenvectors, as n × n coefficients (n vectors of n).
        let vectors = Matrix64(rows: n, columns: n, values: (0..<n).flatMap { c in (0..<n).map { eigen.vectors[$0, c] } })
        if usesColumns {
            right = vectors.values
            left = Self.combine(vectors, of: m, transposed: false)
        } else {
            left = vectors.values
            right = Self.combine(vectors, of: m, transposed: true)
        }
    }

    /// The leading `rank` pairs: exact for small matrices (or a rank near the full one),
    /// randomized otherwise (`seed` fixes Ω: same inputs, same bits).
    public init(_ m: Matrix64, rank: Int, seed: UInt64 = 0) throws {
        let smaller = min(m.rows, m.columns)
        if smaller <= Self.exactLimit || 2 * (rank + Self.oversampling) >= smaller {
            try self.init(m)
        } else {
            try self.init(randomized: m, rank: rank, seed: seed)
        }
    }

    /// Enough leading pairs to keep `energy` of Σσ²: randomized with a rank that doubles until
    /// it does, exact once the rank nears the full one.
    public init(_ m: Matrix64, energy: Double, seed: UInt64 = 0) throws {
        self = try Self.keeping(energy, of: m, seed: seed)
    }

    private static func keeping(_ energy: Double, of m: Matrix64, seed: UInt64) throws -> LowRankFactorization {
        let smaller = min(m.rows, m.columns)
        var rank = 32
        while smaller > exactLimit && 2 * (rank + oversampling) < smaller {
            let attempt = try LowRankFactorization(randomized: m, rank: rank, seed: seed)
            if attempt.squaredSingularValues.reduce(0, +) >= energy * attempt.totalSquared { return attempt }
            rank *= 2
        }
        return try LowRankFactorization(m)
    }

    private init(randomized m: Matrix64, rank: Int, seed: UInt64) throws {
        rows = m.rows
        columns = m.columns
        totalSquared = m.values.reduce(0) { $0 + $1 * $1 }
        isExact = false
        let width = min(rank + Self.oversampling, min(m.rows, m.columns))
        var random = SplitMix64(seed: seed)
        // Ω: columns × width, standard normal (Box–Muller).
        var omega = [Double](repeating: 0, count: m.columns * width)
        for i in omega.indices {
            let u1 = max(random.nextUnit(), .leastNonzeroMagnitude), u2 = random.nextUnit()
            omega[i] = (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
        }
        var q = Self.orthonormalizeColumns(Self.times(m, omega, width: width), count: m.rows, width: width)
        for _ in 0..<Self.powerIterations {
            let z = Self.orthonormalizeColumns(Self.times(m, q, width: width, transposed: true), count: m.columns, width: width)
            q = Self.orthonormalizeColumns(Self.times(m, z, width: width), count: m.rows, width: width)
        }
        // Bᵀ = Mᵀ Q (columns × width); the exact solver on B Bᵀ (width × width).
        let bt = Self.times(m, q, width: width, transposed: true)
        var gram = Matrix64.zeros(width, width)
        for j in 0..<m.columns {
            let row = j * width
            for a in 0..<width {
                let x = bt[row + a]
                if x == 0 { continue }
                for b in 0...a { gram.values[a * width + b] += x * bt[row + b] }
            }
        }
        for a in 0..<width { for b in 0..<a { gram.values[b * width + a] = gram.values[a * width + b] } }
        let eigen = try SymmetricEigen(gram)
        let kept = min(rank, width)
        squaredSingularValues = Array(eigen.values.prefix(kept).map { max($0, 0) })
        // ℓ_c = Q w_c, ρ_c = Bᵀ w_c.
        var left = [Double](repeating: 0, count: kept * m.rows), right = [Double](repeating: 0, count: kept * m.columns)
        for c in 0..<kept {
            for i in 0..<m.rows {
                var sum = 0.0
                for a in 0..<width { sum += q[i * width + a] * eigen.vectors[a, c] }
                left[c * m.rows + i] = sum
            }
            for j in 0..<m.columns {
                var sum = 0.0
                for a in 0..<width { sum += bt[j * width + a] * eigen.vectors[a, c] }
                right[c * m.columns + j] = sum
            }
        }
        self.left = left
        self.right = right
    }

    /// The smallest rank whose singular values keep at least `energy` of Σσ² (0 for M = 0; the
    /// available rank when the values found do not reach it).
    public func rank(keeping energy: Double) -> Int {
        guard totalSquared > 0 else { return 0 }
        var kept = 0.0
        for (i, value) in squaredSingularValues.enumerated() {
            kept += value
            if kept >= energy * totalSquared { return i + 1 }
        }
        return squaredSingularValues.count
    }

    /// (B rows × r, A r × columns) with B·A the best rank-r approximation found (r at most
    /// `availableRank`).
    public func factors(rank r: Int) -> (b: Matrix64, a: Matrix64) {
        precondition(r <= availableRank, "LowRankFactorization.factors: rank \(r) of \(availableRank) available")
        var b = Matrix64.zeros(rows, r)
        for c in 0..<r { for i in 0..<rows { b.values[i * r + c] = left[c * rows + i] } }
        return (b, Matrix64(rows: r, columns: columns, values: Array(right[0..<(r * columns)])))
    }

    /// For each column v_c of `vectors` (n × n, column c stored as row c): M v_c (`transposed`
    /// false, n = columns) or Mᵀ v_c (true, n = rows), back to back.
    private static func combine(_ vectors: Matrix64, of m: Matrix64, transposed: Bool) -> [Double] {
        let n = vectors.rows
        let length = transposed ? m.columns : m.rows
        var out = [Double](repeating: 0, count: n * length)
        out.withUnsafeMutableBufferPointer { out in
            m.values.withUnsafeBufferPointer { mv in
                vectors.values.withUnsafeBufferPointer { v in
                    for c in 0..<n {
                        let target = out.baseAddress! + c * length, vector = v.baseAddress! + c * n
                        if transposed {
                            for i in 0..<m.rows {
                                let a = vector[i]
                                if a == 0 { continue }
                                let row = mv.baseAddress! + i * m.columns
                                for j in 0..<m.columns { target[j] += a * row[j] }
                            }
                        } else {
                            for i in 0..<m.rows {
                                let row = mv.baseAddress! + i * m.columns
                                var sum = 0.0
                                for j in 0..<m.columns { sum += row[j] * vector[j] }
                                target[i] = sum
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// M · X for X columns × width (row-major): rows × width; or, `transposed`, Mᵀ · X for X
    /// rows × width: columns × width. Zero entries of M add nothing and are skipped.
    static func times(_ m: Matrix64, _ x: [Double], width: Int, transposed: Bool = false) -> [Double] {
        var out = [Double](repeating: 0, count: (transposed ? m.columns : m.rows) * width)
        out.withUnsafeMutableBufferPointer { out in
            m.values.withUnsafeBufferPointer { mv in
                x.withUnsafeBufferPointer { x in
                    for i in 0..<m.rows {
                        for j in 0..<m.columns {
                            let a = mv[i * m.columns + j]
                            if a == 0 { continue }
                            let (row, column) = transposed ? (j, i) : (i, j)
                            let target = out.baseAddress! + row * width, source = x.baseAddress! + column * width
                            for k in 0..<width { target[k] += a * source[k] }
                        }
                    }
                }
            }
        }
        return out
    }

    /// The columns of X (count × width, row-major) made orthonormal by modified Gram–Schmidt,
    /// twice (one pass loses orthogonality when the columns are nearly dependent, as the power
    /// iterations make them). A column with nothing left beyond the others becomes zero.
    static func orthonormalizeColumns(_ x: [Double], count: Int, width: Int) -> [Double] {
        var x = x
        let scales = (0..<width).map { c in (0..<count).reduce(0.0) { $0 + x[$1 * width + c] * x[$1 * width + c] }.squareRoot() }
        for _ in 0..<2 {
            for c in 0..<width {
                for p in 0..<c {
                    var dot = 0.0
                    for i in 0..<count { dot += x[i * width + p] * x[i * width + c] }
                    if dot != 0 { for i in 0..<count { x[i * width + c] -= dot * x[i * width + p] } }
                }
                var norm = 0.0
                for i in 0..<count { norm += x[i * width + c] * x[i * width + c] }
                norm = norm.squareRoot()
                let keep = norm > 1e-13 * scales[c] && norm > 0
                for i in 0..<count { x[i * width + c] = keep ? x[i * width + c] / norm : 0 }
            }
        }
        return x
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): the random test matrices of the range finder and the
/// benchmark's resampled intervals, fixed by a seed.
public struct SplitMix64: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

extension Matrix64 {
    /// self · other.
    public func multiplied(by other: Matrix64) -> Matrix64 {
        precondition(columns == other.rows, "Matrix64.multiplied: \(rows)×\(columns) by \(other.rows)×\(other.columns)")
        var result = Matrix64.zeros(rows, other.columns)
        for i in 0..<rows {
            for k in 0..<columns {
                let a = values[i * columns + k]
                if a == 0 { continue }
                let row = k * other.columns, out = i * other.columns
                for j in 0..<other.columns { result.values[out + j] += a * other.values[row + j] }
            }
        }
        return result
    }
}
