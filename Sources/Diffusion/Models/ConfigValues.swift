import Foundation

// The machinery shared by the model configs (UNet, VAE, CLIP and BERT text encoders).
//
// Each config is a struct whose stored properties carry diffusers' (or transformers') defaults,
// plus one table, `fields`, with a row per property: the JSON key and the values it accepts.
// Decoding, encoding and the range checks are written once, here, over that table, so a field is
// declared in two adjacent places (its property and its row) instead of five.

/// A model config read from a diffusers or transformers `config.json`.
public protocol ModelConfig: Codable {
    /// The library's defaults, the values of absent keys.
    init()
    /// One row per field: its JSON key, where it is stored and what values it accepts.
    static var fields: [ConfigField<Self>] { get }
}

extension ModelConfig {
    /// Starts from the defaults and replaces each field whose key is present. An explicit `null`
    /// sets an optional field to nil and leaves any other at its default (what diffusers'
    /// `register_to_config` does with its keyword defaults). Keys not in `fields` are ignored.
    public init(fieldsFrom decoder: Decoder) throws {
        self.init()
        let container: KeyedDecodingContainer<ConfigKey>
        do { container = try decoder.container(keyedBy: ConfigKey.self) } catch {
            throw DiffusionConfigError.invalid(field: "(top level)", reason: "must be a JSON object")
        }
        for field in Self.fields { try field.decode(container, &self) }
    }

    /// Writes every field under its key, absent values as null (as diffusers does).
    public func encodeFields(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: ConfigKey.self)
        for field in Self.fields { try field.encode(&container, self) }
    }

    /// Throws for the first field whose value is outside its range (for configs built in code;
    /// decoding already checks each field as it reads it).
    public func checkFieldRanges() throws {
        for field in Self.fields { try field.check(self) }
    }
}

/// A JSON key of a config file.
public struct ConfigKey: CodingKey {
    public var stringValue: String
    public var intValue: Int? { nil }
    public init(_ string: String) { stringValue = string }
    public init?(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
}

/// One row of a config's field table.
public struct ConfigField<Config> {
    public let key: String
    fileprivate let decode: (KeyedDecodingContainer<ConfigKey>, inout Config) throws -> Void
    fileprivate let encode: (inout KeyedEncodingContainer<ConfigKey>, Config) throws -> Void
    fileprivate let check: (Config) throws -> Void

    /// `key` ↔ `path`; values must satisfy `rule`. `read` replaces the plain decoding of the
    /// value for keys that accept another form (CLIP's token ids given as lists).
    public init<Value: ConfigValue>(_ key: String, _ path: WritableKeyPath<Config, Value>, _ rule: FieldRule = .any,
                                    read: ((KeyedDecodingContainer<ConfigKey>, ConfigKey) throws -> Value)? = nil) {
        self.key = key
        let codingKey = ConfigKey(key)
        let check: (Value) throws -> Void = { value in
            if let reason = rule.violation(value) { throw DiffusionConfigError.invalid(field: key, reason: reason) }
        }
        decode = { container, config in
            guard container.contains(codingKey) else { return }
            if try container.decodeNil(forKey: codingKey) {
                if let null = (Value.self as? NullableConfigValue.Type)?.null as? Value { config[keyPath: path] = null }
                return
            }
            let value: Value
            do {
                value = try read?(container, codingKey) ?? container.decode(Value.self, forKey: codingKey)
            } catch let error as DiffusionConfigError {
                throw error
            } catch {
                let found = (try? container.decode(JSONText.self, forKey: codingKey))?.text ?? "another value"
                throw DiffusionConfigError.invalid(field: key, reason: "must be \(Value.expected), not \(found)")
            }
            try check(value)
            config[keyPath: path] = value
        }
        encode = { container, config in try container.encode(config[keyPath: path], forKey: codingKey) }
        self.check = { config in try check(config[keyPath: path]) }
    }
}

/// What a field accepts beyond its type. The checks see every integer (or number) in the value,
/// so one rule covers a scalar, a per-block list and a list of lists.
public struct FieldRule {
    /// Why `value` is refused, or nil.
    public let violation: (any ConfigValue) -> String?

    public init(violation: @escaping (any ConfigValue) -> String?) { self.violation = violation }

    public static let any = FieldRule { _ in nil }

    /// Every integer within `range`.
    public static func integers(_ range: ClosedRange<Int>) -> FieldRule {
        FieldRule { value in
            value.integers.first { !range.contains($0) }.map { "holds \($0); it must be in \(range.lowerBound)…\(range.upperBound)" }
        }
    }

    /// Counts of layers, blocks, heads or groups: 1…1024.
    public static let count = integers(1...maxCount)
    /// Counts that may be zero (transformer blocks per layer, padding).
    public static let countOrZero = integers(0...maxCount)
    /// Widths, vocabulary and sequence sizes: 1…2²⁰. The bound keeps every product of two or
    /// three sizes inside `Int`, so nothing downstream overflows; the memory estimate then
    /// decides whether the model fits.
    public static let size = integers(1...maxSize)

    /// Every number finite and > 0 (norm epsilons, scale factors).
    public static let positive = numbers("must be finite and > 0") { $0.isFinite && $0 > 0 }
    /// Every number finite.
    public static let finite = numbers("must be finite") { $0.isFinite }
    /// A probability in [0, 1).
    public static let dropout = numbers("must be in [0, 1)") { $0 >= 0 && $0 < 1 }

    public static func numbers(_ requirement: String, _ accept: @escaping (Double) -> Bool) -> FieldRule {
        FieldRule { value in value.numbers.first { !accept($0) }.map { "holds \($0); it \(requirement)" } }
    }

    /// A string among `allowed`. Unsupported-but-valid variants are left to the model's
    /// `validate()`; this is for values no library defines.
    public static func oneOf(_ allowed: [String]) -> FieldRule {
        FieldRule { value in
            value.strings.first { !allowed.contains($0) }.map { "is \"\($0)\"; it must be one of \(allowed.joined(separator: ", "))" }
        }
    }

    public static let maxCount = 1024
    public static let maxSize = 1 << 20
}

/// A type a config field may have: it says what JSON it expects (for errors) and exposes its
/// integers and numbers to the range rules.
public protocol ConfigValue: Codable {
    static var expected: String { get }
    var integers: [Int] { get }
    var numbers: [Double] { get }
    var strings: [String] { get }
}

extension ConfigValue {
    public var integers: [Int] { [] }
    public var numbers: [Double] { [] }
    public var strings: [String] { [] }
}

extension Int: ConfigValue {
    public static var expected: String { "an integer" }
    public var integers: [Int] { [self] }
    public var numbers: [Double] { [Double(self)] }
}

extension Float: ConfigValue {
    public static var expected: String { "a number" }
    public var numbers: [Double] { [Double(self)] }
}

extension Double: ConfigValue {
    public static var expected: String { "a number" }
    public var numbers: [Double] { [self] }
}

extension Bool: ConfigValue {
    public static var expected: String { "true or false" }
}

extension String: ConfigValue {
    public static var expected: String { "a string" }
    public var strings: [String] { [self] }
}

extension Array: ConfigValue where Element: ConfigValue {
    public static var expected: String { "a list of \(Element.expected.droppingArticle)" }
    public var integers: [Int] { flatMap(\.integers) }
    public var numbers: [Double] { flatMap(\.numbers) }
    public var strings: [String] { flatMap(\.strings) }
}

/// Optional values: null in JSON.
protocol NullableConfigValue { static var null: Self { get } }

extension Optional: NullableConfigValue where Wrapped: ConfigValue {
    static var null: Self { nil }
}

extension Optional: ConfigValue where Wrapped: ConfigValue {
    public static var expected: String { "\(Wrapped.expected) or null" }
    public var integers: [Int] { self?.integers ?? [] }
    public var numbers: [Double] { self?.numbers ?? [] }
    public var strings: [String] { self?.strings ?? [] }
}

private extension String {
    /// "an integer" → "integers", "a number" → "numbers", for "a list of …".
    var droppingArticle: String {
        for article in ["an ", "a "] where hasPrefix(article) { return String(dropFirst(article.count)) + "s" }
        return self
    }
}

/// Any JSON value, kept only to quote it back in an error message.
private struct JSONText: Decodable {
    let text: String

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { text = "null" }
        else if let b = try? c.decode(Bool.self) { text = "\(b)" }
        else if let i = try? c.decode(Int.self) { text = "\(i)" }
        else if let d = try? c.decode(Double.self) { text = "\(d)" }
        else if let s = try? c.decode(String.self) { text = "\"\(s.prefix(40))\"" }
        else if let a = try? c.decode([JSONText].self) { text = "[" + a.prefix(8).map(\.text).joined(separator: ", ") + (a.count > 8 ? ", …]" : "]") }
        else { text = "an object" }
    }
}

/// A config value given once for every block (`8`) or once per block (`[5, 10, 20, 20]`), as
/// diffusers allows for `attention_head_dim`, `cross_attention_dim`, `layers_per_block`, …
///
/// Decoding tries the array form first, so for nested values (`transformer_layers_per_block`
/// as `OneOrMany<OneOrMany<Int>>`) `[1, 2]` means one count per block and `[[1, 2], [3]]` one
/// count per layer of each block.
public enum OneOrMany<Value: Codable & Equatable & Sendable>: Codable, Equatable, Sendable {
    case one(Value)
    case many([Value])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let values = try? container.decode([Value].self) {
            self = .many(values)
        } else {
            self = .one(try container.decode(Value.self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .one(let value): try container.encode(value)
        case .many(let values): try container.encode(values)
        }
    }

    /// The value for block `index` (the single value for every index).
    public subscript(index: Int) -> Value {
        switch self {
        case .one(let value): return value
        case .many(let values): return values[index]
        }
    }

    /// Checks that a per-block list has one entry per block.
    func validate(count: Int, field: String) throws {
        if case .many(let values) = self, values.count != count {
            throw DiffusionConfigError.invalid(field: field, reason: "has \(values.count) entries for \(count) blocks")
        }
    }
}

extension OneOrMany: ConfigValue where Value: ConfigValue {
    public static var expected: String { "\(Value.expected) or a list of \(Value.expected.droppingArticle)" }
    private var all: [Value] {
        switch self {
        case .one(let value): return [value]
        case .many(let values): return values
        }
    }
    public var integers: [Int] { all.flatMap(\.integers) }
    public var numbers: [Double] { all.flatMap(\.numbers) }
    public var strings: [String] { all.flatMap(\.strings) }
}

/// A model config that cannot be read or asks for a variant that is not implemented.
public indirect enum DiffusionConfigError: Error, CustomStringConvertible, Equatable {
    /// The field holds a value this implementation does not support (the value is shown).
    case unsupported(field: String, value: String)
    /// The field's value is out of range, of the wrong type, or inconsistent with the rest.
    case invalid(field: String, reason: String)
    /// `config.json` could not be read or is not JSON.
    case unreadable(file: String, reason: String)
    /// One of the errors above, found in `file`.
    case inFile(file: String, error: DiffusionConfigError)
    /// Building the model would need more memory than the machine has.
    case tooLarge(model: String, bytes: Double, available: Double)

    public var description: String {
        switch self {
        case let .unsupported(field, value): return "config field \(field) = \(value) is not supported"
        case let .invalid(field, reason): return "config field \(field) \(reason)"
        case let .unreadable(file, reason): return "\(file): cannot read config: \(reason)"
        case let .inFile(file, error): return "\(file): \(error)"
        case let .tooLarge(model, bytes, available):
            return "config describes a \(model) whose weights alone need \(gigabytes(bytes)), more than the \(gigabytes(available)) of memory available"
        }
    }

    /// The error without the file it was found in.
    public var withoutFile: DiffusionConfigError {
        if case let .inFile(_, error) = self { return error.withoutFile }
        return self
    }
}

extension DiffusionConfigError: LocalizedError {
    public var errorDescription: String? { description }
}

private func gigabytes(_ bytes: Double) -> String {
    bytes >= 1e15 ? String(format: "%.2g GB", bytes / 1e9) : String(format: "%.1f GB", bytes / 1e9)
}

/// Memory the process may still allocate: `MemAvailable` plus free swap on Linux, else the
/// physical memory. `SCORE_MEMORY_LIMIT_BYTES` overrides it (tests; machines shared by jobs).
public func availableMemoryBytes() -> Double {
    if let limit = ProcessInfo.processInfo.environment["SCORE_MEMORY_LIMIT_BYTES"].flatMap(Double.init) { return limit }
    if let info = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
        var kilobytes: [String: Double] = [:]
        for line in info.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == ":" })
            if parts.count >= 2, let value = Double(parts[1]) { kilobytes[String(parts[0])] = value }
        }
        if let available = kilobytes["MemAvailable"] { return (available + (kilobytes["SwapFree"] ?? 0)) * 1024 }
    }
    return Double(ProcessInfo.processInfo.physicalMemory)
}

/// Throws `tooLarge` when `parameters` Float32 weights would not fit in the available memory.
/// The count is a Double so that absurd configs cannot overflow it.
func checkFitsInMemory(parameters: Double, model: String) throws {
    let bytes = parameters * 4
    let available = availableMemoryBytes()
    guard bytes.isFinite, bytes <= available else {
        throw DiffusionConfigError.tooLarge(model: model, bytes: bytes, available: available)
    }
}

extension KeyedDecodingContainer {
    /// `decodeIfPresent` that also treats an explicit JSON `null` as absent and falls back to
    /// `fallback`, for configs not yet declared through a field table (the flow-matching
    /// scheduler's).
    func value<T: Decodable>(_ key: Key, or fallback: @autoclosure () -> T) throws -> T {
        try decodeIfPresent(T.self, forKey: key) ?? fallback()
    }
}

/// The text encoders' shared checks: the heads divide the width and the weights fit in memory.
func checkTextEncoder(hiddenSize: Int, heads: Int, parameters: Double, model: String) throws {
    guard hiddenSize % heads == 0 else {
        throw DiffusionConfigError.invalid(field: "hidden_size", reason: "\(hiddenSize) is not a multiple of num_attention_heads \(heads)")
    }
    try checkFitsInMemory(parameters: parameters, model: model)
}

/// Reads a diffusers `config.json` into `Config` and validates it, naming the file on failure.
func readConfig<Config: Decodable>(_ type: Config.Type, from url: URL, validate: (Config) throws -> Void = { _ in }) throws -> Config {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
        throw DiffusionConfigError.unreadable(file: url.path, reason: error.localizedDescription)
    }
    do {
        let config = try JSONInput.decode(Config.self, from: data)
        try validate(config)
        return config
    } catch let error as DiffusionConfigError {
        throw DiffusionConfigError.inFile(file: url.path, error: error)
    } catch {
        throw DiffusionConfigError.unreadable(file: url.path, reason: "not valid JSON")
    }
}
