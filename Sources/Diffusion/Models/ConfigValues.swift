import Foundation

// Pieces shared by the model configs: diffusers' "a scalar or one value per block" fields and
// the error thrown for configs that are malformed or ask for something not implemented.

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

/// A model config that cannot be read or asks for a variant that is not implemented.
public enum DiffusionConfigError: Error, CustomStringConvertible, Equatable {
    /// The field holds a value this implementation does not support (the value is shown).
    case unsupported(field: String, value: String)
    /// The field's value is inconsistent with the rest of the config.
    case invalid(field: String, reason: String)
    /// `config.json` could not be read or decoded.
    case unreadable(file: String, reason: String)

    public var description: String {
        switch self {
        case let .unsupported(field, value): return "config field \(field) = \(value) is not supported"
        case let .invalid(field, reason): return "config field \(field) \(reason)"
        case let .unreadable(file, reason): return "\(file): cannot read config: \(reason)"
        }
    }
}

extension KeyedDecodingContainer {
    /// `decodeIfPresent` that also treats an explicit JSON `null` as absent and falls back to
    /// `fallback`, as diffusers' `register_to_config` defaults do.
    func value<T: Decodable>(_ key: Key, or fallback: @autoclosure () -> T) throws -> T {
        try decodeIfPresent(T.self, forKey: key) ?? fallback()
    }
}

/// Reads a diffusers `config.json` into `Config`, naming the file on failure.
func readConfig<Config: Decodable>(_ type: Config.Type, from url: URL) throws -> Config {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
        throw DiffusionConfigError.unreadable(file: url.path, reason: error.localizedDescription)
    }
    do { return try JSONDecoder().decode(Config.self, from: data) } catch let error as DiffusionConfigError {
        throw error
    } catch {
        throw DiffusionConfigError.unreadable(file: url.path, reason: "\(error)")
    }
}
