import Diffusion
import Foundation
import Tensor

// The tuning budget's search spaces: each method declares, beside its config, the keys a tuning
// run may change and the candidate values of each, its default first. `score tune` measures a
// fixed number of configurations drawn from the product of those lists, the same number for
// every method (docs/RESULTS.md, "Fair tuning").

/// One candidate value of a config key, as JSON spells it.
public enum ConfigValue: Codable, Hashable, Sendable, CustomStringConvertible,
    ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByBooleanLiteral {
    case int(Int)
    case real(Double)
    /// An enum's raw value ("cross-attention", "esd-u").
    case text(String)
    case flag(Bool)

    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .real(value) }
    public init(stringLiteral value: String) { self = .text(value) }
    public init(booleanLiteral value: Bool) { self = .flag(value) }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Bool.self) { self = .flag(value) }
        else if let value = try? container.decode(Int.self) { self = .int(value) }
        else if let value = try? container.decode(Double.self) { self = .real(value) }
        else { self = .text(try container.decode(String.self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .int(let value): try container.encode(value)
        case .real(let value): try container.encode(value)
        case .text(let value): try container.encode(value)
        case .flag(let value): try container.encode(value)
        }
    }

    /// The value as JSONSerialization takes it.
    var json: Any {
        switch self {
        case .int(let value): return value
        case .real(let value): return value
        case .text(let value): return value
        case .flag(let value): return value
        }
    }

    public var description: String {
        switch self {
        case .int(let value): return "\(value)"
        case .real(let value): return String(format: "%g", value)
        case .text(let value): return value
        case .flag(let value): return "\(value)"
        }
    }
}

/// Values for some of a config's keys: one configuration of a search space.
public typealias ConfigSetting = [String: ConfigValue]

/// The keys a tuning run may change and each key's candidate values, the default first: the
/// configurations are the product of the lists, numbered in mixed radix with the first key
/// turning fastest, so configuration 0 is the defaults.
public struct SearchSpace: Equatable, Sendable {
    public struct Dimension: Equatable, Sendable {
        public var key: String
        public var values: [ConfigValue]
    }

    public var dimensions: [Dimension]

    public init(_ dimensions: KeyValuePairs<String, [ConfigValue]>) {
        self.dimensions = dimensions.map { Dimension(key: $0.key, values: $0.value) }
    }

    /// How many configurations the space holds.
    public var size: Int { dimensions.map(\.values.count).reduce(1, *) }

    /// Configuration `index` (0 ..< size).
    public func setting(_ index: Int) -> ConfigSetting {
        precondition(index >= 0 && index < size, "configuration \(index) is outside a space of \(size)")
        var rest = index
        var setting: ConfigSetting = [:]
        for dimension in dimensions {
            setting[dimension.key] = dimension.values[rest % dimension.values.count]
            rest /= dimension.values.count
        }
        return setting
    }

    /// The configurations a budget of `budget` measures: the defaults (configuration 0) first,
    /// then the others in a seeded random order without replacement; the whole space when the
    /// budget is at least its size. The same seed gives the same configurations in the same order.
    public func draw(budget: Int, seed: UInt64) -> [Int] {
        guard budget >= 1, size >= 1 else { return [] }
        var generator = RandomGenerator(seed: seed)
        return [0] + generator.permutation(size - 1).prefix(budget - 1).map { $0 + 1 }
    }
}

/// A method config a tuning run can search: its search space, declared once beside the config.
public protocol TunableConfig: Codable, Equatable {
    init()
    func validate() throws
    /// The keys `score tune` searches and their candidates, each key's default first.
    static var searchSpace: SearchSpace { get }
}

extension TunableConfig {
    /// This config with `setting`'s keys over it, checked. A key the config does not have, or a
    /// value of the wrong type, is an error naming the key.
    public func applying(_ setting: ConfigSetting) throws -> Self {
        var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(self)) as! [String: Any]
        for key in setting.keys.sorted() where object[key] == nil {
            throw ErasureError.invalidConfig("\(Self.self) has no key '\(key)' (keys: \(object.keys.sorted().joined(separator: ", ")))")
        }
        for key in setting.keys.sorted() {
            let value = setting[key]!
            object[key] = value.json
            guard (try? JSONDecoder().decode(Self.self, from: JSONSerialization.data(withJSONObject: object))) != nil else {
                throw ErasureError.invalidConfig("\(Self.self) key '\(key)' cannot take the value \(value)")
            }
        }
        let config = try JSONDecoder().decode(Self.self, from: JSONSerialization.data(withJSONObject: object))
        try config.validate()
        return config
    }

    /// This config with a JSON file's keys over it, checked; an unknown key or a value of the
    /// wrong type is an error naming the file and the key.
    public func loading(_ url: URL) throws -> Self {
        let config: Self
        do { config = try JSONOverlay.decode(url, over: self) } catch let error as JSONOverlayError {
            throw ErasureError.invalidConfig(error.description)
        }
        try config.validate()
        return config
    }
}
