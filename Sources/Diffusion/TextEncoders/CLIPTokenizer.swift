import Foundation

/// CLIP's byte-level BPE tokenizer, as transformers' `CLIPTokenizer` runs it (the `tokenizers`
/// backend): the ids are the same for every input.
///
/// Steps: special tokens (`<|startoftext|>`, `<|endoftext|>`, and the pad token, which is "!"
/// for SD2) are cut out of the text first; the rest is NFC-normalized, whitespace runs become
/// one space, and it is lower-cased; CLIP's pattern splits it into words
/// (`'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`, whitespace dropped); each word's
/// UTF-8 bytes are written with the GPT-2 byte-to-character table, `</w>` is appended to the
/// last character, and merges are applied lowest rank first. A sequence is
/// `<|startoftext|>`, at most `maxLength − 2` tokens, `<|endoftext|>`, then padding.
///
/// The vocabulary is a `[String: Int]`: byte-level tokens are spelled with characters
/// U+0021…U+0143 only, and no two such spellings are canonically equivalent, so Swift's
/// string equality is exact here (unlike in `WordPieceTokenizer`).
public final class CLIPTokenizer: @unchecked Sendable {
    public let vocabulary: [String: Int]
    /// Merge ranks: "left right" → rank (0 = merged first).
    let ranks: [String: Int]
    public let bosToken: SpecialToken
    public let eosToken: SpecialToken
    public let padToken: SpecialToken
    public let unkToken: SpecialToken
    /// Sequence length of padded output (77 for Stable Diffusion).
    public var maxLength: Int

    private let specials: SpecialTokenPipeline
    private let byteToCharacter: [String]
    private var cache: [TokenKey: [Int]] = [:]
    private let cacheLock = NSLock()

    /// Builds a tokenizer from `vocab.json` and `merges.txt`. Special tokens are given by
    /// content and must be in the vocabulary; they are found in the raw text only (as
    /// transformers' `CLIPTokenizer(vocab_file, merges_file)` does).
    public convenience init(vocabularyURL: URL, mergesURL: URL, padToken: String = "<|endoftext|>",
                            bosToken: String = "<|startoftext|>", eosToken: String = "<|endoftext|>",
                            unkToken: String = "<|endoftext|>", maxLength: Int = 77) throws {
        var config = SpecialTokenConfig()
        config.entries = ["bos_token": (bosToken, false), "eos_token": (eosToken, false),
                          "unk_token": (unkToken, false), "pad_token": (padToken, false)]
        try self.init(vocabularyURL: vocabularyURL, mergesURL: mergesURL, config: config, maxLength: maxLength)
    }

    /// Loads a tokenizer folder (diffusers' `tokenizer/`): `vocab.json`, `merges.txt`, and when
    /// present `tokenizer_config.json` / `special_tokens_map.json` for the special tokens (pad
    /// token: `<|endoftext|>` for SD1.x, "!" for SD2), their `normalized` flags and
    /// `model_max_length`.
    public convenience init(directory: URL) throws {
        var config = try SpecialTokenConfig(directory: directory)
        let defaults = ["bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"]
        for (role, content) in defaults where config.entries[role] == nil { config.entries[role] = (content, false) }
        try self.init(vocabularyURL: directory.appendingPathComponent("vocab.json"),
                      mergesURL: directory.appendingPathComponent("merges.txt"),
                      config: config, maxLength: config.modelMaxLength ?? 77)
    }

    init(vocabularyURL: URL, mergesURL: URL, config: SpecialTokenConfig, maxLength: Int) throws {
        let vocabulary = try Self.readVocabulary(vocabularyURL)
        self.vocabulary = vocabulary
        ranks = try Self.readMerges(mergesURL, vocabulary: vocabulary)
        func token(_ role: String) throws -> SpecialToken {
            let (content, normalized) = config.entries[role]!
            guard let id = vocabulary[content] else {
                throw TextEncoderError.invalidFile(vocabularyURL, reason: "the \(role) '\(content)' is not in the vocabulary")
            }
            return SpecialToken(content: content, id: id, normalized: normalized)
        }
        bosToken = try token("bos_token")
        eosToken = try token("eos_token")
        unkToken = try token("unk_token")
        padToken = try token("pad_token")
        self.maxLength = maxLength
        byteToCharacter = Self.byteTable().map { String($0) }
        specials = SpecialTokenPipeline(specialTokens: config.specialTokens(vocabulary: vocabulary),
                                        normalize: Self.normalize)
    }

    // MARK: Files

    static func readVocabulary(_ url: URL) throws -> [String: Int] {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw TextEncoderError.missingFile(url, what: "the BPE vocabulary (token → id)")
        }
        let data = try Data(contentsOf: url)
        guard (try? JSONSerialization.jsonObject(with: data)) != nil else {
            throw TextEncoderError.invalidFile(url, reason: "not valid JSON")
        }
        let vocabulary: [String: Int]
        do { vocabulary = try JSONInput.decode([String: Int].self, from: data) } catch let DecodingError.typeMismatch(_, context) {
            if let key = context.codingPath.last?.stringValue {
                throw TextEncoderError.invalidFile(url, reason: "the id of '\(key)' is not an integer")
            }
            throw TextEncoderError.invalidFile(url, reason: "expected a JSON object mapping tokens to integer ids")
        } catch {
            throw TextEncoderError.invalidFile(url, reason: "expected a JSON object mapping tokens to integer ids")
        }
        guard !vocabulary.isEmpty else { throw TextEncoderError.invalidFile(url, reason: "the vocabulary is empty") }
        if let (token, id) = vocabulary.first(where: { $0.value < 0 }) {
            throw TextEncoderError.invalidFile(url, reason: "the id of '\(token)' is negative (\(id))")
        }
        return vocabulary
    }

    /// Reads merges ("left right" per line; a first line "#version…" is skipped) and checks that
    /// both parts and their concatenation are in the vocabulary.
    static func readMerges(_ url: URL, vocabulary: [String: Int]) throws -> [String: Int] {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw TextEncoderError.missingFile(url, what: "the BPE merges")
        }
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw TextEncoderError.invalidFile(url, reason: "not UTF-8 text")
        }
        var ranks: [String: Int] = [:]
        // Split on the newline byte: Swift treats "\r\n" as one Character.
        let lines = text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line in
            String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line, as: UTF8.self)
        }
        for (index, line) in lines.enumerated() {
            if line.isEmpty || (index == 0 && line.hasPrefix("#version")) { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw TextEncoderError.invalidFile(url, reason: "line \(index + 1) is not two tokens separated by one space: '\(line.prefix(80))'")
            }
            for token in [String(parts[0]), String(parts[1]), String(parts[0] + parts[1])] where vocabulary[token] == nil {
                throw TextEncoderError.invalidFile(url, reason: "line \(index + 1): '\(token)' is not in the vocabulary")
            }
            let key = "\(parts[0]) \(parts[1])"
            if ranks[key] == nil { ranks[key] = ranks.count }
        }
        return ranks
    }

    // MARK: Tokenizing

    /// CLIP's normalizer: NFC, whitespace runs → one space, lower case.
    static func normalize(_ text: Scalars) -> Scalars {
        var out = Scalars()
        out.reserveCapacity(text.count)
        var inSpace = false
        for s in UnicodeText.nfc(text) {
            if s.isSpace {
                if !inSpace { out.append(" ") }
                inSpace = true
            } else {
                out.append(s)
                inSpace = false
            }
        }
        return UnicodeText.lowercased(out)
    }

    private static let contractions: [Scalars] = ["s", "t", "re", "ve", "m", "ll", "d"].map { Array($0.unicodeScalars) }

    /// CLIP's word pattern over normalized text.
    static func words(_ text: Scalars) -> [Scalars] {
        var words: [Scalars] = []
        var i = 0
        let n = text.count
        while i < n {
            let c = text[i]
            if c == "'", let suffix = contractions.first(where: {
                i + 1 + $0.count <= n && text[(i + 1)..<(i + 1 + $0.count)].elementsEqual($0)
            }) {
                words.append(Array(text[i..<(i + 1 + suffix.count)]))
                i += 1 + suffix.count
            } else if c.isLetter {
                var j = i + 1
                while j < n && text[j].isLetter { j += 1 }
                words.append(Array(text[i..<j]))
                i = j
            } else if c.isNumber {
                words.append([c])
                i += 1
            } else if c.isSpace {
                i += 1
            } else {
                var j = i + 1
                while j < n && !(text[j].isSpace || text[j].isLetter || text[j].isNumber) { j += 1 }
                words.append(Array(text[i..<j]))
                i = j
            }
        }
        return words
    }

    /// The GPT-2 table: byte b → the character that stands for it (printable bytes stand for
    /// themselves; the others map to U+0100 and up, in byte order).
    static func byteTable() -> [Character] {
        var table = [Character](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            if printable {
                table[b] = Character(Unicode.Scalar(UInt32(b))!)
            } else {
                table[b] = Character(Unicode.Scalar(next)!)
                next += 1
            }
        }
        return table
    }

    /// BPE tokens (strings) of one word.
    func bpe(_ word: Scalars) -> [String] {
        var symbols = Array(String(UnicodeText.string(word)).utf8).map { byteToCharacter[Int($0)] }
        guard !symbols.isEmpty else { return [] }
        symbols[symbols.count - 1] += "</w>"
        while symbols.count > 1 {
            var best: (rank: Int, index: Int)? = nil
            for i in 0..<(symbols.count - 1) {
                if let r = ranks["\(symbols[i]) \(symbols[i + 1])"], r < (best?.rank ?? .max) { best = (r, i) }
            }
            guard let best else { break }
            let (left, right) = (symbols[best.index], symbols[best.index + 1])
            var merged: [String] = []
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] == left && symbols[i + 1] == right {
                    merged.append(left + right)
                    i += 2
                } else {
                    merged.append(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        return symbols
    }

    private func ids(ofWord word: Scalars) -> [Int] {
        let key = TokenKey(scalars: word)
        cacheLock.lock()
        if let hit = cache[key] { cacheLock.unlock(); return hit }
        cacheLock.unlock()
        let result = bpe(word).map { vocabulary[$0] ?? unkToken.id }
        cacheLock.lock()
        if cache.count > 50_000 { cache.removeAll() }
        cache[key] = result
        cacheLock.unlock()
        return result
    }

    /// Token ids of `text` without start/end tokens, padding or truncation.
    public func encode(_ text: String) -> [Int] {
        var result: [Int] = []
        for segment in specials.segments(text) {
            switch segment {
            case let .special(id): result.append(id)
            case let .text(scalars): for word in Self.words(scalars) { result += ids(ofWord: word) }
            }
        }
        return result
    }

    /// Token strings of `text` (without start/end tokens), for inspection.
    public func tokenize(_ text: String) -> [String] {
        let inverse = Dictionary(vocabulary.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
        return encode(text).map { inverse[$0] ?? "?" }
    }

    /// Ids and attention masks of a batch: `<|startoftext|>` + at most `maxLength − 2` tokens +
    /// `<|endoftext|>`, padded with the pad token (to `maxLength` by default, as SD does).
    public func callAsFunction(_ texts: [String], padding: PaddingStrategy = .maxLength,
                               maxLength: Int? = nil) -> TokenizedBatch {
        TokenizedBatch.assemble(texts.map(encode), bos: bosToken.id, eos: eosToken.id, pad: padToken.id,
                                maxLength: maxLength ?? self.maxLength, padding: padding)
    }

    /// The largest id this tokenizer can produce.
    public var maxTokenId: Int { vocabulary.values.max() ?? 0 }
}
