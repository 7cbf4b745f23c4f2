import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TestSupport

/// A small mutation fuzzer for the package's parsers: each run starts from valid seed inputs and
/// feeds the parser random mutations of them (and random bytes) for a fixed time. Errors are the
/// expected outcome; a trap, a crash or a hang fails the test process, and the signal handler
/// then prints the input that caused it and saves it for replay (`SCORE_FUZZ_REPLAY=<file>`).
///
/// `SCORE_FUZZ_SECONDS` sets the budget per parser (default 2 s, what CI runs);
/// `SCORE_FUZZ_SEED` fixes the random seed (the seed used is always printed).
struct Fuzzer {
    static var secondsPerParser: Double {
        ProcessInfo.processInfo.environment["SCORE_FUZZ_SECONDS"].flatMap(Double.init) ?? 2
    }

    let name: String
    let seeds: [[UInt8]]
    var random: TestRandom

    init(_ name: String, seeds: [[UInt8]]) {
        precondition(!seeds.isEmpty, "fuzzer \(name): no seed inputs")
        self.name = name
        self.seeds = seeds
        let seed = ProcessInfo.processInfo.environment["SCORE_FUZZ_SEED"].flatMap(UInt64.init)
            ?? UInt64(Date().timeIntervalSince1970 * 1000)
        random = TestRandom(seed: seed ^ UInt64(truncatingIfNeeded: name.hashValue & 0xffff))
        print("fuzz \(name): seed \(random.state)")
    }

    /// Runs `parse` on the seeds, then on mutations, until the budget is spent. Returns how many
    /// inputs ran and how many the parser accepted.
    @discardableResult
    mutating func run(_ parse: ([UInt8]) throws -> Void) -> (inputs: Int, accepted: Int) {
        CrashReporter.install(name: name)
        var inputs = 0, accepted = 0
        func attempt(_ input: [UInt8]) {
            CrashReporter.current = input
            inputs += 1
            if (try? parse(input)) != nil { accepted += 1 }
        }
        if let replay = ProcessInfo.processInfo.environment["SCORE_FUZZ_REPLAY"],
           let data = FileManager.default.contents(atPath: replay) {
            attempt([UInt8](data))
        }
        for seed in seeds { attempt(seed) }
        let deadline = Date().addingTimeInterval(Self.secondsPerParser)
        while Date() < deadline {
            for _ in 0..<16 { attempt(mutate()) }
        }
        CrashReporter.current = nil
        print("fuzz \(name): \(inputs) inputs, \(accepted) accepted, 0 crashes")
        return (inputs, accepted)
    }

    /// A mutation of a seed: one to four edits, byte-level or (for text) token-level.
    mutating func mutate() -> [UInt8] {
        if random.next(100) < 3 { return (0..<random.next(256)).map { _ in UInt8(random.next(256)) } }
        var bytes = seeds[random.next(seeds.count)]
        for _ in 0...random.next(4) { edit(&bytes) }
        return bytes
    }

    /// Values that break parsers: signs, zero, huge, overflowing, fractional, wrong types.
    static let interestingTokens = [
        "-1", "0", "1", "3.5", "-0", "1e9", "1e12", "1e308", "1e400", "-1e400", "4611686018427387904",
        "9223372036854775807", "-9223372036854775808", "18446744073709551616", "NaN", "Infinity",
        "null", "true", "false", "\"\"", "\"x\"", "[]", "{}", "[-1]", "[0]", "[1e9]", "[[]]", "[null]",
        "\"\\u0000\"", "\"\\ud800\"", "2147483648", "65536", "1024", "7",
    ]

    private mutating func edit(_ bytes: inout [UInt8]) {
        let count = bytes.count
        switch random.next(10) {
        case 0 where count > 0:  // flip a bit
            bytes[random.next(count)] ^= UInt8(1 << random.next(8))
        case 1 where count > 0:  // set a byte to an edge value
            bytes[random.next(count)] = [0, 0xff, 0x7f, 0x80, 0x22, 0x5b, 0x7b, 0x2c, 0x3a][random.next(9)]
        case 2:  // insert random bytes
            let at = random.next(count + 1)
            bytes.insert(contentsOf: (0..<(1 + random.next(8))).map { _ in UInt8(random.next(256)) }, at: at)
        case 3 where count > 0:  // delete a range
            let start = random.next(count)
            bytes.removeSubrange(start..<min(count, start + 1 + random.next(16)))
        case 4 where count > 0:  // duplicate a range
            let start = random.next(count)
            let piece = bytes[start..<min(count, start + 1 + random.next(64))]
            bytes.insert(contentsOf: piece, at: random.next(count + 1))
        case 5 where count > 0:  // truncate
            bytes.removeSubrange(random.next(count)...)
        case 6:  // splice with another seed
            let other = seeds[random.next(seeds.count)]
            let cut = random.next(count + 1), otherCut = random.next(other.count + 1)
            bytes = Array(bytes[..<cut]) + Array(other[otherCut...])
        case 7, 8:  // replace a number or a JSON token with an interesting one
            replaceToken(&bytes)
        default:  // deep nesting
            let depth = [10, 100, 1000, 100_000][random.next(4)]
            let at = random.next(count + 1)
            bytes.insert(contentsOf: Array(repeating: UInt8(ascii: "["), count: depth), at: at)
        }
    }

    /// Replaces a run of number characters (or a quoted string) with an interesting token.
    private mutating func replaceToken(_ bytes: inout [UInt8]) {
        let token = Array(Self.interestingTokens[random.next(Self.interestingTokens.count)].utf8)
        let numeric = Set("0123456789-+.eE".utf8)
        let starts = bytes.indices.filter { numeric.contains(bytes[$0]) || bytes[$0] == UInt8(ascii: "\"") }
        guard !starts.isEmpty else { bytes.insert(contentsOf: token, at: random.next(bytes.count + 1)); return }
        let start = starts[random.next(starts.count)]
        var end = start + 1
        if bytes[start] == UInt8(ascii: "\"") {
            while end < bytes.count, bytes[end] != UInt8(ascii: "\"") { end += 1 }
            end = min(bytes.count, end + 1)
        } else {
            while end < bytes.count, numeric.contains(bytes[end]) { end += 1 }
        }
        bytes.replaceSubrange(start..<end, with: token)
    }
}

/// Saves the input being parsed when the process dies of a signal, so a crash names its input.
enum CrashReporter {
    nonisolated(unsafe) static var current: [UInt8]? {
        didSet { pending = current }
    }
    nonisolated(unsafe) private static var pending: [UInt8]?
    nonisolated(unsafe) private static var path: [CChar] = []
    nonisolated(unsafe) private static var installed = false

    static func install(name: String) {
        path = Array("\(NSTemporaryDirectory())/score-fuzz-crash-\(name).bin".utf8CString)
        guard !installed else { return }
        installed = true
        for sig in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE] {
            signal(sig) { code in
                // Only async-signal-safe calls: open, write, close.
                CrashReporter.path.withUnsafeBufferPointer { name in
                    let fd = open(name.baseAddress!, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                    if fd >= 0, let input = CrashReporter.pending {
                        input.withUnsafeBytes { _ = write(fd, $0.baseAddress, $0.count) }
                        close(fd)
                    }
                    let message = "\nfuzz: a signal while parsing an input; it was saved to "
                    _ = message.withCString { write(2, $0, strlen($0)) }
                    _ = write(2, name.baseAddress!, strlen(name.baseAddress!))
                    _ = write(2, "\n", 1)
                }
                signal(code, SIG_DFL)
                raise(code)
            }
        }
    }
}
