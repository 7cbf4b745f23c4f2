import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The values of a tensor to write, and how to store them.
public enum TensorData: Sendable {
    /// Float values stored as F32, F16, BF16 (rounded to nearest, ties to even) or F64.
    case floats([Float], storedAs: DType = .f32)
    /// Integer values stored as I64.
    case int64s([Int64])
    /// Bytes already in the file's little-endian layout, for any dtype.
    case raw([UInt8], dtype: DType)

    var dtype: DType {
        switch self {
        case .floats(_, let dtype): return dtype
        case .int64s: return .i64
        case .raw(_, let dtype): return dtype
        }
    }

    /// Number of elements (for `.raw`, bytes divided by the element size, rounded down).
    var elementCount: Int {
        switch self {
        case .floats(let values, _): return values.count
        case .int64s(let values): return values.count
        case .raw(let bytes, let dtype): return bytes.count / dtype.byteSize
        }
    }
}

public struct TensorToWrite: Sendable {
    public var name: String
    public var shape: [Int]
    public var data: TensorData

    public init(name: String, shape: [Int], data: TensorData) {
        self.name = name
        self.shape = shape
        self.data = data
    }
}

/// Writes Float tensors, all stored as `dtype` (F32, F16, BF16 or F64). See the general overload.
public func writeSafeTensors(
    _ tensors: [(name: String, shape: [Int], values: [Float])],
    dtype: DType = .f32,
    metadata: [String: String] = [:],
    to url: URL
) throws {
    try writeSafeTensors(
        tensors.map { TensorToWrite(name: $0.name, shape: $0.shape, data: .floats($0.values, storedAs: dtype)) },
        metadata: metadata, to: url)
}

/// Writes a safetensors file, deterministically and atomically.
///
/// Deterministic: tensors are laid out in name order, header keys are sorted, and the header is
/// padded with spaces to a multiple of 8 bytes as the reference implementation does (so the data
/// buffer starts 8-byte aligned). Same input, same bytes.
///
/// Atomic: everything is checked before any file is created, the bytes go to a temporary file in
/// the same directory, which is fsynced and then renamed over `url` (which must be a regular file
/// or absent: see `writeAtomically`). On any error the temporary file is removed and whatever was
/// at `url` is untouched.
public func writeSafeTensors(_ tensors: [TensorToWrite], metadata: [String: String] = [:], to url: URL) throws {
    let file = url.path
    let sortedTensors = tensors.sorted { $0.name < $1.name }
    let header = try makeHeader(for: sortedTensors, metadata: metadata, file: file)

    try writeAtomically(to: url) { descriptor in
        var headerLength = UInt64(header.count).littleEndian
        try withUnsafeBytes(of: &headerLength) { try writeAll($0, to: descriptor, file: file) }
        try header.withUnsafeBytes { try writeAll($0, to: descriptor, file: file) }
        for tensor in sortedTensors {
            try encodedBytes(of: tensor.data).withUnsafeBytes { try writeAll($0, to: descriptor, file: file) }
        }
    }
}

/// Validates the tensors and builds the padded JSON header.
private func makeHeader(for sortedTensors: [TensorToWrite], metadata: [String: String], file: String) throws -> [UInt8] {
    var json = "{"
    var members: [String] = []
    if !metadata.isEmpty {
        let entries = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
        members.append("\(jsonString(SafeTensorsHeader.metadataKey)):{\(entries.joined(separator: ","))}")
    }

    var offset = 0
    var previousName: String?
    for tensor in sortedTensors {
        let name = tensor.name
        guard name != previousName else { throw SafeTensorsError.duplicateKey(file: file, key: name) }
        previousName = name
        guard name != SafeTensorsHeader.metadataKey else {
            throw SafeTensorsError.invalidEntry(file: file, key: name, reason: "the name is reserved for metadata")
        }
        let dtype = tensor.data.dtype
        if case .floats = tensor.data, ![DType.f32, .f16, .bf16, .f64].contains(dtype) {
            throw SafeTensorsError.unsupportedWriteDType(file: file, key: name, dtype: dtype)
        }

        var expectedCount = 1
        for dimension in tensor.shape {
            guard dimension >= 0 else {
                throw SafeTensorsError.invalidShape(file: file, key: name, reason: "negative dimension \(dimension)")
            }
            let (product, overflow) = expectedCount.multipliedReportingOverflow(by: dimension)
            guard !overflow else { throw SafeTensorsError.invalidShape(file: file, key: name, reason: "element count overflows") }
            expectedCount = product
        }
        let (byteCount, byteCountOverflow) = expectedCount.multipliedReportingOverflow(by: dtype.byteSize)
        guard !byteCountOverflow else { throw SafeTensorsError.invalidShape(file: file, key: name, reason: "byte size overflows") }
        let actualCount = tensor.data.elementCount
        let isWholeRaw: Bool
        if case .raw(let bytes, _) = tensor.data { isWholeRaw = bytes.count == byteCount } else { isWholeRaw = true }
        guard actualCount == expectedCount, isWholeRaw else {
            throw SafeTensorsError.valueCountMismatch(
                file: file, key: name, shape: tensor.shape, expected: expectedCount, actual: actualCount)
        }

        let shape = tensor.shape.map(String.init).joined(separator: ",")
        members.append(
            "\(jsonString(name)):{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + byteCount)]}")
        offset += byteCount
    }
    json += members.joined(separator: ",") + "}"

    var bytes = Array(json.utf8)
    bytes += Array(repeating: UInt8(ascii: " "), count: (8 - bytes.count % 8) % 8)
    return bytes
}

/// A JSON string literal: quotes, backslashes and control characters escaped, the rest as UTF-8.
private func jsonString(_ string: String) -> String {
    var result = "\""
    for scalar in string.unicodeScalars {
        switch scalar {
        case "\"": result += "\\\""
        case "\\": result += "\\\\"
        case "\n": result += "\\n"
        case "\r": result += "\\r"
        case "\t": result += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: result.unicodeScalars.append(scalar)
        }
    }
    return result + "\""
}

/// The tensor's bytes in file layout (little-endian).
private func encodedBytes(of data: TensorData) -> [UInt8] {
    switch data {
    case .floats(let values, .f16): return encode(values) { float16Bits(from: $0) }
    case .floats(let values, .bf16): return encode(values) { bfloat16Bits(from: $0) }
    case .floats(let values, .f64): return encode(values) { Double($0).bitPattern }
    case .floats(let values, _): return encode(values) { $0.bitPattern }  // F32; other types were rejected
    case .int64s(let values): return encode(values) { $0 }
    case .raw(let bytes, _): return bytes
    }
}

private func encode<Value, Stored: FixedWidthInteger>(_ values: [Value], _ convert: (Value) -> Stored) -> [UInt8] {
    let stride = MemoryLayout<Stored>.size
    return [UInt8](unsafeUninitializedCapacity: values.count * stride) { buffer, initializedCount in
        let raw = UnsafeMutableRawBufferPointer(buffer)
        for (index, value) in values.enumerated() {
            raw.storeBytes(of: convert(value).littleEndian, toByteOffset: index * stride, as: Stored.self)
        }
        initializedCount = values.count * stride
    }
}
