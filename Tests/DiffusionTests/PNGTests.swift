import Foundation
import XCTest
import Tensor
@testable import Diffusion

/// PNG and zlib: round trips, files written by PIL (dynamic Huffman, all filters, palettes),
/// corruption detection, atomic writes.
final class PNGTests: XCTestCase {
    /// The pattern of the PIL-written images below: pixel (x, y) → (R, G, B, A).
    static func pattern(_ x: Int, _ y: Int) -> [UInt8] {
        [UInt8((x * 37 + y * 11) % 256), UInt8((x * 5 + y * 71) % 256), UInt8((x * y * 13) % 256),
         UInt8((x * 17 + y * 3 + 90) % 256)]
    }

    /// 16×12 images written by PIL 13 (zlib deflate, its own filter choice). rgb/rgba use dynamic
    /// Huffman blocks with Sub and Paeth filters; la/l fixed Huffman; pal is a 4-bit palette image
    /// with tRNS, pal4 a 2-bit one; bw is 1-bit grey, g16 16-bit grey.
    static let pilFiles: [String: String] = [
        "bw": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMAQAAAABDnAAsAAAAFklEQVR4nGOY5MmgMonBU4XFkwEXAwB5WQZPLdNtLwAAAABJRU5ErkJggg==",
        "g16": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMEAAAAAAeHL4eAAAARUlEQVR4nGNkYOBfILCAf4EAColgsTBUM1YzLGCsZljAII0gESwWhmqYEOMCZAkYnwWXBH1NwOV+uAn4LWHBbTuET7kJAHhqYWesh0TQAAAAAElFTkSuQmCC",
        "pal4": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMAgMAAAAWidUSAAAADFBMVEUKFB7IZAAA/4D///+Iq4FRAAAAHUlEQVR4nGNgYGBgYJRmYGBgYWdgYGARZ4ACIsQAFtQAx9R6fBEAAAAASUVORK5CYII=",
        "rgb": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMCAIAAADkharWAAAAwklEQVR42pWOsW3DMBQFFUBXHVKkTeGO0AIs0rpSpwW4ABfgAlxAC2iBLKAFsoAXyAJaIG0KQ4KtCIYDXHH4wOH9l6ZpAv+gtW/k9Xm24P1JboPuiLp5oJNuF8QrgSTRPm4XiTJL/Buc76mrfMsiX4fBIIPkVS4yrd7ugiTnwCBppV4l8COzpJug3xayJMlSJMsik2R5e/BSkiJFqhRp5VPKLqgSA1UGqZKlSpUxUOUks3wcLlwkySJFRhntJxlllvEX/JdAm/HFiYIAAAAASUVORK5CYII=",
        "rgba": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMCAYAAABr5z2BAAAAy0lEQVR42p2QsQ3CMBBFjS5XnSjcUtBZLJCClspdBsALeIEscAtkgSzAAlmABbIAC2QBWgp/ghNChFI8+duRn/9lZ4y5OjZ2K4V4Q8L7zWSCwyZmgtMKOtk7rAuCcsRxSNmXk/NER8LlL8FlAbWf/CDhgYTva4IKxCz3JNxm+2JJEEj4Qo4r5Dc6ZsdPjBBmAp83iLgQSbjGOqBBJGH7zwgBl2s0qEm4IOEb8pdA8fcVAsVralNu8O2IEc5rDXo0GPBak/AtckfCDb0ABl9EIAh1JjgAAAAASUVORK5CYII=",
        "la": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMCAQAAADB7vUKAAAAGElEQVR4nGNkiFIVxAeZuJnxw1EF1FIAACMzDTwk0GWFAAAAAElFTkSuQmCC",
        "l": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMCAAAAABOjGJdAAAAMklEQVR4AWNkYEUFjO6ofFYWdAHGq2gqGGXQBDC0YAgwfkTTwmiBJoCp5RiaCkZeNAEAIokH7fvb9A8AAAAASUVORK5CYII=",
        "pal": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMBAMAAACZySCyAAAAMFBMVEUA/wAQ7wcg3w4wzxVAvxxQryNgnypwjzGAfziQbz+gX0awT03AP1TQL1vgH2LwD2mp4hopAAAAEHRSTlMAKFB4oMjwGEBokLjgCDBYNN7WJwAAAClJREFUeJxdyDENAAAIxMAUB7WAf5EMwPKdmoPeyo0fbzAEQzAEQ1B1AHTMBn/k2hxOAAAAAElFTkSuQmCC",
    ]

    func testDecodesPILFiles() throws {
        let expected: [String: (channels: Int, pixel: (Int, Int) -> [UInt8])] = [
            "rgb": (3, { Array(Self.pattern($0, $1)[0..<3]) }),
            "rgba": (4, { Self.pattern($0, $1) }),
            "la": (2, { [Self.pattern($0, $1)[0], Self.pattern($0, $1)[3]] }),
            "l": (1, { [Self.pattern($0, $1)[1]] }),
            "bw": (1, { x, y in [(x + y) % 3 == 0 ? 255 : 0] }),
            "g16": (1, { x, y in [UInt8((UInt32(x * 4000 + y * 123) * 255 + 32767) / 65535)] }),
            "pal4": (3, { x, y in [[10, 20, 30], [200, 100, 0], [0, 255, 128], [255, 255, 255]][(x * y) % 4] }),
            "pal": (4, { x, y in
                let i = (x + y) % 16
                return [UInt8((i * 16) % 256), UInt8((255 - i * 16) % 256), UInt8((i * 7) % 256), UInt8((i * 40) % 256)]
            }),
        ]
        for (name, base64) in Self.pilFiles {
            let decoded = try PNG.decode(Data(base64Encoded: base64)!)
            let (channels, pixel) = expected[name]!
            XCTAssertEqual(decoded.image.width, 16, name)
            XCTAssertEqual(decoded.image.height, 12, name)
            XCTAssertEqual(decoded.image.channels, channels, name)
            var want: [UInt8] = []
            for y in 0..<12 { for x in 0..<16 { want += pixel(x, y) } }
            XCTAssertEqual(decoded.image.pixels, want, name)
        }
    }

    func randomImage(width: Int, height: Int, channels: Int, seed: UInt64, smooth: Bool) -> PixelImage {
        var rng = RandomGenerator(seed: seed)
        let noise = rng.uniform([width * height * channels]).scalars
        var pixels = [UInt8](repeating: 0, count: noise.count)
        for y in 0..<height {
            for x in 0..<width {
                for k in 0..<channels {
                    let i = (y * width + x) * channels + k
                    pixels[i] = smooth ? UInt8((x * 3 + y * 2 + k * 40 + Int(noise[i] * 4)) % 256) : UInt8(noise[i] * 255)
                }
            }
        }
        return PixelImage(width: width, height: height, channels: channels, pixels: pixels)
    }

    func testRoundTripEveryLayoutAndCompression() throws {
        for channels in 1...4 {
            for (w, h) in [(1, 1), (3, 2), (37, 19), (64, 64)] {
                for smooth in [false, true] {
                    let image = randomImage(width: w, height: h, channels: channels, seed: UInt64(w * 100 + channels), smooth: smooth)
                    for compression in [PNG.Compression.stored, .fixedHuffman, .dynamicHuffman] {
                        let data = PNG.encode(image, compression: compression)
                        XCTAssertEqual(Array(data.prefix(8)), PNG.signature)
                        let back = try PNG.decode(data)
                        XCTAssertEqual(back.image, image, "\(w)×\(h)×\(channels) smooth \(smooth) \(compression)")
                    }
                }
            }
        }
        // Smooth images compress; noise does not grow much beyond stored.
        let smooth = randomImage(width: 128, height: 128, channels: 3, seed: 1, smooth: true)
        let stored = PNG.encode(smooth, compression: .stored).count
        let compressed = PNG.encode(smooth).count
        XCTAssertLessThan(Double(compressed), 0.5 * Double(stored), "\(compressed) vs stored \(stored)")
        // Noise grows by at most zlib's block overhead.
        let noise = randomImage(width: 128, height: 128, channels: 3, seed: 2, smooth: false)
        XCTAssertLessThanOrEqual(Double(PNG.encode(noise).count), 1.01 * Double(PNG.encode(noise, compression: .stored).count))
    }

    func testTextChunksAndAtomicWrite() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("score-png-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("sample.png")
        let image = randomImage(width: 20, height: 10, channels: 3, seed: 9, smooth: true)
        try PNG.write(image, to: url, text: [("prompt", "a photo of a sneaker"), ("seed", "42")])
        try PNG.write(image, to: url, text: [("prompt", "a photo of a bag"), ("seed", "43")])  // replaces
        let decoded = try PNG.read(contentsOf: url)
        XCTAssertEqual(decoded.image, image)
        XCTAssertEqual(decoded.text, ["prompt": "a photo of a bag", "seed": "43"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["sample.png"], "no temporary left behind")
        if let out = ProcessInfo.processInfo.environment["SCORE_PNG_OUT"] {
            // For checking by an outside viewer (tools/ or PIL): one file per layout.
            for channels in 1...4 {
                let big = randomImage(width: 33, height: 17, channels: channels, seed: 5, smooth: true)
                try PNG.write(big, to: URL(fileURLWithPath: out).appendingPathComponent("c\(channels).png"), text: [("k", "v")])
                try PNG.write(big, to: URL(fileURLWithPath: out).appendingPathComponent("c\(channels)-stored.png"), compression: .stored)
            }
            let large = randomImage(width: 300, height: 200, channels: 3, seed: 8, smooth: true)
            try Data(large.pixels).write(to: URL(fileURLWithPath: out).appendingPathComponent("large.rgb"))
            try PNG.write(large, to: URL(fileURLWithPath: out).appendingPathComponent("large-fixed.png"), compression: .fixedHuffman)
            try PNG.write(large, to: URL(fileURLWithPath: out).appendingPathComponent("large-dynamic.png"))
        }
    }

    func testCorruptionIsDetected() throws {
        let image = randomImage(width: 8, height: 8, channels: 3, seed: 3, smooth: true)
        let good = [UInt8](PNG.encode(image))
        XCTAssertThrowsError(try PNG.decode(Data(good.dropLast(5)))) { XCTAssertEqual($0 as? PNGError, .truncated) }
        var badSignature = good; badSignature[1] = 0
        XCTAssertThrowsError(try PNG.decode(Data(badSignature))) { XCTAssertEqual($0 as? PNGError, .notPNG) }
        var badCRC = good; badCRC[20] ^= 0x01  // inside IHDR's width
        XCTAssertThrowsError(try PNG.decode(Data(badCRC))) { XCTAssertEqual($0 as? PNGError, .badCRC(chunk: "IHDR")) }
        XCTAssertThrowsError(try PNG.decode(Data())) { XCTAssertEqual($0 as? PNGError, .notPNG) }

        let stream = Zlib.compress(Array(repeating: 7, count: 1000) + (0..<255).map { UInt8($0) })
        var flipped = stream; flipped[flipped.count - 1] ^= 0xFF
        XCTAssertThrowsError(try Zlib.decompress(flipped)) { error in
            guard case .checksumMismatch? = error as? ZlibError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try Zlib.decompress(stream, limit: 100)) { XCTAssertEqual($0 as? ZlibError, .tooLarge(limit: 100)) }
        XCTAssertThrowsError(try Zlib.decompress([0x78, 0x02, 0, 0, 0, 0])) { error in
            guard case .badHeader? = error as? ZlibError else { return XCTFail("\(error)") }
        }
    }

    func testZlibAgainstKnownValues() throws {
        XCTAssertEqual(Zlib.crc32(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(Zlib.adler32(Array("Wikipedia".utf8)), 0x11E6_0398)
        XCTAssertEqual(Zlib.crc32(Array("IEND".utf8)), 0xAE42_6082)
        // Python's zlib.compress(b"hello hello hello hello", 9): a fixed-Huffman block with a match.
        let python: [UInt8] = [0x78, 0xDA, 0xCB, 0x48, 0xCD, 0xC9, 0xC9, 0x57, 0xC8, 0x40, 0x27, 0x01, 0x68, 0x03, 0x08, 0xB1]
        XCTAssertEqual(try Zlib.decompress(python), Array("hello hello hello hello".utf8))
        for level in [Zlib.Level.stored, .fixedHuffman, .dynamicHuffman] {
            for input in [[UInt8](), [0], Array(repeating: 1, count: 70_000), (0..<200_000).map { UInt8(($0 * $0 / 7) % 251) }] {
                XCTAssertEqual(try Zlib.decompress(Zlib.compress(input, level: level)), input)
            }
        }
    }
}
