import Tensor

// The basic layers. Parameters are stored under the names PyTorch uses, and initialised as
// PyTorch does (uniform ±1/√fan_in for weights and biases of Linear and Conv2d).

private func uniformInit(_ shape: [Int], fanIn: Int, _ generator: inout RandomGenerator) -> Tensor {
    let bound = 1 / Float(max(fanIn, 1)).squareRoot()
    let t = generator.uniform(shape, low: -bound, high: bound)
    t.requiresGrad = true
    return t
}

public final class Linear: Module {
    public let weight: Tensor
    public let bias: Tensor?

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, generator: inout RandomGenerator) {
        weight = uniformInit([outFeatures, inFeatures], fanIn: inFeatures, &generator)
        self.bias = bias ? uniformInit([outFeatures], fanIn: inFeatures, &generator) : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { linear(x, weight: weight, bias: bias) }
}

public final class Conv2d: Module {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int, padding: Int

    public init(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
                bias: Bool = true, generator: inout RandomGenerator) {
        let fanIn = inChannels * kernelSize * kernelSize
        weight = uniformInit([outChannels, inChannels, kernelSize, kernelSize], fanIn: fanIn, &generator)
        self.bias = bias ? uniformInit([outChannels], fanIn: fanIn, &generator) : nil
        self.stride = stride
        self.padding = padding
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding)
    }
}

public final class GroupNorm: Module {
    public let weight: Tensor?
    public let bias: Tensor?
    public let groups: Int, eps: Float

    public init(groups: Int, channels: Int, eps: Float = 1e-5, affine: Bool = true) {
        precondition(channels % groups == 0, "GroupNorm: \(channels) channels not divisible by \(groups) groups")
        weight = affine ? Tensor.ones([channels], requiresGrad: true) : nil
        bias = affine ? Tensor.zeros([channels], requiresGrad: true) : nil
        self.groups = groups
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps)
    }
}

public final class LayerNorm: Module {
    public let weight: Tensor?
    public let bias: Tensor?
    public let eps: Float

    public init(_ dim: Int, eps: Float = 1e-5, affine: Bool = true) {
        weight = affine ? Tensor.ones([dim], requiresGrad: true) : nil
        bias = affine ? Tensor.zeros([dim], requiresGrad: true) : nil
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.layerNorm(weight: weight, bias: bias, eps: eps) }
}

public final class Embedding: Module {
    public let weight: Tensor

    public init(_ count: Int, _ dim: Int, generator: inout RandomGenerator) {
        weight = generator.normal([count, dim])
        weight.requiresGrad = true
    }

    public func callAsFunction(_ indices: [Int], shape: [Int]) -> Tensor {
        embedding(weight, indices: indices, shape: shape)
    }
}

public final class Dropout: Module {
    public let p: Float

    public init(_ p: Float) { self.p = p }

    public func callAsFunction(_ x: Tensor, generator: inout RandomGenerator) -> Tensor {
        x.dropout(p, generator: &generator, training: isTraining)
    }
}
