import Kernels

// Matrix products: matmul (with batch dimensions) and the fully connected layer.

/// Untracked op(A)·op(B) over matching batch dimensions. Either side may be a plain matrix
/// (rank 2), which is then shared by every batch entry.
func gemm(_ a: Tensor, transposeA: Bool = false, _ b: Tensor, transposeB: Bool = false,
          precision: Kernels.Precision = .fp32) -> Tensor {
    precondition(a.rank >= 2 && b.rank >= 2, "matmul needs rank ≥ 2, got \(a.shape) and \(b.shape)")
    let (ar, ac) = (a.shape[a.rank - 2], a.shape[a.rank - 1])
    let (br, bc) = (b.shape[b.rank - 2], b.shape[b.rank - 1])
    let (m, k) = transposeA ? (ac, ar) : (ar, ac)
    let (kb, n) = transposeB ? (bc, br) : (br, bc)
    precondition(k == kb, "matmul inner dimensions differ: \(a.shape)\(transposeA ? "ᵀ" : "") · \(b.shape)\(transposeB ? "ᵀ" : "")")
    let batchA = Array(a.shape.dropLast(2)), batchB = Array(b.shape.dropLast(2))
    precondition(batchA == batchB || a.rank == 2 || b.rank == 2,
                 "matmul batch dimensions \(batchA) and \(batchB) differ")
    let batchShape = batchA.count >= batchB.count ? batchA : batchB
    let batch = Shape.count(batchShape)
    let pa = a.pointer, pb = b.pointer
    return Tensor(shape: batchShape + [m, n]) { c in
        if b.rank == 2 && !transposeA {
            // Fold a's batch into its rows: one large GEMM.
            Kernels.sgemm(transA: false, transB: transposeB, m: batch * m, n: n, k: k,
                          a: pa, lda: ac, b: pb, ldb: bc, c: c, ldc: n, precision: precision)
            return
        }
        let strideA = a.rank == 2 ? 0 : ar * ac
        let strideB = b.rank == 2 ? 0 : br * bc
        Kernels.sgemmBatched(transA: transposeA, transB: transposeB, m: m, n: n, k: k,
                             a: pa, lda: ac, strideA: strideA, b: pb, ldb: bc, strideB: strideB,
                             c: c, ldc: n, strideC: m * n, batchCount: batch, precision: precision)
    }
}

/// Matrix product with NumPy batch semantics (batch shapes equal, or one side a matrix).
public func matmul(_ a: Tensor, _ b: Tensor) -> Tensor {
    gemm(a, b, precision: InferencePrecision.forward([a, b])).recording([a, b]) { g in
        var da: Tensor? = nil, db: Tensor? = nil
        if a.isTracked { da = gemm(g, b, transposeB: true).sum(toShape: a.shape) }
        if b.isTracked {
            if b.rank == 2 && a.rank > 2 {
                // Σ_batch aᵀ g as one GEMM over the folded batch.
                let a2 = a.reshaped([-1, a.shape[a.rank - 1]])
                let g2 = g.reshaped([-1, g.shape[g.rank - 1]])
                db = gemm(a2, transposeA: true, g2)
            } else {
                db = gemm(a, transposeA: true, g).sum(toShape: b.shape)
            }
        }
        return [da, db]
    }
}

/// y = x·Wᵀ + b over the last axis of x, with W of shape [out, in] (PyTorch's layout).
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil) -> Tensor {
    let inFeatures = weight.shape[1], outFeatures = weight.shape[0]
    precondition(x.shape.last == inFeatures, "linear: input \(x.shape) vs weight \(weight.shape)")
    let rows = x.count / max(inFeatures, 1)
    let px = x.pointer, pw = weight.pointer
    let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
    let precision = InferencePrecision.forward(inputs)
    let y = Tensor(shape: Array(x.shape.dropLast()) + [outFeatures]) { out in
        Kernels.sgemm(transA: false, transB: true, m: rows, n: outFeatures, k: inFeatures,
                      a: px, lda: inFeatures, b: pw, ldb: inFeatures, c: out, ldc: outFeatures,
                      precision: precision)
        if let bias {
            let pb = bias.pointer
            parallelChunks(rows, grain: max(1, 4096 / max(outFeatures, 1))) { r in
                for i in r { let row = out + i * outFeatures; for j in 0..<outFeatures { row[j] += pb[j] } }
            }
        }
    }
    return y.recording(inputs) { g in
        let g2 = g.reshaped([rows, outFeatures])
        let dx = x.isTracked ? gemm(g2, weight).reshaped(x.shape) : nil
        let dw = weight.isTracked ? gemm(g2, transposeA: true, x.reshaped([rows, inFeatures])) : nil
        let db = bias.map { _ in g2.sum(axis: 0) }
        return [dx, dw, db]
    }
}
