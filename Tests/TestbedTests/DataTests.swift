import Foundation
import XCTest
import Diffusion
@testable import Testbed

final class DataTests: XCTestCase {
    func idx(magic: [UInt8], dims: [Int], payload: [UInt8]) -> Data {
        var bytes = magic
        for d in dims { bytes += [UInt8(d >> 24 & 255), UInt8(d >> 16 & 255), UInt8(d >> 8 & 255), UInt8(d & 255)] }
        return Data(bytes + payload)
    }

    func testIDXParsesImagesAndLabels() throws {
        let images = try IDXArray(idx(magic: [0, 0, 8, 3], dims: [2, 2, 3], payload: Array(0..<12)), file: "img")
        XCTAssertEqual(images.dimensions, [2, 2, 3])
        XCTAssertEqual(images.bytes, Array(0..<12))
        let labels = try IDXArray(idx(magic: [0, 0, 8, 1], dims: [2], payload: [7, 9]), file: "lab")
        let set = try LabelledImages(images: images, labels: labels, imagesFile: "img", labelsFile: "lab")
        XCTAssertEqual(set.labels, [7, 9])
        XCTAssertEqual(set.height, 2)
        XCTAssertEqual(set.width, 3)
    }

    func testIDXErrorsNameTheFile() {
        XCTAssertThrowsError(try IDXArray(idx(magic: [0, 0, 9, 3], dims: [1, 1, 1], payload: [0]), file: "x.idx")) {
            XCTAssertEqual($0 as? IDXError, .badMagic(file: "x.idx", magic: 0x0903))
            XCTAssert("\($0)".contains("x.idx"))
        }
        XCTAssertThrowsError(try IDXArray(idx(magic: [0, 0, 8, 3], dims: [2, 2, 2], payload: [1, 2, 3]), file: "short.idx")) {
            XCTAssertEqual($0 as? IDXError, .truncated(file: "short.idx", expected: 16 + 8, actual: 16 + 3))
        }
        let images = try! IDXArray(idx(magic: [0, 0, 8, 3], dims: [2, 1, 1], payload: [1, 2]), file: "i")
        let labels = try! IDXArray(idx(magic: [0, 0, 8, 1], dims: [3], payload: [1, 2, 3]), file: "l")
        XCTAssertThrowsError(try LabelledImages(images: images, labels: labels, imagesFile: "i", labelsFile: "l")) {
            XCTAssertEqual($0 as? IDXError, .countMismatch(images: "i", labels: "l", imageCount: 2, labelCount: 3))
        }
    }

    func testGunzipReadsPythonsGzipAndRejectsTruncation() throws {
        // gzip.compress(b"hello, fashion-mnist\n", mtime=0) from Python
        let gz: [UInt8] = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xd7,
                           0x51, 0x48, 0x4b, 0x2c, 0xce, 0xc8, 0xcc, 0xcf, 0xd3, 0xcd, 0xcd, 0xcb, 0x2c, 0x2e, 0xe1, 0x02,
                           0x00, 0xc4, 0xcb, 0x74, 0x0c, 0x15, 0x00, 0x00, 0x00]
        XCTAssertEqual(String(decoding: try Zlib.gunzip(gz), as: UTF8.self), "hello, fashion-mnist\n")
        XCTAssertThrowsError(try Zlib.gunzip(Array(gz.prefix(20)))) { XCTAssertEqual($0 as? ZlibError, .truncated) }
    }

    func testCorruptGzipFileIsNamed() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("junk-\(UUID()).gz")
        try Data([0x1f, 0x8b, 8, 0, 1, 2, 3]).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertThrowsError(try IDXArray(contentsOf: url)) { XCTAssert("\($0)".contains(url.path), "\($0)") }
    }

    func testSHA256KnownVectors() {
        XCTAssertEqual(SHA256.hex(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    func testPromptsCoverEveryClass() throws {
        let prompts = try FashionPrompts.bundled()
        XCTAssertEqual(prompts.classes.count, 10)
        XCTAssertEqual(prompts.canonicalPrompt(7), "a photo of a sneaker")
        XCTAssertEqual(prompts.canonicalPrompt(9), "a photo of an ankle boot")
        XCTAssertEqual(prompts.label(forConcept: "Sneaker"), 7)
        XCTAssertEqual(prompts.label(forConcept: "running shoe"), 7)
        XCTAssertNil(prompts.label(forConcept: "giraffe"))
        for c in prompts.classes {
            XCTAssertFalse(c.paraphrases.isEmpty)
            let captions = Set(prompts.trainingCaptions(c.label))
            for p in prompts.paraphrasePrompts(c.label) { XCTAssertFalse(captions.contains(p), "paraphrase \(p) leaks into training") }
        }
    }

    func testRealFashionMNISTWhenInstalled() throws {
        let assets = Assets()
        guard let folder = try? assets.fashionMNIST() else {
            throw XCTSkip("Fashion-MNIST not installed: run `score assets` (apt-get download \(Assets.fashionMNISTPackage))")
        }
        let test = try LabelledImages(imagesURL: folder.appendingPathComponent("t10k-images-idx3-ubyte.gz"),
                                      labelsURL: folder.appendingPathComponent("t10k-labels-idx1-ubyte.gz"))
        XCTAssertEqual(test.count, 10_000)
        XCTAssertEqual(test.height, 28)
        XCTAssertEqual(Set(test.labels), Set(0..<10))
    }
}

final class AssetVerificationTests: XCTestCase {
    func testVerifiedFilesAreRehashedOnlyWhenTheyChange() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("assets-\(UUID())")
        defer { try? FileManager.default.removeItem(at: root) }
        let folder = root.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let file = folder.appendingPathComponent("a.bin")
        try Data("abc".utf8).write(to: file)
        let assets = Assets(cache: root.appendingPathComponent("cache"))
        let digests = ["a.bin": SHA256.hex(Data("abc".utf8))]
        try assets.verify(folder, digests, asset: "test")
        try assets.verify(folder, digests, asset: "test")  // from the marker
        try Data("abd!".utf8).write(to: file)               // size changes: hashed again, and caught
        XCTAssertThrowsError(try assets.verify(folder, digests, asset: "test")) { XCTAssert("\($0)".contains("a.bin")) }
    }
}
