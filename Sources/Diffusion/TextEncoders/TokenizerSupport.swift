import Foundation

// Pieces shared by the CLIP and WordPiece tokenizers: Unicode character classes, normal forms,
// and the special tokens that are cut out of the text before anything else happens.
//
// Both tokenizers follow the Hugging Face `tokenizers` pipeline that transformers runs:
//   1. special tokens ("added tokens") found in the raw text become their ids directly;
//   2. each remaining stretch is normalized (and special tokens marked `normalized` are then
//      found in the normalized text);
//   3. the rest is pre-tokenized into words and each word is turned into sub-word ids.
// Text is handled as Unicode scalars (what Rust calls chars), never as grapheme clusters.

typealias Scalars = [Unicode.Scalar]

// Unicode versions. Swift 6.3 knows Unicode 17; the libraries behind transformers' tokenizers
// know less, and a character they have never heard of is in no category for them. To give the
// same ids we classify each character as of their version:
//   - CLIP's word pattern runs on Oniguruma, Unicode 16.0 (\p{L}, \p{N});
//   - BERT's normalizer and pre-tokenizer use the `unicode_categories` crate, Unicode 8.0
//     (punctuation, control/format/private-use, nonspacing marks), with the categories of the
//     time: a few characters have moved since (see `bertPunctuationMovedSince8`).
// Whitespace (the White_Space property) and the case and normal-form mappings come from newer
// tables on both sides. Checked code point by code point against tokenizers 0.23.

extension Unicode.Scalar {
    /// Assigned in Unicode `major.minor` or before.
    func assigned(by major: Int, _ minor: Int) -> Bool {
        guard let age = properties.age else { return false }
        return age.major < major || (age.major == major && age.minor <= minor)
    }

    /// \p{L} as Oniguruma (Unicode 16.0) sees it.
    var isLetter: Bool {
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return assigned(by: 16, 0)
        default: return false
        }
    }

    /// \p{N} as Oniguruma (Unicode 16.0) sees it.
    var isNumber: Bool {
        switch properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return assigned(by: 16, 0)
        default: return false
        }
    }

    /// \s: the Unicode White_Space property (the tab, line breaks, space, NBSP, U+3000, …).
    var isSpace: Bool { properties.isWhitespace }

    /// \p{P} in Unicode 8.0 (BERT's punctuation).
    var isPunctuation: Bool {
        if WordPieceTokenizer.bertPunctuationMovedSince8.contains(value) { return true }
        switch properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: return assigned(by: 8, 0)
        default: return false
        }
    }
}

/// A token's exact spelling, as UTF-8 bytes. Swift's `String` compares and hashes by canonical
/// equivalence, so "한" (U+D55C) and its jamo spelling (U+1112 U+1161 U+11AB) would be one
/// dictionary key; tokenizers compare code points, and so must we.
struct TokenKey: Hashable {
    var bytes: [UInt8]

    init(_ text: String) { bytes = Array(text.utf8) }

    init<S: Sequence>(scalars: S, prefix: String = "") where S.Element == Unicode.Scalar {
        bytes = Array(prefix.utf8)
        for s in scalars { bytes.append(contentsOf: UTF8.encode(s)!) }
    }
}

enum UnicodeText {
    static func scalars(_ text: String) -> Scalars { Array(text.unicodeScalars) }

    static func string(_ scalars: Scalars) -> String {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }

    static func nfc(_ scalars: Scalars) -> Scalars {
        if scalars.allSatisfy({ $0.isASCII }) { return scalars }
        return Array(string(scalars).precomposedStringWithCanonicalMapping.unicodeScalars)
    }

    static func nfd(_ scalars: Scalars) -> Scalars {
        if scalars.allSatisfy({ $0.isASCII }) { return scalars }
        return Array(string(scalars).decomposedStringWithCanonicalMapping.unicodeScalars)
    }

    /// Lower-cases scalar by scalar with the full (one-to-many) Unicode mapping, as `tokenizers`
    /// does: "İ" becomes "i" + U+0307, and a final "Σ" stays "σ".
    static func lowercased(_ scalars: Scalars) -> Scalars {
        var out = Scalars()
        out.reserveCapacity(scalars.count)
        for s in scalars {
            if s.isASCII {
                out.append(s.value >= 65 && s.value <= 90 ? Unicode.Scalar(UInt8(s.value + 32)) : s)
            } else {
                out.append(contentsOf: s.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return out
    }
}

/// A special token: its text, id, and whether it is looked for in the normalized text
/// (`normalized: true` in tokenizer_config.json) rather than in the raw text.
public struct SpecialToken: Equatable, Sendable {
    public var content: String
    public var id: Int
    public var normalized: Bool

    public init(content: String, id: Int, normalized: Bool = false) {
        self.content = content
        self.id = id
        self.normalized = normalized
    }
}

/// A stretch of text or a special token found in it.
enum TextSegment: Equatable {
    case text(Scalars)
    case special(Int)
}

/// Finds special tokens in text, leftmost first and, among those starting at one place, the
/// longest (the `tokenizers` added-vocabulary rule).
struct SpecialTokenSplitter {
    private let tokens: [(scalars: Scalars, id: Int)]

    init(_ tokens: [(content: Scalars, id: Int)]) {
        self.tokens = tokens.filter { !$0.content.isEmpty }.map { ($0.content, $0.id) }
    }

    func split(_ text: Scalars) -> [TextSegment] {
        guard !tokens.isEmpty else { return text.isEmpty ? [] : [.text(text)] }
        var segments: [TextSegment] = []
        var start = 0, i = 0
        while i < text.count {
            var best: (length: Int, id: Int)? = nil
            for token in tokens where token.scalars.count > (best?.length ?? 0) && i + token.scalars.count <= text.count {
                if text[i..<(i + token.scalars.count)].elementsEqual(token.scalars) {
                    best = (token.scalars.count, token.id)
                }
            }
            if let best {
                if start < i { segments.append(.text(Array(text[start..<i]))) }
                segments.append(.special(best.id))
                i += best.length
                start = i
            } else {
                i += 1
            }
        }
        if start < text.count { segments.append(.text(Array(text[start...]))) }
        return segments
    }
}

/// The two-stage special-token search around a normalizer: raw-text tokens, normalization of
/// what is left, then normalized tokens.
struct SpecialTokenPipeline {
    let raw: SpecialTokenSplitter
    let normalizedSplitter: SpecialTokenSplitter
    let normalize: (Scalars) -> Scalars

    init(specialTokens: [SpecialToken], normalize: @escaping (Scalars) -> Scalars) {
        // One entry per content; a later declaration decides the `normalized` flag.
        var byContent: [String: SpecialToken] = [:]
        var order: [String] = []
        for token in specialTokens {
            if byContent[token.content] == nil { order.append(token.content) }
            byContent[token.content] = token
        }
        let unique = order.map { byContent[$0]! }
        raw = SpecialTokenSplitter(unique.filter { !$0.normalized }.map { (UnicodeText.scalars($0.content), $0.id) })
        normalizedSplitter = SpecialTokenSplitter(unique.filter(\.normalized).map {
            (normalize(UnicodeText.scalars($0.content)), $0.id)
        })
        self.normalize = normalize
    }

    /// Special-token ids and normalized stretches of text, in order.
    func segments(_ text: String) -> [TextSegment] {
        var result: [TextSegment] = []
        for segment in raw.split(UnicodeText.scalars(text)) {
            guard case let .text(scalars) = segment else { result.append(segment); continue }
            result += normalizedSplitter.split(normalize(scalars))
        }
        return result
    }
}

/// Special-token declarations of a tokenizer folder: `special_tokens_map.json`, overridden by
/// `tokenizer_config.json`. Values are strings or `{"content": …, "normalized": …}` objects.
struct SpecialTokenConfig {
    /// role ("bos_token", "pad_token", …) → (content, normalized)
    var entries: [String: (content: String, normalized: Bool)] = [:]
    var modelMaxLength: Int?
    var doLowerCase: Bool?
    var stripAccents: Bool??
    var tokenizeChineseChars: Bool?

    /// The order in which transformers registers the roles; a later role decides the
    /// `normalized` flag of a content shared with an earlier one.
    static let roles = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]

    init() {}

    init(directory: URL) throws {
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let url = directory.appendingPathComponent(name)
            guard let object = try CheckpointFiles.jsonObject(at: url) else { continue }
            for role in Self.roles {
                guard let value = object[role], !(value is NSNull) else { continue }
                if let content = value as? String {
                    entries[role] = (content, false)
                } else if let dict = value as? [String: Any], let content = dict["content"] as? String {
                    entries[role] = (content, (dict["normalized"] as? Bool) ?? false)
                } else {
                    throw TextEncoderError.invalidFile(url, reason: "'\(role)' is neither a string nor an object with a 'content' string")
                }
            }
            if name == "tokenizer_config.json" {
                if let n = object["model_max_length"] as? Int, n > 0, n < 1 << 30 { modelMaxLength = n }
                if let b = object["do_lower_case"] as? Bool { doLowerCase = b }
                if let v = object["strip_accents"] { stripAccents = .some(v as? Bool) }
                if let b = object["tokenize_chinese_chars"] as? Bool { tokenizeChineseChars = b }
            }
        }
    }

    func content(_ role: String) -> String? { entries[role]?.content }

    /// The special tokens in registration order, with ids from `vocabulary`.
    func specialTokens(vocabulary: [String: Int]) -> [SpecialToken] {
        Self.roles.compactMap { role in
            guard let (content, normalized) = entries[role], let id = vocabulary[content] else { return nil }
            return SpecialToken(content: content, id: id, normalized: normalized)
        }
    }
}
