import Foundation
import SafeTensors

/// Writing PNG files (ISO/IEC 15948) of 8-bit images, without libpng or zlib: grey, grey +
/// alpha, RGB or RGBA, 8 bits per channel, not interlaced; rows filtered with the usual
/// minimum-sum-of-absolute-differences choice and compressed as one deflate block with codes
/// built for the image (or fixed codes, or stored uncompressed with `.stored`). Optional `tEXt`
/// chunks carry metadata (prompt, seed, sampler …). Files are written atomically (a temporary file
/// in the same folder, then a rename), so a reader never sees half an image.
public enum PNG {
    public static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    public enum Compression: Sendable {
        /// Stored deflate blocks, filter None: larger, but trivially correct.
        case stored
        /// Adaptive row filters and a fixed-Huffman LZ77 block.
        case fixedHuffman
        /// Adaptive row filters and a dynamic-Huffman LZ77 block (the default).
        case dynamicHuffman
    }

    /// The PNG file for `image`; `text` becomes `tEXt` chunks (keywords 1–79 Latin-1 characters).
    public static func encode(_ image: PixelImage, text: [(key: String, value: String)] = [],
                              compression: Compression = .dynamicHuffman) -> Data {
        var out = signature
        var header: [UInt8] = []
        header.appendBigEndian(UInt32(image.width))
        header.appendBigEndian(UInt32(image.height))
        header += [8, colorType(channels: image.channels), 0, 0, 0]
        appendChunk("IHDR", header, to: &out)
        for (key, value) in text {
            precondition((1...79).contains(key.count), "tEXt keyword must have 1–79 characters: \(key)")
            let keyBytes = latin1(key), valueBytes = latin1(value)
            appendChunk("tEXt", keyBytes + [0] + valueBytes, to: &out)
        }
        let raw = filteredRows(image, adaptive: compression != .stored)
        let level: Zlib.Level
        switch compression {
        case .stored: level = .stored
        case .fixedHuffman: level = .fixedHuffman
        case .dynamicHuffman: level = .dynamicHuffman
        }
        appendChunk("IDAT", Zlib.compress(raw, level: level), to: &out)
        appendChunk("IEND", [], to: &out)
        return Data(out)
    }

    /// Writes `image` to `url` atomically (temporary file + rename).
    public static func write(_ image: PixelImage, to url: URL, text: [(key: String, value: String)] = [],
                             compression: Compression = .dynamicHuffman) throws {
        try writeAtomically(encode(image, text: text, compression: compression), to: url)
    }

    // MARK: Encoding helpers

    static func colorType(channels: Int) -> UInt8 {
        switch channels {
        case 1: return 0
        case 2: return 4
        case 3: return 2
        default: return 6
        }
    }

    static func latin1(_ s: String) -> [UInt8] {
        s.unicodeScalars.map { $0.value < 256 ? UInt8($0.value) : UInt8(ascii: "?") }
    }

    static func appendChunk(_ type: String, _ body: [UInt8], to out: inout [UInt8]) {
        let typeBytes = Array(type.utf8)
        out.appendBigEndian(UInt32(body.count))
        out += typeBytes
        out += body
        out.appendBigEndian(Zlib.crc32(typeBytes + body))
    }

    /// Rows prefixed by their filter type: None for all rows, or per row the filter whose output
    /// has the smallest sum of |signed bytes| (the heuristic libpng uses).
    static func filteredRows(_ image: PixelImage, adaptive: Bool) -> [UInt8] {
        let bpp = image.channels, stride = image.width * bpp
        var out = [UInt8]()
        out.reserveCapacity((stride + 1) * image.height)
        let zero = [UInt8](repeating: 0, count: stride)
        image.pixels.withUnsafeBufferPointer { px in
            var candidates = [[UInt8]](repeating: [UInt8](repeating: 0, count: stride), count: 5)
            for y in 0..<image.height {
                let row = Array(px[(y * stride)..<((y + 1) * stride)])
                guard adaptive else { out.append(0); out += row; continue }
                let up = y > 0 ? Array(px[((y - 1) * stride)..<(y * stride)]) : zero
                var bestType = 0, bestScore = Int.max
                for type in 0..<5 {
                    var score = 0
                    for i in 0..<stride {
                        let a = i >= bpp ? Int(row[i - bpp]) : 0
                        let b = Int(up[i])
                        let c = i >= bpp ? Int(up[i - bpp]) : 0
                        let predictor: Int
                        switch type {
                        case 0: predictor = 0
                        case 1: predictor = a
                        case 2: predictor = b
                        case 3: predictor = (a + b) / 2
                        default: predictor = paeth(a, b, c)
                        }
                        let v = UInt8(truncatingIfNeeded: Int(row[i]) - predictor)
                        candidates[type][i] = v
                        score += v < 128 ? Int(v) : 256 - Int(v)
                    }
                    if score < bestScore { bestScore = score; bestType = type }
                }
                out.append(UInt8(bestType))
                out += candidates[bestType]
            }
        }
        return out
    }

    @inline(__always)
    static func paeth(_ a: Int, _ b: Int, _ c: Int) -> Int {
        let p = a + b - c
        let pa = Swift.abs(p - a), pb = Swift.abs(p - b), pc = Swift.abs(p - c)
        if pa <= pb && pa <= pc { return a }
        return pb <= pc ? b : c
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func appendBigEndian(_ v: UInt32) {
        append(UInt8(v >> 24)); append(UInt8(v >> 16 & 0xFF)); append(UInt8(v >> 8 & 0xFF)); append(UInt8(v & 0xFF))
    }
}
