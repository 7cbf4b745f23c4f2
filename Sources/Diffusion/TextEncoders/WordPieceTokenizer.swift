import Foundation

/// BERT's tokenizer (basic tokenizer + WordPiece), as transformers' `BertTokenizer` runs it
/// (the `tokenizers` backend): the ids are the same for every input.
///
/// Steps: special tokens (`[CLS]`, `[SEP]`, `[PAD]`, `[UNK]`, `[MASK]`) are cut out of the raw
/// text; the rest is cleaned (NUL, U+FFFD and control/format/private-use characters dropped,
/// whitespace → space), CJK ideographs get spaces around them, accents are stripped (NFD, then
/// nonspacing marks dropped; by default when lower-casing) and it is lower-cased; words are
/// split at whitespace and each punctuation character stands alone; each word becomes the
/// longest vocabulary prefix, then `##`-continuations, or `[UNK]` when that fails or the word
/// is longer than `maxInputCharsPerWord`. A sequence is `[CLS]`, at most `maxLength − 2`
/// tokens, `[SEP]`, then `[PAD]`s.
public final class WordPieceTokenizer: @unchecked Sendable {
    /// Tokens by id (the lines of vocab.txt).
    public let tokens: [String]
    /// Exact spelling → id (see `TokenKey`; a later duplicate line wins, as in `tokenizers`).
    private let ids: [TokenKey: Int]
    public let lowercase: Bool
    public let stripAccents: Bool
    public let tokenizeChineseCharacters: Bool
    public let maxInputCharsPerWord: Int
    public let continuingSubwordPrefix = "##"
    public let clsToken: SpecialToken
    public let sepToken: SpecialToken
    public let padToken: SpecialToken
    public let unkToken: SpecialToken
    /// Longest sequence produced, special tokens included.
    public var maxLength: Int

    private let specials: SpecialTokenPipeline

    /// Builds a tokenizer from `vocab.txt` (one token per line; the line number is the id).
    /// `stripAccents` nil follows `lowercase`, as in BERT.
    public convenience init(vocabularyURL: URL, lowercase: Bool = true, stripAccents: Bool? = nil,
                            tokenizeChineseCharacters: Bool = true, maxLength: Int = 512,
                            maxInputCharsPerWord: Int = 100) throws {
        try self.init(vocabularyURL: vocabularyURL, config: SpecialTokenConfig(), lowercase: lowercase,
                      stripAccents: stripAccents, tokenizeChineseCharacters: tokenizeChineseCharacters,
                      maxLength: maxLength, maxInputCharsPerWord: maxInputCharsPerWord)
    }

    /// Loads `vocab.txt` from a model folder, with `tokenizer_config.json` /
    /// `special_tokens_map.json` when present (lower-casing, accents, special tokens,
    /// `model_max_length`).
    public convenience init(directory: URL, maxLength: Int? = nil) throws {
        let config = try SpecialTokenConfig(directory: directory)
        try self.init(vocabularyURL: directory.appendingPathComponent("vocab.txt"), config: config,
                      lowercase: config.doLowerCase ?? true, stripAccents: config.stripAccents ?? nil,
                      tokenizeChineseCharacters: config.tokenizeChineseChars ?? true,
                      maxLength: maxLength ?? config.modelMaxLength ?? 512, maxInputCharsPerWord: 100)
    }

    init(vocabularyURL: URL, config: SpecialTokenConfig, lowercase: Bool, stripAccents: Bool?,
         tokenizeChineseCharacters: Bool, maxLength: Int, maxInputCharsPerWord: Int) throws {
        let tokens = try Self.readVocabulary(vocabularyURL)
        self.tokens = tokens
        var ids: [TokenKey: Int] = [:]
        for (id, token) in tokens.enumerated() { ids[TokenKey(token)] = id }
        self.ids = ids
        var config = config
        let defaults = ["unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                        "mask_token": "[MASK]"]
        for (role, content) in defaults where config.entries[role] == nil { config.entries[role] = (content, false) }
        func token(_ role: String) throws -> SpecialToken {
            let (content, normalized) = config.entries[role]!
            guard let id = ids[TokenKey(content)] else {
                throw TextEncoderError.invalidFile(vocabularyURL, reason: "the \(role) '\(content)' is not in the vocabulary")
            }
            return SpecialToken(content: content, id: id, normalized: normalized)
        }
        clsToken = try token("cls_token")
        sepToken = try token("sep_token")
        padToken = try token("pad_token")
        unkToken = try token("unk_token")
        self.lowercase = lowercase
        let strip = stripAccents ?? lowercase
        self.stripAccents = strip
        self.tokenizeChineseCharacters = tokenizeChineseCharacters
        self.maxLength = maxLength
        self.maxInputCharsPerWord = maxInputCharsPerWord
        let specialTokens = SpecialTokenConfig.roles.compactMap { role -> SpecialToken? in
            guard let (content, normalized) = config.entries[role], let id = ids[TokenKey(content)] else { return nil }
            return SpecialToken(content: content, id: id, normalized: normalized)
        }
        specials = SpecialTokenPipeline(specialTokens: specialTokens) { text in
            Self.normalize(text, lowercase: lowercase, stripAccents: strip, chinese: tokenizeChineseCharacters)
        }
    }

    static func readVocabulary(_ url: URL) throws -> [String] {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw TextEncoderError.missingFile(url, what: "the WordPiece vocabulary, one token per line")
        }
        guard let data = try? Data(contentsOf: url), let text = String(data: data, encoding: .utf8) else {
            throw TextEncoderError.invalidFile(url, reason: "not UTF-8 text")
        }
        // Split on the newline byte: Swift treats "\r\n" as one Character.
        var lines = text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line in
            String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line, as: UTF8.self)
        }
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard !lines.isEmpty else { throw TextEncoderError.invalidFile(url, reason: "the vocabulary is empty") }
        return lines
    }

    /// The id of a token spelled exactly `token`.
    public func id(of token: String) -> Int? { ids[TokenKey(token)] }

    public var vocabularySize: Int { tokens.count }

    // MARK: Tokenizing

    /// CJK ideographs as `tokenizers` lists them. Its range for extension E starts at U+2B920,
    /// not U+2B820 (as Google's BERT has it): we follow `tokenizers`, whose ids we must match.
    static func isChinese(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F: return true
        default: return false
        }
    }

    /// Characters that were punctuation in Unicode 8.0 and have another category now.
    static let bertPunctuationMovedSince8: Set<UInt32> = [0x166D, 0x111C9]
    /// Nonspacing marks of Unicode 8.0 that are spacing marks now, and the reverse.
    static let nonspacingMarksMovedSince8: Set<UInt32> = [0x1734, 0x1171E]
    static let nonspacingMarksNotIn8: Set<UInt32> = [0x1885, 0x1886, 0xA9BD, 0x111C9]
    /// Characters whose canonical decomposition `tokenizers`' NFD does not know.
    static let notDecomposed: Set<UInt32> = [0x11938]

    /// Control characters in BERT's sense, Unicode 8.0 (the tab and line breaks are whitespace).
    static func isControl(_ s: Unicode.Scalar) -> Bool {
        if s == "\t" || s == "\n" || s == "\r" { return false }
        switch s.properties.generalCategory {
        case .control, .format, .privateUse, .surrogate: return s.assigned(by: 8, 0)
        default: return false
        }
    }

    /// A nonspacing mark (dropped when stripping accents), Unicode 8.0.
    static func isNonspacingMark(_ s: Unicode.Scalar) -> Bool {
        if nonspacingMarksMovedSince8.contains(s.value) { return true }
        if nonspacingMarksNotIn8.contains(s.value) { return false }
        return s.properties.generalCategory == .nonspacingMark && s.assigned(by: 8, 0)
    }

    /// NFD, leaving alone the few characters `tokenizers` does not decompose.
    static func decomposed(_ text: Scalars) -> Scalars {
        guard text.contains(where: { notDecomposed.contains($0.value) }) else { return UnicodeText.nfd(text) }
        var out = Scalars(), run = Scalars()
        for s in text {
            if notDecomposed.contains(s.value) {
                out += UnicodeText.nfd(run) + [s]
                run = []
            } else {
                run.append(s)
            }
        }
        return out + UnicodeText.nfd(run)
    }

    static func isBertPunctuation(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII {
            let v = s.value
            return (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v)
        }
        return s.isPunctuation
    }

    /// BERT's normalizer: clean, space out CJK, strip accents, lower-case (in that order).
    static func normalize(_ text: Scalars, lowercase: Bool, stripAccents: Bool, chinese: Bool) -> Scalars {
        var out = Scalars()
        out.reserveCapacity(text.count)
        for s in text {
            if s.value == 0 || s.value == 0xFFFD || isControl(s) { continue }
            if s.isSpace {
                out.append(" ")
            } else if chinese && isChinese(s) {
                out += [" ", s, " "]
            } else {
                out.append(s)
            }
        }
        if stripAccents {
            out = decomposed(out).filter { !isNonspacingMark($0) }
        }
        return lowercase ? UnicodeText.lowercased(out) : out
    }

    /// Words of normalized text: split at whitespace, each punctuation character on its own.
    static func words(_ text: Scalars) -> [Scalars] {
        var words: [Scalars] = []
        var current = Scalars()
        for s in text {
            if s.isSpace {
                if !current.isEmpty { words.append(current); current = [] }
            } else if isBertPunctuation(s) {
                if !current.isEmpty { words.append(current); current = [] }
                words.append([s])
            } else {
                current.append(s)
            }
        }
        if !current.isEmpty { words.append(current) }
        return words
    }

    /// WordPiece ids of one word: greedy longest match, `##` continuations, else `[UNK]`.
    func wordPiece(_ word: Scalars) -> [Int] {
        if word.count > maxInputCharsPerWord { return [unkToken.id] }
        var pieces: [Int] = []
        var start = 0
        while start < word.count {
            var end = word.count
            var found: Int? = nil
            while start < end {
                let key = TokenKey(scalars: word[start..<end], prefix: start > 0 ? continuingSubwordPrefix : "")
                if let id = ids[key] { found = id; break }
                end -= 1
            }
            guard let id = found else { return [unkToken.id] }
            pieces.append(id)
            start = end
        }
        return pieces
    }

    /// Token ids of `text` without `[CLS]`/`[SEP]`, padding or truncation.
    public func encode(_ text: String) -> [Int] {
        var result: [Int] = []
        for segment in specials.segments(text) {
            switch segment {
            case let .special(id): result.append(id)
            case let .text(scalars): for word in Self.words(scalars) { result += wordPiece(word) }
            }
        }
        return result
    }

    /// Token strings of `text` (without `[CLS]`/`[SEP]`), for inspection.
    public func tokenize(_ text: String) -> [String] { encode(text).map { tokens[$0] } }

    /// Ids and attention masks of a batch: `[CLS]` + at most `maxLength − 2` tokens + `[SEP]`,
    /// padded with `[PAD]` to the longest sequence (or to `maxLength`).
    public func callAsFunction(_ texts: [String], padding: PaddingStrategy = .longest,
                               maxLength: Int? = nil) -> TokenizedBatch {
        TokenizedBatch.assemble(texts.map(encode), bos: clsToken.id, eos: sepToken.id, pad: padToken.id,
                                maxLength: maxLength ?? self.maxLength, padding: padding)
    }

    /// The largest id this tokenizer can produce.
    public var maxTokenId: Int { tokens.count - 1 }
}
