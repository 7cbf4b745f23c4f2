import CZlib
import Foundation

public struct GzipError: Error, CustomStringConvertible {
    public let file: String
    public let reason: String
    public var description: String { "\(file): \(reason)" }
}

/// Decompresses a gzip (or zlib) stream with the system zlib.
public func gunzip(_ data: Data, file: String) throws -> Data {
    var stream = z_stream()
    // 15 window bits + 32: detect gzip or zlib headers automatically.
    guard inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
        throw GzipError(file: file, reason: "zlib could not start inflating")
    }
    defer { inflateEnd(&stream) }
    var output = Data()
    let chunkSize = 1 << 20
    var chunk = [UInt8](repeating: 0, count: chunkSize)
    var status: Int32 = Z_OK
    try data.withUnsafeBytes { (input: UnsafeRawBufferPointer) in
        stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
        stream.avail_in = uInt(input.count)
        repeat {
            let produced: Int = chunk.withUnsafeMutableBufferPointer { buffer in
                stream.next_out = buffer.baseAddress
                stream.avail_out = uInt(chunkSize)
                status = inflate(&stream, Z_NO_FLUSH)
                return chunkSize - Int(stream.avail_out)
            }
            guard status == Z_OK || status == Z_STREAM_END else {
                let message = stream.msg.map { String(cString: $0) } ?? "code \(status)"
                throw GzipError(file: file, reason: status == Z_BUF_ERROR ? "truncated gzip data" : "corrupt gzip data (\(message))")
            }
            output.append(contentsOf: chunk[0..<produced])
            if status == Z_OK && produced == 0 && stream.avail_in == 0 {
                throw GzipError(file: file, reason: "truncated gzip data")
            }
        } while status != Z_STREAM_END
    }
    return output
}

/// Compresses bytes into a zlib stream (as PNG's IDAT chunks need).
public func zlibCompress(_ bytes: [UInt8], level: Int32 = 6) -> [UInt8] {
    var length = compressBound(uLong(bytes.count))
    var out = [UInt8](repeating: 0, count: Int(length))
    let status = out.withUnsafeMutableBufferPointer { o in
        bytes.withUnsafeBufferPointer { i in compress2(o.baseAddress, &length, i.baseAddress, uLong(bytes.count), level) }
    }
    precondition(status == Z_OK, "zlib compress2 failed with code \(status)")
    return Array(out[0..<Int(length)])
}
