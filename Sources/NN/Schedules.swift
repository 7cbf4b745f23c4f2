import Foundation

/// Learning rate as a function of the (0-based) optimizer step.
public protocol LearningRateSchedule: Sendable {
    func learningRate(at step: Int) -> Float
}

public struct ConstantLR: LearningRateSchedule {
    public let base: Float
    public init(_ base: Float) { self.base = base }
    public func learningRate(at step: Int) -> Float { base }
}

/// Cosine annealing from `base` to `minimum` over `period` steps (PyTorch's CosineAnnealingLR,
/// whose closed form continues as a cosine past the period).
public struct CosineAnnealingLR: LearningRateSchedule {
    public let base: Float, period: Int, minimum: Float
    public init(base: Float, period: Int, minimum: Float = 0) {
        self.base = base
        self.period = period
        self.minimum = minimum
    }
    public func learningRate(at step: Int) -> Float {
        let cosine = Foundation.cos(Double.pi * Double(step) / Double(period))
        return minimum + (base - minimum) * Float((1 + cosine) / 2)
    }
}

/// Linear warm-up over the first `warmupSteps` steps, then `after` (constant by default).
public struct LinearWarmup<After: LearningRateSchedule>: LearningRateSchedule {
    public let warmupSteps: Int
    public let after: After
    public init(warmupSteps: Int, after: After) {
        self.warmupSteps = warmupSteps
        self.after = after
    }
    public func learningRate(at step: Int) -> Float {
        after.learningRate(at: step) * min(1, Float(step + 1) / Float(max(warmupSteps, 1)))
    }
}
