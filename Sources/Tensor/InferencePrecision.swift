import Kernels

/// The arithmetic of matrix products and convolutions outside the tape, as torch's
/// `autocast(dtype=torch.bfloat16)` on the CPU: inside `InferencePrecision.withBF16`, the
/// forward GEMMs of `matmul`, `linear`, `conv2d` and attention round their operands to bf16 and
/// accumulate in fp32 (Kernels.Precision.bf16, AVX512-BF16): each operand rounded by up to 2⁻⁸
/// of itself, each output by at most 2⁻⁷·Σ|a·b|, at about twice the multiply-adds per cycle. Everything else (norms, softmax,
/// activations, schedulers) stays fp32.
///
/// Gradients never see it: an op that records itself on the tape computes its forward in fp32
/// (its backward must differentiate what was computed), every backward pass and checkpoint
/// recomputation runs in fp32, and `withFP32` lets a training loop inside a bf16 scope (a
/// detector fitted during an evaluation) keep its bits. A training step gives the same bits
/// with or without an enclosing bf16 scope.
///
/// The state is process-wide like `GradMode`: set it from the thread that runs the model.
public enum InferencePrecision {
    nonisolated(unsafe) static var bf16Depth = 0
    nonisolated(unsafe) static var fp32Depth = 0

    /// Whether untracked forward GEMMs run in bf16 now.
    public static var isBF16: Bool { bf16Depth > 0 && fp32Depth == 0 }

    /// Runs `body` with untracked forward GEMMs in bf16. Throws `InferencePrecisionError` (with
    /// the reason, e.g. the CPU lacks AVX512-BF16) where the instructions are unavailable.
    public static func withBF16<T>(_ body: () throws -> T) throws -> T {
        if let reason = Kernels.bf16Unavailable { throw InferencePrecisionError.bf16Unavailable(reason: reason) }
        bf16Depth += 1
        defer { bf16Depth -= 1 }
        return try body()
    }

    /// Runs `body` in fp32 whatever the enclosing scope: training loops, backward passes.
    public static func withFP32<T>(_ body: () throws -> T) rethrows -> T {
        fp32Depth += 1
        defer { fp32Depth -= 1 }
        return try body()
    }

    /// The GEMM precision of a forward op on `inputs`: bf16 only inside `withBF16`, outside any
    /// `withFP32`, and when the op will not be recorded on the tape.
    static func forward(_ inputs: [Tensor]) -> Kernels.Precision {
        guard isBF16 else { return .fp32 }
        return GradMode.isEnabled && inputs.contains(where: { $0.isTracked }) ? .fp32 : .bf16
    }
}

public enum InferencePrecisionError: Error, CustomStringConvertible {
    case bf16Unavailable(reason: String)

    public var description: String {
        switch self {
        case .bf16Unavailable(let reason): "bf16 inference is unavailable: \(reason)"
        }
    }
}
