import Foundation
import XCTest
import Tensor
@testable import Diffusion

/// Tensor ↔ 8-bit pixel conversion and image grids.
final class ImageTests: XCTestCase {
    func testSignedAndUnitRangesToBytes() {
        // [C=1, H=1, W=6]
        let signed = Tensor(shape: [1, 1, 6], scalars: [-1, 0, 1, -3, 2, .nan])
        XCTAssertEqual(PixelImage(tensor: signed).pixels, [0, 128, 255, 0, 255, 0])
        let unit = Tensor(shape: [1, 1, 5], scalars: [0, 0.5, 1, 1.5, -0.2])
        XCTAssertEqual(PixelImage(tensor: unit, range: .unit).pixels, [0, 128, 255, 255, 0])
        // Ties round to even as numpy does: 0.5/255·k… 127.5 → 128, 126.5 → 126.
        let ties = Tensor(shape: [1, 1, 2], scalars: [127.5 / 255, 126.5 / 255])
        XCTAssertEqual(PixelImage(tensor: ties, range: .unit).pixels, [128, 126])
    }

    func testChannelsAreInterleavedRowMajor() {
        // [3, 2, 2]: channel c, row y, column x → value encodes (c, y, x).
        var values: [Float] = []
        for c in 0..<3 { for y in 0..<2 { for x in 0..<2 { values.append(Float(c * 100 + y * 10 + x) / 255) } } }
        let image = PixelImage(tensor: Tensor(shape: [1, 3, 2, 2], scalars: values), range: .unit)
        XCTAssertEqual(image.width, 2)
        XCTAssertEqual(image.height, 2)
        XCTAssertEqual(image.channels, 3)
        XCTAssertEqual(image[1, 0, 2], 201)
        XCTAssertEqual(image[0, 1, 1], 110)
        XCTAssertEqual(image.pixels, [0, 100, 200, 1, 101, 201, 10, 110, 210, 11, 111, 211])
        let back = image.tensor(range: .unit)
        XCTAssertEqual(back.shape, [3, 2, 2])
        for (a, b) in zip(back.scalars, values) { XCTAssertEqual(a, b, accuracy: 1e-6) }
    }

    func testByteRoundTripThroughSignedRange() {
        let bytes = (0..<256).map { UInt8($0) }
        let image = PixelImage(width: 16, height: 16, channels: 1, pixels: bytes)
        XCTAssertEqual(PixelImage(tensor: image.tensor()).pixels, bytes)
        XCTAssertEqual(PixelImage(tensor: image.tensor(range: .unit), range: .unit).pixels, bytes)
        let t = image.tensor()
        XCTAssertEqual(t.scalars.min(), -1)
        XCTAssertEqual(t.scalars.max(), 1)
    }

    func testBatchSplitsIntoImages() {
        var rng = RandomGenerator(seed: 4)
        let batch = rng.uniform([3, 1, 4, 5], low: -1, high: 1)
        let images = PixelImage.images(batch: batch)
        XCTAssertEqual(images.count, 3)
        XCTAssertEqual(images[2], PixelImage(tensor: batch.narrowed(axis: 0, start: 2, length: 1)))
        XCTAssertEqual(images[0].width, 5)
        XCTAssertEqual(images[0].height, 4)
    }

    func testGridLayoutAndPadding() {
        // Five 2×3 images with constant values 0.1…0.5 in a 2×3 grid, padding 1, pad value −1.
        let tiles = (1...5).map { Tensor.full(Float($0) / 10, [2, 2, 3]) }
        let grid = imageGrid(images: tiles, rows: 2, cols: 3, padding: 1, padValue: -1)
        XCTAssertEqual(grid.shape, [2, 2 * 3 + 1, 3 * 4 + 1])
        let w = 13
        func at(_ c: Int, _ y: Int, _ x: Int) -> Float { grid.scalars[(c * 7 + y) * w + x] }
        XCTAssertEqual(at(0, 0, 0), -1)            // border
        XCTAssertEqual(at(0, 1, 1), 0.1)           // tile 0 top-left
        XCTAssertEqual(at(1, 2, 3), 0.1)           // tile 0 bottom-right, channel 1
        XCTAssertEqual(at(0, 1, 4), -1)            // gap between tiles 0 and 1
        XCTAssertEqual(at(0, 1, 5), 0.2)           // tile 1
        XCTAssertEqual(at(0, 1, 9), 0.3)           // tile 2
        XCTAssertEqual(at(0, 4, 1), 0.4)           // tile 3, second row
        XCTAssertEqual(at(0, 5, 7), 0.5)           // tile 4, bottom-right
        XCTAssertEqual(at(0, 5, 8), -1)            // gap after tile 4
        XCTAssertEqual(at(0, 4, 9), -1)            // empty sixth cell
        XCTAssertEqual(grid.scalars.filter { $0 == 0.3 }.count, 12)

        // [1, C, H, W] tiles are accepted; padding 0 butts them together.
        let plain = imageGrid(images: [Tensor.zeros([1, 1, 2, 2]), Tensor.ones([1, 1, 2, 2])], rows: 1, cols: 2, padding: 0)
        XCTAssertEqual(plain.shape, [1, 2, 4])
        XCTAssertEqual(plain.scalars, [0, 0, 1, 1, 0, 0, 1, 1])
    }

    func testGridToPNGEndToEnd() throws {
        var rng = RandomGenerator(seed: 12)
        let samples = (0..<4).map { _ in rng.uniform([3, 8, 8], low: -1, high: 1) }
        let grid = imageGrid(images: samples, rows: 2, cols: 2)
        let image = PixelImage(tensor: grid)
        XCTAssertEqual(image.width, 2 * 10 + 2)
        XCTAssertEqual(image[0, 0, 0], 255, "white padding")
        let decoded = try PNG.decode(PNG.encode(image, text: [("sampler", "DDIM 25")]))
        XCTAssertEqual(decoded.image, image)
        XCTAssertEqual(decoded.text["sampler"], "DDIM 25")
    }
}
