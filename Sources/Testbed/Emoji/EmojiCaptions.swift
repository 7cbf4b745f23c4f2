import Foundation

/// Captions for the emoji testbed: "{name} in {style} style" (the canonical one), "{name}", and
/// the same two forms for each synonym. Synonyms are the emoji's CLDR keywords without its name
/// and without generic keywords ("face", "clothing", "zodiac" …) listed in
/// `Resources/emoji_generic_keywords.txt`: those name a category, not the emoji.
public struct EmojiCaptions: Sendable {
    /// Lower-cased generic keywords.
    public let genericKeywords: Set<String>

    public init(genericKeywords: some Sequence<String>) {
        self.genericKeywords = Set(genericKeywords.map { Self.normalised($0) })
    }

    /// The filter list shipped with the tool.
    public static func bundled() throws -> EmojiCaptions {
        try load(bundledResource("emoji_generic_keywords.txt", asset: "emoji_generic_keywords.txt"))
    }

    /// A filter list: one keyword a line; blank lines and lines starting with "#" are skipped.
    public static func load(_ url: URL) throws -> EmojiCaptions {
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw AssetError(asset: url.path, reason: "cannot read the generic-keyword list: \(error.localizedDescription)",
                             remedy: "restore the file")
        }
        let words = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        return EmojiCaptions(genericKeywords: words)
    }

    /// Case-folded, with typographic apostrophes made plain (CLDR writes "woman’s clothes").
    static func normalised(_ text: String) -> String {
        text.replacingOccurrences(of: "’", with: "'").lowercased()
    }

    /// Text as it goes into a caption: plain apostrophes, original case.
    public static func captionText(_ text: String) -> String {
        text.replacingOccurrences(of: "’", with: "'")
    }

    /// The keywords that may stand for the emoji, in CLDR's order, without repeats.
    public func synonyms(name: String, keywords: [String]) -> [String] {
        var seen: Set<String> = [Self.normalised(name)]
        var result: [String] = []
        for keyword in keywords {
            let key = Self.normalised(keyword)
            guard !genericKeywords.contains(key), seen.insert(key).inserted else { continue }
            result.append(Self.captionText(keyword))
        }
        return result
    }

    /// "{name} in {style} style" first (the canonical caption), then "{name}", then for each
    /// synonym "{synonym} in {style} style" and "{synonym}".
    public static func captions(name: String, synonyms: [String], style: EmojiStyle) -> [String] {
        ([captionText(name)] + synonyms.map(captionText)).flatMap { ["\($0) in \(style.captionName) style", $0] }
    }
}
