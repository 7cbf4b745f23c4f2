import Foundation
import Kernels

// GroupNorm and LayerNorm share one fused kernel. A "row" is the set of values normalised
// together (a (sample, group) pair, or one token); each row holds `channelsPerRow` channels of
// `spatial` contiguous values, and every channel has its own affine γ, β.
//
// Forward: two-pass statistics in Float64, then y = (x − μ)·rstd·γ + β in one write.
// Backward: x̂ is recomputed from x, μ and rstd instead of being stored, and
//   dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂)),  ĝ = g·γ,
// with dγ, dβ accumulated per block of rows and summed in a fixed order, so the bits do not
// depend on the thread count.

private struct NormLayout {
    let rows: Int, channelsPerRow: Int, spatial: Int
    /// Rows that share one partial-sum slot for dγ, dβ (a block is processed by one thread).
    let rowsPerBlock: Int
    /// Number of distinct channels (γ entries).
    let channels: Int

    var rowLength: Int { channelsPerRow * spatial }
    var blocks: Int { (rows + rowsPerBlock - 1) / rowsPerBlock }
    /// Each value of a row is its own channel with its own γ (LayerNorm over the last axis).
    var isPerFeature: Bool { spatial == 1 && channels == channelsPerRow }
    /// γ index of channel j of row r.
    @inline(__always) func channel(row: Int, _ j: Int) -> Int { (row * channelsPerRow + j) % channels }
}

private func normForward(_ x: UnsafePointer<Float>, _ layout: NormLayout, eps: Float,
                         gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                         y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>) {
    let length = layout.rowLength, spatial = layout.spatial
    parallelChunks(layout.rows, grain: max(1, 8192 / max(length, 1))) { r in
        for row in r {
            let src = x + row * length, dst = y + row * length
            let (mu, variance) = Kernels.momentsSerial(src, count: length)
            let s = Float(1 / (variance + Double(eps)).squareRoot())
            let m = Float(mu)
            mean[row] = m
            rstd[row] = s
            if layout.isPerFeature {
                // LayerNorm: one γ, β per value of the row; the same arithmetic in a flat loop.
                for j in 0..<length {
                    let scale = s * (gamma?[j] ?? 1), shift = (beta?[j] ?? 0) - m * scale
                    dst[j] = src[j] * scale + shift
                }
                continue
            }
            for j in 0..<layout.channelsPerRow {
                let c = layout.channel(row: row, j)
                let scale = s * (gamma?[c] ?? 1), shift = (beta?[c] ?? 0) - m * scale
                let xs = src + j * spatial, ys = dst + j * spatial
                for i in 0..<spatial { ys[i] = xs[i] * scale + shift }
            }
        }
    }
}

/// Returns dx and (if γ/β exist) the per-channel dγ, dβ.
private func normBackward(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ layout: NormLayout,
                          gamma: UnsafePointer<Float>?, mean: [Float], rstd: [Float],
                          dx: UnsafeMutablePointer<Float>) -> (dGamma: [Float], dBeta: [Float]) {
    let length = layout.rowLength, spatial = layout.spatial, cpr = layout.channelsPerRow
    var partialGamma = [Float](repeating: 0, count: layout.blocks * layout.channels)
    var partialBeta = partialGamma
    partialGamma.withUnsafeMutableBufferPointer { pgBuf in
    partialBeta.withUnsafeMutableBufferPointer { pbBuf in
        let pGamma = pgBuf.baseAddress!, pBeta = pbBuf.baseAddress!
        Kernels.parallelFor(layout.blocks) { block in
            let slotGamma = pGamma + block * layout.channels, slotBeta = pBeta + block * layout.channels
            for row in (block * layout.rowsPerBlock)..<min(layout.rows, (block + 1) * layout.rowsPerBlock) {
                let xs = x + row * length, gs = g + row * length, d = dx + row * length
                let m = mean[row], s = rstd[row]
                var sumG: Double = 0, sumGX: Double = 0
                if layout.isPerFeature {
                    // LayerNorm: every channel is one value, so its sums are g and g·x̂ (what the
                    // summing kernel returns for one value), without a call and a modulo each.
                    for j in 0..<length {
                        let w = gamma?[j] ?? 1
                        let channelG = gs[j], channelGX = gs[j] * ((xs[j] - m) * s)
                        slotGamma[j] += channelGX
                        slotBeta[j] += channelG
                        sumG += Double(channelG * w)
                        sumGX += Double(channelGX * w)
                    }
                    let meanG = Float(sumG / Double(length)), meanGX = Float(sumGX / Double(length))
                    for j in 0..<length {
                        let w = gamma?[j] ?? 1
                        let xhat = (xs[j] - m) * s
                        d[j] = s * (gs[j] * w - meanG - xhat * meanGX)
                    }
                    continue
                }
                for j in 0..<cpr {
                    let c = layout.channel(row: row, j)
                    let w = gamma?[c] ?? 1
                    let sums = Kernels.normGradSumsSerial(gs + j * spatial, xs + j * spatial, count: spatial, mean: m, rstd: s)
                    let channelG = Float(sums.sumG), channelGX = Float(sums.sumGX)
                    slotGamma[c] += channelGX
                    slotBeta[c] += channelG
                    sumG += Double(channelG * w)
                    sumGX += Double(channelGX * w)
                }
                let meanG = Float(sumG / Double(length)), meanGX = Float(sumGX / Double(length))
                for j in 0..<cpr {
                    let w = gamma?[layout.channel(row: row, j)] ?? 1
                    for i in (j * spatial)..<((j + 1) * spatial) {
                        let xhat = (xs[i] - m) * s
                        d[i] = s * (gs[i] * w - meanG - xhat * meanGX)
                    }
                }
            }
        }
    } }
    var dGamma = [Float](repeating: 0, count: layout.channels), dBeta = dGamma
    for block in 0..<layout.blocks {
        for c in 0..<layout.channels {
            dGamma[c] += partialGamma[block * layout.channels + c]
            dBeta[c] += partialBeta[block * layout.channels + c]
        }
    }
    return (dGamma, dBeta)
}

extension Tensor {
    /// Shared driver: normalise with `layout`, record the fused backward.
    private func normalized(_ layout: NormLayout, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        var mean = [Float](repeating: 0, count: layout.rows), rstd = mean
        let px = pointer
        let y = Tensor(shape: shape) { out in
            mean.withUnsafeMutableBufferPointer { m in
                rstd.withUnsafeMutableBufferPointer { r in
                    normForward(px, layout, eps: eps, gamma: weight?.pointer, beta: bias?.pointer,
                                y: out, mean: m.baseAddress!, rstd: r.baseAddress!)
                }
            }
        }
        let inputs = [self] + [weight, bias].compactMap { $0 }
        return y.recording(inputs) { g in
            let dx = Tensor(shape: self.shape) { _ in }
            let (dGamma, dBeta) = normBackward(g.pointer, px, layout, gamma: weight?.pointer,
                                               mean: mean, rstd: rstd, dx: dx.pointer)
            var grads: [Tensor?] = [dx]
            if let weight { grads.append(Tensor(shape: weight.shape, scalars: dGamma)) }
            if let bias { grads.append(Tensor(shape: bias.shape, scalars: dBeta)) }
            return grads
        }
    }

    /// Group normalisation of [N, C, …] over `groups` channel groups, with per-channel affine.
    public func groupNorm(groups: Int, weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        precondition(rank >= 2, "groupNorm needs [N, C, …], got \(shape)")
        let (batch, channels) = (shape[0], shape[1])
        precondition(channels % groups == 0, "groupNorm: \(channels) channels not divisible into \(groups) groups")
        let layout = NormLayout(rows: batch * groups, channelsPerRow: channels / groups,
                                spatial: count / max(batch * channels, 1), rowsPerBlock: groups, channels: channels)
        return normalized(layout, weight: weight, bias: bias, eps: eps)
    }

    /// Layer normalisation over the last axis, with elementwise affine over that axis.
    public func layerNorm(weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        let length = shape.last ?? 1
        let layout = NormLayout(rows: count / max(length, 1), channelsPerRow: length, spatial: 1,
                                rowsPerBlock: 32, channels: length)
        return normalized(layout, weight: weight, bias: bias, eps: eps)
    }
}
