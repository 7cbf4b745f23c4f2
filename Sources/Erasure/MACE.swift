import Diffusion
import Foundation
import NN
import Tensor

/// Every hyper-parameter of MACE. Defaults are the official object configs' (Shilin-LU/MACE,
/// `configs/object/erase_*.yaml`): λ = 100 (the middle of bird's 10, automobile's 100 and ship's
/// 1000), no preservation term (`train_preserve_scale` and `fuse_preserve_scale` 0), per concept
/// 50 steps of AdamW (lr 1e-5, weight decay 0.01, gradient norm clipped at 1) on rank-1 LoRAs,
/// the end token counted with the concept's tokens (`use_pooler`), relation-focal importance
/// sampling of timesteps, and 8 training images per concept drawn by the original model with
/// 30 steps at guidance 7.5 (`data_preparation.py`).
public struct MACEConfig: Codable, Equatable, Sendable {
    /// λ, the pull towards the weights each closed form starts from (`lamb`).
    public var lambda: Double = 100
    /// Weight of the retained prompts' tokens in the refinement (`train_preserve_scale`).
    public var trainPreserveScale: Double = 0
    /// Weight of the retained prompts' tokens in the fusion (`fuse_preserve_scale`).
    public var fusePreserveScale: Double = 0
    /// LoRA steps per concept (`max_train_steps`, the concepts trained one after another).
    public var iterations = 50
    public var learningRate: Float = 1e-5
    public var weightDecay: Float = 0.01
    public var maxGradNorm: Float = 1
    /// Rank of each concept's LoRA on every cross-attention key and value projection.
    public var rank = 1
    /// Count the end token with the concept's tokens in the attention loss (`use_pooler`).
    public var usePooler = true
    /// Draw timesteps from MACE's f(t) = σ(0.05(t − 200)) − σ(0.05(t − 400)) instead of uniformly.
    public var importanceSampling = true
    /// Images per concept the original model draws for the LoRA training (with their masks).
    public var trainingImages = 8
    public var imageSteps = 30
    public var imageGuidance: Float = 7.5
    /// A pixel belongs to the object when some channel differs from the background colour (the
    /// median of the border pixels) by more than this, in the image's [−1, 1] units. Stands in
    /// for the official Grounded-SAM masks on testbeds with flat backgrounds.
    public var maskThreshold: Float = 0.1
    public var checkpointEvery = 25
    public var seed: UInt64 = 0

    public init() {}

    public func validate() throws {
        let check = ConfigCheck(method: "MACE")
        try check.atLeast(0, ["iterations": iterations])
        try check.atLeast(1, ["rank": rank, "trainingImages": trainingImages, "imageSteps": imageSteps, "checkpointEvery": checkpointEvery])
        try check.positive(["lambda": lambda])
        try check.nonNegative(["trainPreserveScale": trainPreserveScale, "fusePreserveScale": fusePreserveScale])
        try check.positive(["learningRate": learningRate])
        try check.nonNegative(["weightDecay": weightDecay, "maxGradNorm (0: no clipping)": maxGradNorm, "imageGuidance": imageGuidance])
        try check.require(maskThreshold.isFinite && maskThreshold >= 0 && maskThreshold < 2, "maskThreshold must be in [0, 2), not \(maskThreshold)")
    }
}

/// MACE's tuning space: λ of the closed forms (the official object configs use 10, 100 and
/// 1000), the LoRAs' learning rate (up to 1e-2: at the official 1e-5 a rank-1 LoRA on the
/// testbed's small K/V weights hardly moves in 50 steps) and the retained prompts' weights in the
/// refinement and the fusion (0 in the official object configs, whose CLIP is causal: the words
/// before the concept are the same in every prompt; MiniLM mixes the concept into every token).
extension MACEConfig: TunableConfig {
    public static let searchSpace = SearchSpace(["lambda": [100.0, 10.0, 1000.0], "learningRate": [1e-5, 1e-4, 1e-3, 1e-2],
                                                 "trainPreserveScale": [0.0, 1.0], "fusePreserveScale": [0.0, 1.0]])
}

/// MACE, "Mass Concept Erasure in Diffusion Models" (Lu et al., CVPR 2024, arXiv 2403.06135),
/// in its three official stages, on every cross-attention key and value projection W:
/// 1. Closed-form refinement (CFR). In each target prompt the words around the concept carry
///    its trace (the text encoder mixes it into them); CFR maps them to what they are in the
///    same prompt with the concept replaced by its anchor:
///      W = argmin Σ‖W eᵒ − W₀ eⁿ‖² + p·Σ_ret‖W c − W₀ c‖² + λ‖W − W₀‖²,
///    eᵒ the states of the tokens the two prompts share (common prefix and suffix; with CLIP's
///    77 positions also the padding after them), eⁿ the matching states of the anchor prompt, c
///    every token of the retained prompts. `RidgeEdit.mace` solves it.
/// 2. One LoRA per concept (W + B·A, rank r, on the refined weights), trained on images the
///    original model draws of the concept: the image noised at t, the loss
///      L = Σ_layers ‖P_l[mask, concept tokens]‖_F,
///    P_l the layer's cross-attention probabilities of all heads, restricted to the pixels of
///    the object's mask (at the layer's resolution, nearest) and to the concept's tokens (and
///    the end token): the concept stops being looked at where the object is.
/// 3. Fusion of the concepts' LoRAs into one weight by the same closed form:
///      W = argmin Σ_i Σ_tokens‖W e − (W_cfr + BᵢAᵢ) e‖² + p·Σ_ret‖W c − W₀ c‖² + λ‖W − W_cfr‖²,
///    e every token of concept i's prompts.
/// Target prompts are those of `Concept.targetPrompts` that contain the concept's name (the
/// official augmented templates contain it). The anchor is the concept's first (the official
/// `mapping_concept`).
public struct MACE: ErasureMethod {
    public var config: MACEConfig

    public init(config: MACEConfig = MACEConfig()) { self.config = config }

    public var name: String { "mace" }

    public func erase(_ request: ErasureRequest, pipeline: StableDiffusionPipeline, context: ErasureContext) throws -> ErasureOutcome {
        try request.validate()
        try config.validate()
        let started = Date()
        let access = try EncoderAccess(pipeline.textEncoder)
        let layers = MACELayers(pipeline.unet)
        guard !layers.weights.isEmpty else {
            throw ErasureError.invalidRequest("the UNet has no cross-attention (attn2) to_k/to_v weights for MACE")
        }
        let originals = layers.weights.map { Matrix64($0.tensor) }
        let prompts = try request.concepts.map { try Self.trainingPrompts(of: $0) }
        // The LoRA stage's images come from the original model, before the refinement.
        let data = try MACEData(config: config, prompts: prompts, pipeline: pipeline)

        // 1. Closed-form refinement.
        var contexts: [[Double]] = [], guides: [[Double]] = []
        for (concept, list) in zip(request.concepts, prompts) {
            let phrases = Self.phrases(of: concept)
            let pairs = list.map { (old: $0, new: Self.replacing(phrases, in: $0, with: concept.anchor)) }
            let matched = Self.matchedStates(pairs, access: access, pipeline: pipeline)
            contexts += matched.old
            guides += matched.new
        }
        let preserve = Self.allTokenStates(request.retainPrompts, pipeline: pipeline)
        let refinement = try RidgeEdit.mace(contexts: contexts + preserve,
                                            scales: contexts.map { _ in 1 } + preserve.map { _ in config.trainPreserveScale },
                                            lambda: config.lambda)
        for (l, w) in layers.weights.enumerated() {
            let values = guides.map { originals[l].times($0) } + preserve.map { originals[l].times($0) }
            w.tensor.assign(refinement.solve(base: originals[l], values: values).tensor(shape: w.tensor.shape))
        }
        context.log(String(format: "MACE: refined %d cross-attention K/V weights on %d token pairs in %.1f s",
                           layers.weights.count, contexts.count, Date().timeIntervalSince(started)))
        if !request.retainPrompts.isEmpty, config.trainPreserveScale == 0, config.fusePreserveScale == 0 {
            context.log("MACE preserve scales are 0 (the official object configs'): the \(request.retainPrompts.count) retain prompts are not used")
        }

        // 2. One LoRA per concept.
        let refined = layers.weights.map { $0.tensor.detachedCopy() }
        var run: MACERun?
        let outcome = try TrainingRun.train(config: MACETraining(config: config, concepts: request.concepts.count),
                                            request: request, context: context) {
            let made = try MACERun(config: config, request: request, pipeline: pipeline, prompts: prompts, data: data,
                                   layers: layers, refined: refined, access: access)
            run = made
            return made
        }
        guard !outcome.stoppedEarly, let adapters = run?.adapters else { return outcome }

        // 3. Fusion of the trained (or restored) factors.
        var fusionContexts: [[Double]] = [], owners: [Int] = []
        for (i, list) in prompts.enumerated() {
            let states = Self.allTokenStates(list, pipeline: pipeline)
            fusionContexts += states
            owners += states.map { _ in i }
        }
        let fusion = try RidgeEdit.mace(contexts: fusionContexts + preserve,
                                        scales: fusionContexts.map { _ in 1 } + preserve.map { _ in config.fusePreserveScale },
                                        lambda: config.lambda)
        for (l, w) in layers.weights.enumerated() {
            let withLoRA = adapters.map { Matrix64($0[l].merged) }
            let values = zip(fusionContexts, owners).map { c, i in withLoRA[i].times(c) } + preserve.map { originals[l].times($0) }
            w.tensor.assign(fusion.solve(base: Matrix64(refined[l]), values: values).tensor(shape: w.tensor.shape))
        }
        context.log(String(format: "MACE: fused %d LoRA(s) over %d tokens; %.1f s in all", adapters.count, fusionContexts.count,
                           Date().timeIntervalSince(started) + outcome.earlierSeconds))
        var result = outcome
        result.trainableParameters = layers.weights.reduce(0) { $0 + $1.tensor.count }
        return result
    }

    /// The words that name the concept, longest first: its name, and every target prompt that
    /// stands as whole words inside another target prompt — the bare phrases the templates wrap,
    /// such as a testbed class's noun and synonyms (trouser: "pair of trousers", "pair of pants").
    /// Official MACE names each concept by one word in every prompt; a request that words the
    /// concept several ways gives each prompt its own phrase.
    static func phrases(of concept: Concept) -> [String] {
        let prompts = concept.targetPrompts
        let wrapped = prompts.filter { phrase in prompts.contains { $0 != phrase && wordRange(of: phrase, in: $0) != nil } }
        var seen = Set<String>()
        return ([concept.name] + wrapped).filter { seen.insert($0.lowercased()).inserted }.sorted { $0.count > $1.count }
    }

    /// Where `prompt` names the concept: the longest of `phrases` it contains as whole words, else
    /// (a phrase inside a longer word, as "cat" in "cats") the longest it contains at all.
    static func phraseRange(_ phrases: [String], in prompt: String) -> Range<String.Index>? {
        for phrase in phrases { if let range = wordRange(of: phrase, in: prompt) { return range } }
        for phrase in phrases { if let range = prompt.range(of: phrase, options: .caseInsensitive) { return range } }
        return nil
    }

    /// The first occurrence of `phrase` (any case) in `text` not inside a longer word.
    static func wordRange(of phrase: String, in text: String) -> Range<String.Index>? {
        var from = text.startIndex
        while let range = text.range(of: phrase, options: .caseInsensitive, range: from..<text.endIndex) {
            let before = range.lowerBound == text.startIndex || !text[text.index(before: range.lowerBound)].isLetter
            let after = range.upperBound == text.endIndex || !text[range.upperBound].isLetter
            if before && after { return range }
            from = text.index(after: range.lowerBound)
        }
        return nil
    }

    /// The target prompts that name the concept (MACE's templates all do).
    static func trainingPrompts(of concept: Concept) throws -> [String] {
        let phrases = phrases(of: concept)
        let list = concept.targetPrompts.filter { phraseRange(phrases, in: $0) != nil }
        guard !list.isEmpty else {
            throw ErasureError.invalidRequest("MACE: no target prompt of '\(concept.name)' contains '\(concept.name)'; MACE needs the concept's words in its prompts")
        }
        return list
    }

    /// `prompt` with the phrase that names the concept replaced by `anchor`.
    static func replacing(_ phrases: [String], in prompt: String, with anchor: String) -> String {
        guard let range = phraseRange(phrases, in: prompt) else { return prompt }
        return prompt.replacingCharacters(in: range, with: anchor)
    }

    /// The official `find_matching_indices`: the positions of the common prefix and the common
    /// suffix of two token sequences (the words around the part that differs), in each. With
    /// `paddedLength` (encoders whose padding the UNet attends to: CLIP's 77), both lists go on
    /// over the padding, as far as the shorter side allows, as the official code extends them.
    static func matchingPositions(_ old: [Int], _ new: [Int], paddedLength: Int?) -> (old: [Int], new: [Int]) {
        var start = 0
        while start < min(old.count, new.count), old[start] == new[start] { start += 1 }
        var (endOld, endNew) = (old.count - 1, new.count - 1)
        while endOld >= start, endNew >= start, old[endOld] == new[endNew] { endOld -= 1; endNew -= 1 }
        var o = Array(0..<start) + Array((endOld + 1)..<old.count)
        var n = Array(0..<start) + Array((endNew + 1)..<new.count)
        if let length = paddedLength, let lastOld = o.last, let lastNew = n.last {
            let shift = abs(lastOld - lastNew)
            if lastOld >= lastNew {
                o += Array((lastOld + 1)..<max(lastOld + 1, length))
                n += Array((lastNew + 1)..<max(lastNew + 1, length - shift))
            } else {
                n += Array((lastNew + 1)..<max(lastNew + 1, length))
                o += Array((lastOld + 1)..<max(lastOld + 1, length - shift))
            }
        }
        return (o, n)
    }

    /// The encoder's states of the matched positions of each (target, anchor) prompt pair.
    static func matchedStates(_ pairs: [(old: String, new: String)], access: EncoderAccess,
                              pipeline: StableDiffusionPipeline) -> (old: [[Double]], new: [[Double]]) {
        let texts = pairs.map(\.old) + pairs.map(\.new)
        let (states, _) = noGrad { pipeline.encodePrompts(texts) }
        let (length, width) = (states.shape[1], states.shape[2])
        func row(_ item: Int, _ position: Int) -> [Double] {
            let start = (item * length + position) * width
            return (0..<width).map { Double(states.pointer[start + $0]) }
        }
        var old: [[Double]] = [], new: [[Double]] = []
        for (i, pair) in pairs.enumerated() {
            let (a, b) = (access.unpaddedIds(pair.old), access.unpaddedIds(pair.new))
            let (o, n) = matchingPositions(a, b, paddedLength: pipeline.passesAttentionMask ? nil : length)
            for (p, q) in zip(o, n) where p < length && q < length {
                old.append(row(i, p))
                new.append(row(pairs.count + i, q))
            }
        }
        return (old, new)
    }

    /// Every token state of `texts` the UNet attends to (RECE's sequences, concatenated).
    static func allTokenStates(_ texts: [String], pipeline: StableDiffusionPipeline) -> [[Double]] {
        guard !texts.isEmpty else { return [] }
        let sequences = RECE.tokenSequences(of: texts, pipeline: pipeline)
        return texts.flatMap { sequences[$0]! }
    }

    /// MACE's relation-focal importance f(t) = σ(0.05(t − 200)) − σ(0.05(t − 400)) over
    /// 0..<count, normalised (`importance_sampling_fn`).
    static func importance(count: Int) -> [Double] {
        func sigmoid(_ x: Double) -> Double { 1 / (1 + Foundation.exp(-x)) }
        let f = (0..<count).map { t in sigmoid(0.05 * (Double(t) - 200)) - sigmoid(0.05 * (Double(t) - 400)) }
        let total = f.reduce(0, +)
        return f.map { $0 / total }
    }

    /// The object mask of an image [C, H, W] in [−1, 1] (row-major H·W, 1 = object): pixels where
    /// some channel differs from the background colour (per channel, the median of the border
    /// pixels) by more than `threshold`. All ones when nothing passes (a blank image).
    static func objectMask(_ image: Tensor, threshold: Float) -> [Float] {
        let (c, h, w) = (image.shape[0], image.shape[1], image.shape[2])
        let p = image.pointer
        var mask = [Float](repeating: 0, count: h * w)
        for channel in 0..<c {
            var border: [Float] = []
            for y in 0..<h { for x in 0..<w where y == 0 || x == 0 || y == h - 1 || x == w - 1 {
                border.append(p[(channel * h + y) * w + x])
            } }
            border.sort()
            let background = border[border.count / 2]
            for k in 0..<(h * w) where Swift.abs(p[channel * h * w + k] - background) > threshold { mask[k] = 1 }
        }
        return mask.contains(1) ? mask : [Float](repeating: 1, count: h * w)
    }

    /// `mask` [h·w] resized to [rows·columns] by nearest neighbour (PyTorch's `interpolate`,
    /// mode "nearest": source index ⌊i·in/out⌋).
    static func resize(_ mask: [Float], height h: Int, width w: Int, rows: Int, columns: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        for i in 0..<rows { for j in 0..<columns {
            out[i * columns + j] = mask[(i * h / rows) * w + j * w / columns]
        } }
        return out
    }
}

/// The harness's view of a MACE run: every concept's LoRA steps, one concept after the other.
/// Encoded as the config alone (the checkpoint's request fixes the concept count).
struct MACETraining: TrainingConfig {
    let config: MACEConfig
    let concepts: Int
    var steps: Int { config.iterations * concepts }
    var checkpointEvery: Int { config.checkpointEvery }
    static let resumableKeys: Set<String> = ["checkpointEvery"]
    func encode(to encoder: Encoder) throws { try config.encode(to: encoder) }
}

/// The LoRA stage's training images: per concept, the latents of `trainingImages` samples of the
/// original model on the concept's first prompt (the official script draws "a photo of the
/// {concept}"), and each image's object mask at image resolution.
struct MACEData {
    let latents: [Tensor]
    let masks: [[[Float]]]
    let imageSize: (height: Int, width: Int)

    init(config: MACEConfig, prompts: [[String]], pipeline: StableDiffusionPipeline) throws {
        var latents: [Tensor] = [], masks: [[[Float]]] = []
        var size = (height: 0, width: 0)
        for (c, list) in prompts.enumerated() {
            let z = try pipeline.sampleLatents(prompts: Array(repeating: list[0], count: config.trainingImages), steps: config.imageSteps,
                                               guidance: config.imageGuidance, seed: config.seed &+ 2,
                                               firstImageIndex: c * config.trainingImages)
            let images = noGrad { pipeline.decode(z) }
            size = (images.shape[2], images.shape[3])
            latents.append(z)
            masks.append((0..<config.trainingImages).map { i in
                MACE.objectMask(images.narrowed(axis: 0, start: i, length: 1).reshaped(Array(images.shape.dropFirst())),
                                threshold: config.maskThreshold)
            })
        }
        self.latents = latents
        self.masks = masks
        imageSize = size
    }
}

extension RidgeEdit {
    /// MACE's closed form for one set of token states (the official `closed_form_refinement`,
    /// the preserved states' scale folded into sᵢ), its failures worded as MACE's.
    static func mace(contexts: [[Double]], scales: [Double], lambda: Double) throws -> RidgeEdit {
        guard !contexts.isEmpty else {
            throw ErasureError.invalidRequest("MACE has no token states to solve for (no target prompt tokens)")
        }
        do { return try RidgeEdit(contexts: contexts, scales: scales, lambda: lambda) } catch {
            throw ErasureError.invalidConfig("MACE cannot solve its closed form: \(error)")
        }
    }
}

extension Matrix64 {
    init(_ tensor: Tensor) {
        precondition(tensor.rank == 2, "Matrix64: a tensor of shape \(tensor.shape)")
        self.init(rows: tensor.shape[0], columns: tensor.shape[1], values: tensor.scalars.map(Double.init))
    }

    func tensor(shape: [Int]) -> Tensor { Tensor(shape: shape, scalars: values.map { Float($0) }) }
}

extension Tensor {
    /// A copy with its own storage, outside any graph.
    func detachedCopy() -> Tensor { Tensor(shape: shape, scalars: scalars) }
}

/// The cross-attention modules of a UNet and the key and value weights MACE edits, in the
/// official order (every to_v, then every to_k is the official list; the order does not
/// change the result, so they are kept module by module here).
struct MACELayers {
    let attentions: [(name: String, module: Attention)]
    let weights: [(name: String, tensor: Tensor)]

    init(_ unet: UNet2DConditionModel) {
        var found: [(String, Attention)] = []
        func visit(_ value: Any, _ prefix: String) {
            if let attention = value as? Attention, prefix.hasSuffix("attn2") {
                found.append((prefix, attention))
            } else if let module = value as? Module {
                for (key, child) in module.namedChildren() { visit(child, prefix.isEmpty ? key : "\(prefix).\(key)") }
            } else if let modules = value as? [Module] {
                for (i, module) in modules.enumerated() { visit(module, "\(prefix).\(i)") }
            }
        }
        visit(unet, "")
        attentions = found.map { (name: $0.0, module: $0.1) }
        weights = found.flatMap { name, module in
            [(name: "\(name).to_k.weight", tensor: module.to_k.weight), (name: "\(name).to_v.weight", tensor: module.to_v.weight)]
        }
    }
}

/// The LoRA stage of one MACE run, trained by `TrainingRun`: step s trains concept
/// ⌊s / iterations⌋'s factors (`LinearLoRA`s over the refined weights W_cfr, α = r).
final class MACERun: FineTuning {
    typealias Config = MACETraining
    static let method = "mace"

    let config: MACEConfig
    let pipeline: StableDiffusionPipeline
    let layers: MACELayers
    /// [concept][weight].
    let adapters: [[LinearLoRA]]
    let trainable: [(name: String, tensor: Tensor)]
    let optimizer: any Optimizer
    var generator: RandomGenerator
    var model: Module { pipeline.unet }

    /// Per concept: its prompts' caption rows and concept-token indicators (1 = a concept or
    /// end token), the latents of its images and their object masks at image resolution.
    let table: CaptionTable
    let rows: [[Int]]
    let positions: [[[Float]]]
    let latents: [Tensor]
    let masks: [[[Float]]]
    let imageSize: (height: Int, width: Int)
    let timestepCDF: [Double]
    /// The loss terms of the forward pass in flight and what they select.
    var terms: [Tensor] = []
    var selection: (mask: [Float], tokens: [Float])?

    init(config: MACEConfig, request: ErasureRequest, pipeline: StableDiffusionPipeline, prompts: [[String]], data: MACEData,
         layers: MACELayers, refined: [Tensor], access: EncoderAccess) throws {
        self.config = config
        self.pipeline = pipeline
        self.layers = layers
        pipeline.unet.eval()
        let names = Set(layers.weights.map(\.name))
        pipeline.unet.freeze()
        pipeline.unet.unfreeze(where: names.contains)

        var initial = RandomGenerator(seed: config.seed).fork(3)
        adapters = request.concepts.indices.map { _ in
            zip(layers.weights, refined).map { w, base in
                LinearLoRA(path: w.name, weight: w.tensor, base: base, rank: config.rank, generator: &initial)
            }
        }
        trainable = adapters.enumerated().flatMap { c, concept in
            concept.flatMap { [(name: "concept\(c).\($0.path).lora_A", tensor: $0.down), (name: "concept\(c).\($0.path).lora_B", tensor: $0.up)] }
        }
        optimizer = Adam.adamW(trainable, learningRate: config.learningRate, weightDecay: config.weightDecay)
        generator = RandomGenerator(seed: config.seed).fork(1)

        var captions = CaptionList()
        rows = prompts.map { $0.map { captions.index($0) } }
        table = CaptionTable(captions: captions.captions, encoder: pipeline.textEncoder)
        let ids = access.tokenize(captions.captions).inputIds
        positions = zip(request.concepts, rows).map { concept, list in
            let phrases = MACE.phrases(of: concept)
            return list.map { row in
                let caption = captions.captions[row]
                let phrase = access.pieces(MACE.phraseRange(phrases, in: caption).map { String(caption[$0]) } ?? concept.name)
                let sequence = ids[row]
                var flags = [Float](repeating: 0, count: sequence.count)
                for start in sequence.indices where start + phrase.count <= sequence.count
                    && Array(sequence[start..<(start + phrase.count)]) == phrase {
                    for k in start..<(start + phrase.count) { flags[k] = 1 }
                }
                if config.usePooler { for (k, id) in sequence.enumerated() where id == access.endTokenId { flags[k] = 1 } }
                return flags
            }
        }

        latents = data.latents
        masks = data.masks
        imageSize = data.imageSize
        let count = pipeline.scheduler.numTrainTimesteps
        var cumulative = 0.0
        timestepCDF = (config.importanceSampling ? MACE.importance(count: count) : Array(repeating: 1 / Double(count), count: count))
            .map { cumulative += $0; return cumulative }

        for (_, attention) in layers.attentions {
            attention.probabilityObserver = { [unowned self] probabilities in self.observe(probabilities) }
        }
    }

    deinit { for (_, attention) in layers.attentions { attention.probabilityObserver = nil } }

    /// One cross-attention's term: ‖P[:, :, mask, tokens]‖_F over all heads.
    func observe(_ probabilities: Tensor) {
        guard let selection else { return }
        let (n, m) = (probabilities.shape[2], probabilities.shape[3])
        let scale = (Double(n) / Double(imageSize.height * imageSize.width)).squareRoot()
        let rows = max(1, Int((Double(imageSize.height) * scale).rounded()))
        let columns = n / rows
        precondition(rows * columns == n, "MACE: \(n) attention queries do not tile a \(imageSize.height)×\(imageSize.width) image")
        let pixels = MACE.resize(selection.mask, height: imageSize.height, width: imageSize.width, rows: rows, columns: columns)
        guard pixels.contains(where: { $0 > 0.5 }), selection.tokens.count == m else { return }
        var values = [Float](repeating: 0, count: n * m)
        for i in 0..<n where pixels[i] > 0.5 { for j in 0..<m { values[i * m + j] = selection.tokens[j] } }
        let selector = Tensor(shape: [1, 1, n, m], scalars: values)
        terms.append((probabilities * selector).square().sum().sqrt())
    }

    /// W = W_cfr + B·A for every edited weight, with concept `c`'s factors.
    func applyFactors(concept c: Int) { for adapter in adapters[c] { adapter.apply() } }

    func concept(at step: Int) -> Int { min(adapters.count - 1, step / max(1, config.iterations)) }

    func draw(_ cdf: [Double]) -> Int {
        let u = Double(generator.uniform([1]).scalars[0])
        var low = 0, high = cdf.count - 1
        while low < high { let mid = (low + high) / 2; if cdf[mid] < u { low = mid + 1 } else { high = mid } }
        return low
    }

    /// The random draws of one step: an image of the concept, one of its prompts, t and the noise.
    struct Draw { var image: Int; var prompt: Int; var timestep: Int; var noise: Tensor }

    func draw(concept c: Int) -> Draw {
        let image = min(config.trainingImages - 1, Int(generator.uniform([1]).scalars[0] * Float(config.trainingImages)))
        let prompt = min(rows[c].count - 1, Int(generator.uniform([1]).scalars[0] * Float(rows[c].count)))
        let t = draw(timestepCDF)
        return Draw(image: image, prompt: prompt, timestep: t, noise: generator.normal(latents[c].narrowed(axis: 0, start: 0, length: 1).shape))
    }

    /// L = Σ_layers ‖P[mask, concept tokens]‖_F for concept `c`'s image and prompt of `d`,
    /// through the UNet's current weights (recorded for autodiff).
    func attentionLoss(concept c: Int, _ d: Draw) throws -> Tensor {
        let clean = latents[c].narrowed(axis: 0, start: d.image, length: 1)
        let noisy = pipeline.scheduler.addNoise(original: clean, noise: d.noise, timesteps: [d.timestep])
        let states = table.batch([rows[c][d.prompt]])
        terms = []
        selection = (masks[c][d.image], positions[c][d.prompt])
        defer { selection = nil; terms = [] }
        _ = pipeline.predictNoise(latents: noisy, timesteps: [d.timestep], states: states.states, mask: states.mask)
        guard let first = terms.first else {
            throw ErasureError.invalidRequest("MACE: no cross-attention saw the concept's tokens inside the object's mask")
        }
        return terms.dropFirst().reduce(first, +)
    }

    func losses(step: Int) throws -> StepLosses {
        let c = concept(at: step)
        currentConcept = c
        applyFactors(concept: c)
        let loss = try attentionLoss(concept: c, draw(concept: c))
        return StepLosses(total: loss, checked: [("attention", loss.item)], recorded: [("concept", Float(c))])
    }

    func beforeUpdate() {
        let c = currentConcept
        for p in trainable { p.tensor.grad = nil }
        for adapter in adapters[c] { adapter.backpropagate() }
        if config.maxGradNorm > 0 { clipGradNorm(adapters[c].flatMap { [$0.down, $0.up] }, maxNorm: config.maxGradNorm) }
    }

    /// The concept of the step in flight (`losses` sets it, `beforeUpdate` reads it).
    var currentConcept = 0

    func begin(log: (String) -> Void) {
        let kept = masks.flatMap { $0 }.map { m in m.reduce(0, +) / Float(m.count) }
        log(String(format: "MACE: %d concept LoRA(s) of rank %d on %d weights, %d steps each; object masks cover %.0f%% of the images on average",
                   adapters.count, config.rank, layers.weights.count, config.iterations,
                   100 * kept.reduce(0, +) / Float(max(1, kept.count))))
    }

    func progress(_ losses: [String: [Float]]) -> [(String, Float)] { [("attention", losses["attention"]?.last ?? .nan)] }
}
