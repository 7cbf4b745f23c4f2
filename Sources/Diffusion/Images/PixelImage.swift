import Foundation
import Tensor

/// How float pixel values map to 0…255.
public enum PixelRange: Sendable {
    /// [−1, 1], what VAEs decode to and pixel-space diffusion models generate: 8-bit = (x + 1)/2·255.
    case signedUnit
    /// [0, 1]: 8-bit = x·255.
    case unit
}

/// An 8-bit image: `height` rows of `width` pixels, each `channels` interleaved bytes
/// (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), top row first.
public struct PixelImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public let channels: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0, "image size \(width)×\(height)")
        precondition((1...4).contains(channels), "\(channels) channels (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)")
        precondition(pixels.count == width * height * channels,
                     "\(pixels.count) bytes for \(width)×\(height)×\(channels)")
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// A [C, H, W] (or [1, C, H, W]) tensor as 8-bit pixels: values outside the range are clamped,
    /// then scaled by 255 and rounded half to even (diffusers' `numpy_to_pil`); NaN becomes 0.
    public init(tensor: Tensor, range: PixelRange = .signedUnit) {
        var t = tensor
        if t.rank == 4 {
            precondition(t.shape[0] == 1, "PixelImage(tensor:) takes one image, got a batch of \(t.shape[0]); use PixelImage.images(batch:)")
            t = t.squeezed(0)
        }
        precondition(t.rank == 3, "PixelImage(tensor:) needs [C, H, W], got \(tensor.shape)")
        let (c, h, w) = (t.shape[0], t.shape[1], t.shape[2])
        let source = t.pointer
        var bytes = [UInt8](repeating: 0, count: c * h * w)
        let (scale, offset): (Float, Float) = range == .signedUnit ? (0.5, 0.5) : (1, 0)
        for y in 0..<h {
            for x in 0..<w {
                for k in 0..<c {
                    let v = source[(k * h + y) * w + x] * scale + offset
                    let clamped = v.isNaN ? 0 : min(max(v, 0), 1)
                    bytes[(y * w + x) * c + k] = UInt8((clamped * 255).rounded(.toNearestOrEven))
                }
            }
        }
        self.init(width: w, height: h, channels: c, pixels: bytes)
    }

    /// Each image of a [B, C, H, W] batch.
    public static func images(batch: Tensor, range: PixelRange = .signedUnit) -> [PixelImage] {
        precondition(batch.rank == 4, "images(batch:) needs [B, C, H, W], got \(batch.shape)")
        return (0..<batch.shape[0]).map {
            PixelImage(tensor: batch.narrowed(axis: 0, start: $0, length: 1), range: range)
        }
    }

    /// The image as a [C, H, W] float tensor in `range` (the inverse of `init(tensor:range:)` up to
    /// the 8-bit rounding).
    public func tensor(range: PixelRange = .signedUnit) -> Tensor {
        let (scale, offset): (Float, Float) = range == .signedUnit ? (2.0 / 255, -1) : (1.0 / 255, 0)
        let (c, h, w) = (channels, height, width)
        return pixels.withUnsafeBufferPointer { p in
            Tensor(shape: [c, h, w]) { out in
                for y in 0..<h {
                    for x in 0..<w {
                        for k in 0..<c {
                            out[(k * h + y) * w + x] = Float(p[(y * w + x) * c + k]) * scale + offset
                        }
                    }
                }
            }
        }
    }

    /// The byte at (x, y), channel `channel`.
    public subscript(x: Int, y: Int, channel: Int) -> UInt8 {
        pixels[(y * width + x) * channels + channel]
    }
}

/// Tiles equally shaped [C, H, W] (or [1, C, H, W]) images into one [C, H', W'] image, row by row,
/// torchvision's `make_grid` layout: `padding` pixels of `padValue` around and between the tiles,
/// so H' = rows·(H + padding) + padding. Cells beyond `images.count` are left as padding.
/// The default `padValue` 1 is white in both [0, 1] and [−1, 1].
public func imageGrid(images: [Tensor], rows: Int, cols: Int, padding: Int = 2, padValue: Float = 1) -> Tensor {
    precondition(!images.isEmpty, "imageGrid of no images")
    precondition(rows > 0 && cols > 0 && rows * cols >= images.count,
                 "a \(rows)×\(cols) grid cannot hold \(images.count) images")
    precondition(padding >= 0, "negative padding \(padding)")
    let tiles = images.map { $0.rank == 4 && $0.shape[0] == 1 ? $0.squeezed(0) : $0 }
    let shape = tiles[0].shape
    precondition(shape.count == 3, "imageGrid needs [C, H, W] images, got \(images[0].shape)")
    for t in tiles { precondition(t.shape == shape, "imageGrid: image \(t.shape) differs from \(shape)") }
    let (c, h, w) = (shape[0], shape[1], shape[2])
    let gridH = rows * (h + padding) + padding, gridW = cols * (w + padding) + padding
    let grid = Tensor.full(padValue, [c, gridH, gridW])
    let out = grid.pointer
    for (i, tile) in tiles.enumerated() {
        let top = padding + (i / cols) * (h + padding), left = padding + (i % cols) * (w + padding)
        let src = tile.pointer
        for k in 0..<c {
            for y in 0..<h {
                (out + (k * gridH + top + y) * gridW + left).update(from: src + (k * h + y) * w, count: w)
            }
        }
    }
    return grid
}
