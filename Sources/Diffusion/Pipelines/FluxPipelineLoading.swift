import Foundation
import NN
import Tensor

// Loading a diffusers FLUX pipeline folder:
//
//     model_index.json     "_class_name": "FluxPipeline"
//     transformer/         config.json + diffusion_pytorch_model[.<variant>].safetensors (or a sharded index)
//     scheduler/           scheduler_config.json (FlowMatchEulerDiscreteScheduler)
//     vae/                 AutoencoderKL (optional: the mini-FLUX works in pixel space)
//     text_encoder[_2]/    FLUX.1's CLIP and T5, which this package does not build: the caller
//                          passes a `FluxTextEncoder` (the testbed passes MiniLM; see MiniFlux).

extension PipelineIndex {
    /// Whether the folder is a FLUX pipeline (`_class_name` FluxPipeline).
    public var isFlux: Bool { className == "FluxPipeline" }
}

extension FluxPipeline {
    /// Whether `directory/model_index.json` names a FluxPipeline (false when unreadable).
    public static func isFluxFolder(_ directory: URL) -> Bool {
        (try? PipelineIndex(directory: directory))?.isFlux ?? false
    }

    /// Loads a FLUX pipeline folder (see the file's notes) with `textEncoder` in both text roles.
    /// Errors name the file.
    public convenience init(directory: URL, textEncoder: (any FluxTextEncoder)?, variant: String? = nil) throws {
        let index = try PipelineIndex(directory: directory)
        guard index.isFlux else {
            throw PipelineError.invalidFile(index.file, reason: "is not a FluxPipeline (_class_name \(index.className ?? "missing"))")
        }
        let folder = index.componentFolder
        guard let transformerClass = index.className(of: "transformer") else {
            throw PipelineError.invalidFile(index.file, reason: "names no transformer")
        }
        guard transformerClass == "FluxTransformer2DModel" else {
            throw PipelineError.unsupportedComponent(file: index.file, component: "transformer", className: transformerClass,
                                                     hint: "only FluxTransformer2DModel is implemented")
        }
        let schedulerClass = index.className(of: "scheduler") ?? "missing"
        guard schedulerClass == "FlowMatchEulerDiscreteScheduler" else {
            throw PipelineError.unsupportedComponent(file: index.file, component: "scheduler", className: schedulerClass,
                                                     hint: "a FLUX pipeline samples with FlowMatchEulerDiscreteScheduler")
        }
        guard let textEncoder else {
            throw PipelineError.textEncoderRequired(file: index.file, className: index.className(of: "text_encoder_2") ?? index.className(of: "text_encoder") ?? "none named")
        }
        var vae: AutoencoderKL? = nil
        if let vaeClass = index.className(of: "vae") {
            guard vaeClass == "AutoencoderKL" else {
                throw PipelineError.unsupportedComponent(file: index.file, component: "vae", className: vaeClass, hint: "only AutoencoderKL is implemented")
            }
            vae = try AutoencoderKL(directory: try folder("vae"), variant: variant)
        }
        let transformerFolder = try folder("transformer")
        let config = try FluxTransformer2DConfig(contentsOf: transformerFolder.appendingPathComponent("config.json"))
        var generator = RandomGenerator(seed: 0)
        let transformer = try FluxTransformer2DModel(config: config, generator: &generator)
        try loadModule(transformer, from: try diffusersWeightsFile(in: transformerFolder, variant: variant))
        let scheduler = try FlowMatchEulerDiscreteScheduler(
            config: try FlowMatchEulerDiscreteScheduler.Config(contentsOf: try folder("scheduler").appendingPathComponent("scheduler_config.json")))
        try self.init(textEncoder: textEncoder, transformer: transformer, vae: vae, scheduler: scheduler)
    }
}
