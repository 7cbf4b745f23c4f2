import Foundation

/// Why a testbed training run (the mini-SD UNet or a judge) could not start or go on. Messages
/// name the flag or file at fault and say what to do.
public enum TrainingError: Error, CustomStringConvertible, Equatable {
    /// An option out of range, or options that do not fit together or with the data.
    case invalidOption(String)
    /// A file (checkpoint, weights, model folder) that is not what the run needs.
    case invalidFile(path: String, reason: String)
    /// The loss became NaN or infinite; the last good checkpoint (when there is one) is kept.
    case nonFinite(what: String, loss: Float, step: Int, checkpoint: String?)

    public var description: String {
        switch self {
        case let .invalidOption(reason): return reason
        case let .invalidFile(path, reason): return "\(path): \(reason)"
        case let .nonFinite(what, loss, step, checkpoint):
            return "\(what): the loss is \(loss) at step \(step); "
                + (checkpoint.map { "the last good checkpoint is \($0) (lower --lr and rerun with --resume)" } ?? "lower --lr")
        }
    }
}

extension TrainingError: LocalizedError {
    public var errorDescription: String? { description }
}
