import Erasure
import Foundation
import Testbed

/// Sizes, sampler and judge of an emoji-task evaluation; recorded with every number.
public struct EmojiEvaluationSettings: Codable, Sendable, Equatable {
    /// Images of the concept's own prompts (erased-style score, Acc_e).
    public var targetImages = 32
    /// Style task: images per preserved style ("{name} in {style} style" over the evaluation emoji).
    public var imagesPerPreservedStyle = 32
    /// Identity and unsafe tasks: images per preserved character (its prompt forms, in turn).
    public var imagesPerPreservedCharacter = 8
    /// Unsafe task: images per explicit and per implicit prompt.
    public var imagesPerUnsafePrompt = 2
    /// Style task: emoji whose names fill the evaluation prompts (the model check's sample:
    /// the sample-grid emoji, then a seeded draw of training emoji).
    public var evaluationEmoji = 16
    /// Style task: further emoji, disjoint from those, whose names fill the erasure's prompts.
    public var erasureEmoji = 16
    /// Style task: of those, how many fill the retained prompts of each other style.
    public var retainEmojiPerStyle = 8
    /// Prompts × styles of the paraphrase attack (style task: evaluation emoji per paraphrase form).
    public var paraphraseNames = 4
    public var steps = DefaultModel.steps
    public var guidance = DefaultModel.guidance
    public var seed: UInt64 = 1000
    /// Architecture of the emoji judges (`judge-style-<arch>`, `judge-identity-<arch>`).
    public var judge = "cnn"

    public init() {}
}

/// One evaluated image: its prompt, what it measures and what the judge should say.
public struct EmojiPrompt: Equatable, Sendable {
    public enum Group: String, Codable, Sendable {
        /// The erased concept's own prompts: erased-style score, Acc_e.
        case target
        /// Another class's prompts, judged as that class: preserved-style scores, Acc_p.
        case preserved
        /// Unsafe task: prompts that name a weapon, and I2P-style ones that never do.
        case explicit, implicit
    }

    public var prompt: String
    public var group: Group
    /// The judge class the image counts as a hit for; nil: any of the concept's classes (the
    /// unsafe group).
    public var label: Int?
    /// A real dataset image of the same (emoji, style), for KID against real images.
    public var real: Int?

    public init(prompt: String, group: Group, label: Int?, real: Int? = nil) {
        self.prompt = prompt
        self.group = group
        self.label = label
        self.real = real
    }
}

/// One UnlearnDiffAtk instance of an emoji task: the attacked prompt, the dataset image its
/// denoising loss is measured on and the judge class of that image.
public struct EmojiAttackInstance: Equatable, Sendable {
    public var prompt: String
    public var image: Int
    public var label: Int
}

/// What one emoji task asks of one concept: the erasure request every method gets, the
/// evaluation's prompts, the judge and which of its classes are the concept, the paraphrase
/// attack's prompts and UnlearnDiffAtk's instances. Built from the task file and the dataset's
/// names alone, so two runs (and every method) see the same lists.
///
/// Anchor: every concept is erased towards "" (the unconditional prompt), as ESD does by
/// construction and UCE's script does for objects and unsafe content. For art styles UCE guides
/// to "art", a word that draws generic art; the emoji mini-SD's captions have no such word
/// (they are "{name} in {style} style", "{name}" and ""), and "" draws an emoji in no chosen
/// style, its nearest counterpart. "{name}" would be a closer anchor per prompt, but UCE takes
/// one guide per concept and ESD none, so every method gets "" and the request stays the same.
public struct EmojiTaskSetup {
    public let task: BenchmarkTask
    /// The concept as cells name it: "OpenMoji style", "Santa Claus", "weapons".
    public let concept: String
    public let judge: EmojiJudgeData.Task
    /// The judge's classes: the four styles, or the identity judge's 27 (characters, weapons, other).
    public let judgeClasses: [String]
    /// The judge classes that count as the concept (the weapons' six for the unsafe task).
    public let conceptLabels: [Int]
    public let request: ErasureRequest
    /// Every evaluated image in order: target (or explicit, implicit), then preserved; image k
    /// is drawn with noise (seed, k), so two models get the same noise per prompt.
    public let evaluation: [EmojiPrompt]
    /// The paraphrase attack: held-out rewordings ("paraphrase") and the emoji's CLDR synonyms
    /// in the trained caption forms ("synonym").
    public let paraphrases: [(prompt: String, source: String)]
    /// UnlearnDiffAtk's instances (cycled to the attack's instance count); their images are the
    /// real images inversion and CCE start from, their prompts the ones P4D attacks.
    public let attack: [EmojiAttackInstance]
    /// The attacked prompts' forms with the concept's word as "{noun}": CCE's templates (v* in
    /// the word's place) and Ring-A-Bell's, filled with `conceptWords` and with `otherWords`.
    public let attackTemplates: [String]
    /// The words that name the concept (the style, the character, each weapon).
    public let conceptWords: [String]
    /// The same task's other classes' words (other styles, other characters): Ring-A-Bell's
    /// prompts without the concept and its benign base prompts.
    public let otherWords: [String]

    /// The concepts a task accepts, as cells name them.
    public static func concepts(task: BenchmarkTask, tasks: EmojiTasks) -> [String] {
        switch task {
        case .style: return tasks.style.styles.map { styleConcept($0, tasks: tasks) }
        case .identity: return tasks.identity.characters.map(\.name)
        case .unsafe: return [tasks.unsafe.concept]
        case .object: return []
        }
    }

    /// The concept a task erases without `--concepts`.
    public static func defaultConcept(task: BenchmarkTask, tasks: EmojiTasks) -> String {
        switch task {
        case .style: return styleConcept(tasks.style.defaultTarget, tasks: tasks)
        case .identity: return tasks.identity.defaultTarget
        case .unsafe, .object: return tasks.unsafe.concept
        }
    }

    /// A `--concepts` entry as cells name it, any case; a style may be given by its name alone
    /// ("openmoji" → "OpenMoji style"). Anything else is an error naming the flag.
    public static func canonicalConcept(_ name: String, task: BenchmarkTask, tasks: EmojiTasks) throws -> String {
        let wanted = name.trimmingCharacters(in: .whitespaces).lowercased()
        if task == .style, let style = tasks.style.styles.first(where: { $0.lowercased() == wanted }) {
            return styleConcept(style, tasks: tasks)
        }
        let known = concepts(task: task, tasks: tasks)
        guard let found = known.first(where: { $0.lowercased() == wanted }) else {
            throw EvaluationError.invalidRequest("--concepts: '\(name)' is not a concept of the \(task.rawValue) task; concepts: \(known.joined(separator: ", "))")
        }
        return found
    }

    static func styleConcept(_ style: String, tasks: EmojiTasks) -> String {
        tasks.style.conceptForm.replacingOccurrences(of: "{style}", with: style)
    }

    static func fill(_ form: String, name: String, style: String) -> String {
        form.replacingOccurrences(of: "{name}", with: name).replacingOccurrences(of: "{style}", with: style)
    }

    /// `sample`: dataset emoji indices for the style task's prompts, the evaluation's first
    /// (`settings.evaluationEmoji` of them), then the erasure's.
    public init(task: BenchmarkTask, concept: String, tasks: EmojiTasks, dataset: EmojiDataset, sample: [Int],
                settings: EmojiEvaluationSettings = EmojiEvaluationSettings()) throws {
        let concept = try Self.canonicalConcept(concept, task: task, tasks: tasks)
        self.task = task
        self.concept = concept
        let styles = tasks.style.styles
        let styleIndex = try styles.map { style -> Int in
            guard let s = dataset.styles.firstIndex(where: { $0.captionName == style }) else {
                throw EvaluationError.invalidRequest("\(tasks.file): style \"\(style)\" is not a style of the dataset")
            }
            return s
        }
        let byCodepoint = Dictionary(dataset.entries.enumerated().map { ($1.codepoint, $0) }, uniquingKeysWith: { a, _ in a })
        func emojiIndex(_ member: EmojiTasks.Member) throws -> Int {
            guard let e = byCodepoint[member.codepoint] else {
                throw EvaluationError.invalidRequest(String(format: "%@: U+%X (%@) is not in the emoji dataset", tasks.file, member.codepoint, member.name))
            }
            return e
        }
        func name(_ e: Int) -> String { EmojiCaptions.captionText(dataset.entries[e].name) }
        func synonyms(_ e: Int) -> [String] { dataset.entries[e].synonyms.map(EmojiCaptions.captionText) }
        func real(_ e: Int, style s: Int, _ k: Int) -> Int { dataset.index(emoji: e, style: styleIndex[s], copy: k % dataset.copies) }
        // The identity task's prompt forms, each with a {style} form once per style:
        // "Santa Claus", "Santa Claus in Noto style", … (style nil for the style-free form).
        let forms: [(form: String, style: Int?)] = tasks.identity.promptForms.flatMap { form in
            form.contains("{style}") ? styles.indices.map { (form, Optional($0)) } : [(form, nil)]
        }
        func formPrompts(_ text: String) -> [String] { forms.map { Self.fill($0.form, name: text, style: $0.style.map { styles[$0] } ?? "") } }
        /// `count` images of a character's prompt forms in turn, with the real image of the same style.
        func characterPrompts(_ e: Int, label: Int, group: EmojiPrompt.Group, count: Int) -> [EmojiPrompt] {
            (0..<count).map { k in
                let (form, style) = forms[k % forms.count]
                return EmojiPrompt(prompt: Self.fill(form, name: name(e), style: style.map { styles[$0] } ?? ""), group: group,
                                   label: label, real: real(e, style: style ?? k % styles.count, k / forms.count))
            }
        }
        let characters = try tasks.identity.characters.map(emojiIndex)
        /// Retained prompts of the characters: each one's style-free form and one styled form.
        func characterRetain(except skipped: Int?) -> [String] {
            characters.indices.filter { $0 != skipped }.flatMap { j -> [String] in
                let prompts = formPrompts(name(characters[j]))
                let styled = forms.indices.filter { forms[$0].style == j % styles.count }
                return [prompts[forms.firstIndex { $0.style == nil } ?? 0]] + styled.map { prompts[$0] }
            }
        }
        let anchors = [""]
        let paraphraseForms = tasks.style.paraphraseForms

        switch task {
        case .style:
            judge = .style
            judgeClasses = styles
            let s = styles.firstIndex { Self.styleConcept($0, tasks: tasks) == concept }!
            conceptLabels = [styleIndex[s]]
            guard !sample.isEmpty else { throw EvaluationError.invalidRequest("the style task needs emoji to name; the sample is empty") }
            let shown = Array(sample.prefix(settings.evaluationEmoji))
            let erased = sample.count > shown.count ? Array(sample.dropFirst(shown.count).prefix(settings.erasureEmoji)) : shown
            func stylePrompts(_ style: Int, group: EmojiPrompt.Group, count: Int) -> [EmojiPrompt] {
                (0..<count).map { k in
                    let e = shown[k % shown.count]
                    return EmojiPrompt(prompt: tasks.style.prompt(name: name(e), style: styles[style]), group: group,
                                       label: styleIndex[style], real: real(e, style: style, k / shown.count))
                }
            }
            evaluation = stylePrompts(s, group: .target, count: settings.targetImages)
                + styles.indices.filter { $0 != s }.flatMap { stylePrompts($0, group: .preserved, count: settings.imagesPerPreservedStyle) }
            let targets = [concept] + erased.map { tasks.style.prompt(name: name($0), style: styles[s]) }
            let retain = styles.indices.filter { $0 != s }.flatMap { other in
                erased.prefix(settings.retainEmojiPerStyle).map { tasks.style.prompt(name: name($0), style: styles[other]) }
            }
            request = ErasureRequest(concepts: [Concept(name: concept, targetPrompts: targets, anchors: anchors)], retainPrompts: retain)
            let named = shown.prefix(settings.paraphraseNames)
            paraphrases = paraphraseForms.flatMap { form in named.map { (Self.fill(form, name: name($0), style: styles[s]), "paraphrase") } }
                + shown.filter { !synonyms($0).isEmpty }.prefix(settings.paraphraseNames)
                    .map { (tasks.style.prompt(name: synonyms($0)[0], style: styles[s]), "synonym") }
            attack = shown.map { e in
                EmojiAttackInstance(prompt: tasks.style.prompt(name: name(e), style: styles[s]), image: real(e, style: s, 0), label: styleIndex[s])
            }
            attackTemplates = shown.map { tasks.style.prompt(name: name($0), style: "{noun}") }
            conceptWords = [styles[s]]
            otherWords = styles.indices.filter { $0 != s }.map { styles[$0] }

        case .identity:
            judge = .identity
            judgeClasses = tasks.identityJudgeClasses
            let t = tasks.identity.characters.firstIndex { $0.name == concept }!
            let target = characters[t]
            conceptLabels = [t]
            evaluation = characterPrompts(target, label: t, group: .target, count: settings.targetImages)
                + characters.indices.filter { $0 != t }.flatMap {
                    characterPrompts(characters[$0], label: $0, group: .preserved, count: settings.imagesPerPreservedCharacter)
                }
            // The target's own synonyms: one another character shares ("claus" of Mrs. Claus)
            // would name both, so it is neither erased nor attacked.
            let shared = Set(characters.indices.filter { $0 != t }.flatMap { synonyms(characters[$0]).map { $0.lowercased() } }
                             + characters.indices.filter { $0 != t }.map { name(characters[$0]).lowercased() })
            let own = synonyms(target).filter { !shared.contains($0.lowercased()) }
            var targets: [String] = []
            for prompt in ([name(target)] + own).flatMap(formPrompts) where !targets.contains(prompt) { targets.append(prompt) }
            request = ErasureRequest(concepts: [Concept(name: concept, targetPrompts: targets, anchors: anchors)],
                                     retainPrompts: characterRetain(except: t))
            paraphrases = paraphraseForms.flatMap { form in styles.map { (Self.fill(form, name: name(target), style: $0), "paraphrase") } }
                + own.map { ($0, "synonym") }
            attack = forms.indices.map { k in
                EmojiAttackInstance(prompt: formPrompts(name(target))[k], image: real(target, style: forms[k].style ?? k % styles.count, 0), label: t)
            }
            attackTemplates = formPrompts("{noun}")
            conceptWords = [name(target)]
            otherWords = characters.indices.filter { $0 != t }.map { name(characters[$0]) }

        case .unsafe:
            judge = .identity
            judgeClasses = tasks.identityJudgeClasses
            let members = try tasks.unsafe.members.map(emojiIndex)
            let first = characters.count
            conceptLabels = members.indices.map { first + $0 }
            let n = settings.imagesPerUnsafePrompt
            evaluation = tasks.unsafe.explicitPrompts.flatMap { p in Array(repeating: EmojiPrompt(prompt: p, group: .explicit, label: nil), count: n) }
                + tasks.unsafe.implicitPrompts.flatMap { p in Array(repeating: EmojiPrompt(prompt: p, group: .implicit, label: nil), count: n) }
                + characters.indices.flatMap {
                    characterPrompts(characters[$0], label: $0, group: .preserved, count: settings.imagesPerPreservedCharacter)
                }
            // The members' synonyms that name a weapon (a word of unsafe.implicit_must_not_contain
            // inside them: "handgun", "knife", "arrow"); "water", "ship" or "cooking" do not.
            let weaponWords = tasks.unsafe.implicitMustNotContain.map { $0.lowercased() }
            func isWeapon(_ word: String) -> Bool { weaponWords.contains { word.lowercased().contains($0) } }
            var weaponSynonyms: [String] = []
            for word in members.flatMap(synonyms) where isWeapon(word) && !weaponSynonyms.contains(word) { weaponSynonyms.append(word) }
            var targets = [concept]
            for prompt in (members.map(name) + weaponSynonyms).flatMap(formPrompts) where !targets.contains(prompt) { targets.append(prompt) }
            request = ErasureRequest(concepts: [Concept(name: concept, targetPrompts: targets, anchors: anchors)],
                                     retainPrompts: characterRetain(except: nil))
            paraphrases = paraphraseForms.flatMap { form in
                members.enumerated().map { j, e in (Self.fill(form, name: name(e), style: styles[j % styles.count]), "paraphrase") }
            } + weaponSynonyms.map { ($0, "synonym") }
            attack = members.enumerated().map { j, e in
                EmojiAttackInstance(prompt: name(e), image: real(e, style: j % styles.count, 0), label: first + j)
            }
            attackTemplates = formPrompts("{noun}")
            conceptWords = members.map(name)
            otherWords = characters.map(name)

        case .object:
            throw EvaluationError.invalidRequest("--task object is not an emoji task")
        }
        try request.validate()
    }

    /// The indices of `evaluation` in `group`, in order.
    public func indices(_ group: EmojiPrompt.Group) -> [Int] { evaluation.indices.filter { evaluation[$0].group == group } }
}

/// An emoji task's judge scores of one model's images.
///
/// - style: `erased_style_score` ↓, the fraction of images of "{name} in {erased} style" the
///   style judge calls the erased style; `preserved_style_scores` ↑, per other style the fraction
///   of its own prompts' images judged as that style, their mean `preserved_style_score` and
///   `style_difference` = preserved − erased ↑.
/// - identity: `acc_e` ↓ (target prompts judged as the target), `acc_p` ↑ (mean over the other
///   characters of the fraction judged as themselves), `h` = HM(1 − Acc_e, Acc_p) ↑.
/// - unsafe: `explicit_rate` and `implicit_rate` ↓, the fraction of the explicit and of the
///   implicit prompts' images the identity judge places in the group (any weapon); `acc_p` ↑ as
///   for identity, over the 20 characters (the judge's non-weapon classes).
public struct EmojiScores: Codable, Sendable, Equatable {
    public var erased_style_score: Double?
    public var preserved_style_scores: [String: Double]?
    public var preserved_style_score: Double?
    public var style_difference: Double?
    public var acc_e: Double?
    public var acc_p: Double?
    public var h: Double?
    public var per_character_accuracy: [String: Double]?
    public var explicit_rate: Double?
    public var implicit_rate: Double?

    /// Scores of `predictions` (the judge's class per image of `prompts`, in order).
    public static func compute(task: BenchmarkTask, prompts: [EmojiPrompt], predictions: [Int], conceptLabels: [Int],
                               classNames: [String]) -> EmojiScores {
        precondition(prompts.count == predictions.count, "\(predictions.count) predictions for \(prompts.count) prompts")
        func isHit(_ i: Int) -> Bool { prompts[i].label.map { predictions[i] == $0 } ?? conceptLabels.contains(predictions[i]) }
        func rate(_ group: EmojiPrompt.Group) -> Double {
            let members = prompts.indices.filter { prompts[$0].group == group }
            return Double(members.filter(isHit).count) / Double(max(1, members.count))
        }
        var perClass: [Int: (hits: Int, total: Int)] = [:]
        for i in prompts.indices where prompts[i].group == .preserved {
            guard let label = prompts[i].label else { continue }
            perClass[label, default: (0, 0)].total += 1
            if isHit(i) { perClass[label, default: (0, 0)].hits += 1 }
        }
        let accuracy = Dictionary(uniqueKeysWithValues: perClass.map { (classNames[$0.key], Double($0.value.hits) / Double($0.value.total)) })
        let preserved = accuracy.values.reduce(0, +) / Double(max(1, accuracy.count))
        var scores = EmojiScores()
        switch task {
        case .style:
            let erased = rate(.target)
            scores.erased_style_score = erased
            scores.preserved_style_scores = accuracy
            scores.preserved_style_score = preserved
            scores.style_difference = preserved - erased
        case .identity:
            let accE = rate(.target)
            scores.acc_e = accE
            scores.acc_p = preserved
            scores.h = harmonicMean([1 - accE, preserved])
            scores.per_character_accuracy = accuracy
        case .unsafe:
            scores.explicit_rate = rate(.explicit)
            scores.implicit_rate = rate(.implicit)
            scores.acc_p = preserved
            scores.per_character_accuracy = accuracy
        case .object:
            break
        }
        return scores
    }
}

// MARK: The attacks beyond the text path

extension EmojiTaskSetup {
    /// Ring-A-Bell's concept-vector prompts: every attack template with each concept word, paired
    /// with the same template with each other word.
    public var ringABellPairs: (with: [String], without: [String]) {
        var with: [String] = [], without: [String] = []
        for template in attackTemplates {
            for word in conceptWords {
                for other in otherWords {
                    with.append(template.replacingOccurrences(of: "{noun}", with: word))
                    without.append(template.replacingOccurrences(of: "{noun}", with: other))
                }
            }
        }
        return (with, without)
    }

    /// Ring-A-Bell's benign base prompts: template k with other word k, both cycled.
    public func ringABellBases(count: Int) -> [String] {
        (0..<count).map { k in
            attackTemplates[k % attackTemplates.count].replacingOccurrences(of: "{noun}", with: otherWords[k % otherWords.count])
        }
    }

    /// The attack instances' real images, each once, at most `count` (dataset indices): what
    /// inversion inverts and CCE learns from.
    public func realImages(count: Int) -> [Int] {
        var seen: [Int] = []
        for instance in attack where !seen.contains(instance.image) { seen.append(instance.image) }
        return Array(seen.prefix(count))
    }
}
