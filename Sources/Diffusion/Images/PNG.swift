import Foundation

/// PNG files (ISO/IEC 15948) for 8-bit images, without libpng or zlib.
///
/// Writing: grey, grey + alpha, RGB or RGBA, 8 bits per channel, not interlaced; rows filtered
/// with the usual minimum-sum-of-absolute-differences choice and compressed as one deflate block
/// with codes built for the image (or fixed codes, or stored uncompressed with `.stored`). Optional `tEXt` chunks carry metadata
/// (prompt, seed, sampler …). Files are written atomically (a temporary file in the same folder,
/// then a rename), so a reader never sees half an image.
///
/// Reading: grey, grey + alpha, RGB, RGBA and palette images at every bit depth PNG allows
/// (1/2/4-bit grey scaled to 0…255, 16-bit rounded to 8, palettes expanded to RGB, or RGBA with a
/// `tRNS` chunk), all five row filters, any deflate stream; CRCs and Adler-32 are checked. Adam7
/// interlacing is reported as unsupported; `tRNS` colour keys of grey/RGB images are ignored.
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
        try encode(image, text: text, compression: compression).write(to: url, options: .atomic)
    }

    /// A decoded PNG: the image and its `tEXt` entries.
    public struct Decoded: Equatable, Sendable {
        public var image: PixelImage
        public var text: [String: String]
    }

    public static func read(contentsOf url: URL) throws -> Decoded {
        try decode(Data(contentsOf: url))
    }

    public static func decode(_ data: Data) throws -> Decoded {
        let bytes = [UInt8](data)
        guard bytes.count >= 8, Array(bytes[0..<8]) == signature else { throw PNGError.notPNG }
        var offset = 8
        var width = 0, height = 0, colorType: UInt8 = 0, depth = 8
        var sawHeader = false, sawEnd = false
        var compressed: [UInt8] = []
        var palette: [UInt8] = [], transparency: [UInt8] = []
        var text: [String: String] = [:]
        while offset < bytes.count {
            guard offset + 12 <= bytes.count else { throw PNGError.truncated }
            let length = Int(bytes.readBigEndian(at: offset))
            guard length <= 0x7FFF_FFFF, offset + 12 + length <= bytes.count else { throw PNGError.truncated }
            let typeBytes = Array(bytes[(offset + 4)..<(offset + 8)])
            let type = String(decoding: typeBytes, as: UTF8.self)
            let body = Array(bytes[(offset + 8)..<(offset + 8 + length)])
            let stored = bytes.readBigEndian(at: offset + 8 + length)
            let actual = Zlib.crc32(typeBytes + body)
            guard stored == actual else { throw PNGError.badCRC(chunk: type) }
            offset += 12 + length
            if !sawHeader && type != "IHDR" { throw PNGError.malformed("first chunk is \(type), not IHDR") }
            switch type {
            case "IHDR":
                guard !sawHeader, length == 13 else { throw PNGError.malformed("IHDR") }
                sawHeader = true
                width = Int(body.readBigEndian(at: 0))
                height = Int(body.readBigEndian(at: 4))
                depth = Int(body[8])
                colorType = body[9]
                guard width > 0, height > 0, width <= 1 << 24, height <= 1 << 24 else {
                    throw PNGError.malformed("size \(width)×\(height)")
                }
                guard body[10] == 0, body[11] == 0 else { throw PNGError.malformed("compression/filter method") }
                guard [0, 2, 3, 4, 6].contains(colorType) else { throw PNGError.malformed("color type \(colorType)") }
                let allowed: [Int] = colorType == 0 ? [1, 2, 4, 8, 16] : colorType == 3 ? [1, 2, 4, 8] : [8, 16]
                guard allowed.contains(depth) else { throw PNGError.malformed("bit depth \(depth) for color type \(colorType)") }
                guard body[12] == 0 else { throw PNGError.unsupported("Adam7 interlacing") }
            case "PLTE":
                guard length % 3 == 0, length > 0 else { throw PNGError.malformed("PLTE length \(length)") }
                palette = body
            case "tRNS":
                transparency = body
            case "IDAT":
                compressed += body
            case "tEXt":
                if let zero = body.firstIndex(of: 0) {
                    text[String(body[..<zero].map { Character(Unicode.Scalar($0)) })] =
                        String(body[(zero + 1)...].map { Character(Unicode.Scalar($0)) })
                }
            case "IEND":
                sawEnd = true
            default:
                // Unknown critical chunks (upper-case first letter) cannot be skipped safely.
                if let first = typeBytes.first, first & 0x20 == 0 { throw PNGError.unsupported("critical chunk \(type)") }
            }
            if sawEnd { break }
        }
        guard sawHeader else { throw PNGError.malformed("no IHDR") }
        guard sawEnd else { throw PNGError.truncated }
        guard !compressed.isEmpty else { throw PNGError.malformed("no IDAT") }

        let samplesPerPixel: Int
        switch colorType {
        case 0: samplesPerPixel = 1
        case 2: samplesPerPixel = 3
        case 3: samplesPerPixel = 1
        case 4: samplesPerPixel = 2
        default: samplesPerPixel = 4
        }
        let bitsPerPixel = samplesPerPixel * depth
        let stride = (width * bitsPerPixel + 7) / 8
        let expected = (stride + 1) * height
        let raw: [UInt8]
        do {
            raw = try Zlib.decompress(compressed, limit: expected)
        } catch let error as ZlibError {
            throw PNGError.badImageData(error.description)
        }
        guard raw.count == expected else {
            throw PNGError.badImageData("\(raw.count) bytes of filtered rows, expected \(expected)")
        }
        let rows = try unfilter(raw, stride: stride, height: height, bytesPerPixel: max(1, bitsPerPixel / 8))
        var pixels = eightBitSamples(rows, width: width, height: height, samples: samplesPerPixel, depth: depth,
                                     scale: colorType != 3)
        var channels = samplesPerPixel
        if colorType == 3 {
            guard !palette.isEmpty else { throw PNGError.malformed("palette image without PLTE") }
            let entries = palette.count / 3
            channels = transparency.isEmpty ? 3 : 4
            var expanded = [UInt8](repeating: 0, count: width * height * channels)
            for (i, index) in pixels.enumerated() {
                let e = Int(index)
                guard e < entries else { throw PNGError.badImageData("palette index \(e) of \(entries)") }
                for k in 0..<3 { expanded[i * channels + k] = palette[e * 3 + k] }
                if channels == 4 { expanded[i * 4 + 3] = e < transparency.count ? transparency[e] : 255 }
            }
            pixels = expanded
        }
        return Decoded(image: PixelImage(width: width, height: height, channels: channels, pixels: pixels), text: text)
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

    /// Unpacked rows (`stride` bytes each) → one byte per sample: 16-bit samples rounded to 8 bits,
    /// sub-byte samples unpacked (most significant first) and, if `scale`, stretched to 0…255.
    static func eightBitSamples(_ rows: [UInt8], width: Int, height: Int, samples: Int, depth: Int, scale: Bool) -> [UInt8] {
        if depth == 8 { return rows }
        let count = width * height * samples
        if depth == 16 {
            return (0..<count).map { i in
                let v = UInt32(rows[2 * i]) << 8 | UInt32(rows[2 * i + 1])
                return UInt8((v * 255 + 32767) / 65535)
            }
        }
        let stride = (width * depth + 7) / 8, mask = (1 << depth) - 1
        var out = [UInt8](repeating: 0, count: count)
        for y in 0..<height {
            for x in 0..<width {
                let bit = x * depth
                let v = (Int(rows[y * stride + bit / 8]) >> (8 - depth - bit % 8)) & mask
                out[y * width + x] = UInt8(scale ? v * 255 / mask : v)
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

    static func unfilter(_ raw: [UInt8], stride: Int, height: Int, bytesPerPixel bpp: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: stride * height)
        try out.withUnsafeMutableBufferPointer { o in
            try raw.withUnsafeBufferPointer { r in
                for y in 0..<height {
                    let type = r[y * (stride + 1)]
                    let src = y * (stride + 1) + 1, dst = y * stride, prev = (y - 1) * stride
                    for i in 0..<stride {
                        let a = i >= bpp ? Int(o[dst + i - bpp]) : 0
                        let b = y > 0 ? Int(o[prev + i]) : 0
                        let c = i >= bpp && y > 0 ? Int(o[prev + i - bpp]) : 0
                        let predictor: Int
                        switch type {
                        case 0: predictor = 0
                        case 1: predictor = a
                        case 2: predictor = b
                        case 3: predictor = (a + b) / 2
                        case 4: predictor = paeth(a, b, c)
                        default: throw PNGError.badImageData("row \(y) has filter type \(type)")
                        }
                        o[dst + i] = UInt8(truncatingIfNeeded: Int(r[src + i]) + predictor)
                    }
                }
            }
        }
        return out
    }
}

public enum PNGError: Error, Equatable, CustomStringConvertible {
    case notPNG
    case truncated
    case badCRC(chunk: String)
    case malformed(String)
    case unsupported(String)
    case badImageData(String)

    public var description: String {
        switch self {
        case .notPNG: return "not a PNG file (bad signature)"
        case .truncated: return "PNG file ends early"
        case .badCRC(let chunk): return "PNG chunk \(chunk) fails its CRC"
        case .malformed(let s): return "malformed PNG: \(s)"
        case .unsupported(let s): return "unsupported PNG feature: \(s)"
        case .badImageData(let s): return "bad PNG image data: \(s)"
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func appendBigEndian(_ v: UInt32) {
        append(UInt8(v >> 24)); append(UInt8(v >> 16 & 0xFF)); append(UInt8(v >> 8 & 0xFF)); append(UInt8(v & 0xFF))
    }

    fileprivate func readBigEndian(at i: Int) -> UInt32 {
        UInt32(self[i]) << 24 | UInt32(self[i + 1]) << 16 | UInt32(self[i + 2]) << 8 | UInt32(self[i + 3])
    }
}
