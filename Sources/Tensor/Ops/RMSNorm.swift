import Foundation
import Kernels

// Root-mean-square normalisation over the last axis (Zhang & Sennrich 2019), diffusers'
// `RMSNorm`: y = x · r · γ with r = 1/√(mean(x²) + ε), one r per row. FLUX normalises each
// attention head's queries and keys with it.
//
// Backward, with ĝ = g·γ and n the row length:
//   dx = r·ĝ − x · r³ · mean(ĝ·x)
//   dγ = Σ_rows g · x · r
// The mean of squares is summed in Float64, and r is kept per row (x is not copied). dγ is summed
// per block of rows and the blocks in a fixed order, so the bits do not depend on the threads.

extension Tensor {
    /// RMS normalisation over the last axis with an optional per-feature scale `weight` ([n]).
    public func rmsNorm(weight: Tensor?, eps: Float = 1e-6) -> Tensor {
        let n = shape.last ?? 1
        precondition(weight == nil || weight!.shape == [n], "rmsNorm: weight \(weight!.shape) for rows of \(n)")
        let rows = count / max(n, 1)
        var rstd = [Float](repeating: 0, count: rows)
        let px = pointer, pw = weight?.pointer
        let y = Tensor(shape: shape) { out in
            rstd.withUnsafeMutableBufferPointer { rBuf in
                let r = rBuf.baseAddress!
                parallelChunks(rows, grain: max(1, 8192 / max(n, 1))) { range in
                    for row in range {
                        let src = px + row * n, dst = out + row * n
                        var squares: Double = 0
                        for j in 0..<n { squares += Double(src[j]) * Double(src[j]) }
                        let s = Float(1 / (squares / Double(n) + Double(eps)).squareRoot())
                        r[row] = s
                        if let pw {
                            for j in 0..<n { dst[j] = src[j] * s * pw[j] }
                        } else {
                            for j in 0..<n { dst[j] = src[j] * s }
                        }
                    }
                }
            }
        }
        let inputs = [self] + [weight].compactMap { $0 }
        return y.recording(inputs) { g in
            let rowsPerBlock = 32
            let blocks = (rows + rowsPerBlock - 1) / rowsPerBlock
            var partial = [Float](repeating: 0, count: pw == nil ? 0 : blocks * n)
            let pg = g.pointer
            let dx = Tensor(shape: self.shape) { d in
                partial.withUnsafeMutableBufferPointer { partialBuf in
                    // An empty array's buffer may still have a base address: test the weight.
                    let slots = pw == nil ? nil : partialBuf.baseAddress
                    Kernels.parallelFor(blocks) { block in
                        for row in (block * rowsPerBlock)..<min(rows, (block + 1) * rowsPerBlock) {
                            let xs = px + row * n, gs = pg + row * n, ds = d + row * n
                            let s = rstd[row]
                            var dot: Double = 0
                            for j in 0..<n { dot += Double(gs[j] * (pw?[j] ?? 1)) * Double(xs[j]) }
                            let c = Float(dot / Double(n)) * s * s * s
                            for j in 0..<n { ds[j] = s * gs[j] * (pw?[j] ?? 1) - xs[j] * c }
                            if let slots {
                                let slot = slots + block * n
                                for j in 0..<n { slot[j] += gs[j] * xs[j] * s }
                            }
                        }
                    }
                }
            }
            guard let weight else { return [dx] }
            var dWeight = [Float](repeating: 0, count: n)
            for block in 0..<blocks { for j in 0..<n { dWeight[j] += partial[block * n + j] } }
            return [dx, Tensor(shape: weight.shape, scalars: dWeight)]
        }
    }
}
