import Foundation
import Kernels

// Scaled dot-product attention, chunked over queries so that the score matrix of one chunk
// ([chunk, keys]) is all that is ever materialised: 4,096 × 4,096 tokens fit in memory. The
// backward pass recomputes each chunk's probabilities instead of storing them.

/// Where the boolean mask (nonzero = may attend) is read from, with broadcasting.
private struct AttentionMask {
    let pointer: UnsafePointer<Float>
    let batchStride: Int, headStride: Int, queryStride: Int, keyStride: Int

    init(_ mask: Tensor, batch: Int, heads: Int, queries: Int, keys: Int) {
        let target = [batch, heads, queries, keys]
        precondition(mask.rank <= 4 && Shape.broadcast(mask.shape, target) == target,
                     "attention mask \(mask.shape) does not broadcast to \(target)")
        let s = Shape.broadcastStrides(mask.shape, to: target)
        pointer = UnsafePointer(mask.pointer)
        (batchStride, headStride, queryStride, keyStride) = (s[0], s[1], s[2], s[3])
    }

    /// Sets masked-out scores of a chunk to −∞.
    func apply(to scores: UnsafeMutablePointer<Float>, batch b: Int, head h: Int, firstQuery: Int, rows: Int, keys: Int) {
        for r in 0..<rows {
            let m = pointer + b * batchStride + h * headStride + (firstQuery + r) * queryStride
            let row = scores + r * keys
            for j in 0..<keys where m[j * keyStride] == 0 { row[j] = -.infinity }
        }
    }
}

/// Softmax of rows in place; a row with every key masked becomes all zeros (attends to nothing).
private func softmaxInPlace(_ s: UnsafeMutablePointer<Float>, rows: Int, keys: Int) {
    Kernels.softmaxRowsSerial(s, s, rows: rows, cols: keys)
    for r in 0..<rows where s[r * keys].isNaN {
        (s + r * keys).update(repeating: 0, count: keys)
    }
}

/// Attention probabilities up to this many floats (256 MiB) are kept from the forward pass for
/// the backward pass; larger ones (SD's 4,096-token self-attention) are recomputed.
public nonisolated(unsafe) var maxCachedAttentionProbabilities = 64 << 20

/// softmax(q·kᵀ·scale + mask)·v for q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv].
/// `mask` broadcasts to [B, H, Nq, Nk]; nonzero entries may be attended to.
public func scaledDotProductAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, mask: Tensor? = nil,
                                      scale: Float? = nil, queryChunk: Int? = nil) -> Tensor {
    precondition(q.rank == 4 && k.rank == 4 && v.rank == 4, "attention needs [B, H, N, D] tensors: \(q.shape) \(k.shape) \(v.shape)")
    let (batch, heads, queries, depth) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let keys = k.shape[2], valueDepth = v.shape[3]
    precondition(k.shape == [batch, heads, keys, depth], "attention: key shape \(k.shape) vs query \(q.shape)")
    precondition(v.shape == [batch, heads, keys, valueDepth], "attention: value shape \(v.shape) vs key \(k.shape)")
    let scale = scale ?? 1 / Float(depth).squareRoot()
    let chunk = queryChunk ?? min(queries, max(16, (1 << 18) / max(keys, 1)))
    let chunksPerHead = (queries + chunk - 1) / chunk
    let maskView = mask.map { AttentionMask($0, batch: batch, heads: heads, queries: queries, keys: keys) }
    let (pq, pk, pv) = (q.pointer, k.pointer, v.pointer)

    /// Probabilities of one chunk into `scores` [rows, keys].
    func probabilities(bh: Int, first: Int, rows: Int, into scores: UnsafeMutablePointer<Float>,
                       precision: Kernels.Precision = .fp32) {
        Kernels.sgemmSerial(transA: false, transB: true, m: rows, n: keys, k: depth, alpha: scale,
                            a: pq + (bh * queries + first) * depth, lda: depth,
                            b: pk + bh * keys * depth, ldb: depth, c: scores, ldc: keys, precision: precision)
        maskView?.apply(to: scores, batch: bh / heads, head: bh % heads, firstQuery: first, rows: rows, keys: keys)
        softmaxInPlace(scores, rows: rows, keys: keys)
    }

    // Keep the probabilities for the backward pass when they are small enough; otherwise the
    // backward pass recomputes them chunk by chunk.
    let recording = GradMode.isEnabled && (q.isTracked || k.isTracked || v.isTracked)
    let cached = recording && batch * heads * queries * keys <= maxCachedAttentionProbabilities
        ? TensorStorage(uninitializedCount: batch * heads * queries * keys) : nil
    let precision = InferencePrecision.forward([q, k, v])

    let out = Tensor(shape: [batch, heads, queries, valueDepth]) { po in
        Kernels.parallelFor(batch * heads * chunksPerHead) { item in
            let bh = item / chunksPerHead, first = (item % chunksPerHead) * chunk
            let rows = min(chunk, queries - first)
            let scratch = cached == nil ? BufferCache.allocate(floats: rows * keys) : nil
            defer { scratch.map(BufferCache.free) }
            let scores = scratch ?? cached!.pointer + (bh * queries + first) * keys
            probabilities(bh: bh, first: first, rows: rows, into: scores, precision: precision)
            Kernels.sgemmSerial(transA: false, transB: false, m: rows, n: valueDepth, k: keys,
                                a: scores, lda: keys, b: pv + bh * keys * valueDepth, ldb: valueDepth,
                                c: po + (bh * queries + first) * valueDepth, ldc: valueDepth, precision: precision)
        }
    }

    return out.recording([q, k, v]) { g in
        withExtendedLifetime(mask) {}  // the mask view reads its storage
        let dq = Tensor.zeros(q.shape), dk = Tensor.zeros(k.shape), dv = Tensor.zeros(v.shape)
        let (pg, po) = (g.pointer, out.pointer)
        // Keys and values of one (batch, head) collect gradients from all its query chunks,
        // so threads split over (batch, head) pairs, not chunks.
        Kernels.parallelFor(batch * heads) { bh in
            let scratch = cached == nil ? BufferCache.allocate(floats: chunk * keys) : nil
            let dp = BufferCache.allocate(floats: chunk * keys)
            defer { scratch.map(BufferCache.free); BufferCache.free(dp) }
            for c in 0..<chunksPerHead {
                let first = c * chunk, rows = min(chunk, queries - first)
                let p: UnsafeMutablePointer<Float>
                if let cached {
                    p = cached.pointer + (bh * queries + first) * keys
                } else {
                    p = scratch!
                    probabilities(bh: bh, first: first, rows: rows, into: p)
                }
                let gChunk = pg + (bh * queries + first) * valueDepth
                let oChunk = po + (bh * queries + first) * valueDepth
                // dv += pᵀ · g
                Kernels.sgemmSerial(transA: true, transB: false, m: keys, n: valueDepth, k: rows,
                                    a: p, lda: keys, b: gChunk, ldb: valueDepth, beta: 1,
                                    c: dv.pointer + bh * keys * valueDepth, ldc: valueDepth)
                // dp = g · vᵀ; ds = p ⊙ (dp − rowsum(g ⊙ o)) · scale
                Kernels.sgemmSerial(transA: false, transB: true, m: rows, n: keys, k: valueDepth,
                                    a: gChunk, lda: valueDepth, b: pv + bh * keys * valueDepth, ldb: valueDepth,
                                    c: dp, ldc: keys)
                for r in 0..<rows {
                    var dot: Float = 0
                    for j in 0..<valueDepth { dot += gChunk[r * valueDepth + j] * oChunk[r * valueDepth + j] }
                    let pr = p + r * keys, dr = dp + r * keys
                    for j in 0..<keys { dr[j] = pr[j] * (dr[j] - dot) * scale }
                }
                // dq = ds · k ; dk += dsᵀ · q
                Kernels.sgemmSerial(transA: false, transB: false, m: rows, n: depth, k: keys,
                                    a: dp, lda: keys, b: pk + bh * keys * depth, ldb: depth,
                                    c: dq.pointer + (bh * queries + first) * depth, ldc: depth)
                Kernels.sgemmSerial(transA: true, transB: false, m: keys, n: depth, k: rows,
                                    a: dp, lda: keys, b: pq + (bh * queries + first) * depth, ldb: depth, beta: 1,
                                    c: dk.pointer + bh * keys * depth, ldc: depth)
            }
        }
        return [dq, dk, dv]
    }
}
