import Diffusion
@testable import Erasure
import Foundation
@testable import NN
import Tensor
import XCTest

/// Each loss term's value and gradient on inputs small enough to check by hand.
final class LossTermTests: XCTestCase {
    func testBinaryCrossEntropyValuesAndGradient() {
        let z = Tensor(shape: [4], scalars: [0, 2, -3, 40], requiresGrad: true)
        let y = Tensor(shape: [4], scalars: [0.5, 1, 0, 0])
        let loss = binaryCrossEntropy(logits: z, targets: y)
        // softplus(z) − y·z
        let expected: [Double] = [log(2), log(1 + exp(2)) - 2, log(1 + exp(-3)), 40]
        for (a, b) in zip(loss.scalars, expected) { XCTAssertEqual(Double(a), b, accuracy: 1e-5) }
        loss.sum().backward()
        let sigmoid = { (x: Double) in 1 / (1 + exp(-x)) }
        let expectedGrad = [sigmoid(0) - 0.5, sigmoid(2) - 1, sigmoid(-3), 1]
        for (a, b) in zip(z.grad!.scalars, expectedGrad) { XCTAssertEqual(Double(a), b, accuracy: 1e-6) }
    }

    func testBinaryCrossEntropyGradientMatchesFiniteDifferences() {
        var g = RandomGenerator(seed: 3)
        let z = g.normal([6], std: 3)
        let y = g.uniform([6])
        z.requiresGrad = true
        binaryCrossEntropy(logits: z, targets: y).mean().backward()
        let analytic = z.grad!.scalars
        for i in 0..<6 {
            let h: Float = 1e-2
            let plus = z.copy(), minus = z.copy()
            plus.pointer[i] += h
            minus.pointer[i] -= h
            let numeric = (binaryCrossEntropy(logits: plus, targets: y).mean().item - binaryCrossEntropy(logits: minus, targets: y).mean().item) / (2 * h)
            XCTAssertEqual(analytic[i], numeric, accuracy: 2e-4)
        }
    }

    func testAdversarialForms() {
        let z = Tensor(shape: [2], scalars: [0, 1.5], requiresGrad: true)
        // Confusion: BCE(D, ½) = ½softplus(z) + ½softplus(−z); its minimum ln 2 at z = 0.
        let confusion = adversarialLoss(logits: z, form: .confusion)
        let expected = (log(2) + 0.5 * log(1 + exp(1.5)) + 0.5 * log(1 + exp(-1.5))) / 2
        XCTAssertEqual(Double(confusion.item), expected, accuracy: 1e-5)
        confusion.backward()
        XCTAssertEqual(z.grad!.scalars[0], 0, accuracy: 1e-7, "at chance the confusion loss has no gradient")
        XCTAssertEqual(Double(z.grad!.scalars[1]), (1 / (1 + exp(-1.5)) - 0.5) / 2, accuracy: 1e-6)
        // Non-saturating: −log(1 − σ(z)) = softplus(z).
        z.zeroGrad()
        let nonSaturating = adversarialLoss(logits: z, form: .nonSaturating)
        XCTAssertEqual(Double(nonSaturating.item), (log(2) + log(1 + exp(1.5))) / 2, accuracy: 1e-5)
    }

    func testNegativeGuidanceTarget() {
        let anchor = Tensor(shape: [2], scalars: [1, 2])
        let conditional = Tensor(shape: [2], scalars: [3, 0])
        let unconditional = Tensor(shape: [2], scalars: [1, 1])
        // anchor − η(cond − uncond) with η = 2: [1 − 4, 2 + 2]
        XCTAssertEqual(negativeGuidanceTarget(anchor: anchor, conditional: conditional, unconditional: unconditional, eta: 2).scalars, [-3, 4])
        // ESD's target: anchor = ∅, η = 1: [1 − 2, 1 + 1]
        XCTAssertEqual(negativeGuidanceTarget(anchor: unconditional, conditional: conditional, unconditional: unconditional, eta: 1).scalars, [-1, 2])
    }

    func testCleanEstimateValueAndGradient() {
        let alphas = [0.25, 0.64]   // √ᾱ = 0.5, 0.8; √(1−ᾱ) = √0.75, 0.6
        let z = Tensor(shape: [2, 1, 1, 1], scalars: [1, 1])
        let eps = Tensor(shape: [2, 1, 1, 1], scalars: [0.5, -1], requiresGrad: true)
        let x0 = cleanEstimate(latents: z, noise: eps, timesteps: [0, 1], alphasCumprod: alphas)
        XCTAssertEqual(Double(x0.scalars[0]), (1 - 0.75.squareRoot() * 0.5) / 0.5, accuracy: 1e-6)
        XCTAssertEqual(Double(x0.scalars[1]), (1 + 0.6) / 0.8, accuracy: 1e-6)
        x0.sum().backward()
        XCTAssertEqual(Double(eps.grad!.scalars[0]), -0.75.squareRoot() / 0.5, accuracy: 1e-6)
        XCTAssertEqual(Double(eps.grad!.scalars[1]), -0.6 / 0.8, accuracy: 1e-6)
    }

    func testSpectralNormMakesTheLargestSingularValueOne() {
        var g = RandomGenerator(seed: 5)
        let layer = SpectralLinear(6, 4, generator: &g)
        layer.train()
        let x = g.normal([3, 6])
        for _ in 0..<50 { _ = layer(x) }   // power iteration converges
        let w = SpectralNorm.apply(layer.weight, u: layer.u, training: false)
        // Largest singular value of w by many power iterations in Double.
        var v = [Double](repeating: 1, count: 6)
        var sigma = 0.0
        for _ in 0..<500 {
            var u = [Double](repeating: 0, count: 4)
            for i in 0..<4 { for j in 0..<6 { u[i] += Double(w.pointer[i * 6 + j]) * v[j] } }
            var next = [Double](repeating: 0, count: 6)
            for j in 0..<6 { for i in 0..<4 { next[j] += Double(w.pointer[i * 6 + j]) * u[i] } }
            let norm = next.reduce(0) { $0 + $1 * $1 }.squareRoot()
            sigma = norm.squareRoot()
            v = next.map { $0 / norm }
        }
        XCTAssertEqual(sigma, 1, accuracy: 1e-3)
    }

    func testSpectralLinearGradientMatchesFiniteDifferences() {
        var g = RandomGenerator(seed: 9)
        let layer = SpectralLinear(3, 2, generator: &g)
        layer.eval()   // u fixed, so the function is deterministic
        let x = g.normal([2, 3])
        let probe = g.normal([2, 2])
        func value() -> Float { (layer(x) * probe).sum().item }
        (layer(x) * probe).sum().backward()
        let analytic = layer.weight.grad!.scalars
        for i in 0..<layer.weight.count {
            let saved = layer.weight.pointer[i]
            layer.weight.pointer[i] = saved + 2e-3
            let plus = value()
            layer.weight.pointer[i] = saved - 2e-3
            let minus = value()
            layer.weight.pointer[i] = saved
            XCTAssertEqual(analytic[i], (plus - minus) / 4e-3, accuracy: 1e-3)
        }
    }
}
