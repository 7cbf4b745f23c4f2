/// Everything that can go wrong reading or writing safetensors files.
///
/// Each case carries the file it is about (as the path given by the caller) and, where one is
/// involved, the tensor key, so a message alone is enough to find the problem.
public enum SafeTensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    // MARK: Opening a file
    case cannotOpen(file: String, reason: String)
    /// Shorter than the 8-byte header length prefix.
    case truncated(file: String, size: Int)
    case headerLengthBeyondFile(file: String, headerLength: UInt64, fileSize: Int)
    /// The reference implementation refuses headers over 100 MB; so do we.
    case headerTooLarge(file: String, headerLength: UInt64, limit: Int)
    case invalidHeaderJSON(file: String, reason: String)
    case headerNotObject(file: String)
    /// `__metadata__` is not an object of string values.
    case invalidMetadata(file: String, reason: String)
    /// An entry is not an object, misses `dtype` / `shape` / `data_offsets`, or one has the wrong type.
    case invalidEntry(file: String, key: String, reason: String)
    case unknownDType(file: String, key: String, dtype: String)
    /// A dimension is negative or not an integer, or the element count overflows.
    case invalidShape(file: String, key: String, reason: String)
    case offsetsOutOfRange(file: String, key: String, begin: Int, end: Int, dataSize: Int)
    case offsetsReversed(file: String, key: String, begin: Int, end: Int)
    case byteSizeMismatch(file: String, key: String, expected: Int, actual: Int)
    case overlappingTensors(file: String, key: String, otherKey: String)
    case duplicateKey(file: String, key: String)

    // MARK: Reading a tensor
    case keyNotFound(file: String, key: String)
    case notConvertibleToFloat(file: String, key: String, dtype: DType)
    case notConvertibleToInt64(file: String, key: String, dtype: DType)

    // MARK: Sharded checkpoints (`*.safetensors.index.json`)
    case invalidIndex(file: String, reason: String)
    case shardNotFound(indexFile: String, shard: String)
    /// The index maps `key` to `shard`, but the shard has no such tensor.
    case keyMissingFromShard(indexFile: String, key: String, shard: String)

    // MARK: Writing
    /// The number of values does not match the product of the shape.
    case valueCountMismatch(file: String, key: String, shape: [Int], expected: Int, actual: Int)
    case unsupportedWriteDType(file: String, key: String, dtype: DType)
    case writeFailed(file: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotOpen(file, reason):
            return "\(file): cannot open: \(reason)"
        case let .truncated(file, size):
            return "\(file): truncated: \(size) bytes, shorter than the 8-byte header length"
        case let .headerLengthBeyondFile(file, headerLength, fileSize):
            return "\(file): header length \(headerLength) runs past the end of the \(fileSize)-byte file"
        case let .headerTooLarge(file, headerLength, limit):
            return "\(file): header length \(headerLength) is over the \(limit)-byte limit"
        case let .invalidHeaderJSON(file, reason):
            return "\(file): header is not valid JSON: \(reason)"
        case let .headerNotObject(file):
            return "\(file): header is not a JSON object"
        case let .invalidMetadata(file, reason):
            return "\(file): invalid __metadata__: \(reason)"
        case let .invalidEntry(file, key, reason):
            return "\(file): tensor '\(key)': \(reason)"
        case let .unknownDType(file, key, dtype):
            return "\(file): tensor '\(key)': unknown dtype '\(dtype)'"
        case let .invalidShape(file, key, reason):
            return "\(file): tensor '\(key)': invalid shape: \(reason)"
        case let .offsetsOutOfRange(file, key, begin, end, dataSize):
            return "\(file): tensor '\(key)': data_offsets [\(begin), \(end)] outside the \(dataSize)-byte data buffer"
        case let .offsetsReversed(file, key, begin, end):
            return "\(file): tensor '\(key)': data_offsets begin \(begin) > end \(end)"
        case let .byteSizeMismatch(file, key, expected, actual):
            return "\(file): tensor '\(key)': shape and dtype need \(expected) bytes but data_offsets span \(actual)"
        case let .overlappingTensors(file, key, otherKey):
            return "\(file): tensor '\(key)' overlaps tensor '\(otherKey)' in the data buffer"
        case let .duplicateKey(file, key):
            return "\(file): duplicate key '\(key)'"
        case let .keyNotFound(file, key):
            return "\(file): no tensor named '\(key)'"
        case let .notConvertibleToFloat(file, key, dtype):
            return "\(file): tensor '\(key)': dtype \(dtype.rawValue) cannot be read as Float"
        case let .notConvertibleToInt64(file, key, dtype):
            return "\(file): tensor '\(key)': dtype \(dtype.rawValue) cannot be read as Int64"
        case let .invalidIndex(file, reason):
            return "\(file): invalid safetensors index: \(reason)"
        case let .shardNotFound(indexFile, shard):
            return "\(indexFile): shard '\(shard)' does not exist"
        case let .keyMissingFromShard(indexFile, key, shard):
            return "\(indexFile): weight_map puts '\(key)' in shard '\(shard)', which has no such tensor"
        case let .valueCountMismatch(file, key, shape, expected, actual):
            return "\(file): tensor '\(key)': shape \(shape) needs \(expected) values, got \(actual)"
        case let .unsupportedWriteDType(file, key, dtype):
            return "\(file): tensor '\(key)': cannot write Float values as \(dtype.rawValue) (use F32, F16, BF16 or F64)"
        case let .writeFailed(file, reason):
            return "\(file): write failed: \(reason)"
        }
    }
}
