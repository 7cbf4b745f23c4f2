import CZlib
import Foundation

// zlib streams (PNG's IDAT) and gzip files (datasets) through the system zlib.

public enum ZlibError: Error, Equatable, CustomStringConvertible {
    case truncated
    case badHeader(String)
    case badData(String)
    case checksumMismatch(expected: UInt32, actual: UInt32)
    case tooLarge(limit: Int)

    public var description: String {
        switch self {
        case .truncated: return "compressed stream ends early"
        case .badHeader(let s): return "bad zlib/gzip header: \(s)"
        case .badData(let s): return "corrupt deflate data: \(s)"
        case let .checksumMismatch(e, a): return String(format: "checksum mismatch: stored %08x, computed %08x", e, a)
        case .tooLarge(let limit): return "inflated data exceeds \(limit) bytes"
        }
    }
}

public enum Zlib {
    public enum Level: Sendable {
        /// Stored (uncompressed) deflate blocks.
        case stored
        /// Fixed Huffman codes only (zlib's Z_FIXED strategy).
        case fixedHuffman
        /// zlib's default: dynamic Huffman codes over LZ77 matches.
        case dynamicHuffman
    }

    /// CRC-32 (the one PNG and gzip use); `initial` continues an earlier checksum.
    public static func crc32<C: Collection>(_ bytes: C, initial: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
        let array = Array(bytes)
        return array.withUnsafeBufferPointer { UInt32(CZlib.crc32(uLong(initial), $0.baseAddress, uInt($0.count))) }
    }

    /// Adler-32 (zlib's trailer).
    public static func adler32(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBufferPointer { UInt32(CZlib.adler32(1, $0.baseAddress, uInt($0.count))) }
    }

    /// A zlib stream holding `data`.
    public static func compress(_ data: [UInt8], level: Level = .dynamicHuffman) -> [UInt8] {
        var stream = z_stream()
        let (compression, strategy): (Int32, Int32) = switch level {
        case .stored: (Z_NO_COMPRESSION, Z_DEFAULT_STRATEGY)
        case .fixedHuffman: (Z_DEFAULT_COMPRESSION, Z_FIXED)
        case .dynamicHuffman: (Z_DEFAULT_COMPRESSION, Z_DEFAULT_STRATEGY)
        }
        precondition(deflateInit2_(&stream, compression, Z_DEFLATED, 15, 8, strategy, ZLIB_VERSION,
                                   Int32(MemoryLayout<z_stream>.size)) == Z_OK, "zlib deflateInit2 failed")
        defer { deflateEnd(&stream) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(data.count))))
        let written: Int = data.withUnsafeBufferPointer { input in
            out.withUnsafeMutableBufferPointer { output in
                stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
                stream.avail_in = uInt(input.count)
                stream.next_out = output.baseAddress
                stream.avail_out = uInt(output.count)
                precondition(deflate(&stream, Z_FINISH) == Z_STREAM_END, "zlib deflate did not finish")
                return output.count - Int(stream.avail_out)
            }
        }
        return Array(out[0..<written])
    }

    /// The data of a zlib stream; fails on a bad header, corrupt data, a wrong checksum, or more
    /// than `limit` bytes of output.
    public static func decompress(_ stream: [UInt8], limit: Int = 1 << 30) throws -> [UInt8] {
        try inflate(stream, windowBits: 15, limit: limit)
    }

    /// The data of a gzip (or zlib) file.
    public static func gunzip(_ data: [UInt8], limit: Int = 1 << 31) throws -> [UInt8] {
        try inflate(data, windowBits: 15 + 32, limit: limit)
    }

    private static func inflate(_ input: [UInt8], windowBits: Int32, limit: Int) throws -> [UInt8] {
        var stream = z_stream()
        guard inflateInit2_(&stream, windowBits, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw ZlibError.badData("zlib could not start inflating")
        }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var status: Int32 = Z_OK
        try input.withUnsafeBufferPointer { inputBuffer in
            stream.next_in = UnsafeMutablePointer(mutating: inputBuffer.baseAddress)
            stream.avail_in = uInt(inputBuffer.count)
            while status != Z_STREAM_END {
                let produced: Int = chunk.withUnsafeMutableBufferPointer { buffer in
                    stream.next_out = buffer.baseAddress
                    stream.avail_out = uInt(buffer.count)
                    status = CZlib.inflate(&stream, Z_NO_FLUSH)
                    return buffer.count - Int(stream.avail_out)
                }
                output += chunk[0..<produced]
                guard output.count <= limit else { throw ZlibError.tooLarge(limit: limit) }
                switch status {
                case Z_OK, Z_STREAM_END: if status == Z_OK && produced == 0 && stream.avail_in == 0 { throw ZlibError.truncated }
                case Z_BUF_ERROR: throw ZlibError.truncated
                case Z_DATA_ERROR:
                    let message = stream.msg.map { String(cString: $0) } ?? "corrupt data"
                    if message.contains("header") || message.contains("method") || message.contains("window") {
                        throw ZlibError.badHeader(message)
                    }
                    if message.contains("data check"), input.count >= 4 {
                        let stored = input.suffix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                        throw ZlibError.checksumMismatch(expected: stored, actual: adler32(output))
                    }
                    throw ZlibError.badData(message)
                default: throw ZlibError.badData("zlib error \(status)")
                }
            }
        }
        return output
    }
}
