import Foundation

/// One `.safetensors` file, memory-mapped read-only.
///
/// Opening reads and validates only the header; tensor bytes are paged in when a tensor is read.
/// Instances are immutable after `init`, so they can be shared across threads.
public final class SafeTensorsFile: TensorSource, @unchecked Sendable {
    public let url: URL
    public let names: [String]
    public let metadata: [String: String]

    private let mapping: MemoryMappedFile
    private let tensors: [String: TensorInfo]
    /// Where the data buffer starts in the file: after the 8-byte length and the header.
    private let dataStart: Int

    public init(url: URL) throws {
        let file = url.path
        let mapping = try MemoryMappedFile(path: file)
        let bytes = mapping.bytes

        guard bytes.count >= 8 else { throw SafeTensorsError.truncated(file: file, size: bytes.count) }
        let headerLength = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
        // Compare as UInt64 first: a corrupt length may not even fit in Int.
        guard headerLength <= UInt64(SafeTensorsHeader.maximumHeaderLength) else {
            throw SafeTensorsError.headerTooLarge(
                file: file, headerLength: headerLength, limit: SafeTensorsHeader.maximumHeaderLength)
        }
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw SafeTensorsError.headerLengthBeyondFile(file: file, headerLength: headerLength, fileSize: bytes.count)
        }
        let dataStart = 8 + Int(headerLength)
        let header = try SafeTensorsHeader(
            headerBytes: Array(bytes[8..<dataStart]), dataSize: bytes.count - dataStart, file: file)

        self.url = url
        self.mapping = mapping
        self.dataStart = dataStart
        self.tensors = header.tensors
        self.metadata = header.metadata
        self.names = header.tensors.keys.sorted()
    }

    public convenience init(path: String) throws {
        try self.init(url: URL(fileURLWithPath: path))
    }

    public func contains(_ name: String) -> Bool { tensors[name] != nil }

    public func info(_ name: String) throws -> TensorInfo {
        guard let info = tensors[name] else { throw SafeTensorsError.keyNotFound(file: url.path, key: name) }
        return info
    }

    /// Calls `body` with the tensor's bytes exactly as stored (little-endian, possibly unaligned).
    /// The pointer is valid only during the call.
    public func withRawBytes<Result>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
        let info = try info(name)
        let range = (dataStart + info.dataOffsets.lowerBound)..<(dataStart + info.dataOffsets.upperBound)
        return try body(UnsafeRawBufferPointer(rebasing: mapping.bytes[range]))
    }

    public func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        return try withRawBytes(name) { bytes in
            switch info.dtype {
            case .f32: return decode(bytes, as: UInt32.self) { Float(bitPattern: $0) }
            case .f16: return decode(bytes, as: UInt16.self) { floatFromFloat16Bits($0) }
            case .bf16: return decode(bytes, as: UInt16.self) { floatFromBFloat16Bits($0) }
            case .f64: return decode(bytes, as: UInt64.self) { Float(Double(bitPattern: $0)) }
            default: throw SafeTensorsError.notConvertibleToFloat(file: url.path, key: name, dtype: info.dtype)
            }
        }
    }

    public func int64s(_ name: String) throws -> [Int64] {
        let info = try info(name)
        return try withRawBytes(name) { bytes in
            switch info.dtype {
            case .i64: return decode(bytes, as: Int64.self) { $0 }
            case .i32: return decode(bytes, as: Int32.self) { Int64($0) }
            case .i16: return decode(bytes, as: Int16.self) { Int64($0) }
            case .i8: return decode(bytes, as: Int8.self) { Int64($0) }
            case .u32: return decode(bytes, as: UInt32.self) { Int64($0) }
            case .u16: return decode(bytes, as: UInt16.self) { Int64($0) }
            case .u8, .bool: return decode(bytes, as: UInt8.self) { Int64($0) }
            default: throw SafeTensorsError.notConvertibleToInt64(file: url.path, key: name, dtype: info.dtype)
            }
        }
    }
}

/// Reads consecutive little-endian integers of type `Stored` (which need not be aligned in the
/// file) and converts each with `convert`.
@inline(__always)
private func decode<Stored: FixedWidthInteger, Element>(
    _ bytes: UnsafeRawBufferPointer, as _: Stored.Type, _ convert: (Stored) -> Element
) -> [Element] {
    let stride = MemoryLayout<Stored>.size
    let count = bytes.count / stride
    return [Element](unsafeUninitializedCapacity: count) { buffer, initializedCount in
        for index in 0..<count {
            let stored = bytes.loadUnaligned(fromByteOffset: index * stride, as: Stored.self)
            (buffer.baseAddress! + index).initialize(to: convert(Stored(littleEndian: stored)))
        }
        initializedCount = count
    }
}
