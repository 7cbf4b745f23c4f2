import Foundation

/// Why a measurement (evaluate, benchmark, attack, check-leakage, generate) could not run.
/// Messages name the flag, file or key at fault.
public enum EvaluationError: Error, CustomStringConvertible, Equatable {
    /// Something the testbed cannot measure: an unknown concept, task or method, a missing input.
    case invalidRequest(String)
    /// A setting outside its range.
    case invalidSetting(String)

    public var description: String {
        switch self {
        case let .invalidRequest(reason), let .invalidSetting(reason): return reason
        }
    }
}

extension EvaluationError: LocalizedError {
    public var errorDescription: String? { description }
}
