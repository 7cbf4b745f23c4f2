import Foundation
import NN
import Tensor

// Loading a diffusers pipeline folder:
//
//     model_index.json                  which class each component is
//     unet/       config.json + diffusion_pytorch_model[.<variant>].safetensors (or a sharded index)
//     vae/        the same (optional: pixel-space models have none)
//     text_encoder/ + tokenizer/        CLIP (transformers layout)
//     scheduler/scheduler_config.json
//
// Every component is loaded completely (and checked) before the pipeline exists; any failure
// throws an error that names the file, and nothing half-loaded is ever used.

/// The parsed `model_index.json` of a diffusers pipeline folder: component name → (library, class),
/// nil for components the pipeline leaves out (`[null, null]`).
public struct PipelineIndex: Equatable, Sendable {
    public struct Component: Equatable, Sendable {
        public var library: String?
        public var className: String?
    }

    /// `_class_name`, e.g. "StableDiffusionPipeline".
    public var className: String?
    public var components: [String: Component]
    public let file: URL

    /// Reads `<directory>/model_index.json`.
    public init(directory: URL) throws {
        let url = directory.appendingPathComponent("model_index.json")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw PipelineError.missingFile(url, what: "the pipeline index model_index.json of a diffusers pipeline folder")
        }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) } catch {
            throw PipelineError.invalidFile(url, reason: "not valid JSON: \(error.localizedDescription)")
        }
        guard let dictionary = object as? [String: Any] else {
            throw PipelineError.invalidFile(url, reason: "expected a JSON object")
        }
        file = url
        className = dictionary["_class_name"] as? String
        components = [:]
        for (key, value) in dictionary where !key.hasPrefix("_") {
            // Components are [library, class] pairs; other entries (requires_safety_checker, …) are options.
            guard let pair = value as? [Any] else { continue }
            guard pair.count == 2, pair.allSatisfy({ $0 is String || $0 is NSNull }) else {
                throw PipelineError.invalidFile(url, reason: "entry \"\(key)\" must be [library, class] (strings or nulls)")
            }
            components[key] = Component(library: pair[0] as? String, className: pair[1] as? String)
        }
    }

    /// The class of component `name`, nil when absent or null.
    public func className(of name: String) -> String? { components[name]?.className }

    /// The folder of component `name` beside model_index.json; throws naming it when absent.
    public func componentFolder(_ name: String) throws -> URL {
        let url = file.deletingLastPathComponent().appendingPathComponent(name)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PipelineError.missingFile(url, what: "the \(name) folder that \(file.lastPathComponent) names")
        }
        return url
    }
}

extension StableDiffusionPipeline {
    /// Text encoder classes built from `text_encoder/` + `tokenizer/`.
    static let clipTextModelClasses: Set<String> = ["CLIPTextModel", "CLIPTextModelWithProjection"]
    static let clipTokenizerClasses: Set<String> = ["CLIPTokenizer", "CLIPTokenizerFast"]

    /// A scheduler of `kind` built from `config` (any scheduler's config, as diffusers'
    /// `from_config`). DDIM recomputes ε̂ from the clipped x̂₀ when the config clips samples
    /// (`clip_sample`, as the testbed's cosine schedule needs; see docs/TESTBED.md), and follows
    /// diffusers' default (the raw ε̂) for configs that do not clip, such as Stable Diffusion's.
    public static func makeScheduler(_ kind: SchedulerKind, config: SchedulerConfig) throws -> any NoiseScheduler {
        if kind == .ddim { return try DDIMScheduler(config: config, useClippedModelOutput: config.clipSample) }
        return try kind.make(config: config)
    }

    /// A sampler by its short name, built from `config` (see `SamplerName`).
    public static func makeScheduler(_ name: SamplerName, config: SchedulerConfig) throws -> any NoiseScheduler {
        var config = config
        if name == .dpmSolverPlusPlus2MKarras { config.useKarrasSigmas = true }
        if name == .dpmSolverPlusPlus2M || name == .dpmSolverPlusPlus2MKarras {
            // The sampler the name means, whatever DPM options the folder's config carries.
            config.algorithmType = "dpmsolver++"
            config.solverOrder = 2
        }
        return try makeScheduler(name.kind, config: config)
    }

    /// Loads a diffusers pipeline folder (see the file's notes).
    ///
    /// - Parameters:
    ///   - textEncoder: an encoder to use instead of the folder's (required when `model_index.json`
    ///     names one this package cannot build from the folder, e.g. the testbed's MiniLM).
    ///   - scheduler: a scheduler class to use instead of the one `scheduler_config.json` names
    ///     (built from that config, as diffusers' `from_config`). DDIM recomputes ε̂ from the
    ///     clipped x̂₀ when the config clips samples (docs/TESTBED.md; no effect otherwise).
    ///   - variant: the weights variant to read (`fp16`, `bf16`, …) as diffusers' `variant=`: each
    ///     component folder that has it loads it, the others their plain weights, and a variant no
    ///     component has is an error (`WeightsVariant`). nil reads the plain weights only.
    public convenience init(directory: URL, textEncoder: (any TextEncoder)? = nil, scheduler kind: SchedulerKind? = nil,
                            variant: String? = nil) throws {
        let index = try PipelineIndex(directory: directory)
        let folder = index.componentFolder

        guard let unetClass = index.className(of: "unet") else {
            throw PipelineError.invalidFile(index.file, reason: "names no unet")
        }
        guard unetClass == "UNet2DConditionModel" else {
            throw PipelineError.unsupportedComponent(file: index.file, component: "unet", className: unetClass,
                                                     hint: "only UNet2DConditionModel is implemented")
        }

        var vaeFolder: URL? = nil
        if let vaeClass = index.className(of: "vae") {
            guard vaeClass == "AutoencoderKL" else {
                throw PipelineError.unsupportedComponent(file: index.file, component: "vae", className: vaeClass,
                                                         hint: "only AutoencoderKL is implemented")
            }
            vaeFolder = try folder("vae")
        }

        // The weights variant of each component with weights (diffusers' _identify_model_variants).
        var weightFolders = ["unet": directory.appendingPathComponent("unet")]
        if let vaeFolder { weightFolders["vae"] = vaeFolder }
        if textEncoder == nil { weightFolders["text_encoder"] = directory.appendingPathComponent("text_encoder") }
        let variants = try WeightsVariant.components(weightFolders, variant: variant, pipeline: directory)

        // The text encoder: the one passed in, else CLIP from the folder.
        let encoder: any TextEncoder
        if let textEncoder {
            encoder = textEncoder
        } else {
            let encoderClass = index.className(of: "text_encoder")
            guard let encoderClass, Self.clipTextModelClasses.contains(encoderClass) else {
                throw PipelineError.textEncoderRequired(file: index.file, className: encoderClass ?? "none")
            }
            let tokenizerClass = index.className(of: "tokenizer") ?? "none"
            guard Self.clipTokenizerClasses.contains(tokenizerClass) else {
                throw PipelineError.unsupportedComponent(file: index.file, component: "tokenizer", className: tokenizerClass,
                                                         hint: "a CLIP text encoder needs CLIPTokenizer")
            }
            _ = try folder("text_encoder")
            _ = try folder("tokenizer")
            encoder = try CLIPTextEncoder(directory: directory, variant: variants["text_encoder"] ?? nil)
        }

        // The scheduler: its config, and the class to build from it.
        let schedulerFolder = try folder("scheduler")
        let schedulerConfigURL = schedulerFolder.appendingPathComponent("scheduler_config.json")
        guard FileManager.default.fileExists(atPath: schedulerConfigURL.path) else {
            throw PipelineError.missingFile(schedulerConfigURL, what: "the scheduler config")
        }
        let schedulerConfig = try SchedulerConfig(contentsOf: schedulerConfigURL)
        let schedulerKind: SchedulerKind
        if let kind {
            schedulerKind = kind
        } else {
            let name = schedulerConfig.className ?? index.className(of: "scheduler") ?? "none"
            guard let known = SchedulerKind(rawValue: name) else {
                let supported = SchedulerKind.allCases.map(\.rawValue).joined(separator: ", ")
                throw PipelineError.unsupportedComponent(
                    file: schedulerConfigURL, component: "the scheduler", className: name,
                    hint: "implemented: \(supported); choose one to build from this config (scheduler: .ddim, --scheduler "
                        + SamplerName.allCases.map(\.rawValue).joined(separator: "|") + ")")
            }
            schedulerKind = known
        }
        let scheduler = try Self.makeScheduler(schedulerKind, config: schedulerConfig)

        // The big components last, so that cheap mistakes fail fast.
        let unet = try UNet2DConditionModel(directory: try folder("unet"), variant: variants["unet"] ?? nil)
        let vae = try vaeFolder.map { try AutoencoderKL(directory: $0, variant: variants["vae"] ?? nil) }
        try self.init(textEncoder: encoder, unet: unet, vae: vae, scheduler: scheduler)
    }
}

/// The samplers by the short names tools use for them (`score generate --scheduler`): a scheduler
/// class, plus the options the name implies, built from a folder's scheduler config as diffusers'
/// `from_config`.
public enum SamplerName: String, CaseIterable, Sendable {
    case ddim
    case ddpm
    case euler
    /// Euler ancestral (noise drawn at every step).
    case eulerAncestral = "euler-a"
    /// PNDM with the config's own `skip_prk_steps` (SD 1.x: PLMS).
    case pndm
    /// DPM-Solver++ 2M.
    case dpmSolverPlusPlus2M = "dpm++2m"
    /// DPM-Solver++ 2M with Karras sigmas.
    case dpmSolverPlusPlus2MKarras = "dpm++2m-karras"

    public var kind: SchedulerKind {
        switch self {
        case .ddim: return .ddim
        case .ddpm: return .ddpm
        case .euler: return .eulerDiscrete
        case .eulerAncestral: return .eulerAncestralDiscrete
        case .pndm: return .pndm
        case .dpmSolverPlusPlus2M, .dpmSolverPlusPlus2MKarras: return .dpmSolverMultistep
        }
    }
}
