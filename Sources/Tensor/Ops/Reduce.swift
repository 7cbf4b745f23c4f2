// Reductions. Axes are reduced one at a time as [outer, n, inner] → [outer, inner], so the inner
// loop always runs over contiguous memory.

/// Sums the middle axis of a contiguous [outer, n, inner] block.
func sumMiddleAxis(_ x: UnsafePointer<Float>, outer: Int, n: Int, inner: Int,
                   into y: UnsafeMutablePointer<Float>) {
    parallelChunks(outer, grain: max(1, (1 << 15) / max(n * inner, 1))) { r in
        for o in r {
            let out = y + o * inner
            let base = x + o * n * inner
            if inner == 1 {
                // Four partial sums break the add dependency chain.
                var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
                var k = 0
                while k + 4 <= n { s0 += base[k]; s1 += base[k + 1]; s2 += base[k + 2]; s3 += base[k + 3]; k += 4 }
                while k < n { s0 += base[k]; k += 1 }
                out[0] = (s0 + s1) + (s2 + s3)
            } else {
                out.update(from: base, count: inner)
                for k in 1..<max(n, 1) {
                    let row = base + k * inner
                    for j in 0..<inner { out[j] += row[j] }
                }
                if n == 0 { out.update(repeating: 0, count: inner) }
            }
        }
    }
}

extension Tensor {
    /// Sum over `axes` (all axes when empty … see `sum()`), keeping them as size 1 if asked.
    public func sum(axes: [Int], keepDims: Bool = false) -> Tensor {
        let normalized = Set(axes.map { Shape.normalize(axis: $0, rank: rank) }).sorted(by: >)
        var current = self.detached()
        var currentShape = shape
        for a in normalized {
            let outer = currentShape[..<a].reduce(1, *)
            let n = currentShape[a]
            let inner = currentShape[(a + 1)...].reduce(1, *)
            currentShape[a] = 1
            let src = current.pointer
            current = Tensor(shape: currentShape) { y in
                sumMiddleAxis(src, outer: outer, n: n, inner: inner, into: y)
            }
        }
        let keptShape = currentShape
        let outShape = keepDims ? keptShape : shape.enumerated().filter { !normalized.contains($0.offset) }.map(\.element)
        let y = Tensor(storage: current.storage, shape: outShape)
        let inputShape = shape
        return y.recording([self]) { g in [g.reshaped(keptShape).expanded(to: inputShape)] }
    }

    public func sum(axis: Int, keepDims: Bool = false) -> Tensor { sum(axes: [axis], keepDims: keepDims) }

    /// Sum of all elements, as a rank-0 tensor.
    public func sum() -> Tensor { sum(axes: Array(0..<rank)) }

    public func mean(axes: [Int], keepDims: Bool = false) -> Tensor {
        let n = axes.map { shape[Shape.normalize(axis: $0, rank: rank)] }.reduce(1, *)
        return sum(axes: axes, keepDims: keepDims) * (1 / Float(n))
    }

    public func mean(axis: Int, keepDims: Bool = false) -> Tensor { mean(axes: [axis], keepDims: keepDims) }

    public func mean() -> Tensor { mean(axes: Array(0..<rank)) }

    /// Variance over `axes`, dividing by n − correction (correction 1: unbiased, 0: biased).
    public func variance(axes: [Int], correction: Int = 1, keepDims: Bool = false) -> Tensor {
        let n = axes.map { shape[Shape.normalize(axis: $0, rank: rank)] }.reduce(1, *)
        let centered = self - mean(axes: axes, keepDims: true)
        return centered.square().sum(axes: axes, keepDims: keepDims) * (1 / Float(max(n - correction, 1)))
    }

    /// Index of the largest value along the last axis, per row (no gradient).
    public func argmaxLastAxis() -> [Int] {
        let n = shape.last ?? 1
        let rows = count / max(n, 1)
        let p = pointer
        return (0..<rows).map { r in
            var best = 0
            for j in 1..<max(n, 1) where p[r * n + j] > p[r * n + best] { best = j }
            return best
        }
    }
}
