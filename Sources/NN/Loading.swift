import Tensor

/// What went wrong when loading weights into a module. Nothing is changed when loading fails.
public struct WeightLoadingError: Error, CustomStringConvertible, Equatable {
    public var source: String
    public var missing: [String] = []
    public var unexpected: [String] = []
    public var mismatched: [String] = []

    public var description: String {
        var parts = ["cannot load weights from \(source):"]
        if !missing.isEmpty { parts.append("missing keys: \(missing.joined(separator: ", "))") }
        if !unexpected.isEmpty { parts.append("unexpected keys: \(unexpected.joined(separator: ", "))") }
        if !mismatched.isEmpty { parts.append("shape mismatches: \(mismatched.joined(separator: ", "))") }
        return parts.joined(separator: "\n  ")
    }
}

extension Module {
    /// Copies `weights` (checkpoint key → tensor) into this module's parameters.
    /// Every key is checked first — missing, unexpected, mis-shaped — and nothing is written
    /// unless all are fine. With `strict: false`, missing and unexpected keys are allowed.
    public func load(_ weights: [String: Tensor], source: String = "weights", strict: Bool = true) throws {
        let params = namedParameters()
        var error = WeightLoadingError(source: source)
        let known = Set(params.map(\.name))
        for (name, p) in params {
            guard let w = weights[name] else { error.missing.append(name); continue }
            if w.shape != p.shape { error.mismatched.append("\(name) (checkpoint \(w.shape), model \(p.shape))") }
        }
        error.unexpected = weights.keys.filter { !known.contains($0) }.sorted()
        if !error.mismatched.isEmpty || (strict && !(error.missing.isEmpty && error.unexpected.isEmpty)) {
            throw error
        }
        for (name, p) in params { if let w = weights[name] { p.assign(w) } }
    }

    /// Parameters as a name → tensor dictionary (values shared, not copied).
    public func stateDict() -> [String: Tensor] {
        Dictionary(namedParameters().map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
    }
}
