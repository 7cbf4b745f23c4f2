import Diffusion
import Foundation
import NN
import Tensor

/// D_φ(x̂₀, t): a small time-conditioned CNN that gives the logit of P(C = 1 | x̂₀, t), the
/// probability that a one-step clean estimate came from a target prompt rather than an anchor
/// prompt. Three spectrally normalised 3×3 convolutions (widths w, 2w, 2w) with average pooling,
/// a sinusoidal embedding of t added after the second, global average pooling and a linear head.
/// Global pooling keeps it independent of the latent size (8×8 to 64×64). `spectralNorm: false`
/// gives the same network with plain layers: the leakage estimate's critics measure, and a
/// Lipschitz limit would only make them weaker detectors.
public final class Critic: Module {
    public let conv1: SpectralConv2d, conv2: SpectralConv2d, conv3: SpectralConv2d
    @Key("time_proj") public var timeProjection: SpectralLinear
    public let head: SpectralLinear
    public let width: Int

    public init(channels: Int, width: Int = 32, spectralNorm: Bool = true, generator: inout RandomGenerator) {
        conv1 = SpectralConv2d(channels, width, kernelSize: 3, padding: 1, generator: &generator)
        conv2 = SpectralConv2d(width, 2 * width, kernelSize: 3, padding: 1, generator: &generator)
        conv3 = SpectralConv2d(2 * width, 2 * width, kernelSize: 3, padding: 1, generator: &generator)
        head = SpectralLinear(2 * width, 1, generator: &generator)
        self.width = width
        super.init()
        timeProjection = SpectralLinear(2 * width, 2 * width, generator: &generator)
        for layer in [conv1, conv2, conv3] { layer.normalizes = spectralNorm }
        for layer in [timeProjection, head] { layer.normalizes = spectralNorm }
    }

    /// Logits [B] for clean estimates [B, C, h, w] at discrete `timesteps` (one per item).
    public func callAsFunction(_ x: Tensor, timesteps: [Int]) -> Tensor {
        head(features(x, timesteps: timesteps)).reshaped([x.shape[0]])
    }

    /// The pooled features [B, 2w] the head reads: what feature matching compares.
    public func features(_ x: Tensor, timesteps: [Int]) -> Tensor {
        precondition(timesteps.count == x.shape[0], "Critic: \(timesteps.count) timesteps for \(x.shape[0]) samples")
        let b = x.shape[0]
        var h = conv1(x).silu()
        if h.shape[2] >= 4 { h = h.avgPool2d(kernel: 2) }
        h = conv2(h)
        let time = timeProjection(timestepEmbedding(timesteps.map(Float.init), dim: 2 * width, flipSinToCos: true, freqShift: 0)).silu()
        h = (h + time.reshaped([b, 2 * width, 1, 1])).silu()
        if h.shape[2] >= 4 { h = h.avgPool2d(kernel: 2) }
        return conv3(h).silu().mean(axes: [2, 3])
    }
}

extension Critic {
    /// The paired game's logit that `a`, not `b`, is the target prompt's, for pairs of clean
    /// estimates [B, C, h, w] at one timestep each: f([a; b]) − f([b; a]) with f this network on
    /// the channel-stacked pair (built with 2C input channels). It is antisymmetric, so swapping a
    /// pair flips the call and an exchangeable pair law has the Bayes logit 0.
    public func pairLogits(_ a: Tensor, _ b: Tensor, timesteps: [Int]) -> Tensor {
        precondition(a.shape == b.shape, "Critic.pairLogits: pair members \(a.shape) and \(b.shape)")
        let n = a.shape[0]
        let both = self(Tensor.concat([Tensor.concat([a, b], axis: 1), Tensor.concat([b, a], axis: 1)], axis: 0),
                        timesteps: timesteps + timesteps).split(sizes: [n, n], axis: 0)
        return both[0] - both[1]
    }
}

/// A critic with its optimiser: trained on detached samples (class 1 = target, 0 = anchor).
public final class CriticTrainer {
    public let critic: Critic
    public let optimizer: Adam

    public init(channels: Int, width: Int, learningRate: Float, betas: (Float, Float), spectralNorm: Bool = true,
                generator: inout RandomGenerator) {
        critic = Critic(channels: channels, width: width, spectralNorm: spectralNorm, generator: &generator)
        critic.train()
        optimizer = Adam(critic.trainableParameters(), learningRate: learningRate, betas: betas)
    }

    /// One step on a balanced batch; returns (loss, accuracy at threshold ½).
    @discardableResult
    public func step(target: Tensor, targetTimesteps: [Int], anchor: Tensor, anchorTimesteps: [Int]) -> (loss: Float, accuracy: Float) {
        critic.train()
        critic.zeroGrad()
        let logits = critic(Tensor.concat([target.detached(), anchor.detached()], axis: 0), timesteps: targetTimesteps + anchorTimesteps)
        let labels = Tensor(shape: [logits.count], scalars: Array(repeating: 1, count: target.shape[0]) + Array(repeating: 0, count: anchor.shape[0]))
        let loss = binaryCrossEntropy(logits: logits, targets: labels).mean()
        loss.backward()
        optimizer.step()
        critic.zeroGrad()
        let correct = zip(logits.scalars, labels.scalars).filter { ($0 > 0) == ($1 > 0.5) }.count
        return (loss.item, Float(correct) / Float(logits.count))
    }
}

extension CriticTrainer {
    /// One step of the paired game on pairs (target, reference) that share their noise and
    /// timestep: the loss −log σ(ℓ(target, reference)), which by antisymmetry is also the loss
    /// of every swapped pair labelled 0, so each pair counts once in either order. Returns (loss,
    /// accuracy: the fraction of pairs whose target member it picks).
    @discardableResult
    public func pairStep(target: Tensor, reference: Tensor, timesteps: [Int]) -> (loss: Float, accuracy: Float) {
        critic.train()
        critic.zeroGrad()
        let logits = critic.pairLogits(target.detached(), reference.detached(), timesteps: timesteps)
        let loss = binaryCrossEntropy(logits: logits, targets: Tensor.ones(logits.shape)).mean()
        loss.backward()
        optimizer.step()
        critic.zeroGrad()
        return (loss.item, Float(logits.scalars.filter { $0 > 0 }.count) / Float(logits.count))
    }

    /// The paired critic's logits for the model's adversarial term, frozen as `logitsForModel`.
    public func pairLogitsForModel(_ target: Tensor, reference: Tensor, timesteps: [Int]) -> Tensor {
        frozen { critic.pairLogits(target, reference.detached(), timesteps: timesteps) }
    }

    /// The critic's logits for the model's adversarial term: evaluation mode (no power-iteration
    /// step) and weights frozen while the graph is recorded, so the model's loss does not train
    /// the critic. (`step` also zeroes any stale gradient first: a resumed run, whose checkpoint
    /// holds no gradients, must continue with the same bits.)
    public func logitsForModel(_ x: Tensor, timesteps: [Int]) -> Tensor {
        frozen { critic(x, timesteps: timesteps) }
    }

    /// The critic's pooled features for the model's feature-matching term, frozen the same way.
    public func featuresForModel(_ x: Tensor, timesteps: [Int]) -> Tensor {
        frozen { critic.features(x, timesteps: timesteps) }
    }

    private func frozen(_ body: () -> Tensor) -> Tensor {
        critic.eval()
        let weights = critic.trainableParameters().map(\.tensor)
        for w in weights { w.requiresGrad = false }
        defer { for w in weights { w.requiresGrad = true } }
        return body()
    }
}

/// How the model is pushed to fool the critic on target samples.
public enum AdversarialForm: String, Codable, Sendable, CaseIterable {
    /// BCE(D, ½): make the critic maximally unsure (its optimum is the equilibrium itself).
    case confusion
    /// −log(1 − D): make target samples look like anchor samples (GAN's non-saturating loss).
    case nonSaturating = "non-saturating"
}

/// The model's adversarial loss on critic logits of target samples.
public func adversarialLoss(logits: Tensor, form: AdversarialForm) -> Tensor {
    let target: Float = form == .confusion ? 0.5 : 0
    return binaryCrossEntropy(logits: logits, targets: Tensor.full(target, logits.shape)).mean()
}

/// Feature matching on the critic's features (Salimans et al. 2016), as an unbiased squared
/// distance between the mean feature of the model's samples `model` [n, d] and of the reference
/// samples `reference` [m, d] (the linear-kernel MMD²: pairs i ≠ j only, so a small batch is not
/// rewarded for shrinking its own spread), divided by the reference features' total variance so
/// that its scale does not follow the critic's. A per-sample critic can be fooled by drawing one
/// mode of the reference; the mean over a batch of that mode is still far from the mixture's.
public func featureMatchingLoss(model a: Tensor, reference b: Tensor) -> Tensor {
    precondition(a.rank == 2 && b.rank == 2 && a.shape[1] == b.shape[1] && a.shape[0] >= 2 && b.shape[0] >= 2,
                 "featureMatchingLoss: model \(a.shape), reference \(b.shape) (at least 2 rows each, same width)")
    let (n, m) = (Float(a.shape[0]), Float(b.shape[0]))
    let b = b.detached()
    let sumA = a.sum(axes: [0]), sumB = b.sum(axes: [0])
    let withinA = ((sumA * sumA).sum() - (a * a).sum()) * (1 / (n * (n - 1)))
    let cross = (sumA * sumB).sum() * (-2 / (n * m))
    let withinB = ((sumB * sumB).sum() - (b * b).sum()).item / (m * (m - 1))
    let centred = b - sumB.reshaped([1, b.shape[1]]) * (1 / m)
    let variance = (centred * centred).sum().item / (m - 1)
    return (withinA + cross + withinB) * (1 / max(variance, 1e-8))
}
