import Foundation

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
/// B·A, B rows × r, A r × columns, from the eigenvectors of the smaller Gram matrix: with
/// U the top-r eigenvectors of M Mᵀ, B = U and A = Uᵀ M (or, when M is wide the other way,
/// A = Vᵀ and B = M V for the top eigenvectors V of Mᵀ M). No singular value is divided by,
/// so the full-rank product is M to rounding, however small its trailing singular values.
public struct LowRankFactorization: Sendable {
    /// Squared singular values of M, largest first (eigenvalues of the Gram matrix, clamped at 0).
    public let squaredSingularValues: [Double]
    let eigenvectors: Matrix64
    let matrix: Matrix64
    /// Whether the Gram matrix was Mᵀ M (columns < rows).
    let usesColumns: Bool

    public init(_ m: Matrix64) throws {
        matrix = m
        usesColumns = m.columns < m.rows
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
        eigenvectors = eigen.vectors
    }

    /// The smallest rank whose singular values keep at least `energy` of Σσ² (0 for M = 0).
    public func rank(keeping energy: Double) -> Int {
        let total = squaredSingularValues.reduce(0, +)
        guard total > 0 else { return 0 }
        var kept = 0.0
        for (i, value) in squaredSingularValues.enumerated() {
            kept += value
            if kept >= energy * total { return i + 1 }
        }
        return squaredSingularValues.count
    }

    /// (B rows × r, A r × columns) with B·A the best rank-r approximation (r at most min(rows, columns)).
    public func factors(rank r: Int) -> (b: Matrix64, a: Matrix64) {
        let n = eigenvectors.rows
        var top = Matrix64.zeros(n, r)
        for i in 0..<n { for j in 0..<r { top[i, j] = eigenvectors[i, j] } }
        if usesColumns {
            // A = Vᵀ (r × columns), B = M V (rows × r).
            var a = Matrix64.zeros(r, n)
            for i in 0..<n { for j in 0..<r { a[j, i] = top[i, j] } }
            return (matrix.multiplied(by: top), a)
        }
        // B = U (rows × r), A = Uᵀ M (r × columns).
        var ut = Matrix64.zeros(r, n)
        for i in 0..<n { for j in 0..<r { ut[j, i] = top[i, j] } }
        return (top, ut.multiplied(by: matrix))
    }
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
