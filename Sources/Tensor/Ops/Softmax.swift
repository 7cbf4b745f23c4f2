import Foundation
import Kernels

// Softmax and log-softmax. The last axis is the fast path; other axes are moved there.

/// Stable softmax of each contiguous row of `length` values.
func softmaxRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, length: Int) {
    parallelChunks(rows, grain: max(1, 8192 / max(length, 1))) { r in
        Kernels.softmaxRowsSerial(x + r.lowerBound * length, y + r.lowerBound * length, rows: r.count, cols: length)
    }
}

extension Tensor {
    /// Moves `axis` last, applies a last-axis op, and moves it back (all recorded).
    private func alongLastAxis(_ axis: Int, _ op: (Tensor) -> Tensor) -> Tensor {
        let a = Shape.normalize(axis: axis, rank: rank)
        if a == rank - 1 { return op(self) }
        return op(transposed(a, rank - 1)).transposed(a, rank - 1)
    }

    public func softmax(axis: Int = -1) -> Tensor {
        alongLastAxis(axis) { x in
            let length = x.shape.last ?? 1, rows = x.count / max(length, 1)
            let px = x.pointer
            let y = Tensor(shape: x.shape) { softmaxRows(px, $0, rows: rows, length: length) }
            return y.recording([x]) { g in
                // dx = y ⊙ (g − Σ g⊙y)
                let py = y.pointer, pg = g.pointer
                return [Tensor(shape: x.shape) { d in
                    parallelChunks(rows, grain: max(1, 8192 / max(length, 1))) { r in
                        for row in r {
                            let o = row * length
                            var dot: Float = 0
                            for j in 0..<length { dot += pg[o + j] * py[o + j] }
                            for j in 0..<length { d[o + j] = py[o + j] * (pg[o + j] - dot) }
                        }
                    }
                }]
            }
        }
    }

    public func logSoftmax(axis: Int = -1) -> Tensor {
        alongLastAxis(axis) { x in
            let length = x.shape.last ?? 1, rows = x.count / max(length, 1)
            let px = x.pointer
            let y = Tensor(shape: x.shape) { y in
                parallelChunks(rows, grain: max(1, 8192 / max(length, 1))) { r in
                    for row in r {
                        let s = px + row * length, d = y + row * length
                        var m = -Float.infinity
                        for j in 0..<length { m = max(m, s[j]) }
                        var sum: Float = 0
                        for j in 0..<length { sum += Foundation.exp(s[j] - m) }
                        let logZ = m + Foundation.log(sum)
                        for j in 0..<length { d[j] = s[j] - logZ }
                    }
                }
            }
            return y.recording([x]) { g in
                // dx = g − softmax · Σ g
                let py = y.pointer, pg = g.pointer
                return [Tensor(shape: x.shape) { d in
                    parallelChunks(rows, grain: max(1, 8192 / max(length, 1))) { r in
                        for row in r {
                            let o = row * length
                            var total: Float = 0
                            for j in 0..<length { total += pg[o + j] }
                            for j in 0..<length { d[o + j] = pg[o + j] - Foundation.exp(py[o + j]) * total }
                        }
                    }
                }]
            }
        }
    }
}
