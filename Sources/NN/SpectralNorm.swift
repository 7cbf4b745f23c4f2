import Foundation
import Tensor

/// Spectral normalisation (Miyato et al. 2018, PyTorch's `spectral_norm`): the layer uses
/// W / σ(W), with σ the largest singular value of W reshaped to [out, −1], estimated by one step of
/// power iteration per training forward pass. The left singular vector estimate `weight_u` is a
/// buffer (never trained) stored beside the weight, so checkpoints restore it and a resumed run
/// continues with the same bits. It keeps a critic 1-Lipschitz-ish, the usual stabiliser of
/// adversarial games.
public enum SpectralNorm {
    /// A fresh unit vector for `weight`'s output side.
    static func initialVector(for weight: Tensor, generator: inout RandomGenerator) -> Tensor {
        normalized(generator.normal([weight.shape[0]]))
    }

    static func normalized(_ v: Tensor) -> Tensor {
        let norm = Swift.max(Float((0..<v.count).reduce(0.0) { $0 + Double(v.pointer[$1]) * Double(v.pointer[$1]) }.squareRoot()), 1e-12)
        return v * (1 / norm)
    }

    /// W / σ(W). In training mode `u` first takes one power-iteration step (in place); σ = uᵀWv
    /// is differentiated with u and v held constant, as PyTorch does.
    static func apply(_ weight: Tensor, u: Tensor, training: Bool) -> Tensor {
        let rows = weight.shape[0]
        let matrix = weight.reshaped([rows, weight.count / rows])
        let v: Tensor = noGrad {
            let v = normalized(matmul(u.reshaped([1, rows]), matrix).reshaped([matrix.shape[1]]))
            if training { u.assign(normalized(matmul(matrix, v.reshaped([matrix.shape[1], 1])).reshaped([rows]))) }
            return v
        }
        let sigma = matmul(matmul(u.reshaped([1, rows]), matrix), v.reshaped([matrix.shape[1], 1]))   // [1, 1]
        return weight / sigma.reshaped(Array(repeating: 1, count: weight.rank))
    }
}

/// A Linear layer with spectral normalisation (`weight_u`: the power-iteration buffer).
public final class SpectralLinear: Module {
    public let weight: Tensor
    public let bias: Tensor?
    @Key("weight_u") public var u: Tensor
    /// false: W is used as is (a plain layer), for critics that measure rather than play.
    public var normalizes = true

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, generator: inout RandomGenerator) {
        let layer = Linear(inFeatures, outFeatures, bias: bias, generator: &generator)
        weight = layer.weight
        self.bias = layer.bias
        super.init()
        u = SpectralNorm.initialVector(for: weight, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        linear(x, weight: normalizes ? SpectralNorm.apply(weight, u: u, training: isTraining) : weight, bias: bias)
    }
}

/// A Conv2d layer with spectral normalisation of its weight reshaped to [out, in·k·k].
public final class SpectralConv2d: Module {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int, padding: Int
    @Key("weight_u") public var u: Tensor
    /// false: W is used as is (a plain layer), for critics that measure rather than play.
    public var normalizes = true

    public init(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
                generator: inout RandomGenerator) {
        let layer = Conv2d(inChannels, outChannels, kernelSize: kernelSize, stride: stride, padding: padding, generator: &generator)
        weight = layer.weight
        bias = layer.bias
        self.stride = stride
        self.padding = padding
        super.init()
        u = SpectralNorm.initialVector(for: weight, generator: &generator)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        conv2d(x, weight: normalizes ? SpectralNorm.apply(weight, u: u, training: isTraining) : weight, bias: bias, stride: stride, padding: padding)
    }
}
