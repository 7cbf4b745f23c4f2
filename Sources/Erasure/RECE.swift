import Diffusion
import Foundation
import NN
import Tensor

/// Every hyper-parameter of RECE. Defaults are the official object script's
/// (CharlesGong12/RECE, `train_object.py` and its README): one epoch, λ = 0.1, erase scale 1,
/// preserve scale 0.1, the "close_regzero" embedding with regularisation 1e-3 (the README's value
/// for objects UCE finds hard; 0.1 for easy ones), starting from UCE at its own defaults.
public struct RECEConfig: Codable, Equatable, Sendable {
    /// The UCE edit RECE starts from (the official scripts load a UCE checkpoint).
    public var uce = UCEConfig()
    /// Rounds of (derive adversarial embeddings, edit them away) after the UCE edit.
    public var epochs = 1
    /// λ of each round's edit, the pull towards the weights the round starts from.
    public var lambda: Double = 0.1
    /// Weight of the adversarial edit terms.
    public var eraseScale: Double = 1
    /// Weight of the preserve terms ("" and the retained prompts, every token).
    public var preserveScale: Double = 0.1
    /// The regularisation of the adversarial embedding towards 0 (official `regular_scale`).
    public var regularScale: Double = 1e-3

    public init() {}

    public func validate() throws {
        try uce.validate()
        let check = ConfigCheck(method: "RECE")
        try check.atLeast(0, ["epochs": epochs])
        try check.positive(["lambda": lambda, "regularScale": regularScale])
        try check.nonNegative(["eraseScale": eraseScale, "preserveScale": preserveScale])
    }
}

/// RECE's tuning space: the rounds of adversarial embeddings and their regularisation (official
/// 1e-3; 0.1 for objects UCE erases easily).
extension RECEConfig: TunableConfig {
    public static let searchSpace = SearchSpace(["epochs": [1, 2, 3], "regularScale": [1e-3, 0.1]])
}

/// RECE, "Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models" (Gong et al.,
/// arXiv 2407.12383): UCE's closed-form edit of the cross-attention keys and values, then rounds
/// that find the text embedding which still regenerates the concept through the edited
/// projections and edit that one away too. No training: seconds.
///
/// Each round, for every concept with token states c₁…c_T (the concept's name through the text
/// encoder), the adversarial embedding of each token is, with W_l the current and W₀,l the
/// original key and value projections of every cross-attention layer,
///   e_k = argmin_e Σ_l ‖W_l e − W₀,l c_k‖² + ρ‖e‖² = (Σ_l W_lᵀW_l + ρI)⁻¹ Σ_l W_lᵀW₀,l c_k,
/// the official "close_regzero" form: the embedding whose keys and values under the edited model
/// are the original model's keys and values of the concept. The round then applies UCE's closed
/// form (`UCEClosedForm`) to the current weights with the edit texts e_k, each guided to the guide
/// concept's token at the same position, and the preserve texts every token of "" and of the
/// retained prompts, with this config's λ and scales.
public struct RECE: ErasureMethod {
    public var config: RECEConfig

    public init(config: RECEConfig = RECEConfig()) { self.config = config }

    public var name: String { "rece" }

    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try request.validate()
        try config.validate()
        let started = Date()
        let unet = pipeline.unet
        let originals = Self.projections(of: unet)
        let base = try UCE(config: config.uce).erase(request, pipeline: pipeline, context: context)

        let guides = request.concepts.map { config.uce.guide ?? $0.anchor }
        var preserveTexts = [""]
        for prompt in request.retainPrompts where !preserveTexts.contains(prompt) { preserveTexts.append(prompt) }
        let sequences = Self.tokenSequences(of: request.concepts.map(\.name) + guides + preserveTexts, pipeline: pipeline)
        let preserve = preserveTexts.flatMap { sequences[$0]! }

        var residualBefore: [Float] = [], residualAfter: [Float] = []
        for epoch in 0..<config.epochs {
            let adversary = try RECEAdversary(current: Self.projections(of: unet).map(\.weight),
                                              original: originals.map(\.weight), regularScale: config.regularScale)
            var edits: [[Double]] = [], editGuides: [[Double]] = []
            var adversarial: [(embeddings: [[Double]], concept: [[Double]])] = []
            for (concept, guide) in zip(request.concepts, guides) {
                let tokens = sequences[concept.name]!, guideTokens = sequences[guide]!
                let embeddings = tokens.map(adversary.embedding)
                adversarial.append((embeddings, tokens))
                edits += embeddings
                editGuides += tokens.indices.map { guideTokens[min($0, guideTokens.count - 1)] }
            }
            let closedForm: UCEClosedForm
            do {
                closedForm = try UCEClosedForm(edits: edits, guides: editGuides, preserve: preserve, lambda: config.lambda,
                                               eraseScale: config.eraseScale, preserveScale: config.preserveScale)
            } catch {
                throw ErasureError.invalidConfig("RECE cannot solve its system: \(error)")
            }
            let before = adversarial.map {
                RECEAdversary.residual(current: adversary.current, original: adversary.original, embeddings: $0.embeddings, concept: $0.concept)
            }
            let edit = try UCE.apply(closedForm, to: unet)
            let edited = Self.projections(of: unet).map(\.weight)
            let afterResiduals = adversarial.map {
                RECEAdversary.residual(current: edited, original: adversary.original, embeddings: $0.embeddings, concept: $0.concept)
            }
            residualBefore += before.map(Float.init)
            residualAfter += afterResiduals.map(Float.init)
            func mean(_ x: [Double]) -> Double { x.reduce(0, +) / Double(max(1, x.count)) }
            context.log(String(format: "RECE round %d: adversarial embeddings (%d tokens) regenerated the original K/V to %.1f%% relative error; after the edit %.1f%%%@",
                               epoch + 1, edits.count, 100 * mean(before), 100 * mean(afterResiduals),
                               edit.preserveDrift.map { String(format: "; preserved tokens' K/V moved %.2f%%", 100 * $0) } ?? ""))
        }
        context.log(String(format: "RECE: UCE and %d round(s) in %.1f s", config.epochs, Date().timeIntervalSince(started)))
        return ErasureOutcome(losses: config.epochs == 0 ? [:] : ["adversarial_residual": residualBefore, "adversarial_residual_after": residualAfter],
                              steps: 0, trainableParameters: base.trainableParameters)
    }

    /// The weights UCE edits, by name, in Float64.
    static func projections(of unet: UNet2DConditionModel) -> [(name: String, weight: Matrix64)] {
        unet.namedParameters().filter { UCE.edits($0.name) && $0.tensor.rank == 2 }.map { name, p in
            (name, Matrix64(rows: p.shape[0], columns: p.shape[1], values: p.scalars.map(Double.init)))
        }
    }

    /// Each text's token states (Float64), the sequence the UNet attends to: the positions of
    /// the encoder's mask when the pipeline passes it to the UNet (the testbed's MiniLM), every
    /// position otherwise (CLIP's 77, padding included, as the official code uses them).
    public static func tokenSequences(of texts: [String], pipeline: StableDiffusionPipeline) -> [String: [[Double]]] {
        var unique: [String] = []
        for text in texts where !unique.contains(text) { unique.append(text) }
        let (states, mask) = noGrad { pipeline.encodePrompts(unique) }
        let (length, width) = (states.shape[1], states.shape[2])
        var result: [String: [[Double]]] = [:]
        for (i, text) in unique.enumerated() {
            let positions = (0..<length).filter { !pipeline.passesAttentionMask || mask.pointer[i * length + $0] != 0 }
            result[text] = positions.map { k in
                let start = (i * length + k) * width
                return (0..<width).map { Double(states.pointer[start + $0]) }
            }
        }
        return result
    }
}

/// RECE's closed-form adversarial embedding for one state of the edited weights:
/// e = A⁻¹ Σ_l W_lᵀ W₀,l c with A = Σ_l W_lᵀ W_l + ρI (symmetric positive definite for ρ > 0).
struct RECEAdversary {
    let current: [Matrix64]
    let original: [Matrix64]
    let factor: Cholesky

    init(current: [Matrix64], original: [Matrix64], regularScale: Double) throws {
        precondition(current.count == original.count && !current.isEmpty, "RECEAdversary: \(current.count) edited, \(original.count) original weights")
        let d = current[0].columns
        var a = Matrix64.identity(d, scale: regularScale)
        for w in current {
            for r in 0..<w.rows { let row = w.row(r); a.addOuterProduct(row, row) }
        }
        self.current = current
        self.original = original
        factor = try Cholesky(a)
    }

    func embedding(_ c: [Double]) -> [Double] {
        let d = c.count
        var b = [Double](repeating: 0, count: d)
        for (w, w0) in zip(current, original) {
            let target = w0.times(c)
            for r in 0..<w.rows where target[r] != 0 {
                let base = r * d
                for k in 0..<d { b[k] += w.values[base + k] * target[r] }
            }
        }
        return factor.solve(b)
    }

    /// √(Σ_l,k ‖W_l e_k − W₀,l c_k‖²) / √(Σ_l,k ‖W₀,l c_k‖²): how far the adversarial embeddings'
    /// keys and values under the weights W are from the original ones of the concept (0: they
    /// regenerate them exactly).
    static func residual(current: [Matrix64], original: [Matrix64], embeddings: [[Double]], concept: [[Double]]) -> Double {
        var error = 0.0, norm = 0.0
        for (w, w0) in zip(current, original) {
            for (e, c) in zip(embeddings, concept) {
                let (x, y) = (w.times(e), w0.times(c))
                for r in x.indices { error += (x[r] - y[r]) * (x[r] - y[r]); norm += y[r] * y[r] }
            }
        }
        return (error / max(norm, 1e-300)).squareRoot()
    }
}
