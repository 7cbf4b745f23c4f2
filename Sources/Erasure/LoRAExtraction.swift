import Diffusion
import Foundation
import NN
import Tensor

/// An erased model's change to its UNet expressed as LoRA factors: each changed linear or
/// convolution weight's difference Δ = W_erased − W_base (a convolution's as [out, in·kh·kw])
/// truncated to rank r by SVD (Float64; randomized subspace iteration for the top of a large
/// weight's spectrum, exact for small ones: `LowRankFactorization`), as B·A with B [out, r] and A [r, in…], alpha = r
/// (scale 1). A low-rank change (UCE edits K/V by a rank-(concepts) update) comes out exactly at
/// its rank; a full fine-tune's loses what the dropped singular values held, which the report
/// measures tensor by tensor. Biases and normalisation weights cannot be LoRA factors: they are
/// counted and named, not written.
public enum LoRAExtraction {
    /// How each tensor's rank is chosen.
    public enum RankChoice: Sendable, Equatable {
        /// At most this rank (less where the weight is smaller).
        case rank(Int)
        /// The smallest rank keeping this fraction of Σσ² (0 < E ≤ 1).
        case energy(Double)
    }

    /// One factorised tensor.
    public struct TensorReport: Codable, Sendable, Equatable {
        public var name: String
        public var shape: [Int]
        public var rank: Int
        /// min(out, in·kh·kw): the rank that reproduces Δ exactly.
        public var full_rank: Int
        /// ‖Δ − B·A‖_F / ‖Δ‖_F, with the factors as stored (Float32).
        public var relative_error: Double
        /// Fraction of Σσ² the kept singular values hold.
        public var energy_kept: Double
        /// ‖Δ‖_F.
        public var change_norm: Double
    }

    /// A changed tensor that LoRA cannot carry (a bias, a normalisation weight).
    public struct Omitted: Codable, Sendable, Equatable {
        public var name: String
        public var shape: [Int]
        public var change_norm: Double
    }

    public struct Report: Codable, Sendable, Equatable {
        public var tensors: [TensorReport]
        public var omitted: [Omitted]
        /// √(Σ‖Δ − B·A‖²) / √(Σ‖Δ‖²) over the factorised tensors.
        public var relative_error: Double
        /// The same over every changed tensor, the omitted ones counting whole.
        public var relative_error_with_omitted: Double
        /// Entries of the LoRA factors written.
        public var lora_parameters: Int
        /// Entries of the changed tensors the factors stand for.
        public var changed_parameters: Int
    }

    /// Factorises every parameter of `erased` that differs (in any bit) from `base`'s.
    public static func extract(erased: Module, base: Module, choice: RankChoice) throws -> (LoRA, Report) {
        switch choice {
        case let .rank(r) where r < 1: throw LoRAError.invalid("the rank must be at least 1, not \(r)")
        case let .energy(e) where !(e > 0 && e <= 1): throw LoRAError.invalid("the energy must be in (0, 1], not \(e)")
        default: break
        }
        let reference = base.stateDict()
        var modules: [String: LoRAFactors] = [:]
        var tensors: [TensorReport] = [], omitted: [Omitted] = []
        var errorSquared = 0.0, changeSquared = 0.0, omittedSquared = 0.0
        var loraParameters = 0, changedParameters = 0
        for (name, weight) in erased.namedParameters() {
            guard let original = reference[name], original.shape == weight.shape else {
                throw LoRAError.invalid("the base model has no parameter \(name) of shape \(weight.shape)")
            }
            let w = weight.scalars, b = original.scalars
            guard zip(w, b).contains(where: { $0.bitPattern != $1.bitPattern }) else { continue }
            // In Float64, where the difference of two nearby Float32 values is exact.
            let delta = zip(w, b).map { Double($0) - Double($1) }
            let norm = delta.reduce(0) { $0 + $1 * $1 }
            guard name.hasSuffix(".weight"), weight.rank >= 2 else {
                omitted.append(Omitted(name: name, shape: weight.shape, change_norm: norm.squareRoot()))
                omittedSquared += norm
                continue
            }
            let out = weight.shape[0], inner = weight.count / out
            let matrix = Matrix64(rows: out, columns: inner, values: delta)
            let fullRank = min(out, inner)
            let factorization: LowRankFactorization
            let r: Int
            switch choice {
            case let .rank(limit):
                r = min(limit, fullRank)
                factorization = try LowRankFactorization(matrix, rank: r)
            case let .energy(energy):
                factorization = try LowRankFactorization(matrix, energy: energy)
                r = max(1, factorization.rank(keeping: energy))
            }
            let (up64, down64) = factorization.factors(rank: r)
            let trailing = Array(repeating: 1, count: weight.rank - 2)
            let up = Tensor(shape: [out, r] + trailing, scalars: up64.values.map { Float($0) })
            let down = Tensor(shape: [r] + weight.shape.dropFirst(), scalars: down64.values.map { Float($0) })
            // The error of the factors as written, in Float64.
            let upValues = up.scalars.map(Double.init), downValues = down.scalars.map(Double.init)
            var residual = 0.0
            for i in 0..<out {
                for j in 0..<inner {
                    var sum = 0.0
                    for k in 0..<r { sum += upValues[i * r + k] * downValues[k * inner + j] }
                    let e = delta[i * inner + j] - sum
                    residual += e * e
                }
            }
            let total = factorization.totalSquared
            let kept = factorization.squaredSingularValues.prefix(r).reduce(0, +)
            let path = String(name.dropLast(".weight".count))
            modules[path] = LoRAFactors(down: down, up: up, alpha: Float(r))
            tensors.append(TensorReport(name: name, shape: weight.shape, rank: r, full_rank: fullRank,
                                        relative_error: norm > 0 ? (residual / norm).squareRoot() : 0,
                                        energy_kept: total > 0 ? min(kept / total, 1) : 1, change_norm: norm.squareRoot()))
            errorSquared += residual
            changeSquared += norm
            loraParameters += up.count + down.count
            changedParameters += weight.count
        }
        let all = changeSquared + omittedSquared
        let report = Report(tensors: tensors, omitted: omitted,
                            relative_error: changeSquared > 0 ? (errorSquared / changeSquared).squareRoot() : 0,
                            relative_error_with_omitted: all > 0 ? ((errorSquared + omittedSquared) / all).squareRoot() : 0,
                            lora_parameters: loraParameters, changed_parameters: changedParameters)
        return (LoRA(modules.isEmpty ? [:] : [.unet: modules]), report)
    }
}
