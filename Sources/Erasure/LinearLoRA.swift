import Diffusion
import Tensor

/// LoRA factors on one linear layer, trained through its weight: each forward pass uses
/// W = W₀ + s·B·A (assigned before the pass), the backward pass gives ∂L/∂W, and the chain rule
/// gives ∂L/∂B = s·(∂L/∂W)·Aᵀ and ∂L/∂A = s·Bᵀ·(∂L/∂W). W₀ stays bit for bit in `base`.
/// EraseAnything trains one per projection; MACE one per concept and projection, all of a
/// projection's over the same refined W₀.
final class LinearLoRA {
    /// The name its factors go by (EraseAnything: the module path `transformer_blocks.0.attn.add_q_proj`;
    /// MACE: the weight's name).
    let path: String
    /// W, the layer's weight, and W₀.
    let weight: Tensor, base: Tensor
    /// A [r, in] and B [out, r].
    let down: Tensor, up: Tensor
    let alpha: Float

    /// Factors over `base` (by default a copy of the weight as it is now), with α = r (s = 1).
    init(path: String, weight: Tensor, base: Tensor? = nil, rank: Int, generator: inout RandomGenerator) {
        self.path = path
        self.weight = weight
        self.base = base ?? weight.copy()
        // PEFT's init_lora_weights="gaussian" and diffusers' LoRALinearLayer: A ~ N(0, 1/r²), B = 0.
        down = generator.normal([rank, weight.shape[1]], std: 1 / Float(rank))
        up = Tensor.zeros([weight.shape[0], rank])
        alpha = Float(rank)
    }

    var scale: Float { alpha / Float(down.shape[0]) }

    /// W₀ + s·B·A, untracked.
    var merged: Tensor { noGrad { base + matmul(up, down) * scale } }

    func apply() { noGrad { weight.assign(merged) } }

    func backpropagate() {
        let g = weight.grad ?? Tensor.zeros(weight.shape)
        noGrad {
            up.grad = matmul(g, down.transposed(0, 1)) * scale
            down.grad = matmul(up.transposed(0, 1), g) * scale
        }
    }

    var factors: LoRAFactors { LoRAFactors(down: down.copy(), up: up.copy(), alpha: alpha) }
}
