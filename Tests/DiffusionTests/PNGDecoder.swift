@testable import Diffusion
import Foundation

// A PNG reader written from the specification, independent of the writer, so that the tests can
// check what `PNG.encode` writes: every colour type and bit depth, all five row filters, CRCs
// and Adler-32 (Adam7 interlacing is reported as unsupported; tRNS colour keys of grey/RGB images
// are ignored). The tool itself only writes PNGs; the emoji testbed reads its sources with libpng.

extension PNG {
    /// A decoded PNG: the image and its `tEXt` entries.
    struct Decoded: Equatable, Sendable {
        var image: PixelImage
        var text: [String: String]
    }

    static func read(contentsOf url: URL) throws -> Decoded {
        try decode(Data(contentsOf: url))
    }

    static func decode(_ data: Data) throws -> Decoded {
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

enum PNGError: Error, Equatable, CustomStringConvertible {
    case notPNG
    case truncated
    case badCRC(chunk: String)
    case malformed(String)
    case unsupported(String)
    case badImageData(String)

    var description: String {
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
    fileprivate func readBigEndian(at i: Int) -> UInt32 {
        UInt32(self[i]) << 24 | UInt32(self[i + 1]) << 16 | UInt32(self[i + 2]) << 8 | UInt32(self[i + 3])
    }
}
