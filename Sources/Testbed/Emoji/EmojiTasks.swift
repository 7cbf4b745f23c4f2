import Diffusion
import Foundation

/// A task file that cannot be read or does not fit the dataset, naming the file and the key.
public struct EmojiTaskError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let key: String
    public let reason: String
    public var description: String { "\(file): key \"\(key)\": \(reason)" }
}

/// The emoji testbed's erasure tasks, read from `Resources/emoji_tasks.json` (data only:
/// `EmojiTaskSetup` and `EmojiBenchmark` in Evaluation turn them into prompts, scores and cells).
///
/// - style: erase one of the four styles ("OpenMoji style"); the other three must survive.
/// - identity: erase one named character ("Santa Claus") among 20 person/character emoji.
/// - unsafe: erase the group "weapons" as one concept, judged on explicit prompts and on
///   implicit prompts that never name a weapon (I2P-style).
public struct EmojiTasks: Decodable, Sendable {
    /// An emoji named by the task: hex code point and its CLDR English name (plain apostrophes).
    public struct Member: Decodable, Sendable, Equatable {
        public let codepoint: Int
        public let name: String
    }

    public struct Style: Decodable, Sendable {
        public let styles: [String]
        public let defaultTarget: String
        public let conceptForm: String
        public let promptForm: String
        public let neutralForm: String
        public let paraphraseForms: [String]

        /// "{name} in {style} style" filled in.
        public func prompt(name: String, style: String) -> String {
            promptForm.replacingOccurrences(of: "{name}", with: name).replacingOccurrences(of: "{style}", with: style)
        }
    }

    public struct Identity: Decodable, Sendable {
        public let defaultTarget: String
        public let promptForms: [String]
        public let characters: [Member]
    }

    public struct Excluded: Decodable, Sendable {
        public let codepoint: String
        public let name: String
        public let reason: String
    }

    public struct Unsafe: Decodable, Sendable {
        public let concept: String
        public let members: [Member]
        public let notInDataset: [Excluded]
        public let explicitPrompts: [String]
        public let implicitPrompts: [String]
        public let implicitMustNotContain: [String]
    }

    public let version: Int
    public let style: Style
    public let identity: Identity
    public let unsafe: Unsafe
    /// The file read, for error messages.
    public private(set) var file = ""

    enum CodingKeys: String, CodingKey { case version, style, identity, unsafe }

    /// The tasks shipped with the tool.
    public static func bundled() throws -> EmojiTasks { try load(try bundledURL()) }

    /// Where the shipped task file is.
    public static func bundledURL() throws -> URL {
        try bundledResource("emoji_tasks.json", asset: "emoji_tasks.json")
    }

    /// Reads and checks a task file; errors name the file and the key path ("identity.characters[3].codepoint").
    public static func load(_ url: URL) throws -> EmojiTasks {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw EmojiTaskError(file: url.path, key: "", reason: "cannot read: \(error.localizedDescription)")
        }
        return try parse(data, file: url.path)
    }

    public static func parse(_ data: Data, file: String) throws -> EmojiTasks {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        var tasks: EmojiTasks
        do { tasks = try JSONInput.decode(EmojiTasks.self, from: data, decoder: decoder) } catch let error as DecodingError {
            throw describe(error, file: file)
        } catch let error as EmojiTaskError {
            throw EmojiTaskError(file: file, key: error.key, reason: error.reason)
        } catch {
            throw EmojiTaskError(file: file, key: "", reason: "not valid JSON: \(error)")
        }
        tasks.file = file
        try tasks.validate()
        return tasks
    }

    static func describe(_ error: DecodingError, file: String) -> EmojiTaskError {
        var reason = error.reason
        if case let .dataCorrupted(context) = error, let underlying = context.underlyingError as? EmojiTaskError { reason = underlying.reason }
        return EmojiTaskError(file: file, key: error.keyPath(snakeCase: true), reason: reason)
    }

    private func fail(_ key: String, _ reason: String) -> EmojiTaskError { EmojiTaskError(file: file, key: key, reason: reason) }

    /// Checks what JSON types cannot: known styles, targets in their lists, no repeats,
    /// implicit prompts free of weapon words.
    func validate() throws {
        guard version == 1 else { throw fail("version", "this tool reads version 1, the file is version \(version)") }
        let known = EmojiStyle.allCases.map(\.captionName)
        guard style.styles == known else { throw fail("style.styles", "must be \(known), got \(style.styles)") }
        guard style.styles.contains(style.defaultTarget) else { throw fail("style.default_target", "\"\(style.defaultTarget)\" is not one of style.styles") }
        guard style.promptForm.contains("{name}") && style.promptForm.contains("{style}") else {
            throw fail("style.prompt_form", "must contain {name} and {style}")
        }
        guard identity.characters.map(\.name).contains(identity.defaultTarget) else {
            throw fail("identity.default_target", "\"\(identity.defaultTarget)\" is not one of identity.characters")
        }
        for (key, list) in [("identity.characters", identity.characters), ("unsafe.members", unsafe.members)] {
            guard !list.isEmpty else { throw fail(key, "is empty") }
            var seen: Set<Int> = []
            for (i, m) in list.enumerated() where !seen.insert(m.codepoint).inserted {
                throw fail("\(key)[\(i)].codepoint", String(format: "U+%X appears twice", m.codepoint))
            }
        }
        let overlap = Set(identity.characters.map(\.codepoint)).intersection(unsafe.members.map(\.codepoint))
        guard overlap.isEmpty else { throw fail("unsafe.members", "shares emoji with identity.characters: \(overlap.sorted())") }
        for (i, prompt) in unsafe.implicitPrompts.enumerated() {
            let words = prompt.lowercased().split { !$0.isLetter }.map(String.init)
            if let word = words.first(where: { w in unsafe.implicitMustNotContain.contains { w.hasPrefix($0) } }) {
                throw fail("unsafe.implicit_prompts[\(i)]", "\"\(prompt)\" names a weapon (\"\(word)\")")
            }
        }
    }

    /// Checks that every code point is in the dataset under the name the file gives it.
    public func check(against dataset: EmojiDataset) throws {
        let byCodepoint = Dictionary(dataset.entries.map { ($0.codepoint, $0) }, uniquingKeysWith: { a, _ in a })
        for (key, list) in [("identity.characters", identity.characters), ("unsafe.members", unsafe.members)] {
            for (i, m) in list.enumerated() {
                guard let entry = byCodepoint[m.codepoint] else {
                    throw fail("\(key)[\(i)]", String(format: "U+%X (%@) is not in the dataset (%d emoji)", m.codepoint, m.name, dataset.entries.count))
                }
                guard EmojiCaptions.captionText(entry.name) == m.name else {
                    throw fail("\(key)[\(i)].name", "\"\(m.name)\", but the dataset names \(entry.hex) \"\(EmojiCaptions.captionText(entry.name))\"")
                }
            }
        }
    }

    /// Every emoji a task names: the identity characters, then the weapons.
    public var taskEmoji: [Member] { identity.characters + unsafe.members }

    /// The identity judge's classes: the task emoji's names, then "other" (every other emoji).
    public var identityJudgeClasses: [String] { taskEmoji.map(\.name) + ["other"] }
}

extension EmojiTasks.Member {
    enum CodingKeys: String, CodingKey { case codepoint, name }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let hex = try container.decode(String.self, forKey: .codepoint)
        guard let value = Int(hex.uppercased().replacingOccurrences(of: "U+", with: ""), radix: 16) else {
            throw DecodingError.dataCorruptedError(forKey: .codepoint, in: container,
                                                   debugDescription: "\"\(hex)\" is not a hex code point")
        }
        codepoint = value
        name = try container.decode(String.self, forKey: .name)
    }
}
