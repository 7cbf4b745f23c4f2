import CFreeType
import CPNG
import Foundation

/// A drawing at its source resolution: premultiplied RGBA in 0…1, rows top first.
public struct RGBAImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public var pixels: [Float]

    public init(width: Int, height: Int, pixels: [Float]) {
        precondition(pixels.count == width * height * 4, "\(pixels.count) values for \(width)×\(height) RGBA")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// The smallest box [x0, x1) × [y0, y1) holding every pixel with alpha above `threshold`.
    public func inkBounds(threshold: Float = 8.0 / 255) -> (x0: Int, y0: Int, x1: Int, y1: Int)? {
        var x0 = width, y0 = height, x1 = 0, y1 = 0
        for y in 0..<height {
            for x in 0..<width where pixels[(y * width + x) * 4 + 3] > threshold {
                x0 = min(x0, x); x1 = max(x1, x + 1)
                y0 = min(y0, y); y1 = max(y1, y + 1)
            }
        }
        return x0 < x1 ? (x0, y0, x1, y1) : nil
    }
}

/// One style's drawings of emoji, by code point.
public protocol EmojiDrawings: AnyObject {
    var style: EmojiStyle { get }
    func contains(_ codepoint: UInt32) -> Bool
    func draw(_ codepoint: UInt32) throws -> RGBAImage
}

/// Opens each style's source: the three fonts through FreeType, Twemoji's folder of PNGs.
public func openEmojiDrawings(_ sources: EmojiSources, styles: [EmojiStyle] = EmojiStyle.allCases) throws -> [EmojiDrawings] {
    try styles.map { style -> EmojiDrawings in
        if style == .twemoji { return try TwemojiFolder(url: sources.twemoji) }
        return try EmojiFont(url: sources.url(for: style), style: style)
    }
}

/// A font drawn with FreeType: colour bitmaps (Noto's CBDT, via `FT_LOAD_COLOR`, at its one
/// bitmap strike), colour layers (OpenMoji's COLRv0, blended by FreeType into BGRA) or plain
/// outlines (Symbola, anti-aliased grey coverage drawn as black ink).
///
/// Not thread-safe: FreeType faces must not be shared between threads.
public final class EmojiFont: EmojiDrawings {
    public let style: EmojiStyle
    public let url: URL
    private var library: FT_Library?
    private var face: FT_Face?

    /// Outline and layered fonts are drawn at `pixelSize` pixels per em, well above the
    /// dataset's sizes, so the resampling to 32 or 48 pixels does the anti-aliasing.
    public init(url: URL, style: EmojiStyle, pixelSize: Int = 128) throws {
        self.style = style
        self.url = url
        let source = style.source
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw AssetError(asset: source.asset, reason: "missing font \(url.path)", remedy: source.installHint)
        }
        guard FT_Init_FreeType(&library) == 0 else {
            throw AssetError(asset: "FreeType", reason: "FT_Init_FreeType failed", remedy: "apt-get install libfreetype6")
        }
        let error = FT_New_Face(library, url.path, 0, &face)
        guard error == 0, let face else {
            throw AssetError(asset: source.asset, reason: "FreeType cannot open \(url.path) (error \(error))",
                             remedy: "rm \(url.path) and rerun `score assets --emoji`")
        }
        if face.pointee.face_flags & FT_Long(FT_FACE_FLAG_SCALABLE) != 0 {
            let e = FT_Set_Pixel_Sizes(face, 0, FT_UInt(pixelSize))
            guard e == 0 else {
                throw AssetError(asset: source.asset, reason: "FT_Set_Pixel_Sizes(\(pixelSize)) failed on \(url.path) (error \(e))",
                                 remedy: "check the font file")
            }
        } else if face.pointee.num_fixed_sizes > 0 {
            // Bitmap-only colour font: pick the largest strike (Noto has one, 109 ppem).
            var best: Int32 = 0
            for i in 0..<face.pointee.num_fixed_sizes where face.pointee.available_sizes[Int(i)].height
                > face.pointee.available_sizes[Int(best)].height { best = i }
            let e = FT_Select_Size(face, best)
            guard e == 0 else {
                throw AssetError(asset: source.asset, reason: "FT_Select_Size failed on \(url.path) (error \(e))", remedy: "check the font file")
            }
        } else {
            throw AssetError(asset: source.asset, reason: "\(url.path) has neither outlines nor bitmap strikes", remedy: "check the font file")
        }
    }

    deinit {
        if let face { FT_Done_Face(face) }
        if let library { FT_Done_FreeType(library) }
    }

    public func contains(_ codepoint: UInt32) -> Bool {
        FT_Get_Char_Index(face, FT_ULong(codepoint)) != 0
    }

    public func draw(_ codepoint: UInt32) throws -> RGBAImage {
        let hex = String(codepoint, radix: 16, uppercase: true)
        let index = FT_Get_Char_Index(face, FT_ULong(codepoint))
        guard index != 0 else {
            throw AssetError(asset: style.source.asset, reason: "\(url.path) has no glyph for U+\(hex)", remedy: "draw only code points it contains")
        }
        let error = FT_Load_Glyph(face, index, score_ft_load_color_render)
        guard error == 0, let slot = face?.pointee.glyph else {
            throw AssetError(asset: style.source.asset, reason: "FreeType error \(error) drawing U+\(hex) from \(url.path)", remedy: "check the font file")
        }
        let bitmap = slot.pointee.bitmap
        let width = Int(bitmap.width), height = Int(bitmap.rows), pitch = Int(bitmap.pitch)
        guard width > 0, height > 0, let buffer = bitmap.buffer else {
            return RGBAImage(width: 1, height: 1, pixels: [0, 0, 0, 0])
        }
        var pixels = [Float](repeating: 0, count: width * height * 4)
        let scale: Float = 1.0 / 255
        for y in 0..<height {
            // A negative pitch means the rows are stored bottom first.
            let row = buffer + (pitch >= 0 ? y * pitch : (height - 1 - y) * -pitch)
            for x in 0..<width {
                let o = (y * width + x) * 4
                switch bitmap.pixel_mode {
                case UInt8(FT_PIXEL_MODE_BGRA.rawValue):
                    // Already premultiplied, as B, G, R, A.
                    pixels[o] = Float(row[4 * x + 2]) * scale
                    pixels[o + 1] = Float(row[4 * x + 1]) * scale
                    pixels[o + 2] = Float(row[4 * x]) * scale
                    pixels[o + 3] = Float(row[4 * x + 3]) * scale
                case UInt8(FT_PIXEL_MODE_GRAY.rawValue):
                    // Coverage of black ink: premultiplied black is (0, 0, 0, a).
                    pixels[o + 3] = Float(row[x]) * scale
                case UInt8(FT_PIXEL_MODE_MONO.rawValue):
                    pixels[o + 3] = (row[x >> 3] >> (7 - UInt8(x & 7))) & 1 == 1 ? 1 : 0
                default:
                    throw AssetError(asset: style.source.asset,
                                     reason: "U+\(hex) in \(url.path) rendered in unsupported pixel mode \(bitmap.pixel_mode)",
                                     remedy: "use a FreeType build with colour support (libfreetype6 ≥ 2.10)")
                }
            }
        }
        return RGBAImage(width: width, height: height, pixels: pixels)
    }
}

/// Twemoji's 72×72 PNGs, one file per emoji named by its lower-case hex code point, decoded with
/// libpng (some are palette images, one is interlaced).
public final class TwemojiFolder: EmojiDrawings {
    public let style = EmojiStyle.twemoji
    public let url: URL
    private let names: Set<String>

    public init(url: URL) throws {
        self.url = url
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: url.path) else {
            throw AssetError(asset: EmojiSource.twemoji.asset, reason: "missing folder \(url.path)", remedy: EmojiSource.twemoji.installHint)
        }
        self.names = Set(names)
    }

    private func fileName(_ codepoint: UInt32) -> String { String(codepoint, radix: 16) + ".png" }

    public func contains(_ codepoint: UInt32) -> Bool { names.contains(fileName(codepoint)) }

    public func draw(_ codepoint: UInt32) throws -> RGBAImage {
        let file = url.appendingPathComponent(fileName(codepoint))
        let data: Data
        do { data = try Data(contentsOf: file) } catch {
            throw AssetError(asset: style.source.asset, reason: "cannot read \(file.path): \(error.localizedDescription)",
                             remedy: EmojiSource.twemoji.installHint)
        }
        return try decodePNG(data, file: file.path)
    }
}

/// Any PNG (palette, grey, 16-bit, interlaced) as premultiplied RGBA, decoded with libpng.
public func decodePNG(_ data: Data, file: String) throws -> RGBAImage {
    var width: UInt32 = 0, height: UInt32 = 0
    var message = [CChar](repeating: 0, count: 64)
    func failure(_ status: Int32) -> AssetError {
        let text = message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return AssetError(asset: file, reason: "libpng cannot decode it (\(status)): \(text)", remedy: "delete the file and reinstall its package")
    }
    var status = data.withUnsafeBytes { raw in
        score_png_decode_rgba(raw.baseAddress, raw.count, nil, 0, &width, &height, &message)
    }
    guard status == 2, width > 0, height > 0 else { throw failure(status) }
    var rgba = [UInt8](repeating: 0, count: Int(width) * Int(height) * 4)
    status = data.withUnsafeBytes { raw in
        rgba.withUnsafeMutableBufferPointer { out in
            score_png_decode_rgba(raw.baseAddress, raw.count, out.baseAddress, out.count, &width, &height, &message)
        }
    }
    guard status == 0 else { throw failure(status) }
    var pixels = [Float](repeating: 0, count: rgba.count)
    for i in stride(from: 0, to: rgba.count, by: 4) {
        let a = Float(rgba[i + 3]) / 255
        pixels[i] = Float(rgba[i]) / 255 * a
        pixels[i + 1] = Float(rgba[i + 1]) / 255 * a
        pixels[i + 2] = Float(rgba[i + 2]) / 255 * a
        pixels[i + 3] = a
    }
    return RGBAImage(width: Int(width), height: Int(height), pixels: pixels)
}

/// Where a drawing lands in a dataset image: its ink box scaled so the longer side covers
/// `fill × scale` of the image, centred, then moved by (`dx`, `dy`) pixels.
public struct EmojiPlacement: Equatable, Sendable {
    public var fill: Float
    public var scale: Float
    public var dx: Float
    public var dy: Float

    public init(fill: Float = 0.875, scale: Float = 1, dx: Float = 0, dy: Float = 0) {
        self.fill = fill
        self.scale = scale
        self.dx = dx
        self.dy = dy
    }
}

extension RGBAImage {
    /// The drawing resampled to a `size`×`size` RGB image on white (8-bit, rows top first,
    /// channels interleaved): each output pixel averages q×q bilinear samples (q ≈ the source
    /// pixels per output pixel, at most 8), in premultiplied space, then is composited over white.
    public func placed(size: Int, placement: EmojiPlacement = EmojiPlacement()) -> [UInt8] {
        var out = [UInt8](repeating: 255, count: size * size * 3)
        guard let box = inkBounds() else { return out }
        let boxWidth = Float(box.x1 - box.x0), boxHeight = Float(box.y1 - box.y0)
        let k = placement.fill * placement.scale * Float(size) / max(boxWidth, boxHeight)  // output px per source px
        let sourceCentreX = Float(box.x0 + box.x1) / 2, sourceCentreY = Float(box.y0 + box.y1) / 2
        let centreX = Float(size) / 2 + placement.dx, centreY = Float(size) / 2 + placement.dy
        let q = max(1, min(8, Int((1 / k).rounded(.up))))
        let w = width, h = height
        @inline(__always) func texel(_ x: Int, _ y: Int, _ c: Int) -> Float {
            (x < 0 || y < 0 || x >= w || y >= h) ? 0 : pixels[(y * w + x) * 4 + c]
        }
        for oy in 0..<size {
            for ox in 0..<size {
                var acc: (Float, Float, Float, Float) = (0, 0, 0, 0)
                for sy in 0..<q {
                    let ty = Float(oy) + (Float(sy) + 0.5) / Float(q)
                    let v = sourceCentreY + (ty - centreY) / k - 0.5
                    let y0 = Int(v.rounded(.down)), fy = v - Float(y0)
                    for sx in 0..<q {
                        let tx = Float(ox) + (Float(sx) + 0.5) / Float(q)
                        let u = sourceCentreX + (tx - centreX) / k - 0.5
                        let x0 = Int(u.rounded(.down)), fx = u - Float(x0)
                        let w00 = (1 - fx) * (1 - fy), w10 = fx * (1 - fy), w01 = (1 - fx) * fy, w11 = fx * fy
                        acc.0 += w00 * texel(x0, y0, 0) + w10 * texel(x0 + 1, y0, 0) + w01 * texel(x0, y0 + 1, 0) + w11 * texel(x0 + 1, y0 + 1, 0)
                        acc.1 += w00 * texel(x0, y0, 1) + w10 * texel(x0 + 1, y0, 1) + w01 * texel(x0, y0 + 1, 1) + w11 * texel(x0 + 1, y0 + 1, 1)
                        acc.2 += w00 * texel(x0, y0, 2) + w10 * texel(x0 + 1, y0, 2) + w01 * texel(x0, y0 + 1, 2) + w11 * texel(x0 + 1, y0 + 1, 2)
                        acc.3 += w00 * texel(x0, y0, 3) + w10 * texel(x0 + 1, y0, 3) + w01 * texel(x0, y0 + 1, 3) + w11 * texel(x0 + 1, y0 + 1, 3)
                    }
                }
                let n = Float(q * q)
                let alpha = min(1, acc.3 / n)
                let o = (oy * size + ox) * 3
                for (c, value) in [acc.0, acc.1, acc.2].enumerated() {
                    let composited = min(1, max(0, value / n + (1 - alpha)))
                    out[o + c] = UInt8((composited * 255).rounded())
                }
            }
        }
        return out
    }
}
