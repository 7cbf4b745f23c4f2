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
    /// Set instead of `backward` by `checkpoint`: given the output's gradient and the gradients
    /// accumulated so far for each input (nil: none yet), returns each input's new total. Adding
    /// onto the running totals inside the recomputed graph sums in the order the unrecorded graph
    /// would have, so checkpointing leaves the gradients' bits unchanged.
    let accumulatingBackward: ((Tensor, [Tensor?]) -> [Tensor?])?

    init(inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.inputs = inputs
        self.backward = backward
        accumulatingBackward = nil
    }

    init(inputs: [Tensor], accumulatingBackward: @escaping (Tensor, [Tensor?]) -> [Tensor?]) {
        self.inputs = inputs
        backward = { _ in preconditionFailure("internal: an accumulating node has no plain backward") }
        self.accumulatingBackward = accumulatingBackward
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
        _ = Tensor.propagate(from: self, seed: seedGradient, pending: [:], capturing: [])
    }

    /// The backward pass proper: walks the graph below `root` in reverse topological order from
    /// `seed`, starting from the `pending` gradients, and frees each node as soon as it has run
    /// (its closure holds the activations it needed, and nothing later needs them). Leaves in
    /// `capturing` hand their gradient back instead of accumulating it into `grad`.
    static func propagate(from root: Tensor, seed: Tensor, pending: [ObjectIdentifier: Tensor],
                          capturing: Set<ObjectIdentifier>) -> [ObjectIdentifier: Tensor] {
        var order: [Tensor?] = root.topologicalOrder()
        var grads = pending
        grads[ObjectIdentifier(root)] = seed
        var captured: [ObjectIdentifier: Tensor] = [:]
        // Gradients are fp32 even inside an InferencePrecision.withBF16 scope.
        InferencePrecision.withFP32 { noGrad {
            for index in order.indices.reversed() {
                guard let tensor = order[index] else { continue }
                // Dropping the order's reference lets an intermediate result go once its node has run.
                order[index] = nil
                let key = ObjectIdentifier(tensor)
                guard let g = grads.removeValue(forKey: key) else { tensor.node = nil; continue }
                guard let node = tensor.node else {
                    if capturing.contains(key) { captured[key] = g } else if tensor.requiresGrad { tensor.accumulateGrad(g) }
                    continue
                }
                tensor.node = nil
                if let accumulate = node.accumulatingBackward {
                    let totals = accumulate(g, node.inputs.map { grads.removeValue(forKey: ObjectIdentifier($0)) })
                    for (input, total) in zip(node.inputs, totals) where input.isTracked {
                        if let total { grads[ObjectIdentifier(input)] = total }
                    }
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
        } }
        return captured
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
    fileprivate func topologicalOrder() -> [Tensor] {
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

/// Runs `body` with gradient recording on, whatever the caller's mode (checkpoint recomputation
/// runs inside a backward pass, which records nothing).
func withGradRecording<T>(_ body: () throws -> T) rethrows -> T {
    let saved = GradMode.depthDisabled
    GradMode.depthDisabled = 0
    defer { GradMode.depthDisabled = saved }
    return try body()
}

/// Gradient checkpointing (diffusers' `gradient_checkpointing`, torch.utils.checkpoint): runs
/// `body(inputs)` without recording its activations, and in the backward pass runs it again with
/// recording on and back-propagates through that copy. Memory falls to the block's inputs and
/// output, at the cost of a second forward pass of the block.
///
/// `body` must compute the same values when run again: no random draws, no state it changes.
/// Parameters it reads (the block's weights) get their gradients as usual. The gradients have
/// the same bits as without checkpointing: the recomputation is the same arithmetic, and the
/// inputs' gradients are summed onto their running totals in the same order.
public func checkpoint(_ inputs: [Tensor], _ body: @escaping ([Tensor]) -> Tensor) -> Tensor {
    guard GradMode.isEnabled else { return body(inputs) }
    var unique: [Tensor] = []
    for input in inputs where !unique.contains(where: { $0 === input }) { unique.append(input) }
    // fp32 like the recomputation in the backward pass, which must reproduce these values.
    let out = InferencePrecision.withFP32 { noGrad { body(inputs) } }
    let saved = unique
    let positions = inputs.map { input in unique.firstIndex { $0 === input }! }
    // Recorded whether or not an input is tracked: the block's parameters are inside `body`.
    out.node = AutogradNode(inputs: saved) { g, totals in
        let leaves = saved.map { Tensor(storage: $0.storage, shape: $0.shape, requiresGrad: $0.isTracked) }
        let recomputed = withGradRecording { body(positions.map { leaves[$0] }) }
        guard recomputed.isTracked else { return totals }
        var pending: [ObjectIdentifier: Tensor] = [:]
        for (leaf, total) in zip(leaves, totals) { if let total { pending[ObjectIdentifier(leaf)] = total } }
        let captured = Tensor.propagate(from: recomputed, seed: g, pending: pending,
                                        capturing: Set(leaves.filter(\.requiresGrad).map { ObjectIdentifier($0) }))
        return zip(leaves, totals).map { leaf, total in captured[ObjectIdentifier(leaf)] ?? total }
    }
    return out
}
