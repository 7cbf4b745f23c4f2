import Foundation

/// Prints progress of a training loop: step, loss, throughput, ETA.
public struct ProgressReporter {
    public let total: Int
    public let unit: String
    let start = Date()
    var lastPrint = Date.distantPast
    public var print: (String) -> Void

    public init(total: Int, unit: String = "images", print: @escaping (String) -> Void) {
        self.total = total
        self.unit = unit
        self.print = print
    }

    public mutating func report(step: Int, firstStep: Int, items: Int, values: [(String, Float)], force: Bool = false) {
        let now = Date()
        guard force || now.timeIntervalSince(lastPrint) >= 2 || step == total else { return }
        lastPrint = now
        let elapsed = now.timeIntervalSince(start)
        let done = max(step - firstStep, 1)
        let eta = elapsed / Double(done) * Double(total - step)
        let rate = Double(items) / max(elapsed, 1e-9)
        let fields = values.map { "\($0.0) \(String(format: "%.4f", $0.1))" }.joined(separator: "  ")
        print(String(format: "step %d/%d  %@  %.1f %@/s  ETA %@", step, total, fields, rate, unit, formatDuration(eta)))
    }
}

public func formatDuration(_ seconds: Double) -> String {
    let s = Int(seconds.rounded())
    return s >= 3600 ? String(format: "%dh%02dm", s / 3600, s % 3600 / 60) : String(format: "%dm%02ds", s / 60, s % 60)
}
