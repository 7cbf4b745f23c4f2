// The safetensors layout, as defined by the reference implementation (Python/Rust `safetensors`):
//
//   [8 bytes]  N, the header length, little-endian UInt64
//   [N bytes]  UTF-8 JSON: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//                           ..., "__metadata__": {"key": "value"}}, optionally padded with spaces
//   [rest]     the data buffer; data_offsets are relative to its first byte
//
// All numbers in the data buffer are little-endian, tensors are dense and row-major.

/// The parsed and validated JSON header of one safetensors file.
///
/// Validation is strict so that a corrupt or hostile file fails at open with a precise error
/// instead of producing garbage (or a crash) when a tensor is read later.
struct SafeTensorsHeader {
    /// The reference implementation's limit (`MAX_HEADER_SIZE`).
    static let maximumHeaderLength = 100_000_000
    static let metadataKey = "__metadata__"

    var tensors: [String: TensorInfo] = [:]
    var metadata: [String: String] = [:]

    /// - Parameters:
    ///   - headerBytes: the JSON text (trailing space padding allowed, as JSON whitespace).
    ///   - dataSize: length of the data buffer that follows the header.
    ///   - file: path used in error messages.
    init(headerBytes: [UInt8], dataSize: Int, file: String) throws {
        let json: JSONValue
        do {
            json = try JSONParser.parse(headerBytes)
        } catch let error as JSONParseError {
            throw SafeTensorsError.invalidHeaderJSON(file: file, reason: error.description)
        }
        guard case .object(let members) = json else { throw SafeTensorsError.headerNotObject(file: file) }

        var seenKeys = Set<String>()
        for (key, value) in members {
            guard seenKeys.insert(key).inserted else { throw SafeTensorsError.duplicateKey(file: file, key: key) }
            if key == SafeTensorsHeader.metadataKey {
                metadata = try SafeTensorsHeader.parseMetadata(value, file: file)
            } else {
                tensors[key] = try SafeTensorsHeader.parseEntry(key: key, value: value, dataSize: dataSize, file: file)
            }
        }
        try SafeTensorsHeader.checkNoOverlaps(Array(tensors.values), file: file)
    }

    private static func parseMetadata(_ value: JSONValue, file: String) throws -> [String: String] {
        guard case .object(let members) = value else {
            throw SafeTensorsError.invalidMetadata(file: file, reason: "expected an object, found \(value.kindDescription)")
        }
        var metadata: [String: String] = [:]
        for (key, value) in members {
            guard case .string(let string) = value else {
                throw SafeTensorsError.invalidMetadata(file: file, reason: "value of '\(key)' is \(value.kindDescription), not a string")
            }
            guard metadata.updateValue(string, forKey: key) == nil else {
                throw SafeTensorsError.invalidMetadata(file: file, reason: "duplicate key '\(key)'")
            }
        }
        return metadata
    }

    /// Checks one `{"dtype": .., "shape": [..], "data_offsets": [begin, end]}` entry.
    /// Unknown extra fields are ignored, as the reference implementation does.
    private static func parseEntry(key: String, value: JSONValue, dataSize: Int, file: String) throws -> TensorInfo {
        func invalid(_ reason: String) -> SafeTensorsError { .invalidEntry(file: file, key: key, reason: reason) }

        guard case .object(let members) = value else { throw invalid("expected an object, found \(value.kindDescription)") }
        var fields: [String: JSONValue] = [:]
        for (field, fieldValue) in members {
            guard fields.updateValue(fieldValue, forKey: field) == nil else { throw invalid("duplicate field '\(field)'") }
        }
        func field(_ name: String) throws -> JSONValue {
            guard let value = fields[name] else { throw invalid("missing field '\(name)'") }
            return value
        }

        // dtype
        guard case .string(let dtypeName) = try field("dtype") else { throw invalid("'dtype' must be a string") }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw SafeTensorsError.unknownDType(file: file, key: key, dtype: dtypeName)
        }

        // shape: non-negative integers whose product (times the element size) fits in Int.
        guard case .array(let dimensions) = try field("shape") else { throw invalid("'shape' must be an array") }
        var shape: [Int] = []
        var byteCount = dtype.byteSize
        for dimension in dimensions {
            guard case .integer(let size) = dimension, size >= 0 else {
                throw SafeTensorsError.invalidShape(file: file, key: key, reason: "dimensions must be non-negative integers, found \(describe(dimension))")
            }
            let (product, overflow) = byteCount.multipliedReportingOverflow(by: size)
            guard !overflow else { throw SafeTensorsError.invalidShape(file: file, key: key, reason: "byte size overflows") }
            byteCount = product
            shape.append(size)
        }

        // data_offsets: [begin, end] within the data buffer, spanning exactly the tensor's bytes.
        guard case .array(let offsets) = try field("data_offsets"), offsets.count == 2,
              case .integer(let begin) = offsets[0], case .integer(let end) = offsets[1]
        else { throw invalid("'data_offsets' must be an array of two integers") }
        guard begin >= 0, end >= 0, begin <= dataSize, end <= dataSize else {
            throw SafeTensorsError.offsetsOutOfRange(file: file, key: key, begin: begin, end: end, dataSize: dataSize)
        }
        guard begin <= end else { throw SafeTensorsError.offsetsReversed(file: file, key: key, begin: begin, end: end) }
        guard end - begin == byteCount else {
            throw SafeTensorsError.byteSizeMismatch(file: file, key: key, expected: byteCount, actual: end - begin)
        }
        return TensorInfo(name: key, dtype: dtype, shape: shape, dataOffsets: begin..<end)
    }

    private static func describe(_ value: JSONValue) -> String {
        switch value {
        case .integer(let integer): return String(integer)
        case .double(let double): return String(double)
        default: return value.kindDescription
        }
    }

    /// Two tensors must never share bytes (a write through one would change the other).
    /// Gaps between tensors are allowed; empty tensors overlap nothing.
    private static func checkNoOverlaps(_ tensors: [TensorInfo], file: String) throws {
        let byPosition = tensors.filter { !$0.dataOffsets.isEmpty }.sorted {
            ($0.dataOffsets.lowerBound, $0.name) < ($1.dataOffsets.lowerBound, $1.name)
        }
        for (previous, next) in zip(byPosition, byPosition.dropFirst())
        where next.dataOffsets.lowerBound < previous.dataOffsets.upperBound {
            throw SafeTensorsError.overlappingTensors(file: file, key: next.name, otherKey: previous.name)
        }
    }
}
