import Foundation

/// The process's peak resident set size in MB (`VmHWM` of /proc/self/status), nil where there is none.
public func peakResidentMegabytes() -> Double? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        // "VmHWM:\t 123456 kB": tabs and spaces, as many as the number's width leaves.
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count >= 2, let kilobytes = Double(fields[1]) else { return nil }
        return kilobytes / 1024
    }
    return nil
}
