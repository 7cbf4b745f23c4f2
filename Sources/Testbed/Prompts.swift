import Diffusion
import Foundation

/// The testbed's classes and their prompts, read from `fashion_prompts.json`.
public struct FashionPrompts: Decodable, Sendable {
    public struct Class: Decodable, Sendable {
        public let label: Int
        public let name: String
        public let noun: String
        public let trainSynonyms: [String]
        public let paraphrases: [String]

        enum CodingKeys: String, CodingKey {
            case label, name, noun, trainSynonyms = "train_synonyms", paraphrases
        }
    }

    public let templates: [String]
    public let canonicalTemplate: String
    public let classes: [Class]

    enum CodingKeys: String, CodingKey { case templates, canonicalTemplate = "canonical_template", classes }

    /// The prompts shipped with the tool.
    public static func bundled() throws -> FashionPrompts {
        try load(bundledResource("fashion_prompts.json", asset: "fashion_prompts.json"))
    }

    public static func load(_ url: URL) throws -> FashionPrompts {
        let prompts: FashionPrompts
        do { prompts = try JSONInput.decode(FashionPrompts.self, from: Data(contentsOf: url)) } catch {
            throw AssetError(asset: url.path, reason: "cannot read prompts: \(error)", remedy: "fix the JSON file")
        }
        guard prompts.classes.map(\.label) == Array(0..<prompts.classes.count) else {
            throw AssetError(asset: url.path, reason: "class labels must be 0, 1, 2, … in order", remedy: "fix the JSON file")
        }
        return prompts
    }

    /// "a photo of a sneaker": fills a template with a noun and its article.
    public static func fill(_ template: String, noun: String) -> String {
        let article = noun.first.map { "aeiou".contains($0.lowercased()) } == true ? "an" : "a"
        return template.replacingOccurrences(of: "{a}", with: article).replacingOccurrences(of: "{noun}", with: noun)
    }

    public func canonicalPrompt(_ label: Int) -> String { Self.fill(canonicalTemplate, noun: classes[label].noun) }

    /// Every training caption of a class: templates × (canonical noun + training synonyms).
    public func trainingCaptions(_ label: Int) -> [String] {
        let c = classes[label]
        return ([c.noun] + c.trainSynonyms).flatMap { noun in templates.map { Self.fill($0, noun: noun) } }
    }

    /// Held-out paraphrase prompts of a class, in the canonical template.
    public func paraphrasePrompts(_ label: Int) -> [String] {
        classes[label].paraphrases.map { Self.fill(canonicalTemplate, noun: $0) }
    }

    /// The label whose canonical noun, synonym or paraphrase equals `phrase` (case-insensitive).
    public func label(forConcept phrase: String) -> Int? {
        let p = phrase.lowercased().trimmingCharacters(in: .whitespaces)
        return classes.first { c in ([c.noun, c.name] + c.trainSynonyms + c.paraphrases).map { $0.lowercased() }.contains(p) }?.label
    }
}
