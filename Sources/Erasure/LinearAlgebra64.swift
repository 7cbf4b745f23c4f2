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
