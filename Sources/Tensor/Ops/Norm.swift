import Foundation

// GroupNorm and LayerNorm, fused: statistics in Float64, one pass to normalise, and the
// closed-form backward dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂)) with ĝ = g·γ.

/// Normalises each of `rows` contiguous rows of `length` values: x̂ = (x − μ)/√(σ² + ε).
/// Returns x̂ and 1/√(σ² + ε) per row.
private func standardizeRows(_ x: UnsafePointer<Float>, rows: Int, length: Int, eps: Float,
                             into xhat: UnsafeMutablePointer<Float>) -> [Float] {
    var rstd = [Float](repeating: 0, count: rows)
    rstd.withUnsafeMutableBufferPointer { rs in
        let rsp = rs.baseAddress!
        parallelChunks(rows, grain: max(1, 8192 / max(length, 1))) { r in
            for row in r {
                let src = x + row * length, dst = xhat + row * length
                var sum: Double = 0
                for i in 0..<length { sum += Double(src[i]) }
                let mean = sum / Double(length)
                var sq: Double = 0
                for i in 0..<length { let d = Double(src[i]) - mean; sq += d * d }
                let inv = 1 / (sq / Double(length) + Double(eps)).squareRoot()
                let m = Float(mean), s = Float(inv)
                for i in 0..<length { dst[i] = (src[i] - m) * s }
                rsp[row] = s
            }
        }
    }
    return rstd
}

/// The shared backward of a row standardisation: given ĝ (the gradient w.r.t. x̂) returns dx.
private func standardizeRowsBackward(_ ghat: UnsafePointer<Float>, _ xhat: UnsafePointer<Float>,
                                     rstd: [Float], rows: Int, length: Int,
                                     into dx: UnsafeMutablePointer<Float>) {
    rstd.withUnsafeBufferPointer { rs in
        let rsp = rs.baseAddress!
        parallelChunks(rows, grain: max(1, 8192 / max(length, 1))) { r in
            for row in r {
                let gh = ghat + row * length, xh = xhat + row * length, d = dx + row * length
                var sumG: Double = 0, sumGX: Double = 0
                for i in 0..<length { sumG += Double(gh[i]); sumGX += Double(gh[i] * xh[i]) }
                let meanG = Float(sumG / Double(length)), meanGX = Float(sumGX / Double(length))
                let s = rsp[row]
                for i in 0..<length { d[i] = s * (gh[i] - meanG - xh[i] * meanGX) }
            }
        }
    }
}

extension Tensor {
    /// Group normalisation of [N, C, …] over `groups` channel groups, with per-channel affine.
    public func groupNorm(groups: Int, weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        precondition(rank >= 2, "groupNorm needs [N, C, …], got \(shape)")
        let (batch, channels) = (shape[0], shape[1])
        precondition(channels % groups == 0, "groupNorm: \(channels) channels not divisible into \(groups) groups")
        let spatial = count / (batch * channels)
        let rows = batch * groups, length = count / rows
        let xhat = Tensor(shape: shape) { _ in }
        let rstd = standardizeRows(pointer, rows: rows, length: length, eps: eps, into: xhat.pointer)
        let y = applyChannelAffine(xhat, weight: weight, bias: bias, channels: channels, spatial: spatial)
        let inputs = [self] + [weight, bias].compactMap { $0 }
        return y.recording(inputs) { g in
            let ghat = weight.map { w in scaleChannels(g, by: w, channels: channels, spatial: spatial) } ?? g
            let dx = Tensor(shape: self.shape) { d in
                standardizeRowsBackward(ghat.pointer, xhat.pointer, rstd: rstd, rows: rows, length: length, into: d)
            }
            let reduceAxes = [0] + Array(2..<self.rank)
            var grads: [Tensor?] = [dx]
            if let weight { grads.append((g * xhat).sum(axes: reduceAxes).reshaped(weight.shape)) }
            if let bias { grads.append(g.sum(axes: reduceAxes).reshaped(bias.shape)) }
            return grads
        }
    }

    /// Layer normalisation over the last axis, with elementwise affine over that axis.
    public func layerNorm(weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        let length = shape.last ?? 1
        let rows = count / max(length, 1)
        let xhat = Tensor(shape: shape) { _ in }
        let rstd = standardizeRows(pointer, rows: rows, length: length, eps: eps, into: xhat.pointer)
        var y = xhat
        if let weight { y = y * weight.detached() }
        if let bias { y = y + bias.detached() }
        let inputs = [self] + [weight, bias].compactMap { $0 }
        return y.detached().recording(inputs) { g in
            let ghat = weight.map { g * $0 } ?? g
            let dx = Tensor(shape: self.shape) { d in
                standardizeRowsBackward(ghat.pointer, xhat.pointer, rstd: rstd, rows: rows, length: length, into: d)
            }
            let rowAxes = Array(0..<(self.rank - 1))
            var grads: [Tensor?] = [dx]
            if let weight { grads.append((g * xhat).sum(axes: rowAxes).reshaped(weight.shape)) }
            if let bias { grads.append(g.sum(axes: rowAxes).reshaped(bias.shape)) }
            return grads
        }
    }
}

/// y[n, c, s] = x[n, c, s] · w[c] (+ b[c]), untracked.
private func applyChannelAffine(_ x: Tensor, weight: Tensor?, bias: Tensor?, channels: Int, spatial: Int) -> Tensor {
    guard weight != nil || bias != nil else { return x }
    let px = x.pointer, pw = weight?.pointer, pb = bias?.pointer
    return Tensor(shape: x.shape) { y in
        parallelChunks(x.count / spatial, grain: max(1, 8192 / spatial)) { r in
            for plane in r {
                let c = plane % channels
                let w = pw?[c] ?? 1, b = pb?[c] ?? 0
                let s = px + plane * spatial, d = y + plane * spatial
                for i in 0..<spatial { d[i] = s[i] * w + b }
            }
        }
    }
}

private func scaleChannels(_ x: Tensor, by weight: Tensor, channels: Int, spatial: Int) -> Tensor {
    applyChannelAffine(x, weight: weight, bias: nil, channels: channels, spatial: spatial)
}
