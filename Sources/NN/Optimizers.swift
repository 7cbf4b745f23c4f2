import Foundation
import Tensor

/// Updates parameters from their gradients. Parameters are named, so state can be saved and
/// restored by name, and an optional per-parameter mask (1 = may change, 0 = frozen) restricts
/// which entries move — saliency-driven fine-tuning updates only the masked entries.
public protocol Optimizer: AnyObject {
    var learningRate: Float { get set }
    /// Applies one update using each parameter's current `grad` (parameters without one are skipped).
    func step()
    /// Optimizer state by name (moments, step counts), for checkpoints.
    func state() -> [String: Tensor]
    func loadState(_ state: [String: Tensor]) throws
}

extension Optimizer {
    public func zeroGrad(_ parameters: [(name: String, tensor: Tensor)]) { for p in parameters { p.tensor.grad = nil } }
}

public struct OptimizerStateError: Error, CustomStringConvertible {
    public let key: String
    public let reason: String
    public var description: String { "optimizer state \(key): \(reason)" }
}

/// Shared bookkeeping: the named parameters, their masks and per-parameter state buffers.
public class ParameterGroup {
    public let parameters: [(name: String, tensor: Tensor)]
    let masks: [Tensor?]

    init(_ parameters: [(name: String, tensor: Tensor)], masks: [String: Tensor]) {
        self.parameters = parameters
        self.masks = parameters.map { p in
            guard let m = masks[p.name] else { return nil }
            precondition(m.shape == p.tensor.shape, "mask for \(p.name) has shape \(m.shape), parameter \(p.tensor.shape)")
            return m
        }
    }

    func buffer(_ states: inout [String: Tensor], _ name: String, like p: Tensor) -> Tensor {
        if let t = states[name] { return t }
        let t = Tensor.zeros(p.shape)
        states[name] = t
        return t
    }

    static func restore(_ saved: [String: Tensor], into states: inout [String: Tensor], expected: [String: [Int]]) throws {
        for (key, value) in saved where key != "step" {
            guard let shape = expected[key] else { throw OptimizerStateError(key: key, reason: "no such parameter state") }
            guard value.shape == shape else { throw OptimizerStateError(key: key, reason: "shape \(value.shape), expected \(shape)") }
            states[key] = value.copy()
        }
    }
}

/// Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 decay
/// (PyTorch's `torch.optim.SGD`).
public final class SGD: ParameterGroup, Optimizer {
    public var learningRate: Float
    public let momentum: Float, dampening: Float, weightDecay: Float, nesterov: Bool
    private var momentumBuffers: [String: Tensor] = [:]

    public init(_ parameters: [(name: String, tensor: Tensor)], learningRate: Float, momentum: Float = 0,
                dampening: Float = 0, weightDecay: Float = 0, nesterov: Bool = false, masks: [String: Tensor] = [:]) {
        self.learningRate = learningRate
        self.momentum = momentum
        self.dampening = dampening
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        super.init(parameters, masks: masks)
    }

    public func step() {
        for (index, (name, p)) in parameters.enumerated() {
            guard let grad = p.grad else { continue }
            let key = "\(name).momentum_buffer"
            let isFirst = momentumBuffers[key] == nil
            let buf = momentum != 0 ? buffer(&momentumBuffers, key, like: p) : nil
            let (pp, pg, pm) = (p.pointer, grad.pointer, masks[index]?.pointer)
            let (lr, mu, damp, wd, nesterov) = (learningRate, momentum, dampening, weightDecay, nesterov)
            for i in 0..<p.count {
                if let pm, pm[i] == 0 { continue }
                var d = pg[i] + wd * pp[i]
                if let b = buf?.pointer {
                    b[i] = isFirst ? d : mu * b[i] + (1 - damp) * d
                    d = nesterov ? d + mu * b[i] : b[i]
                }
                pp[i] -= lr * d
            }
        }
    }

    public func state() -> [String: Tensor] { momentumBuffers }

    public func loadState(_ state: [String: Tensor]) throws {
        let expected = Dictionary(uniqueKeysWithValues: parameters.map { ("\($0.name).momentum_buffer", $0.tensor.shape) })
        try ParameterGroup.restore(state, into: &momentumBuffers, expected: expected)
    }
}

/// Adam (PyTorch's `torch.optim.Adam`, L2 decay) and AdamW (decoupled decay, `torch.optim.AdamW`).
public final class Adam: ParameterGroup, Optimizer {
    public enum WeightDecay: Sendable { case none, l2(Float), decoupled(Float) }

    public var learningRate: Float
    public let beta1: Float, beta2: Float, eps: Float
    public let weightDecay: WeightDecay
    private var moments: [String: Tensor] = [:]
    private var steps: [String: Int] = [:]

    public init(_ parameters: [(name: String, tensor: Tensor)], learningRate: Float = 1e-3,
                betas: (Float, Float) = (0.9, 0.999), eps: Float = 1e-8, weightDecay: WeightDecay = .none,
                masks: [String: Tensor] = [:]) {
        self.learningRate = learningRate
        (beta1, beta2) = betas
        self.eps = eps
        self.weightDecay = weightDecay
        super.init(parameters, masks: masks)
    }

    /// AdamW with PyTorch's default decay of 0.01.
    public static func adamW(_ parameters: [(name: String, tensor: Tensor)], learningRate: Float = 1e-3,
                             betas: (Float, Float) = (0.9, 0.999), eps: Float = 1e-8, weightDecay: Float = 0.01,
                             masks: [String: Tensor] = [:]) -> Adam {
        Adam(parameters, learningRate: learningRate, betas: betas, eps: eps, weightDecay: .decoupled(weightDecay), masks: masks)
    }

    public func step() {
        for (index, (name, p)) in parameters.enumerated() {
            guard let grad = p.grad else { continue }
            let t = (steps[name] ?? 0) + 1
            steps[name] = t
            let m = buffer(&moments, "\(name).exp_avg", like: p)
            let v = buffer(&moments, "\(name).exp_avg_sq", like: p)
            let (b1, b2, eps, lr) = (beta1, beta2, eps, learningRate)
            let correction1 = 1 - Foundation.pow(b1, Float(t))
            let correction2Root = (1 - Foundation.pow(b2, Float(t))).squareRoot()
            let stepSize = lr / correction1
            var l2: Float = 0, decay: Float = 1
            switch weightDecay {
            case .none: break
            case .l2(let wd): l2 = wd
            case .decoupled(let wd): decay = 1 - lr * wd
            }
            let (pp, pg, pmask, pm, pv) = (p.pointer, grad.pointer, masks[index]?.pointer, m.pointer, v.pointer)
            for i in 0..<p.count {
                if let pmask, pmask[i] == 0 { continue }
                let g = pg[i] + l2 * pp[i]
                pm[i] = b1 * pm[i] + (1 - b1) * g
                pv[i] = b2 * pv[i] + (1 - b2) * g * g
                let denom = pv[i].squareRoot() / correction2Root + eps
                pp[i] = pp[i] * decay - stepSize * pm[i] / denom
            }
        }
    }

    public func state() -> [String: Tensor] {
        var s = moments
        for (name, t) in steps { s["\(name).step"] = Tensor(Float(t)) }
        return s
    }

    public func loadState(_ state: [String: Tensor]) throws {
        var expected: [String: [Int]] = [:]
        for (name, p) in parameters {
            expected["\(name).exp_avg"] = p.shape
            expected["\(name).exp_avg_sq"] = p.shape
        }
        let names = Set(parameters.map(\.name))
        var momentState: [String: Tensor] = [:]
        for (key, value) in state {
            if key.hasSuffix(".step") {
                let name = String(key.dropLast(5))
                guard names.contains(name) else { throw OptimizerStateError(key: key, reason: "no such parameter") }
                steps[name] = Int(value.item)
            } else {
                momentState[key] = value
            }
        }
        try ParameterGroup.restore(momentState, into: &moments, expected: expected)
    }
}

/// Scales gradients so that their global L2 norm is at most `maxNorm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping.
@discardableResult
public func clipGradNorm(_ parameters: [Tensor], maxNorm: Float) -> Float {
    var total: Double = 0
    for p in parameters { if let g = p.grad { for i in 0..<g.count { total += Double(g.pointer[i]) * Double(g.pointer[i]) } } }
    let norm = Float(total.squareRoot())
    let coefficient = maxNorm / (norm + 1e-6)
    if coefficient < 1 {
        for p in parameters { if let g = p.grad { for i in 0..<g.count { g.pointer[i] *= coefficient } } }
    }
    return norm
}
