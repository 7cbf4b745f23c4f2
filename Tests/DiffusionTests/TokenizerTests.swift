import Foundation
import XCTest
@testable import Diffusion

/// Tokenizer ids against transformers (tools/make_text_fixtures.py), exact.
final class TokenizerTests: XCTestCase {
    func checkCases(_ set: TextFixtures.TokenizerSet, name: String, expected: (TextFixtures.TokenizerCase) -> [Int],
                    encode: (String) -> TokenizedBatch, full: ((String) -> [Int])? = nil, checkMask: Bool = true) {
        XCTAssertGreaterThanOrEqual(set.cases.count, 20)
        for c in set.cases {
            let batch = encode(c.text)
            XCTAssertEqual(batch.inputIds, [expected(c)], "\(name): ids of \(c.text.debugDescription), tokens \(c.tokens)")
            if checkMask {
                XCTAssertEqual(batch.attentionMask, [c.attention_mask], "\(name): mask of \(c.text.debugDescription)")
            }
            if let full {
                XCTAssertEqual(full(c.text), c.full_ids, "\(name): untruncated ids of \(c.text.debugDescription)")
            }
        }
    }

    func testCLIPTokenizerFromFolderMatchesTransformers() throws {
        for tag in ["sd1", "sd2"] {
            let set = TextFixtures.index.clip_tokenizers[tag]!
            let tokenizer = try CLIPTokenizer(directory: TextFixtures.url("clip_\(tag)/tokenizer"))
            XCTAssertEqual(tokenizer.padToken.id, set.pad_token_id)
            XCTAssertEqual(tokenizer.padToken.content, set.pad_token)
            XCTAssertEqual(tokenizer.maxLength, 77)
            checkCases(set, name: "CLIP \(tag) folder", expected: { $0.input_ids }, encode: { tokenizer([$0]) },
                       full: { [tokenizer.bosToken.id] + tokenizer.encode($0) + [tokenizer.eosToken.id] })
        }
    }

    func testCLIPTokenizerFromFilesMatchesTransformers() throws {
        for tag in ["sd1", "sd2"] {
            let set = TextFixtures.index.clip_tokenizers[tag]!
            let folder = TextFixtures.url("clip_\(tag)/tokenizer")
            let tokenizer = try CLIPTokenizer(vocabularyURL: folder.appendingPathComponent("vocab.json"),
                                              mergesURL: folder.appendingPathComponent("merges.txt"),
                                              padToken: set.pad_token!)
            // (the fixture's masks are the folder tokenizer's; here only the ids are compared)
            checkCases(set, name: "CLIP \(tag) files", expected: { $0.input_ids_files! }, encode: { tokenizer([$0]) },
                       checkMask: false)
        }
    }

    func testWordPieceTokenizerMatchesTransformers() throws {
        let set = TextFixtures.index.bert_tokenizer
        let tokenizer = try WordPieceTokenizer(directory: TextFixtures.url("bert"))
        XCTAssertEqual(tokenizer.maxLength, 512)
        checkCases(set, name: "WordPiece", expected: { $0.input_ids },
                   encode: { tokenizer([$0], padding: .maxLength, maxLength: set.max_length) },
                   full: { [tokenizer.clsToken.id] + tokenizer.encode($0) + [tokenizer.sepToken.id] })
        let files = try WordPieceTokenizer(vocabularyURL: TextFixtures.url("bert/vocab.txt"))
        checkCases(set, name: "WordPiece files", expected: { $0.input_ids },
                   encode: { files([$0], padding: .maxLength, maxLength: set.max_length) })
    }

    func testBatchPaddingAndTruncation() throws {
        let clip = try CLIPTokenizer(directory: TextFixtures.url("clip_sd1/tokenizer"))
        let batch = clip(["a dog", "a photo of a dog"], padding: .longest)
        XCTAssertEqual(batch.sequenceLength, 7)
        XCTAssertEqual(batch.attentionMask[0], [1, 1, 1, 1, 0, 0, 0])
        XCTAssertEqual(batch.inputIds[0].suffix(3), [clip.eosToken.id, clip.padToken.id, clip.padToken.id])
        let short = clip(["a photo of a dog"], maxLength: 5)
        XCTAssertEqual(short.inputIds[0].count, 5)
        XCTAssertEqual(short.inputIds[0].first, clip.bosToken.id)
        XCTAssertEqual(short.inputIds[0].last, clip.eosToken.id)
        XCTAssertEqual(batch.attentionMaskTensor.shape, [2, 7])

        let bert = try WordPieceTokenizer(directory: TextFixtures.url("bert"))
        let b = bert(["a dog", "hello", "a photo of a dog"])
        XCTAssertEqual(b.sequenceLength, 7)
        XCTAssertEqual(b.attentionMask[1], [1, 1, 1, 0, 0, 0, 0])
        XCTAssertEqual(b.inputIds[1].last, bert.padToken.id)
    }

    func testByteTableIsTheGPT2Table() {
        let table = CLIPTokenizer.byteTable()
        XCTAssertEqual(Set(table).count, 256)
        XCTAssertEqual(table[Int(UInt8(ascii: "a"))], "a")
        XCTAssertEqual(table[32], "Ġ")  // space
        XCTAssertEqual(table[10], "Ċ")  // newline
        XCTAssertEqual(table[0], "Ā")
        XCTAssertEqual(table[173], "Ń")
    }

    // MARK: Bad files

    func assertThrows(_ expression: @autoclosure () throws -> Any, naming file: String, containing text: String? = nil,
                      line: UInt = #line) {
        XCTAssertThrowsError(try expression(), line: line) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains(file), "error does not name \(file): \(message)", line: line)
            if let text { XCTAssertTrue(message.contains(text), "error does not say '\(text)': \(message)", line: line) }
        }
    }

    func testBadCLIPFilesGiveClearErrors() throws {
        let folder = try copyFixture("clip_sd1/tokenizer", self)
        let vocab = folder.appendingPathComponent("vocab.json"), merges = folder.appendingPathComponent("merges.txt")
        let goodMerges = try String(contentsOf: merges, encoding: .utf8)
        let goodVocab = try Data(contentsOf: vocab)

        try "#version: 0.2\na n\nthis line has three\n".write(to: merges, atomically: true, encoding: .utf8)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "merges.txt", containing: "line 3")
        try "#version: 0.2\nq zz\n".write(to: merges, atomically: true, encoding: .utf8)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "merges.txt", containing: "'zz' is not in the vocabulary")
        try FileManager.default.removeItem(at: merges)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "merges.txt", containing: "not found")
        try goodMerges.write(to: merges, atomically: true, encoding: .utf8)

        try "[1, 2, 3]".write(to: vocab, atomically: true, encoding: .utf8)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "vocab.json", containing: "JSON object")
        try "{\"a\": 0,".write(to: vocab, atomically: true, encoding: .utf8)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "vocab.json", containing: "not valid JSON")
        try "{\"a\": \"zero\"}".write(to: vocab, atomically: true, encoding: .utf8)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "vocab.json", containing: "'a'")
        var object = try JSONSerialization.jsonObject(with: goodVocab) as! [String: Int]
        object["<|startoftext|>"] = nil
        try JSONSerialization.data(withJSONObject: object).write(to: vocab)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "vocab.json", containing: "<|startoftext|>")
        try FileManager.default.removeItem(at: vocab)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "vocab.json", containing: "not found")

        try goodVocab.write(to: vocab)
        try "{\"pad_token\": 3}".write(to: folder.appendingPathComponent("tokenizer_config.json"), atomically: true, encoding: .utf8)
        assertThrows(try CLIPTokenizer(directory: folder), naming: "tokenizer_config.json", containing: "pad_token")
    }

    func testBadWordPieceFilesGiveClearErrors() throws {
        let folder = try temporaryDirectory(self)
        let vocab = folder.appendingPathComponent("vocab.txt")
        assertThrows(try WordPieceTokenizer(directory: folder), naming: "vocab.txt", containing: "not found")
        try "".write(to: vocab, atomically: true, encoding: .utf8)
        assertThrows(try WordPieceTokenizer(directory: folder), naming: "vocab.txt", containing: "empty")
        try "[PAD]\n[CLS]\n[SEP]\nhello\n".write(to: vocab, atomically: true, encoding: .utf8)
        assertThrows(try WordPieceTokenizer(directory: folder), naming: "vocab.txt", containing: "[UNK]")
        try Data([0xFF, 0xFE, 0x00, 0x41]).write(to: vocab)
        assertThrows(try WordPieceTokenizer(directory: folder), naming: "vocab.txt", containing: "UTF-8")
    }
}

/// Stable Diffusion's real CLIP vocabulary (rebuilt by tools/make_clip_tokenizer_reference.py
/// from the open_clip_torch wheel) against transformers' ids; skipped when it is not installed.
final class TokenizerRealVocabularyTests: XCTestCase {
    struct Reference: Decodable {
        struct Case: Decodable { let text: String; let input_ids: [Int] }
        let cases: [Case]
    }

    func testRealCLIPVocabularyMatchesTransformers() throws {
        let env = ProcessInfo.processInfo.environment["SCORE_CLIP_TOKENIZER_DIR"]
        let folder = env.map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/score/clip-tokenizer")
        guard FileManager.default.fileExists(atPath: folder.appendingPathComponent("merges.txt").path) else {
            throw XCTSkip("""
                SD's CLIP tokenizer not found in \(folder.path); make it with: python -m pip download --no-deps \
                -d /tmp/oc open_clip_torch==3.3.0 && python tools/make_clip_tokenizer_reference.py --wheel \
                /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl (or set SCORE_CLIP_TOKENIZER_DIR to an SD tokenizer/ folder)
                """)
        }
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: TextFixtures.url("clip_real_reference.json")))
        let tokenizer = try CLIPTokenizer(directory: folder)
        XCTAssertEqual(tokenizer.vocabulary.count, 49408)
        XCTAssertEqual(tokenizer([ "a photo of a dog"]).inputIds[0].prefix(7), [49406, 320, 1125, 539, 320, 1929, 49407])
        for c in reference.cases {
            XCTAssertEqual(tokenizer([c.text]).inputIds[0], c.input_ids, "ids of \(c.text.debugDescription)")
        }
    }
}

/// Every code point up to U+323AF as the `tokenizers` library classifies it (see
/// unicode_classes.json in tools/make_text_fixtures.py): pins the Unicode versions we follow.
final class TokenizerUnicodeTests: XCTestCase {
    struct Tables: Decodable {
        let clip: [Run], bert_split: [Run], bert_normalize: [Run]
    }

    struct Run: Decodable {
        let first: UInt32, cls: String, count: Int
        init(from decoder: Decoder) throws {
            var c = try decoder.unkeyedContainer()
            first = try c.decode(UInt32.self)
            cls = try c.decode(String.self)
            count = try c.decode(Int.self)
        }
    }

    func check(_ runs: [Run], _ name: String, _ classify: (Unicode.Scalar) -> String) {
        var wrong: [String] = []
        var total = 0
        for run in runs {
            for v in run.first..<(run.first + UInt32(run.count)) {
                total += 1
                let s = Unicode.Scalar(v)!
                let mine = classify(s)
                if mine != run.cls {
                    wrong.append(String(format: "U+%04X", v) + " \(s.properties.generalCategory): \(mine), expected \(run.cls)")
                }
            }
        }
        XCTAssertGreaterThan(total, 200_000)
        XCTAssertTrue(wrong.isEmpty, "\(name): \(wrong.count) code points differ: \(wrong.prefix(10).joined(separator: "; "))")
    }

    func testEveryCodePointIsClassifiedAsTokenizersDoes() throws {
        let tables = try JSONDecoder().decode(Tables.self, from: Data(contentsOf: TextFixtures.url("unicode_classes.json")))
        check(tables.clip, "CLIP pre-tokenizer") { c in
            if CLIPTokenizer.words(["a", c, "b"]).count == 1 { return "L" }
            switch CLIPTokenizer.words(["!", c, "!"]).count {
            case 1: return "O"
            case 2: return "S"
            default: return "N"
            }
        }
        check(tables.bert_split, "BERT pre-tokenizer") { c in
            switch WordPieceTokenizer.words(["a", c, "b"]).count {
            case 3: return "P"
            case 2: return "S"
            default: return "-"
            }
        }
        check(tables.bert_normalize, "BERT normalizer") { c in
            let out = WordPieceTokenizer.normalize(["a", c, "b"], lowercase: true, stripAccents: true, chinese: true)
            if out == ["a", "b"] { return "R" }
            if out == ["a", " ", "b"] { return "S" }
            if out == ["a", " ", c, " ", "b"] { return "C" }
            return "K"
        }
    }
}

/// A long random comparison with transformers (tools/make_tokenizer_fuzz.py); runs only when
/// SCORE_TOKENIZER_FUZZ names its output, with the real CLIP tokenizer and MiniLM installed.
final class TokenizerFuzzTests: XCTestCase {
    struct Case: Decodable { let text: String; let clip: [Int]; let bert: [Int] }

    func testRandomStringsMatchTransformers() throws {
        guard let path = ProcessInfo.processInfo.environment["SCORE_TOKENIZER_FUZZ"] else {
            throw XCTSkip("set SCORE_TOKENIZER_FUZZ to the output of tools/make_tokenizer_fuzz.py")
        }
        let home = FileManager.default.homeDirectoryForCurrentUser
        let env = ProcessInfo.processInfo.environment
        let clip = try CLIPTokenizer(directory: env["SCORE_CLIP_TOKENIZER_DIR"].map { URL(fileURLWithPath: $0) }
                                     ?? home.appendingPathComponent(".cache/score/clip-tokenizer"))
        let bert = try WordPieceTokenizer(directory: try BertModelTests.miniLMDirectory())
        let cases = try JSONDecoder().decode([Case].self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        var failures = 0
        for c in cases {
            let a = [clip.bosToken.id] + clip.encode(c.text) + [clip.eosToken.id]
            let b = [bert.clsToken.id] + bert.encode(c.text) + [bert.sepToken.id]
            if a != c.clip || b != c.bert {
                failures += 1
                if failures <= 5 {
                    XCTFail("\(c.text.unicodeScalars.map { String($0.value, radix: 16) }): CLIP \(a == c.clip), BERT \(b == c.bert)")
                }
            }
        }
        XCTAssertEqual(failures, 0, "\(failures) of \(cases.count) strings differ")
    }
}
