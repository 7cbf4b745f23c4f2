// Shape and layout ops. Tensors are contiguous, so every op but reshape copies through
// `copyStrided`, one loop over the innermost axis.

/// Copies a `shape`-shaped block from `src` (read with `srcStrides`) to `dst` (written with
/// `dstStrides`). Strides may be 0 (broadcast) on the source.
func copyStrided(shape: [Int], src: UnsafePointer<Float>, srcStrides: [Int],
                 dst: UnsafeMutablePointer<Float>, dstStrides: [Int]) {
    let rank = shape.count
    if rank == 0 { dst[0] = src[0]; return }
    let total = Shape.count(shape)
    if total == 0 { return }
    let inner = shape[rank - 1], si = srcStrides[rank - 1], di = dstStrides[rank - 1]
    let rows = total / inner
    let outer = Array(shape.dropLast())
    parallelChunks(rows, grain: max(1, (1 << 14) / inner)) { r in
        var index = [Int](repeating: 0, count: rank - 1)
        var rem = r.lowerBound
        for d in stride(from: rank - 2, through: 0, by: -1) { index[d] = rem % outer[d]; rem /= outer[d] }
        for _ in r {
            var so = 0, doff = 0
            for d in 0..<(rank - 1) { so += index[d] * srcStrides[d]; doff += index[d] * dstStrides[d] }
            let s = src + so, t = dst + doff
            if si == 1 && di == 1 {
                t.update(from: s, count: inner)
            } else {
                for j in 0..<inner { t[j * di] = s[j * si] }
            }
            var d = rank - 2
            while d >= 0 {
                index[d] += 1
                if index[d] < outer[d] { break }
                index[d] = 0; d -= 1
            }
        }
    }
}

extension Tensor {
    /// Same values in a new shape (storage shared). One dimension may be -1.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var target = newShape
        if let inferred = target.firstIndex(of: -1) {
            let known = target.enumerated().filter { $0.offset != inferred }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "reshape \(shape) → \(newShape)")
            target[inferred] = count / known
        }
        precondition(Shape.count(target) == count, "reshape \(shape) → \(newShape): element count differs")
        if target == shape { return self }
        let original = shape
        return Tensor(storage: storage, shape: target).recording([self]) { g in [g.reshaped(original)] }
    }

    public func flattened() -> Tensor { reshaped([count]) }

    /// Inserts a size-1 axis.
    public func unsqueezed(_ axis: Int) -> Tensor {
        var s = shape
        s.insert(1, at: axis < 0 ? axis + rank + 1 : axis)
        return reshaped(s)
    }

    /// Removes a size-1 axis.
    public func squeezed(_ axis: Int) -> Tensor {
        let a = Shape.normalize(axis: axis, rank: rank)
        precondition(shape[a] == 1, "squeeze axis \(axis) of \(shape) is not 1")
        var s = shape
        s.remove(at: a)
        return reshaped(s)
    }

    /// Reorders axes: result axis i is input axis `order[i]`.
    public func permuted(_ order: [Int]) -> Tensor {
        precondition(order.sorted() == Array(0..<rank), "permute \(order) of rank \(rank)")
        if order == Array(0..<rank) { return self }
        let strides = Shape.strides(shape)
        let outShape = order.map { shape[$0] }
        let src = pointer
        let y = Tensor(shape: outShape) { dst in
            copyStrided(shape: outShape, src: src, srcStrides: order.map { strides[$0] },
                        dst: dst, dstStrides: Shape.strides(outShape))
        }
        var inverse = [Int](repeating: 0, count: rank)
        for (i, o) in order.enumerated() { inverse[o] = i }
        return y.recording([self]) { g in [g.permuted(inverse)] }
    }

    public func transposed(_ a: Int, _ b: Int) -> Tensor {
        var order = Array(0..<rank)
        order.swapAt(Shape.normalize(axis: a, rank: rank), Shape.normalize(axis: b, rank: rank))
        return permuted(order)
    }

    /// Swaps the last two axes.
    public var mT: Tensor { transposed(-2, -1) }

    /// The sub-block `ranges[i]` on each axis i (missing trailing axes are taken whole).
    public func sliced(_ ranges: [Range<Int>]) -> Tensor {
        precondition(ranges.count <= rank, "slice with \(ranges.count) ranges on rank \(rank)")
        let full = (0..<rank).map { i in i < ranges.count ? ranges[i] : 0..<shape[i] }
        for (i, r) in full.enumerated() {
            precondition(r.lowerBound >= 0 && r.upperBound <= shape[i], "slice \(r) out of 0..<\(shape[i]) on axis \(i)")
        }
        let outShape = full.map(\.count)
        if outShape == shape { return self }
        let strides = Shape.strides(shape)
        let offset = zip(full, strides).map { $0.lowerBound * $1 }.reduce(0, +)
        let src = pointer + offset
        let inputShape = shape
        let y = Tensor(shape: outShape) { dst in
            copyStrided(shape: outShape, src: src, srcStrides: strides, dst: dst,
                        dstStrides: Shape.strides(outShape))
        }
        return y.recording([self]) { g in
            let dx = Tensor.zeros(inputShape)
            copyStrided(shape: outShape, src: g.pointer, srcStrides: Shape.strides(outShape),
                        dst: dx.pointer + offset, dstStrides: strides)
            return [dx]
        }
    }

    /// `length` entries from `start` along `axis`.
    public func narrowed(axis: Int, start: Int, length: Int) -> Tensor {
        let a = Shape.normalize(axis: axis, rank: rank)
        var ranges = shape.map { 0..<$0 }
        ranges[a] = start..<(start + length)
        return sliced(ranges)
    }

    /// Splits along `axis` into pieces of the given sizes.
    public func split(sizes: [Int], axis: Int) -> [Tensor] {
        let a = Shape.normalize(axis: axis, rank: rank)
        precondition(sizes.reduce(0, +) == shape[a], "split sizes \(sizes) do not add to \(shape[a])")
        var start = 0
        return sizes.map { size in
            defer { start += size }
            return narrowed(axis: a, start: start, length: size)
        }
    }

    /// Splits along `axis` into `parts` equal pieces.
    public func chunked(_ parts: Int, axis: Int) -> [Tensor] {
        let a = Shape.normalize(axis: axis, rank: rank)
        precondition(shape[a] % parts == 0, "chunk \(shape[a]) into \(parts)")
        return split(sizes: Array(repeating: shape[a] / parts, count: parts), axis: a)
    }

    /// Broadcasts to `target` (copying).
    public func expanded(to target: [Int]) -> Tensor {
        if target == shape { return self }
        precondition(Shape.broadcast(shape, target) == target, "expand \(shape) → \(target)")
        let src = pointer
        let y = Tensor(shape: target) { dst in
            copyStrided(shape: target, src: src, srcStrides: Shape.broadcastStrides(shape, to: target),
                        dst: dst, dstStrides: Shape.strides(target))
        }
        let original = shape
        return y.recording([self]) { g in [g.sum(toShape: original)] }
    }

    /// Concatenates tensors that agree on every axis but `axis`.
    public static func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
        precondition(!tensors.isEmpty, "concat of no tensors")
        let first = tensors[0]
        let a = Shape.normalize(axis: axis, rank: first.rank)
        for t in tensors {
            precondition(t.rank == first.rank && (0..<t.rank).allSatisfy { $0 == a || t.shape[$0] == first.shape[$0] },
                         "concat: \(t.shape) does not match \(first.shape) off axis \(a)")
        }
        var outShape = first.shape
        outShape[a] = tensors.map { $0.shape[a] }.reduce(0, +)
        let outStrides = Shape.strides(outShape)
        let y = Tensor(shape: outShape) { dst in
            var offset = 0
            for t in tensors {
                copyStrided(shape: t.shape, src: t.pointer, srcStrides: Shape.strides(t.shape),
                            dst: dst + offset * outStrides[a], dstStrides: outStrides)
                offset += t.shape[a]
            }
        }
        let sizes = tensors.map { $0.shape[a] }
        return y.recording(tensors) { g in g.split(sizes: sizes, axis: a) }
    }
}
