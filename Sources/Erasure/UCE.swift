import Diffusion
import Foundation
import NN
import Tensor

/// Every hyper-parameter of UCE. Defaults are the official script's
/// (rohitgandikota/unified-concept-editing, `trainscripts/uce_sd_erase.py`): λ = 0.5, erase and
/// preserve scales 1.
public struct UCEConfig: Codable, Equatable, Sendable {
    /// λ, the pull towards the original weights (λ‖W − W₀‖²). Must be positive: it is what keeps
    /// the system solvable with fewer concepts than the text width.
    public var lambda: Double = 0.5
    /// Weight of the edit terms ‖W cᵢ − v*ᵢ‖². The official notes warn that too large a value
    /// damages unrelated prompts (noise on objects).
    public var eraseScale: Double = 1
    /// Weight of the preserve terms ‖W cⱼ − W₀ cⱼ‖² (the retained prompts).
    public var preserveScale: Double = 1
    /// The guide concept for every erased concept; nil uses each concept's anchor ("" unless
    /// --anchor says otherwise). The official script guides to "" for objects and unsafe
    /// content and to "art" for artistic styles.
    public var guide: String? = nil

    public init() {}

    public func validate() throws {
        let check = ConfigCheck(method: "UCE")
        try check.positive(["lambda": lambda])
        try check.nonNegative(["eraseScale": eraseScale, "preserveScale": preserveScale])
    }
}

/// UCE's tuning space: λ, the pull towards the original weights, and the erase scale (the
/// official notes: too large damages unrelated prompts).
extension UCEConfig: TunableConfig {
    public static let searchSpace = SearchSpace(["lambda": [0.5, 0.1, 2.0], "eraseScale": [1.0, 0.5, 2.0]])
}

/// UCE, Unified Concept Editing (Gandikota et al., arXiv 2308.14761): a closed-form edit of every
/// cross-attention key and value projection W ∈ {attn2.to_k, attn2.to_v}, minimising
///   e·Σᵢ‖W cᵢ − v*ᵢ‖² + p·Σⱼ‖W cⱼ − W₀ cⱼ‖² + λ‖W − W₀‖²_F,   v*ᵢ = W₀ c_guide(i),
/// so the erased concepts' keys and values become those of their guide while the preserved
/// prompts' stay. Its solution (the paper's equation 7, as the official code scales it):
///   W = (λW₀ + e·Σᵢ v*ᵢcᵢᵀ + p·Σⱼ W₀cⱼcⱼᵀ)(λI + e·Σᵢ cᵢcᵢᵀ + p·Σⱼ cⱼcⱼᵀ)⁻¹,
/// solved here in Float64 by Cholesky (the right-hand matrix is symmetric positive definite for
/// λ > 0). Edit concepts are every target prompt of every concept (several at once, as the
/// official ";"-separated list), preserve concepts the request's retain prompts. No training:
/// seconds.
///
/// Each text is embedded by one token of the text encoder's states: the official code takes
/// position `attention_mask.sum() − 2`, the last token of the text before the end token (for
/// CLIP, the last word; for "" the start token). The same rule is applied to the pipeline's
/// encoder through its mask, which counts the start and end tokens (`TextEncoder`); with the
/// testbed's MiniLM that is the last word piece before [SEP].
///
/// On FLUX there is no cross-attention; the closed form edits the two linear maps whose input is
/// a text embedding alone (`FluxPipeline.textReadingWeights`): `context_embedder`, on the same
/// token rule, and the pooled vector's projection `time_text_embed.text_embedder.linear_1`, on
/// the prompts' pooled vectors, each with its own system. The double blocks' `add_k_proj` and
/// `add_v_proj` are left alone: they read the context stream after a timestep- and
/// pooled-text-dependent AdaLN (and, past the first block, after attention to the image), so no
/// single closed form maps a concept's keys to its guide's there.
public struct UCE: ErasureMethod {
    public var config: UCEConfig

    public init(config: UCEConfig = UCEConfig()) { self.config = config }

    public var name: String { "uce" }

    /// Whether UCE edits the UNet parameter called `name`.
    public static func edits(_ name: String) -> Bool {
        name.hasSuffix("attn2.to_k.weight") || name.hasSuffix("attn2.to_v.weight")
    }

    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try erase(request, model: pipeline, context: context)
    }

    public func erase<Model: ErasableModel>(_ request: ErasureRequest, model: Model, context: ErasureContext) throws -> ErasureOutcome {
        try request.validate()
        try config.validate()
        let started = Date()
        if let guide = config.guide {
            let lowered = guide.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
            for concept in request.concepts where concept.name.lowercased() == lowered
                || concept.targetPrompts.contains(where: { $0.lowercased() == lowered }) {
                throw ErasureError.invalidRequest("--uce-guide '\(guide)' is the concept '\(concept.name)' itself")
            }
        }
        // (edit text, guide text) pairs, then the preserved texts. A text given twice counts
        // twice, as in the official script's sums over its ";"-separated lists.
        let edits = request.concepts.flatMap { concept in concept.targetPrompts.map { (text: $0, guide: config.guide ?? concept.anchor) } }
        let preserve = request.retainPrompts
        let weights = model.textReadingWeights()
        guard !weights.isEmpty else {
            throw ErasureError.invalidRequest("the \(Model.denoiserComponent) has no weights that read the text for UCE to edit")
        }
        var editedTensors = 0, editedEntries = 0
        var editGap: [Double] = [], preserveDrift: [Double] = []
        for input in [TextInput.token, .pooled] {
            let group = weights.filter { $0.input == input }
            guard !group.isEmpty else { continue }
            let embeddings = try model.textEmbeddings(edits.map(\.text) + edits.map(\.guide) + preserve, input: input)
            let closedForm: UCEClosedForm
            do {
                closedForm = try UCEClosedForm(edits: edits.map { embeddings[$0.text]! }, guides: edits.map { embeddings[$0.guide]! },
                                               preserve: preserve.map { embeddings[$0]! }, lambda: config.lambda,
                                               eraseScale: config.eraseScale, preserveScale: config.preserveScale)
            } catch {
                throw ErasureError.invalidConfig("UCE cannot solve its system: \(error)")
            }
            let edit = try Self.apply(closedForm, to: group.map { ($0.name, $0.tensor) })
            editedTensors += edit.tensors
            editedEntries += edit.entries
            editGap += edit.editGaps
            preserveDrift += edit.preserveDrifts
        }
        func mean(_ values: [Double]) -> Double { values.reduce(0, +) / Double(max(1, values.count)) }
        context.log(String(format: "UCE edited %d text-reading weights of the %@ (%d entries) for %d edit and %d preserve texts in %.1f s",
                           editedTensors, Model.denoiserComponent, editedEntries, edits.count, preserve.count,
                           Date().timeIntervalSince(started)))
        context.log(String(format: "edit texts' projections now %.1f%% as far from their guide's as before%@", 100 * mean(editGap),
                           preserveDrift.isEmpty ? "" : String(format: "; preserved texts' moved %.2f%% (relative)", 100 * mean(preserveDrift))))
        return ErasureOutcome(losses: [:], steps: 0, trainableParameters: editedEntries)
    }

    /// Replaces every weight UCE edits in `unet` (each taken as its own W₀) by `closedForm`'s
    /// solution for it, and reports the tensors and entries edited and the means over weights of
    /// `UCEClosedForm.report` (RECE's iterations edit the already edited weights the same way).
    static func apply(_ closedForm: UCEClosedForm, to unet: UNet2DConditionModel) throws
        -> (tensors: Int, entries: Int, editGap: Double, preserveDrift: Double?) {
        let edit = try apply(closedForm, to: unet.namedParameters().filter { Self.edits($0.name) })
        guard edit.tensors > 0 else {
            throw ErasureError.invalidRequest("the UNet has no cross-attention attn2.to_k/to_v weights for UCE to edit")
        }
        func mean(_ values: [Double]) -> Double { values.reduce(0, +) / Double(max(1, values.count)) }
        return (edit.tensors, edit.entries, mean(edit.editGaps), edit.preserveDrifts.isEmpty ? nil : mean(edit.preserveDrifts))
    }

    /// Replaces each of `weights` [out, width] (each its own W₀) by `closedForm`'s solution for it;
    /// returns the tensors and entries edited and `UCEClosedForm.report` per weight.
    static func apply(_ closedForm: UCEClosedForm, to weights: [(name: String, tensor: Tensor)]) throws
        -> (tensors: Int, entries: Int, editGaps: [Double], preserveDrifts: [Double]) {
        let width = closedForm.width
        var editedTensors = 0, editedEntries = 0
        var editGap: [Double] = [], preserveDrift: [Double] = []
        for (name, p) in weights {
            guard p.rank == 2, p.shape[1] == width else {
                throw ErasureError.invalidRequest("\(name) has shape \(p.shape); UCE needs [out, \(width)] (the text embedding's width)")
            }
            let original = Matrix64(rows: p.shape[0], columns: width, values: p.scalars.map(Double.init))
            let edited = closedForm.apply(to: original)
            p.assign(Tensor(shape: p.shape, scalars: edited.values.map { Float($0) }))
            editedTensors += 1
            editedEntries += p.count
            let report = closedForm.report(original: original, edited: edited)
            editGap.append(report.editGap)
            if let drift = report.preserveDrift { preserveDrift.append(drift) }
        }
        return (editedTensors, editedEntries, editGap, preserveDrift)
    }

    /// One embedding c per text (Float64): the encoder's state at position (tokens − 2), where
    /// tokens counts the mask's ones (start and end tokens included), i.e. the last token
    /// before the end token, as the official `attention_mask.sum() − 2`. Texts are encoded in
    /// one batch; padding does not change the states of real tokens.
    public static func tokenEmbeddings(of texts: [String], pipeline: StableDiffusionPipeline) -> [String: [Double]] {
        var unique: [String] = []
        for text in texts where !unique.contains(text) { unique.append(text) }
        let (states, mask) = noGrad { pipeline.encodePrompts(unique) }
        return lastTokenStates(states: states, mask: mask, texts: unique)
    }
}

/// UCE's closed form for one set of concepts, a `RidgeEdit`: the system matrix
/// A = λI + e·Σᵢ cᵢcᵢᵀ + p·Σⱼ cⱼcⱼᵀ depends only on the text embeddings, so it is factored once
/// and applied to every edited weight.
public struct UCEClosedForm {
    /// cᵢ, the edit embeddings, and the guide embedding of each.
    public let edits: [[Double]]
    public let guides: [[Double]]
    /// cⱼ, the preserve embeddings.
    public let preserve: [[Double]]
    public let lambda: Double, eraseScale: Double, preserveScale: Double
    let ridge: RidgeEdit

    /// d, the width of the embeddings (the weights' input width).
    public var width: Int { ridge.width }

    public init(edits: [[Double]], guides: [[Double]], preserve: [[Double]], lambda: Double, eraseScale: Double,
                preserveScale: Double) throws {
        precondition(edits.count == guides.count, "UCEClosedForm: \(edits.count) edits, \(guides.count) guides")
        guard let d = (edits + preserve).first?.count else { throw LinearAlgebraError.notSquare(rows: 0, columns: 0) }
        precondition((edits + guides + preserve).allSatisfy { $0.count == d }, "UCEClosedForm: embeddings of different widths")
        self.edits = edits
        self.guides = guides
        self.preserve = preserve
        self.lambda = lambda
        self.eraseScale = eraseScale
        self.preserveScale = preserveScale
        ridge = try RidgeEdit(contexts: edits + preserve, scales: edits.map { _ in eraseScale } + preserve.map { _ in preserveScale },
                              lambda: lambda)
    }

    /// The edited weight W = B A⁻¹ for the original W₀ [out, d], where
    /// B = λW₀ + e·Σᵢ (W₀c_guide,ᵢ)cᵢᵀ + p·Σⱼ (W₀cⱼ)cⱼᵀ: the edit texts map to their guides' values
    /// under W₀, the preserved texts to their own.
    public func apply(to original: Matrix64) -> Matrix64 {
        precondition(original.columns == width, "UCEClosedForm.apply: a weight of \(original.columns) columns for embeddings of \(width)")
        return ridge.solve(base: original, values: guides.map { original.times($0) } + preserve.map { original.times($0) })
    }

    /// How the edit did on one weight: editGap = mean over edits of ‖W cᵢ − v*ᵢ‖ / ‖W₀ cᵢ − v*ᵢ‖
    /// (0: the edit texts map exactly to their guide; 1: unchanged), and preserveDrift = mean of
    /// ‖W cⱼ − W₀ cⱼ‖ / ‖W₀ cⱼ‖ (nil without preserve texts).
    public func report(original: Matrix64, edited: Matrix64) -> (editGap: Double, preserveDrift: Double?) {
        func norm(_ x: [Double]) -> Double { x.reduce(0) { $0 + $1 * $1 }.squareRoot() }
        func minus(_ x: [Double], _ y: [Double]) -> [Double] { zip(x, y).map { $0 - $1 } }
        let gaps = zip(edits, guides).map { c, g -> Double in
            let target = original.times(g)
            let before = norm(minus(original.times(c), target))
            return before == 0 ? 0 : norm(minus(edited.times(c), target)) / before
        }
        let drifts = preserve.map { c -> Double in
            let before = original.times(c)
            return norm(minus(edited.times(c), before)) / max(norm(before), 1e-30)
        }
        return (gaps.reduce(0, +) / Double(max(1, gaps.count)), drifts.isEmpty ? nil : drifts.reduce(0, +) / Double(drifts.count))
    }
}
