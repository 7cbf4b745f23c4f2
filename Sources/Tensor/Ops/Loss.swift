import Foundation

// Losses, embedding lookup and dropout.

/// Mean squared error, averaged over every element.
public func mseLoss(_ prediction: Tensor, _ target: Tensor) -> Tensor {
    (prediction - target).square().mean()
}

/// Mean cross-entropy of logits [N, C] against class indices (one per row).
public func crossEntropy(_ logits: Tensor, targets: [Int]) -> Tensor {
    precondition(logits.rank == 2 && logits.shape[0] == targets.count,
                 "crossEntropy: logits \(logits.shape) for \(targets.count) targets")
    let classes = logits.shape[1]
    precondition(targets.allSatisfy { (0..<classes).contains($0) }, "crossEntropy: a target is outside 0..<\(classes)")
    let oneHot = Tensor.zeros(logits.shape)
    for (row, t) in targets.enumerated() { oneHot.pointer[row * classes + t] = 1 }
    return -(logits.logSoftmax(axis: -1) * oneHot).sum() * (1 / Float(targets.count))
}

/// Rows of `weight` [V, D] picked by `indices`, shaped `shape + [D]`.
public func embedding(_ weight: Tensor, indices: [Int], shape: [Int]) -> Tensor {
    precondition(weight.rank == 2, "embedding weight must be [vocab, dim], got \(weight.shape)")
    precondition(Shape.count(shape) == indices.count, "embedding: \(indices.count) indices for shape \(shape)")
    let (vocab, dim) = (weight.shape[0], weight.shape[1])
    precondition(indices.allSatisfy { (0..<vocab).contains($0) }, "embedding: an index is outside 0..<\(vocab)")
    let pw = weight.pointer
    let y = Tensor(shape: shape + [dim]) { out in
        for (i, index) in indices.enumerated() { (out + i * dim).update(from: pw + index * dim, count: dim) }
    }
    return y.recording([weight]) { g in
        let dw = Tensor.zeros(weight.shape)
        let pg = g.pointer
        for (i, index) in indices.enumerated() {
            let row = dw.pointer + index * dim, src = pg + i * dim
            for j in 0..<dim { row[j] += src[j] }
        }
        return [dw]
    }
}

extension Tensor {
    /// Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1−p).
    /// The identity when `training` is false or p is 0.
    public func dropout(_ p: Float, generator: inout RandomGenerator, training: Bool = true) -> Tensor {
        guard training, p > 0 else { return self }
        precondition(p < 1, "dropout probability must be < 1, got \(p)")
        let keep = generator.uniform([count]).map { $0 >= p ? 1 / (1 - p) : 0 }.reshaped(shape)
        return self * keep
    }
}

/// Binary cross-entropy of logits z against targets y in [0, 1], element by element (no
/// reduction): softplus(z) − y·z, written as max(z, 0) − y·z + log(1 + e^−|z|) so large |z|
/// neither overflows nor loses the gradient. d/dz = σ(z) − y.
public func binaryCrossEntropy(logits: Tensor, targets: Tensor) -> Tensor {
    precondition(logits.shape == targets.shape, "binaryCrossEntropy: logits \(logits.shape), targets \(targets.shape)")
    let loss = Tensor(shape: logits.shape) { out in
        let z = logits.pointer, y = targets.pointer
        for i in 0..<logits.count {
            out[i] = Swift.max(z[i], 0) - y[i] * z[i] + Foundation.log1p(Foundation.exp(-Swift.abs(z[i])))
        }
    }
    // The closure holds the tensors (not their pointers), so their storage outlives the forward pass.
    return loss.recording([logits]) { g in
        [Tensor(shape: logits.shape) { out in
            let z = logits.pointer, y = targets.pointer, pg = g.pointer
            for i in 0..<logits.count { out[i] = pg[i] * (1 / (1 + Foundation.exp(-z[i])) - y[i]) }
        }]
    }
}
