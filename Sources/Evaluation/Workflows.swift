import Diffusion
import Erasure
import Foundation
import Tensor
import Testbed

/// What several commands share: erasure requests for the testbed, the judges' probes and the
/// evaluation of an erased model on a testbed class.
public enum Workflows {
    /// Templates the concept and its synonyms are placed in to form P_tgt.
    public static let targetTemplates = ["{}", "a photo of {a} {}", "a picture of {a} {}", "an image of {a} {}"]

    /// A request for `concepts`, each steered towards the anchor set `anchors`, and for the
    /// concepts of `edits` ("sneaker=shoe": the concept steered towards its own anchor, UCE's
    /// guide). `prompts`: the testbed's, when the model is the testbed's; then a class without
    /// `synonyms` gets its canonical noun (the phrase Acc_e is measured with: "pair of trousers"
    /// for `--concept trouser`) and its training synonyms and, without `retain`, the other
    /// classes' canonical prompts are kept. Other models get only what is given.
    public static func request(concepts: [String], synonyms: [[String]?], anchors: [String], edits: [String] = [],
                               retain: [String]?, prompts: FashionPrompts?) throws -> ErasureRequest {
        guard synonyms.count <= concepts.count else {
            throw EvaluationError.invalidRequest("\(synonyms.count) --synonyms lists for \(concepts.count) concepts")
        }
        var guides: [(concept: String, guide: String)] = []
        for edit in edits {
            guard let equals = edit.firstIndex(of: "=") else {
                throw EvaluationError.invalidRequest("--edit '\(edit)' is not concept=guide (e.g. \"sneaker=shoe\"; \"sneaker=\" guides to the empty prompt)")
            }
            let concept = edit[..<equals].trimmingCharacters(in: .whitespaces)
            if guides.contains(where: { $0.concept == concept }) {
                throw EvaluationError.invalidRequest("--edit names '\(concept)' twice")
            }
            guides.append((concept, edit[edit.index(after: equals)...].trimmingCharacters(in: .whitespaces)))
        }
        var labels: [Int] = []
        let names = concepts + guides.map(\.concept).filter { !concepts.contains($0) }
        let list = try names.enumerated().map { i, name -> Concept in
            if name.trimmingCharacters(in: .whitespaces).isEmpty { throw EvaluationError.invalidRequest("--concept is empty") }
            let label = prompts?.label(forConcept: name)
            if let label { labels.append(label) }
            let words = (i < synonyms.count ? synonyms[i] : nil) ?? label.map { label in
                let testbedClass = prompts!.classes[label]
                return ([testbedClass.noun] + testbedClass.trainSynonyms).filter { $0.lowercased() != name.lowercased() }
            } ?? []
            let guide = guides.first { $0.concept == name }?.guide
            return Concept(name: name, targetPrompts: Concept.prompts(for: name, synonyms: words, templates: targetTemplates),
                           anchors: guide.map { [$0] } ?? (anchors.isEmpty ? [""] : anchors))
        }
        let kept = retain ?? prompts.map { p in p.classes.map(\.label).filter { !labels.contains($0) }.map { p.canonicalPrompt($0) } } ?? []
        let request = ErasureRequest(concepts: list, retainPrompts: kept)
        try request.validate()
        return request
    }

    /// The Fashion-MNIST class `concept` names (its noun or a synonym); an error naming
    /// `--concept` and the classes otherwise.
    public static func testbedLabel(_ concept: String) throws -> Int {
        let prompts = try FashionPrompts.bundled()
        guard let label = prompts.label(forConcept: concept) else {
            let names = prompts.classes.map(\.noun).joined(separator: ", ")
            throw EvaluationError.invalidRequest("--concept '\(concept)' is not a class of the testbed (\(names))")
        }
        return label
    }

    /// Linear probes on the two judges' penultimate features: leakage critics that see the
    /// finished images the way an image classifier does. A third sees only the CNN judge's
    /// class: it measures the information in the class mix the judge reports (what Acc_e counts),
    /// with ten parameters, so the estimate is never below what the judge's own reading shows.
    public static func judgeProbes() throws -> [FeatureProbe] {
        let cnn = try DefaultModel.judge("cnn"), mlp = try DefaultModel.judge("mlp")
        return [FeatureProbe(name: "linear probe on cnn judge features") { cnn.featureBatches($0) },
                FeatureProbe(name: "linear probe on mlp judge features") { mlp.featureBatches($0) },
                FeatureProbe(name: "judged class (cnn judge)") { cnn.judgedClassOneHot($0) }]
    }

    /// `score evaluate`: judges the erased model on `concept` (a testbed class), beside the
    /// original when given, adds the leakage estimate (from the erasure's run.json when it has
    /// one for this concept on as many trajectories as `leakage` asks, else measured now against
    /// the original), and writes the report.
    public static func evaluate(model: LoadedModel, original: LoadedModel?, concept: String, settings: EvaluationSettings,
                                leakage: LeakageOptions?, reportFolder: URL?, assets: Assets = Assets(),
                                log: @escaping (String) -> Void) throws -> ObjectEvaluation {
        try evaluate(model: EvaluatedModel<StableDiffusionPipeline>(model.pipeline, name: model.name, record: model.record),
                     original: original.map { EvaluatedModel<StableDiffusionPipeline>($0.pipeline, name: $0.name) }, concept: concept, settings: settings,
                     leakage: leakage, reportFolder: reportFolder, assets: assets, log: log)
    }

    /// The same on models of either family: the images come from each model's sampler, the
    /// leakage estimate from `Leakage.report` on the erased pipeline against the original's denoiser.
    public static func evaluate<Model: ErasableModel>(model: EvaluatedModel<Model>, original: EvaluatedModel<Model>?, concept: String,
                                                      settings: EvaluationSettings, leakage: LeakageOptions?, reportFolder: URL?,
                                                      assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> ObjectEvaluation {
        let record = model.record
        let prompts = try FashionPrompts.bundled()
        let label = try testbedLabel(concept)
        let data = try FashionMNIST(assets: assets)
        var (evaluation, after, before) = try ObjectEvaluator.evaluate(
            erased: model.sampler, original: original?.sampler, label: label, prompts: prompts, test: data.test,
            settings: settings, modelName: model.name, originalName: original?.name, log: log)
        var report = record?.leakage?.first { prompts.label(forConcept: $0.concept) == label }
        if let recorded = report, let leakage, original != nil {
            if !recorded.isSampled(as: leakage) {
                log("run.json estimated the leakage on \(recorded.trajectories_per_class) trajectories per class at guidance "
                    + "\(recorded.guidance ?? LeakageOptions().guidance); measuring it again on \(leakage.trajectories) at \(leakage.guidance)")
                report = nil
            }
        }
        if report == nil, let leakage, let original {
            // The concept as the erasure defined it (its anchors), else the testbed's default.
            let erased = record?.request.concepts.first { prompts.label(forConcept: $0.name) == label }
            let defined = try erased ?? Self.request(concepts: [concept], synonyms: [], anchors: [], retain: nil, prompts: prompts).concepts[0]
            report = try Leakage.report(concept: defined, pipeline: model.pipeline, original: original.pipeline.denoiser,
                                        options: leakage, probes: try judgeProbes(), log: log)
        }
        evaluation.leakage = report
        evaluation.leakage_nats = report?.leakage_nats
        evaluation.leakage_bound = report?.leakage_bound
        if let reportFolder {
            let html = try EvaluationReport(evaluation: evaluation, after: after, before: before, record: record).write(to: reportFolder)
            log("wrote \(html.path)")
        }
        return evaluation
    }
}

/// A model under evaluation, of either family: its pipeline (the leakage estimate samples it),
/// how it draws images, how records name it, and the run.json of the erasure that wrote it.
public struct EvaluatedModel<Model: ErasableModel> {
    public var pipeline: Model
    public var sampler: ImageSampler
    public var name: String
    public var record: ErasureRecord?
}

extension EvaluatedModel where Model == StableDiffusionPipeline {
    public init(_ pipeline: StableDiffusionPipeline, name: String, record: ErasureRecord? = nil) {
        self.init(pipeline: pipeline, sampler: ImageSampler(pipeline), name: name, record: record)
    }
}

extension EvaluatedModel where Model == FluxPipeline {
    public init(_ pipeline: FluxPipeline, name: String, record: ErasureRecord? = nil) {
        self.init(pipeline: pipeline, sampler: ImageSampler(pipeline), name: name, record: record)
    }
}

/// `score check-leakage`: the leakage estimate on two samples of one distribution.
public struct LeakageFloor: Codable, Sendable {
    public var prompt: String
    public var model: String
    /// Class 0's model when it is not `model` (an erased model's θ₀); nil for the floor itself.
    public var reference_model: String?
    public var trajectories_per_class: Int
    public var repeats: [LeakageReport]
    /// The reported (largest-over-detectors) Î of each repeat, its mean and largest value, and the
    /// estimated bound the largest gives: an erased model reading at or below these is
    /// indistinguishable from independence at this sample size.
    public var leakage_nats: [Double]
    public var mean_leakage_nats: Double
    public var max_leakage_nats: Double
    public var max_bound: Double
    /// The largest accuracy-implied information of any detector in any repeat (true I is 0, so a
    /// figure above 0 here is one of the 5% of intervals that miss, or several detectors' luck).
    public var max_accuracy_implied_nats: Double?

    public init(prompt: String, model: String, referenceModel: String? = nil, trajectories_per_class: Int, repeats: [LeakageReport]) {
        (self.prompt, self.model, self.trajectories_per_class, self.repeats) = (prompt, model, trajectories_per_class, repeats)
        reference_model = referenceModel
        leakage_nats = repeats.map(\.leakage_nats)
        mean_leakage_nats = leakage_nats.reduce(0, +) / Double(max(repeats.count, 1))
        max_leakage_nats = leakage_nats.max() ?? 0
        max_bound = Leakage.bound(nats: max_leakage_nats)
        max_accuracy_implied_nats = repeats.compactMap(\.accuracy_implied_nats).max()
    }
}
