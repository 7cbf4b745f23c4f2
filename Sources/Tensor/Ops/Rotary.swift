import Foundation

// Rotary position embedding (Su et al. 2021) in the interleaved-pair form diffusers'
// `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)` uses: each consecutive pair
// (x₂ᵢ, x₂ᵢ₊₁) of a head's features is rotated by the angle of its position and frequency,
//
//   out₂ᵢ   = x₂ᵢ·cos₂ᵢ − x₂ᵢ₊₁·sin₂ᵢ
//   out₂ᵢ₊₁ = x₂ᵢ₊₁·cos₂ᵢ₊₁ + x₂ᵢ·sin₂ᵢ₊₁
//
// with the cos/sin tables already repeated per pair ([S, D], as diffusers builds them). The
// tables are constants; the gradient w.r.t. x is the transposed rotation:
//
//   dx₂ᵢ   = g₂ᵢ·cos₂ᵢ + g₂ᵢ₊₁·sin₂ᵢ₊₁
//   dx₂ᵢ₊₁ = g₂ᵢ₊₁·cos₂ᵢ₊₁ − g₂ᵢ·sin₂ᵢ

extension Tensor {
    /// Rotates x [B, H, S, D] (D even) by the tables `cos`, `sin` [S, D]; untracked tables.
    public func rotaryEmbedding(cos: Tensor, sin: Tensor) -> Tensor {
        precondition(rank == 4, "rotaryEmbedding needs [B, H, S, D], got \(shape)")
        let (s, d) = (shape[2], shape[3])
        precondition(d % 2 == 0, "rotaryEmbedding: head dimension \(d) is odd")
        precondition(cos.shape == [s, d] && sin.shape == [s, d],
                     "rotaryEmbedding: tables \(cos.shape), \(sin.shape) for [\(s), \(d)]")
        let rows = shape[0] * shape[1]
        let (pc, ps) = (cos.pointer, sin.pointer)

        /// out = rotate(x) (transposed: the backward map).
        func rotate(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, transposed: Bool) {
            parallelChunks(rows * s, grain: max(1, 8192 / d)) { range in
                for token in range {
                    let t = token % s
                    let src = x + token * d, dst = out + token * d, c = pc + t * d, sn = ps + t * d
                    var i = 0
                    while i < d {
                        let (a, b) = (src[i], src[i + 1])
                        if transposed {
                            dst[i] = a * c[i] + b * sn[i + 1]
                            dst[i + 1] = b * c[i + 1] - a * sn[i]
                        } else {
                            dst[i] = a * c[i] - b * sn[i]
                            dst[i + 1] = b * c[i + 1] + a * sn[i + 1]
                        }
                        i += 2
                    }
                }
            }
        }

        let px = pointer
        let out = Tensor(shape: shape) { rotate(px, $0, transposed: false) }
        return out.recording([self]) { g in
            withExtendedLifetime((cos, sin)) {}
            return [Tensor(shape: self.shape) { rotate(g.pointer, $0, transposed: true) }]
        }
    }
}
