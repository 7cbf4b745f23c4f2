import Diffusion
import Foundation
import SafeTensors
import Tensor

/// A dataset file that cannot be built, read or trusted, naming the file and what is wrong.
public struct EmojiDatasetError: Error, CustomStringConvertible {
    public let file: String
    public let reason: String
    public var description: String { "\(file): \(reason)" }
}

/// One emoji of the dataset: its code point and its CLDR name, keywords and synonyms (the
/// keywords left after `EmojiCaptions`' filter).
public struct EmojiEntry: Codable, Equatable, Sendable {
    public let codepoint: Int
    public let name: String
    public let keywords: [String]
    public let synonyms: [String]

    public init(codepoint: Int, name: String, keywords: [String], synonyms: [String]) {
        self.codepoint = codepoint
        self.name = name
        self.keywords = keywords
        self.synonyms = synonyms
    }

    public var character: String { Unicode.Scalar(UInt32(codepoint)).map { String($0) } ?? "" }
    public var hex: String { "U+" + String(codepoint, radix: 16, uppercase: true) }
}

/// How many emoji each source has in U+1F300–1FAFF, and how many all of them share.
public struct EmojiCensus: Codable, Equatable, Sendable {
    /// Code points in the range with a CLDR name, per source ("cldr", then the style ids).
    public var perSource: [String: Int]
    /// In all four styles and named by CLDR, skin-tone modifiers included.
    public var inAllStyles: Int
    /// In all four styles but without a CLDR name (so left out), as "U+…".
    public var unnamed: [String]
    /// Skin-tone modifiers (U+1F3FB–1F3FF, colour swatches, not objects) left out of the dataset.
    public var skinToneModifiers: Int
    /// Left out because a style's glyph has no ink.
    public var blank: [String]
    /// What the dataset holds.
    public var selected: Int
}

/// The emoji testbed's dataset: every emoji that all four styles draw, rendered at `size`×`size`,
/// `copies` times per (emoji, style): copy 0 centred, the others moved and scaled a little
/// (augmentation, since each style draws each emoji once).
public struct EmojiDataset: Sendable {
    public static let format = "score-emoji-dataset"
    /// Bumped whenever the rendering, selection or layout changes what a build produces.
    public static let version = 1
    public static let codepointRange: ClosedRange<UInt32> = 0x1F300...0x1FAFF
    public static let skinToneModifiers: ClosedRange<UInt32> = 0x1F3FB...0x1F3FF

    public struct Options: Sendable {
        public var size = 32
        public var copies = 4
        public var seed: UInt64 = 0
        /// Keep only the first `limit` emoji of the intersection (tests, previews).
        public var limit: Int?
        /// Keep only these code points of the intersection (tests, previews); nil keeps all.
        public var codepoints: Set<UInt32>?
        /// The longer side of a drawing's ink box covers this fraction of the image (copy 0).
        public var fill: Float = 0.875
        /// Augmented copies are scaled by a factor in [1 − scaleJitter, 1] …
        public var scaleJitter: Float = 0.15
        /// … and moved by up to ± shift × size pixels in x and y.
        public var shift: Float = 2.0 / 32

        public init() {}
    }

    public let size: Int
    public let copies: Int
    public let seed: UInt64
    public let options: [String: String]
    public let entries: [EmojiEntry]
    public let styles: [EmojiStyle]
    /// [count, size, size, 3] RGB on white, rows top first.
    public let images: [UInt8]
    public let emoji: [Int]
    public let style: [Int]
    public let copy: [Int]
    /// [count, 3]: scale, dx, dy (pixels) of each image's placement.
    public let placement: [Float]
    /// SHA-256 of the sources the images were drawn from, by asset.
    public let sources: [String: String]
    public let census: EmojiCensus?

    public var count: Int { emoji.count }

    // MARK: Building

    /// The code points in `codepointRange` named by CLDR and drawn by every style, skin-tone
    /// modifiers excluded, in code point order; and the counts behind them.
    public static func select(annotations: [String: CLDRAnnotation], drawings: [EmojiDrawings]) -> (codepoints: [UInt32], census: EmojiCensus) {
        var perSource: [String: Int] = ["cldr": 0]
        for d in drawings { perSource[d.style.id] = 0 }
        var inAll: [UInt32] = []
        var unnamed: [String] = []
        for cp in codepointRange {
            guard let scalar = Unicode.Scalar(cp) else { continue }
            guard annotations[String(scalar)]?.name != nil else {
                if drawings.allSatisfy({ $0.contains(cp) }) { unnamed.append(String(format: "U+%X", cp)) }
                continue
            }
            perSource["cldr"]! += 1
            var all = true
            for d in drawings {
                if d.contains(cp) { perSource[d.style.id]! += 1 } else { all = false }
            }
            if all { inAll.append(cp) }
        }
        let selected = inAll.filter { !skinToneModifiers.contains($0) }
        let census = EmojiCensus(perSource: perSource, inAllStyles: inAll.count, unnamed: unnamed, skinToneModifiers: inAll.count - selected.count,
                                 blank: [], selected: selected.count)
        return (selected, census)
    }

    /// Where copy `copy` of (emoji, style) goes: copy 0 centred at `fill`; the others scaled and
    /// moved by draws from a Philox stream forked on (code point, style, copy), so each image's
    /// placement does not depend on which other emoji are built.
    public static func placement(options: Options, codepoint: UInt32, style: EmojiStyle, copy: Int) -> EmojiPlacement {
        guard copy > 0 else { return EmojiPlacement(fill: options.fill) }
        var generator = RandomGenerator(seed: options.seed)
            .fork(UInt64(codepoint) << 16 | UInt64(style.rawValue) << 8 | UInt64(copy))
        let u = generator.uniform([3]).scalars
        let maxShift = options.shift * Float(options.size)
        return EmojiPlacement(fill: options.fill, scale: 1 - options.scaleJitter * u[0],
                              dx: (2 * u[1] - 1) * maxShift, dy: (2 * u[2] - 1) * maxShift)
    }

    /// Renders the dataset from installed sources. `log` gets progress lines.
    public static func build(sources: EmojiSources, options: Options = Options(), captions: EmojiCaptions,
                             log: (String) -> Void = { _ in }) throws -> EmojiDataset {
        guard (8...256).contains(options.size) else {
            throw EmojiDatasetError(file: "--size", reason: "must be 8…256, got \(options.size)")
        }
        guard (1...256).contains(options.copies) else {
            throw EmojiDatasetError(file: "--copies", reason: "must be 1…256, got \(options.copies)")
        }
        let annotations = try CLDRAnnotations.load(sources.cldrAnnotations)
        let drawings = try openEmojiDrawings(sources)
        var (codepoints, census) = select(annotations: annotations, drawings: drawings)
        log("\(census.inAllStyles) emoji in U+1F300–1FAFF are named by CLDR and drawn in all four styles "
            + "(\(census.skinToneModifiers) skin-tone modifiers left out; \(census.unnamed.count) more have no CLDR name: \(census.unnamed.joined(separator: ", "))); "
            + "named by CLDR, per source: "
            + census.perSource.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        if let only = options.codepoints { codepoints = codepoints.filter { only.contains($0) } }
        if let limit = options.limit { codepoints = Array(codepoints.prefix(max(0, limit))) }

        var entries: [EmojiEntry] = []
        var images: [UInt8] = [], emoji: [Int] = [], style: [Int] = [], copy: [Int] = [], placement: [Float] = []
        let side = options.size
        images.reserveCapacity(codepoints.count * drawings.count * options.copies * side * side * 3)
        for (n, cp) in codepoints.enumerated() {
            let drawn = try drawings.map { try $0.draw(cp) }
            if let blank = zip(drawings, drawn).first(where: { $0.1.inkBounds() == nil }) {
                census.blank.append(String(format: "U+%X (%@)", cp, blank.0.style.id))
                continue
            }
            let annotation = annotations[String(Unicode.Scalar(cp)!)]!
            let index = entries.count
            entries.append(EmojiEntry(codepoint: Int(cp), name: annotation.name!, keywords: annotation.keywords,
                                      synonyms: captions.synonyms(name: annotation.name!, keywords: annotation.keywords)))
            for (d, drawing) in zip(drawings, drawn) {
                for c in 0..<options.copies {
                    let p = Self.placement(options: options, codepoint: cp, style: d.style, copy: c)
                    images += drawing.placed(size: side, placement: p)
                    emoji.append(index)
                    style.append(d.style.rawValue)
                    copy.append(c)
                    placement += [p.scale, p.dx, p.dy]
                }
            }
            if (n + 1) % 100 == 0 { log("rendered \(n + 1)/\(codepoints.count) emoji") }
        }
        census.selected = entries.count
        if !census.blank.isEmpty { log("left out (a style draws no ink): \(census.blank.joined(separator: ", "))") }
        return EmojiDataset(
            size: side, copies: options.copies, seed: options.seed,
            options: ["fill": "\(options.fill)", "scale_jitter": "\(options.scaleJitter)", "shift": "\(options.shift)"],
            entries: entries, styles: drawings.map(\.style), images: images, emoji: emoji, style: style, copy: copy,
            placement: placement,
            sources: Dictionary(uniqueKeysWithValues: EmojiSource.all.map { ($0.asset, $0.sha256) }), census: census)
    }

    // MARK: The file

    /// The default place of a built dataset: `<cache>/emoji/dataset/emoji-v<version>-<size>px.safetensors`.
    public static func defaultURL(assets: Assets, size: Int) -> URL {
        assets.cache.appendingPathComponent("emoji/dataset/emoji-v\(version)-\(size)px.safetensors")
    }

    /// Where `score dataset emoji` writes a build when no output is given: the default file
    /// (what training, the judges and the checks read) only for a full build with the default
    /// copies and seed; a slice or another augmentation goes to `…-preview.safetensors` beside
    /// it, so a quick look at a few emoji never replaces the full set.
    public static func outputURL(assets: Assets, options: Options) -> URL {
        let full = defaultURL(assets: assets, size: options.size)
        let defaults = Options()
        let isDefaultBuild = options.limit == nil && options.codepoints == nil && options.copies == defaults.copies && options.seed == defaults.seed
        guard !isDefaultBuild else { return full }
        return full.deletingLastPathComponent().appendingPathComponent("emoji-v\(version)-\(options.size)px-preview.safetensors")
    }

    private struct StyleRecord: Codable {
        let id: String
        let caption_name: String
        let asset: String
        let package: String
        let version: String
        let licence: String
    }

    /// The tensors as written: images U8, labels I64, placements F32 (little-endian).
    private var tensors: [TensorToWrite] {
        func int64Bytes(_ values: [Int]) -> [UInt8] {
            values.flatMap { value -> [UInt8] in withUnsafeBytes(of: Int64(value).littleEndian) { Array($0) } }
        }
        return [
            TensorToWrite(name: "images", shape: [count, size, size, 3], data: .raw(images, dtype: .u8)),
            TensorToWrite(name: "emoji", shape: [count], data: .raw(int64Bytes(emoji), dtype: .i64)),
            TensorToWrite(name: "style", shape: [count], data: .raw(int64Bytes(style), dtype: .i64)),
            TensorToWrite(name: "copy", shape: [count], data: .raw(int64Bytes(copy), dtype: .i64)),
            TensorToWrite(name: "placement", shape: [count, 3],
                          data: .raw(placement.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }, dtype: .f32)),
        ]
    }

    private func metadataWithoutHash() throws -> [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        func json<T: Encodable>(_ value: T) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }
        var metadata = options
        metadata["format"] = Self.format
        metadata["version"] = "\(Self.version)"
        metadata["size"] = "\(size)"
        metadata["copies"] = "\(copies)"
        metadata["seed"] = "\(seed)"
        metadata["layout"] = "images U8 [N, size, size, 3] RGB on white, rows top first; emoji, style, copy I64 [N] "
            + "(emoji indexes the emoji list, style the styles list, copy 0 is centred); placement F32 [N, 3] scale, dx, dy in pixels"
        metadata["styles"] = try json(styles.map {
            StyleRecord(id: $0.id, caption_name: $0.captionName, asset: $0.source.asset, package: $0.source.package,
                        version: $0.source.version, licence: $0.source.licence)
        })
        metadata["emoji"] = try json(entries)
        metadata["sources"] = try json(sources)
        if let census { metadata["census"] = try json(census) }
        return metadata
    }

    /// SHA-256 over the metadata (bar the hash, in key order) and each tensor's name, dtype,
    /// shape and bytes (in name order): what the file says, independent of its header layout.
    public func contentHash() throws -> String {
        try Self.contentHash(metadata: metadataWithoutHash(), tensors: tensors.map { ($0.name, $0.data.dtypeName, $0.shape, $0.bytes) })
    }

    static func contentHash(metadata: [String: String], tensors: [(String, String, [Int], [UInt8])]) -> String {
        var bytes = [UInt8]()
        bytes += Array("\(format) content\n".utf8)
        for key in metadata.keys.sorted() where key != "content_sha256" {
            bytes += Array(key.utf8) + [0] + Array(metadata[key]!.utf8) + [0]
        }
        for (name, dtype, shape, data) in tensors.sorted(by: { $0.0 < $1.0 }) {
            bytes += Array("\(name)\0\(dtype)\0\(shape.map(String.init).joined(separator: ","))\0".utf8)
            bytes += data
        }
        return SHA256.hex(Data(bytes))
    }

    /// Writes one self-contained safetensors file (atomically, via the SafeTensors writer) and
    /// returns its content hash.
    ///
    /// Names, keywords, styles, sources and the hash go into the file's `__metadata__` (JSON
    /// strings) rather than a JSON file beside it: one file cannot drift from its labels, a reader
    /// needs nothing but a safetensors parser, and the hash covers images and text together. The
    /// text is ~150 kB, far below the format's 100 MB header limit.
    @discardableResult
    public func write(to url: URL) throws -> String {
        var metadata = try metadataWithoutHash()
        let hash = Self.contentHash(metadata: metadata, tensors: tensors.map { ($0.name, $0.data.dtypeName, $0.shape, $0.bytes) })
        metadata["content_sha256"] = hash
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try writeSafeTensors(tensors, metadata: metadata, to: url)
        return hash
    }

    /// Reads a dataset file, checking its format, version, shapes and (with `verify`) its hash.
    public init(contentsOf url: URL, verify: Bool = true) throws {
        let file = try SafeTensorsFile(url: url)
        func fail(_ reason: String) -> EmojiDatasetError { EmojiDatasetError(file: url.path, reason: reason) }
        let metadata = file.metadata
        guard metadata["format"] == Self.format else {
            throw fail("not an emoji dataset (metadata format is \(metadata["format"].map { "\"\($0)\"" } ?? "missing"))")
        }
        guard metadata["version"] == "\(Self.version)" else {
            throw fail("dataset version \(metadata["version"] ?? "?"), this tool reads version \(Self.version): rebuild it with `score dataset emoji`")
        }
        func number(_ key: String) throws -> Int {
            guard let value = metadata[key].flatMap({ Int($0) }) else { throw fail("metadata key \"\(key)\" is missing or not a number") }
            return value
        }
        func decode<T: Decodable>(_ type: T.Type, _ key: String) throws -> T {
            guard let text = metadata[key] else { throw fail("metadata key \"\(key)\" is missing") }
            do { return try JSONInput.decode(T.self, from: Data(text.utf8)) } catch {
                throw fail("metadata key \"\(key)\" is not valid: \(error)")
            }
        }
        size = try number("size")
        copies = try number("copies")
        seed = UInt64(try number("seed"))
        options = metadata.filter { ["fill", "scale_jitter", "shift"].contains($0.key) }
        entries = try decode([EmojiEntry].self, "emoji")
        let styleRecords = try decode([StyleRecord].self, "styles")
        styles = try styleRecords.map { record in
            guard let style = EmojiStyle.allCases.first(where: { $0.id == record.id }) else { throw fail("unknown style \"\(record.id)\"") }
            return style
        }
        sources = try decode([String: String].self, "sources")
        census = metadata["census"] == nil ? nil : try decode(EmojiCensus.self, "census")

        func raw(_ name: String, _ dtype: DType, _ shape: [Int]) throws -> [UInt8] {
            guard file.contains(name) else { throw fail("tensor \"\(name)\" is missing") }
            let info = try file.info(name)
            guard info.dtype == dtype, info.shape == shape else {
                throw fail("tensor \"\(name)\" is \(info.dtype.rawValue) \(info.shape), expected \(dtype.rawValue) \(shape)")
            }
            return try file.withRawBytes(name) { Array($0) }
        }
        guard file.contains("emoji") else { throw fail("tensor \"emoji\" is missing") }
        let n = try file.info("emoji").shape.first ?? 0
        func ints(_ bytes: [UInt8]) -> [Int] {
            stride(from: 0, to: bytes.count, by: 8).map { i in
                Int(bytes[i..<i + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
            }
        }
        let imageBytes = try raw("images", .u8, [n, size, size, 3])
        let emojiBytes = try raw("emoji", .i64, [n]), styleBytes = try raw("style", .i64, [n]), copyBytes = try raw("copy", .i64, [n])
        let placementBytes = try raw("placement", .f32, [n, 3])
        images = imageBytes
        emoji = ints(emojiBytes)
        style = ints(styleBytes)
        copy = ints(copyBytes)
        placement = stride(from: 0, to: placementBytes.count, by: 4).map { i in
            Float(bitPattern: UInt32(placementBytes[i]) | UInt32(placementBytes[i + 1]) << 8
                  | UInt32(placementBytes[i + 2]) << 16 | UInt32(placementBytes[i + 3]) << 24)
        }
        guard emoji.allSatisfy({ entries.indices.contains($0) }), style.allSatisfy({ styles.indices.contains($0) }) else {
            throw fail("labels out of range (\(entries.count) emoji, \(styles.count) styles)")
        }
        if verify {
            let expected = metadata["content_sha256"] ?? ""
            let actual = Self.contentHash(metadata: metadata, tensors: [
                ("copy", "I64", [n], copyBytes), ("emoji", "I64", [n], emojiBytes), ("images", "U8", [n, size, size, 3], imageBytes),
                ("placement", "F32", [n, 3], placementBytes), ("style", "I64", [n], styleBytes),
            ])
            guard actual == expected else {
                throw fail("content SHA-256 is \(actual), the file says \(expected.isEmpty ? "nothing" : expected): rebuild it with `score dataset emoji`")
            }
        }
    }

    /// Internal, not private: tests build hand-made datasets with it (EmojiBenchmarkTests).
    init(size: Int, copies: Int, seed: UInt64, options: [String: String], entries: [EmojiEntry], styles: [EmojiStyle],
         images: [UInt8], emoji: [Int], style: [Int], copy: [Int], placement: [Float], sources: [String: String],
         census: EmojiCensus?) {
        self.size = size
        self.copies = copies
        self.seed = seed
        self.options = options
        self.entries = entries
        self.styles = styles
        self.images = images
        self.emoji = emoji
        self.style = style
        self.copy = copy
        self.placement = placement
        self.sources = sources
        self.census = census
    }

    // MARK: Use

    /// Image `index` as an 8-bit RGB image.
    public func image(_ index: Int) -> PixelImage {
        let bytes = size * size * 3
        return PixelImage(width: size, height: size, channels: 3, pixels: Array(images[index * bytes..<(index + 1) * bytes]))
    }

    /// Images at `indices` as [n, 3, size, size] in [−1, 1] (white is 1).
    public func batch(_ indices: [Int]) -> Tensor {
        let plane = size * size
        return Tensor(shape: [indices.count, 3, size, size]) { out in
            for (n, index) in indices.enumerated() {
                let source = index * plane * 3
                for p in 0..<plane {
                    for c in 0..<3 { out[(n * 3 + c) * plane + p] = Float(images[source + p * 3 + c]) / 127.5 - 1 }
                }
            }
        }
    }

    /// The captions of image `index`: canonical "{name} in {style} style" first.
    public func captions(_ index: Int) -> [String] {
        let entry = entries[emoji[index]]
        return EmojiCaptions.captions(name: entry.name, synonyms: entry.synonyms, style: styles[style[index]])
    }

    /// The index of (emoji, style, copy).
    public func index(emoji e: Int, style s: Int, copy c: Int) -> Int { (e * styles.count + s) * copies + c }

    /// A grid: one row per style, one column per emoji in `emojiIndices`, copy `copy`, each
    /// image magnified `zoom` times (nearest neighbour), with a `gap`-pixel grey border.
    public func styleGrid(emojiIndices: [Int], copy c: Int = 0, zoom: Int = 2, gap: Int = 2) -> PixelImage {
        let cell = size * zoom
        let width = emojiIndices.count * (cell + gap) + gap, height = styles.count * (cell + gap) + gap
        var pixels = [UInt8](repeating: 160, count: width * height * 3)
        for (column, e) in emojiIndices.enumerated() {
            for s in styles.indices {
                let source = index(emoji: e, style: s, copy: c) * size * size * 3
                let left = gap + column * (cell + gap), top = gap + s * (cell + gap)
                for y in 0..<cell {
                    for x in 0..<cell {
                        let from = source + ((y / zoom) * size + x / zoom) * 3, to = ((top + y) * width + left + x) * 3
                        pixels[to] = images[from]; pixels[to + 1] = images[from + 1]; pixels[to + 2] = images[from + 2]
                    }
                }
            }
        }
        return PixelImage(width: width, height: height, channels: 3, pixels: pixels)
    }
}

extension TensorData {
    var dtypeName: String {
        switch self {
        case .floats(_, let dtype): return dtype.rawValue
        case .int64s: return DType.i64.rawValue
        case .raw(_, let dtype): return dtype.rawValue
        }
    }
}

extension TensorToWrite {
    /// The raw bytes of a `.raw` tensor (the only kind the emoji dataset writes).
    var bytes: [UInt8] {
        if case .raw(let bytes, _) = data { return bytes }
        preconditionFailure("EmojiDataset writes raw tensors only")
    }
}

extension EmojiDataset {
    /// Eight everyday emoji for sample grids: red apple, cat face, pizza, cactus, guitar, ghost,
    /// automobile, rocket.
    public static let sampleCodepoints: [Int] = [0x1F34E, 0x1F431, 0x1F355, 0x1F335, 0x1F3B8, 0x1F47B, 0x1F697, 0x1F680]

    /// The indices of `codepoints` that the dataset holds, else its first `count` emoji.
    public func sampleEmojiIndices(_ codepoints: [Int] = EmojiDataset.sampleCodepoints, count: Int = 8) -> [Int] {
        let found = codepoints.compactMap { cp in entries.firstIndex { $0.codepoint == cp } }
        return found.isEmpty ? Array(entries.indices.prefix(count)) : found
    }
}
