import Foundation
import NN
import Tensor

/// An image classifier over the testbed's classes. Its penultimate features give a
/// KID/FID-style distance between image sets.
public protocol Judge: Module {
    var architecture: String { get }
    /// Penultimate features of images [N, C, 32, 32] in [-1, 1] (C: 1 for Fashion-MNIST, 3 for emoji).
    func features(_ images: Tensor) -> Tensor
    /// Class logits from features.
    func classify(features: Tensor) -> Tensor
}

extension Judge {
    public func logits(_ images: Tensor) -> Tensor { classify(features: features(images)) }

    /// Softmax probabilities, batched and without gradient.
    public func probabilities(_ images: Tensor, batchSize: Int = 256) -> Tensor {
        noGrad {
            let n = images.shape[0]
            let parts = stride(from: 0, to: n, by: batchSize).map { start in
                logits(images.narrowed(axis: 0, start: start, length: min(batchSize, n - start))).softmax()
            }
            return Tensor.concat(parts, axis: 0)
        }
    }

    /// Predicted class of each image.
    public func predict(_ images: Tensor) -> [Int] { probabilities(images).argmaxLastAxis() }

    /// The predicted class of each image as a one-hot row [N, classes]: what a detector that
    /// sees only the judge's reading of an image can use.
    public func judgedClassOneHot(_ images: Tensor) -> Tensor {
        let probabilities = probabilities(images)
        let (count, classes) = (probabilities.shape[0], probabilities.shape[1])
        let predicted = probabilities.argmaxLastAxis()
        return Tensor(shape: [count, classes]) { out in
            out.update(repeating: 0, count: count * classes)
            for i in 0..<count { out[i * classes + predicted[i]] = 1 }
        }
    }

    /// Penultimate features, batched and without gradient.
    public func featureBatches(_ images: Tensor, batchSize: Int = 256) -> Tensor {
        noGrad {
            let n = images.shape[0]
            return Tensor.concat(stride(from: 0, to: n, by: batchSize).map { start in
                features(images.narrowed(axis: 0, start: start, length: min(batchSize, n - start)))
            }, axis: 0)
        }
    }
}

/// A small convolutional classifier: three conv stages with GroupNorm, SiLU and pooling, then a
/// fully connected layer over the 4×4 map (global pooling threw away where things are, and with
/// it 5 points of test accuracy).
public final class ConvJudge: Module, Judge {
    public let conv1: Conv2d, norm1: GroupNorm
    public let conv2: Conv2d, norm2: GroupNorm
    public let conv3: Conv2d, norm3: GroupNorm
    public let fc: Linear, head: Linear
    public var architecture: String { "cnn" }

    public init(classes: Int = 10, channels: Int = 1, generator: inout RandomGenerator) {
        conv1 = Conv2d(channels, 32, kernelSize: 3, padding: 1, generator: &generator)
        norm1 = GroupNorm(groups: 8, channels: 32)
        conv2 = Conv2d(32, 64, kernelSize: 3, padding: 1, generator: &generator)
        norm2 = GroupNorm(groups: 8, channels: 64)
        conv3 = Conv2d(64, 64, kernelSize: 3, padding: 1, generator: &generator)
        norm3 = GroupNorm(groups: 8, channels: 64)
        fc = Linear(64 * 4 * 4, 128, generator: &generator)
        head = Linear(128, classes, generator: &generator)
    }

    public func features(_ x: Tensor) -> Tensor {
        var h = norm1(conv1(x)).silu().avgPool2d(kernel: 2)    // 16×16
        h = norm2(conv2(h)).silu().avgPool2d(kernel: 2)        // 8×8
        h = norm3(conv3(h)).silu().avgPool2d(kernel: 2)        // 4×4
        return fc(h.reshaped([h.shape[0], -1])).silu()
    }

    public func classify(features: Tensor) -> Tensor { head(features) }
}

/// A residual block (He et al. 2016) with GroupNorm in place of BatchNorm, so that a judge's
/// prediction for an image does not depend on the other images of its batch: two 3×3
/// convolutions, the first with `stride`; a 1×1 projection on the skip path where the shape changes.
public final class ResidualBlock: Module {
    public let conv1: Conv2d, norm1: GroupNorm
    public let conv2: Conv2d, norm2: GroupNorm
    public let shortcut: Conv2d?, shortcutNorm: GroupNorm?

    public init(_ inChannels: Int, _ outChannels: Int, stride: Int = 1, groups: Int = 8, generator: inout RandomGenerator) {
        conv1 = Conv2d(inChannels, outChannels, kernelSize: 3, stride: stride, padding: 1, bias: false, generator: &generator)
        norm1 = GroupNorm(groups: groups, channels: outChannels)
        conv2 = Conv2d(outChannels, outChannels, kernelSize: 3, padding: 1, bias: false, generator: &generator)
        norm2 = GroupNorm(groups: groups, channels: outChannels)
        if stride != 1 || inChannels != outChannels {
            shortcut = Conv2d(inChannels, outChannels, kernelSize: 1, stride: stride, bias: false, generator: &generator)
            shortcutNorm = GroupNorm(groups: groups, channels: outChannels)
        } else {
            shortcut = nil
            shortcutNorm = nil
        }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let h = norm2(conv2(norm1(conv1(x)).silu()))
        let skip = shortcut.map { shortcutNorm!($0(x)) } ?? x
        return (h + skip).silu()
    }
}

/// A small ResNet: a 3×3 stem at 32×32, then four residual blocks (32 channels at 16×16, 64 at
/// 8×8 twice, 64 at 4×4), and the ConvJudge's head (a fully connected layer over the 4×4 map,
/// 128 features). Trained with flips and shifts (`JudgeTrainingOptions.augment`) and loaded to
/// judge as a `MirrorAveragedJudge` (docs/TESTBED.md has its test accuracy beside the CNN's and the MLP's).
public final class ResNetJudge: Module, Judge {
    public let stem: Conv2d, stemNorm: GroupNorm
    public let blocks: [ResidualBlock]
    public let fc: Linear, head: Linear
    public var architecture: String { "resnet" }

    public init(classes: Int = 10, channels: Int = 1, generator: inout RandomGenerator) {
        stem = Conv2d(channels, 32, kernelSize: 3, padding: 1, bias: false, generator: &generator)
        stemNorm = GroupNorm(groups: 8, channels: 32)
        blocks = [ResidualBlock(32, 32, stride: 2, generator: &generator),    // 16×16
                  ResidualBlock(32, 64, stride: 2, generator: &generator),    // 8×8
                  ResidualBlock(64, 64, generator: &generator),
                  ResidualBlock(64, 64, stride: 2, generator: &generator)]    // 4×4
        fc = Linear(64 * 4 * 4, 128, generator: &generator)
        head = Linear(128, classes, generator: &generator)
    }

    public func features(_ x: Tensor) -> Tensor {
        var h = stemNorm(stem(x)).silu()
        for block in blocks { h = block(h) }
        return fc(h.reshaped([h.shape[0], -1])).silu()
    }

    public func classify(features: Tensor) -> Tensor { head(features) }
}

/// A judge that reads an image and its left–right mirror and averages the two views' features,
/// so its logits are the mean of the two views' logits (the head is linear). Fashion-MNIST's
/// classes keep their name when mirrored and the ResNet judge is trained on mirrored images, so
/// the mirror is a second reading of the same image; averaging the two corrects some of the
/// single view's mistakes (docs/TESTBED.md has the test accuracies with and without it).
public final class MirrorAveragedJudge: Module, Judge {
    public let inner: any Judge
    public var architecture: String { inner.architecture }

    public init(_ inner: any Judge) { self.inner = inner }

    public func features(_ x: Tensor) -> Tensor {
        (inner.features(x) + inner.features(mirrored(x))) * 0.5
    }

    public func classify(features: Tensor) -> Tensor { inner.classify(features: features) }

    /// x with its last axis reversed, as a product with the exchange matrix so gradients flow
    /// (the attacks differentiate through the judge).
    private func mirrored(_ x: Tensor) -> Tensor {
        let width = x.shape[x.rank - 1]
        let exchange = Tensor(shape: [width, width]) { out in
            out.update(repeating: 0, count: width * width)
            for i in 0..<width { out[i * width + width - 1 - i] = 1 }
        }
        return matmul(x.reshaped([-1, width]), exchange).reshaped(x.shape)
    }
}

/// A multilayer perceptron on raw pixels: a deliberately different inductive bias from the CNN.
public final class MLPJudge: Module, Judge {
    public let fc1: Linear, fc2: Linear, head: Linear
    public var architecture: String { "mlp" }

    public init(classes: Int = 10, channels: Int = 1, generator: inout RandomGenerator) {
        fc1 = Linear(channels * 32 * 32, 512, generator: &generator)
        fc2 = Linear(512, 128, generator: &generator)
        head = Linear(128, classes, generator: &generator)
    }

    public func features(_ x: Tensor) -> Tensor {
        let flat = x.reshaped([x.shape[0], -1])
        return fc2(fc1(flat).gelu()).gelu()
    }

    public func classify(features: Tensor) -> Tensor { head(features) }
}

/// Kernel Inception Distance in judge-feature space: the unbiased MMD² with the cubic polynomial
/// kernel k(x, y) = (x·y/d + 1)³ (Bińkowski et al. 2018). 0 for identical distributions.
public func kernelDistance(_ a: Tensor, _ b: Tensor) -> Double {
    precondition(a.rank == 2 && b.rank == 2 && a.shape[1] == b.shape[1], "KID needs [N, d] features: \(a.shape) \(b.shape)")
    let d = Double(a.shape[1])
    func kernelSum(_ x: Tensor, _ y: Tensor, excludeDiagonal: Bool) -> Double {
        let gram = noGrad { matmul(x, y.transposed(0, 1)) }
        var total: Double = 0
        for i in 0..<x.shape[0] {
            for j in 0..<y.shape[0] where !(excludeDiagonal && i == j) {
                total += Foundation.pow(Double(gram.pointer[i * y.shape[0] + j]) / d + 1, 3)
            }
        }
        return total
    }
    let m = Double(a.shape[0]), n = Double(b.shape[0])
    return kernelSum(a, a, excludeDiagonal: true) / (m * (m - 1))
        + kernelSum(b, b, excludeDiagonal: true) / (n * (n - 1))
        - 2 * kernelSum(a, b, excludeDiagonal: false) / (m * n)
}
