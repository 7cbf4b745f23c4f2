import ArgumentParser
import Diffusion
import Foundation
import Testbed

struct DatasetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dataset",
        abstract: "Build the testbed's datasets.",
        subcommands: [EmojiDatasetCommand.self])
}

struct EmojiDatasetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "emoji",
        abstract: "Render the emoji testbed: every emoji in U+1F300–1FAFF drawn by all four styles (Noto, Twemoji, OpenMoji, Symbola).",
        discussion: """
            Installs the sources first if needed (as `score assets --emoji`). Writes one safetensors file: \\
            images U8 [N, size, size, 3], emoji/style/copy labels, and names, keywords, synonyms, sources and a \\
            content SHA-256 in its metadata. See docs/EMOJI.md.
            """)

    @Option(help: "Image side in pixels.") var size = 32
    @Option(help: "Images per (emoji, style): copy 0 centred, the others shifted and scaled a little.") var copies = 4
    @Option(help: "Seed of the augmentation.") var seed: UInt64 = 0
    @Option(help: "Keep only the first N emoji (previews, tests).") var limit: Int?
    @Option(help: "Keep only these code points, hex, comma-separated (e.g. 1F34E,1F431).") var codepoints: String?
    @Option(help: "Output file (default: <cache>/emoji/dataset/emoji-v<version>-<size>px.safetensors; a slice, or other --copies or --seed, goes to …-preview.safetensors beside it).") var out: String?
    @Option(help: "Also write a PNG grid of sample emoji (rows: styles) to this file.") var grid: String?
    @Option(help: "The copy the grid shows (0: centred; others: augmented).") var gridCopy = 0
    @Option(help: "Cache directory (default: $SCORE_CACHE or ~/.cache/score).") var cache: String?

    func run() throws {
        guard copies >= 1 else { throw ValidationError("--copies must be at least 1, got \(copies)") }
        guard (0..<copies).contains(gridCopy) else { throw ValidationError("--grid-copy must be in 0..<\(copies), got \(gridCopy)") }
        let assets = Assets(cache: cache.map { URL(fileURLWithPath: $0) }, log: { print("… \($0)") })
        let sources = try assets.emojiSources()
        var options = EmojiDataset.Options()
        options.size = size
        options.copies = copies
        options.seed = seed
        options.limit = limit
        if let codepoints {
            options.codepoints = Set(try codepoints.split(separator: ",").map { text -> UInt32 in
                let hex = text.trimmingCharacters(in: .whitespaces).uppercased().replacingOccurrences(of: "U+", with: "")
                guard let value = UInt32(hex, radix: 16) else { throw ValidationError("--codepoints: \"\(text)\" is not a hex code point") }
                return value
            })
        }
        let start = Date()
        let dataset = try EmojiDataset.build(sources: sources, options: options, captions: try EmojiCaptions.bundled(),
                                             log: { print("… \($0)") })
        let url = out.map { URL(fileURLWithPath: $0) } ?? EmojiDataset.outputURL(assets: assets, options: options)
        let hash = try dataset.write(to: url)
        let bytes = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? 0
        print("""
            \(dataset.entries.count) emoji × \(dataset.styles.count) styles × \(dataset.copies) copies = \(dataset.count) images of \(size)×\(size) \
            in \(String(format: "%.1f", Date().timeIntervalSince(start))) s
            wrote \(url.path) (\(String(format: "%.1f", Double(bytes) / 1_048_576)) MiB, format version \(EmojiDataset.version))
            content SHA-256 \(hash)
            """)
        if let grid {
            let gridURL = URL(fileURLWithPath: grid)
            try PNG.write(dataset.styleGrid(emojiIndices: dataset.sampleEmojiIndices(), copy: gridCopy), to: gridURL)
            print("wrote \(gridURL.path) (rows: \(dataset.styles.map(\.captionName).joined(separator: ", ")))")
        }
    }
}
