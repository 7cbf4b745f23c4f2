import Diffusion
import Foundation
import NN
import Tensor

/// One concept to erase.
public struct Concept: Codable, Sendable, Equatable {
    /// The phrase given with `--concept` ("sneaker", "nudity", "Van Gogh").
    public var name: String
    /// P_tgt: the prompts that must stop producing the concept during training (the concept and
    /// its synonyms, usually inside a few templates). Paraphrases held out of this set measure
    /// whether the erasure generalises.
    public var targetPrompts: [String]
    /// P_anc: what target prompts should produce instead ("" is the unconditional model; several
    /// prompts form an anchor set, e.g. sibling classes). Each target trajectory is assigned one.
    public var anchors: [String]

    public init(name: String, targetPrompts: [String], anchors: [String]) {
        self.name = name
        self.targetPrompts = targetPrompts
        self.anchors = anchors
    }

    public init(name: String, targetPrompts: [String], anchor: String) {
        self.init(name: name, targetPrompts: targetPrompts, anchors: [anchor])
    }

    /// The first anchor (the only one for single-anchor methods such as UCE's guide concept).
    public var anchor: String { anchors.first ?? "" }

    /// Target prompts for `name` and `synonyms`, each placed in every template ("{}" is the
    /// phrase; "{a}" becomes "a" or "an"), duplicates removed, in order.
    public static func prompts(for name: String, synonyms: [String], templates: [String]) -> [String] {
        var result: [String] = []
        for phrase in [name] + synonyms {
            for template in templates {
                let article = phrase.first.map { "aeiouAEIOU".contains($0) } == true ? "an" : "a"
                let prompt = template.replacingOccurrences(of: "{a}", with: article).replacingOccurrences(of: "{}", with: phrase)
                if !result.contains(prompt) { result.append(prompt) }
            }
        }
        return result
    }
}

/// What to erase and what to keep.
public struct ErasureRequest: Codable, Sendable {
    public var concepts: [Concept]
    /// P_ret: prompts whose images must stay as the original model draws them.
    public var retainPrompts: [String]

    public init(concepts: [Concept], retainPrompts: [String]) {
        self.concepts = concepts
        self.retainPrompts = retainPrompts
    }

    /// Rejects requests that cannot mean what the user wants, before any work starts.
    public func validate() throws {
        guard !concepts.isEmpty else { throw ErasureError.invalidRequest("no --concept given") }
        for concept in concepts {
            let name = concept.name.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !name.isEmpty else { throw ErasureError.invalidRequest("--concept is empty") }
            guard !concept.targetPrompts.isEmpty,
                  concept.targetPrompts.allSatisfy({ !$0.trimmingCharacters(in: .whitespaces).isEmpty }) else {
                throw ErasureError.invalidRequest("concept '\(name)' has an empty target prompt")
            }
            guard !concept.anchors.isEmpty else { throw ErasureError.invalidRequest("concept '\(name)' has no anchor") }
            for anchor in concept.anchors {
                let phrase = anchor.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
                if phrase == name.lowercased() || concept.targetPrompts.contains(where: { $0.lowercased() == phrase }) {
                    throw ErasureError.invalidRequest("--anchor '\(anchor)' is the concept '\(name)' itself; pick what its prompts should draw instead (\"\" for the unconditional model, a superclass or sibling classes)")
                }
            }
            if let clash = concept.targetPrompts.first(where: { retainPrompts.contains($0) }) {
                throw ErasureError.invalidRequest("'\(clash)' is both a target prompt of '\(name)' and a --retain prompt")
            }
        }
    }
}

/// Which UNet parameters an erasure may change (ESD's names where they exist).
public enum TrainableSet: String, Codable, Sendable, CaseIterable {
    /// Every parameter (SCORE's first design and the paper's form, masked by saliency; ESD's esd-all).
    case full
    /// Cross-attention (attn2) only (ESD's esd-x).
    case crossAttention = "cross-attention"
    /// Everything but cross-attention (ESD's esd-u).
    case nonCrossAttention = "non-cross-attention"
    /// Cross-attention keys and values only (ESD's esd-x-strict; UCE edits the same weights).
    case crossAttentionKeysValues = "cross-attention-kv"

    public func includes(_ name: String) -> Bool {
        switch self {
        case .full: return true
        case .crossAttention: return name.contains("attn2.")
        case .nonCrossAttention: return !name.contains("attn2.")
        case .crossAttentionKeysValues: return name.contains("attn2.to_k.") || name.contains("attn2.to_v.")
        }
    }

    /// Marks exactly the parameters of this set as trainable and returns them.
    @discardableResult
    public func select(in unet: UNet2DConditionModel) -> [(name: String, tensor: Tensor)] {
        unet.freeze()
        unet.unfreeze(where: includes)
        return unet.trainableParameters()
    }
}

/// Where a run writes and how it reports.
public struct ErasureContext {
    /// The run folder (checkpoint, outputs); nil keeps everything in memory (tests).
    public var output: URL?
    /// Continue from `output`'s checkpoint when there is one.
    public var resume = false
    public var log: (String) -> Void
    /// Stop after this step as if killed (after its checkpoint); for tests of resume.
    public var stopAfter: Int?

    public init(output: URL?, resume: Bool = false, stopAfter: Int? = nil, log: @escaping (String) -> Void = { _ in }) {
        self.output = output
        self.resume = resume
        self.stopAfter = stopAfter
        self.log = log
    }
}

/// What a finished (or stopped) run reports; `run.json` holds it with the method's config.
public struct ErasureOutcome {
    /// Every loss term per step, by name ("erase", "trajectory", "adversarial", "critic", …).
    public var losses: [String: [Float]]
    /// Steps done (equal to the configured steps unless stopped early).
    public var steps: Int
    /// Saliency masks by parameter name (1 = may change), when the method uses them.
    public var masks: [String: Tensor]
    /// Whether the run stopped at `ErasureContext.stopAfter` before its last step.
    public var stoppedEarly: Bool
    /// Entries of the parameters the method was allowed to train (before any mask).
    public var trainableParameters: Int
    /// Wall time of the run's earlier pieces (up to the checkpoint this one resumed from), 0 for
    /// a run in one piece: the run's time is the caller's timing of this piece plus this.
    public var earlierSeconds: Double

    public init(losses: [String: [Float]], steps: Int, masks: [String: Tensor] = [:], stoppedEarly: Bool = false,
                trainableParameters: Int = 0, earlierSeconds: Double = 0) {
        self.earlierSeconds = earlierSeconds
        self.losses = losses
        self.steps = steps
        self.masks = masks
        self.stoppedEarly = stoppedEarly
        self.trainableParameters = trainableParameters
    }
}

/// An erasure method: changes a model's denoiser (the UNet, the flow transformer) in place so
/// that the request's concepts are gone. Methods use the family's pieces (`ErasableModel`: prompt
/// conditioning, predictions with a swappable frozen copy, the sampling loop) and never the
/// engine's internals.
///
/// `erase(_:model:context:)` is the entry point for every family; a method written over
/// `ErasableModel` (ESD, UCE, SCORE) implements it, one written for the UNet alone implements
/// `erase(_:pipeline:context:)` and refuses other families.
public protocol ErasureMethod {
    associatedtype Config: Codable
    /// The `--method` name.
    var name: String { get }
    /// Every hyper-parameter, as run.json records it.
    var config: Config { get }
    func erase<Model: ErasableModel>(_ request: ErasureRequest, model: Model, context: ErasureContext) throws -> ErasureOutcome
    /// The UNet family's entry point (the same run as `erase(_:model:context:)` on the pipeline).
    func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome
    /// Whether the method changes the pipeline's text encoder too (then the erased model saves it).
    var changesTextEncoder: Bool { get }
}

extension ErasureMethod {
    public var changesTextEncoder: Bool { false }

    /// A UNet-only method: runs on a `StableDiffusionPipeline` and refuses other families by name.
    public func erase<Model: ErasableModel>(_ request: ErasureRequest, model: Model, context: ErasureContext) throws -> ErasureOutcome {
        guard let pipeline = model as? StableDiffusionPipeline else {
            throw ErasureError.invalidRequest("--method \(name) runs on Stable Diffusion (UNet) models only, not on \(Model.family.rawValue) models; on FLUX use esd, uce, score or eraseanything")
        }
        return try erase(request, pipeline: pipeline, context: context)
    }

    /// The hyper-parameters as pretty, key-sorted JSON (run.json's "config", the run's config.json).
    public var configJSON: Data {
        get throws {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            return try encoder.encode(config)
        }
    }
}

/// Why an erasure could not start or had to stop.
public enum ErasureError: Error, CustomStringConvertible, Equatable {
    case invalidRequest(String)
    case invalidConfig(String)
    /// A loss term became NaN or infinite; the last good checkpoint is kept.
    case nonFinite(term: String, step: Int, checkpoint: String?)

    public var description: String {
        switch self {
        case let .invalidRequest(reason): return reason
        case let .invalidConfig(reason): return "config: \(reason)"
        case let .nonFinite(term, step, checkpoint):
            return "the \(term) loss became non-finite at step \(step); "
                + (checkpoint.map { "the last good checkpoint is \($0) (lower the learning rate or λ of that term and rerun with --resume)" }
                   ?? "lower the learning rate or λ of that term")
        }
    }
}

extension ErasureError: LocalizedError {
    public var errorDescription: String? { description }
}

/// The checks a config or a command's settings make, each bound and its message written once and
/// each config's rules a table of keys and values. A failure throws the layer's own error and
/// names the key or flag and the value given ("ESD iterations must be at least 1, not 0").
public struct ConfigCheck {
    /// What every message starts with ("ESD "; nothing for command-line flags).
    let prefix: String
    let failure: (String) -> Error

    /// A method's config: failures are `ErasureError.invalidConfig`, starting with the method's name.
    init(method: String) {
        self.init(prefix: method + " ") { ErasureError.invalidConfig($0) }
    }

    public init(prefix: String = "", failure: @escaping (String) -> Error) {
        self.prefix = prefix
        self.failure = failure
    }

    public func require(_ ok: Bool, _ message: @autoclosure () -> String) throws {
        if !ok { throw failure(prefix + message()) }
    }

    public func atLeast(_ minimum: Int, _ values: KeyValuePairs<String, Int>) throws {
        for (key, value) in values {
            try require(value >= minimum, "\(key) must be \(minimum == 0 ? "≥ 0" : "at least \(minimum)"), not \(value)")
        }
    }

    public func positive<T: BinaryFloatingPoint>(_ values: KeyValuePairs<String, T>) throws {
        for (key, value) in values { try require(value.isFinite && value > 0, "\(key) must be positive, not \(value)") }
    }

    public func nonNegative<T: BinaryFloatingPoint>(_ values: KeyValuePairs<String, T>) throws {
        for (key, value) in values { try require(value.isFinite && value >= 0, "\(key) must be ≥ 0, not \(value)") }
    }

    /// A fraction in (0, 1] (a saliency ratio: 1 keeps every entry).
    public func fraction(_ key: String, _ value: Float) throws {
        try require(value > 0 && value <= 1, "\(key) must be in (0, 1], not \(value)")
    }

    public func oneOf(_ allowed: [String], _ key: String, _ value: String) throws {
        let names = allowed.count > 1 ? allowed.dropLast().joined(separator: ", ") + " or " + allowed.last! : allowed.joined()
        try require(allowed.contains(value), "\(key) must be \(names), not '\(value)'")
    }
}

/// The methods `--method` can name.
public enum ErasureMethods {
    public static let names = ["score", "esd", "uce", "ant", "rece", "mace", "advunlearn", "eraseanything"]

    /// The method called `name` with its hyper-parameters; each method reads only its own config.
    public static func make(_ name: String, score: SCOREConfig = SCOREConfig(), esd: ESDConfig = ESDConfig(),
                            uce: UCEConfig = UCEConfig(), ant: ANTConfig = ANTConfig(),
                            rece: RECEConfig = RECEConfig(), mace: MACEConfig = MACEConfig(),
                            advUnlearn: AdvUnlearnConfig = AdvUnlearnConfig(),
                            eraseAnything: EraseAnythingConfig = EraseAnythingConfig()) throws -> any ErasureMethod {
        switch name {
        case "score": return SCORE(config: score)
        case "esd": return ESD(config: esd)
        case "uce": return UCE(config: uce)
        case "ant": return ANT(config: ant)
        case "rece": return RECE(config: rece)
        case "mace": return MACE(config: mace)
        case "advunlearn": return AdvUnlearn(config: advUnlearn)
        case "eraseanything": return EraseAnything(config: eraseAnything)
        default: throw ErasureError.invalidRequest("unknown --method '\(name)'; available: \(names.joined(separator: ", "))")
        }
    }
}
