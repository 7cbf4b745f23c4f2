import Foundation
import XCTest
import Tensor
@testable import Diffusion

/// Fixtures made by tools/make_text_fixtures.py (see that script for what each file holds).
enum TextFixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("text")

    static func url(_ path: String) -> URL { root.appendingPathComponent(path) }

    struct TokenizerCase: Decodable {
        let text: String
        let input_ids: [Int]
        let attention_mask: [Int]
        let full_ids: [Int]
        let input_ids_files: [Int]?
        let tokens: [String]
    }

    struct TokenizerSet: Decodable {
        let pad_token: String?
        let pad_token_id: Int?
        let max_length: Int
        let cases: [TokenizerCase]
    }

    struct Index: Decodable {
        let clip_tokenizers: [String: TokenizerSet]
        let bert_tokenizer: TokenizerSet
        let models: [String: [String]]
        let bert_sentences: [String]
    }

    static let index: Index = try! JSONDecoder().decode(Index.self, from: Data(contentsOf: url("text_fixtures.json")))
}

/// Reference tensors of one safetensors fixture file.
struct ReferenceTensors {
    let archive: TensorArchive

    init(_ name: String) throws { archive = try TensorArchive(contentsOf: TextFixtures.url(name)) }

    func tensor(_ key: String) throws -> Tensor { try archive.tensor(key) }

    /// An integer matrix ([B, T]) as rows.
    func rows(_ key: String) throws -> [[Int]] {
        let shape = try archive.shape(key), values = try archive.integers(key)
        precondition(shape.count == 2)
        return (0..<shape[0]).map { Array(values[($0 * shape[1])..<(($0 + 1) * shape[1])]) }
    }

    func integers(_ key: String) throws -> [Int] { try archive.integers(key) }
}

// relativeError, assertClose and temporaryDirectory live in FixtureSupport.swift.

/// Copies a fixture folder into a temporary one (to be edited by a test).
func copyFixture(_ path: String, _ test: XCTestCase) throws -> URL {
    let target = try temporaryDirectory(test).appendingPathComponent(URL(fileURLWithPath: path).lastPathComponent)
    try FileManager.default.copyItem(at: TextFixtures.url(path), to: target)
    return target
}
