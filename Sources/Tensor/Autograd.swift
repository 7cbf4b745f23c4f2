/// Reverse-mode automatic differentiation on a tape, micrograd style.
///
/// Each op that sees a tracked input records an `AutogradNode` on its output: the inputs and a
/// closure that maps the output's gradient to the inputs' gradients. `backward()` walks the nodes
/// in reverse topological order, accumulates gradients of leaves into `Tensor.grad`, and then
/// frees the graph (closures keep activations alive, so dropping them returns the memory).
final class AutogradNode {
    let inputs: [Tensor]
    /// Gradients of the inputs given the output's gradient; nil entries mean "no gradient".
    let backward: (Tensor) -> [Tensor?]

    init(inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.inputs = inputs
        self.backward = backward
    }
}

/// Whether operations are being recorded for autodiff.
public enum GradMode {
    nonisolated(unsafe) static var depthDisabled = 0

    public static var isEnabled: Bool { depthDisabled == 0 }
}

/// Runs `body` without recording operations (inference, optimizer updates, backward passes).
@discardableResult
public func noGrad<T>(_ body: () throws -> T) rethrows -> T {
    GradMode.depthDisabled += 1
    defer { GradMode.depthDisabled -= 1 }
    return try body()
}

extension Tensor {
    /// Records `backward` on `self` if gradient mode is on and any input is tracked.
    /// Ops call this once on their output; returns self for chaining.
    @discardableResult
    func recording(_ inputs: [Tensor], _ backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        guard GradMode.isEnabled, inputs.contains(where: { $0.isTracked }) else { return self }
        node = AutogradNode(inputs: inputs, backward: backward)
        return self
    }

    /// Back-propagates from this tensor. With no argument the tensor must hold one element
    /// (a loss) and its seed gradient is 1. Gradients of leaves with `requiresGrad` are added to
    /// their `grad`; the recorded graph is released afterwards.
    public func backward(_ seed: Tensor? = nil) {
        let seedGradient: Tensor
        if let seed {
            precondition(seed.shape == shape, "backward: seed shape \(seed.shape) ≠ \(shape)")
            seedGradient = seed
        } else {
            precondition(count == 1, "backward() without a seed needs a scalar, shape is \(shape)")
            seedGradient = Tensor.ones(shape)
        }
        let order = topologicalOrder()
        var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seedGradient]
        noGrad {
            for tensor in order.reversed() {
                guard let g = grads.removeValue(forKey: ObjectIdentifier(tensor)) else { continue }
                guard let node = tensor.node else {
                    if tensor.requiresGrad { tensor.accumulateGrad(g) }
                    continue
                }
                let inputGrads = node.backward(g)
                for (input, inputGrad) in zip(node.inputs, inputGrads) {
                    guard let inputGrad, input.isTracked else { continue }
                    precondition(inputGrad.shape == input.shape,
                                 "internal: gradient shape \(inputGrad.shape) for input \(input.shape)")
                    let key = ObjectIdentifier(input)
                    grads[key] = grads[key].map { $0 + inputGrad } ?? inputGrad
                }
            }
        }
        for tensor in order { tensor.node = nil }
    }

    func accumulateGrad(_ g: Tensor) {
        if let grad {
            let p = grad.pointer, q = g.pointer
            for i in 0..<count { p[i] += q[i] }
        } else {
            // A copy: the incoming gradient may share storage with another tensor's.
            grad = g.copy()
        }
    }

    /// Zeroes (drops) this tensor's gradient.
    public func zeroGrad() { grad = nil }

    /// Nodes reachable from self, inputs before outputs (iterative DFS: deep graphs of
    /// thousands of ops must not overflow the stack).
    private func topologicalOrder() -> [Tensor] {
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (tensor, expanded) = stack.popLast() {
            if expanded { order.append(tensor); continue }
            guard visited.insert(ObjectIdentifier(tensor)).inserted else { continue }
            stack.append((tensor, true))
            for input in tensor.node?.inputs ?? [] where input.isTracked
                && !visited.contains(ObjectIdentifier(input)) {
                stack.append((input, false))
            }
        }
        return order
    }
}
