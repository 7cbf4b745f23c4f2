import Foundation

/// Decoding of JSON that comes from files: the one way the package turns untrusted bytes into
/// `Decodable` values.
///
/// Foundation's `JSONDecoder` on Linux traps (rather than throwing) on some inputs that end while
/// its nesting limit of 512 is reached, e.g. `{"a":` followed by 512 `[` and nothing else. No file
/// this package reads nests anywhere near that deep, so input nested deeper than `maximumDepth`
/// is refused with a `DecodingError` before Foundation sees it.
public enum JSONInput {
    /// Deepest nesting of arrays and objects accepted.
    public static let maximumDepth = 64

    /// `JSONDecoder.decode`, after the nesting check.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data, decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try checkNesting(data)
        return try decoder.decode(type, from: data)
    }

    /// Throws `DecodingError.dataCorrupted` when arrays and objects nest deeper than
    /// `maximumDepth`. Brackets inside strings do not count.
    public static func checkNesting(_ data: Data) throws {
        var depth = 0, inString = false, escaped = false
        for byte in data {
            if inString {
                if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > maximumDepth {
                    throw DecodingError.dataCorrupted(.init(
                        codingPath: [], debugDescription: "arrays and objects nest deeper than \(maximumDepth) levels"))
                }
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth = max(0, depth - 1)
            default: break
            }
        }
    }
}
