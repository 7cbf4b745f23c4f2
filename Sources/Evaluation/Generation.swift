import Diffusion
import Foundation
import Tensor
import Testbed

/// `score generate`: images of a prompt (or a class × seed grid of the testbed's canonical
/// prompts) written as one PNG with the settings in its tEXt chunks.
public struct GenerationRun: Sendable {
    /// Any `--model` folder `ModelLoader` accepts, or a FLUX folder (nil: the family's embedded model).
    public var model: String?
    /// "sd" or "flux": which embedded model draws when no `model` is given.
    public var family = "sd"
    /// The prompt; nil with `grid`.
    public var prompt: String?
    /// One row per testbed class, `numImages` seeds per row.
    public var grid = false
    public var output: String
    public var steps = DefaultModel.steps
    /// nil: the embedded model's own guidance, or Stable Diffusion's for `--model` folders.
    public var guidance: Float?
    public var seed: UInt64 = 0
    public var negativePrompt = ""
    /// nil: the model's scheduler_config.json.
    public var scheduler: SamplerName?
    /// The weights variant of a diffusers `--model` folder (diffusers' `variant=`; nil: the plain weights).
    public var variant: String?
    /// LoRA files merged into the model's weights, in order.
    public var loras: [LoRAFile] = []
    public var numImages = 1
    public var gridRows: Int?
    public var height: Int?
    public var width: Int?

    /// Stable Diffusion's classifier-free guidance, used for `--model` folders.
    public static let folderGuidance = StableDiffusionPipeline.defaultGuidance

    public init(output: String) { self.output = output }

    /// Counts and sizes, and the output file; checked before any model is loaded.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw EvaluationError.invalidSetting(message) } }
        try check((prompt != nil) != grid, "give either a prompt or --grid")
        try check(steps >= 1, "--steps must be at least 1, not \(steps)")
        try check(numImages >= 1, "--num-images must be at least 1, not \(numImages)")
        if let gridRows { try check((1...numImages).contains(gridRows), "--grid-rows must be between 1 and --num-images (\(numImages)), not \(gridRows)") }
        if let guidance { try check(guidance.isFinite, "--guidance must be a number, not \(guidance)") }
        if let height { try check(height >= 1, "--height must be at least 1, not \(height)") }
        if let width { try check(width >= 1, "--width must be at least 1, not \(width)") }
        try check(["sd", "flux"].contains(family), "--family must be sd or flux, not '\(family)'")
        if family == "flux", let model {
            try check(FluxPipeline.isFluxFolder(URL(fileURLWithPath: model)), "--family flux: \(model) is not a FLUX folder (its model_index.json names no FluxPipeline)")
        }
        try ModelLoader.checkVariant(variant, model: model)
        _ = try OutputPath.file(output, flag: "--out")
    }

    /// What one run of `images` images of height × width needs, in bytes, roughly: the UNet's
    /// activations (about 16 feature maps of its first level's width at the latent size, twice
    /// with guidance), the VAE decoder's at full size, and the images three times over (the
    /// batch, the grid, the 8-bit copy). Attention is computed in chunks, so it adds little.
    public static func estimatedBytes(unetChannels: Int, vaeChannels: Int?, vaeScale: Int, images: Int, height: Int, width: Int,
                                      guidance: Float) -> Double {
        let n = Double(images), pixels = Double(height) * Double(width)
        let latentPixels = pixels / Double(vaeScale * vaeScale)
        let unet = 16 * Double(unetChannels) * latentPixels * (guidance > 1 ? 2 : 1)
        let vae = vaeChannels.map { 4 * Double($0) * pixels } ?? 0
        let picture = 3 * 3 * pixels
        return 4 * n * (unet + vae + picture)
    }

    /// The same for `pipeline`'s own architecture: the UNet's sampling activations from its
    /// config (`UNet2DConditionConfig.activationBytes`, the batch doubled under guidance), the
    /// VAE decoder's, and the images. The weights are loaded already, so are not counted.
    public static func estimatedBytes(pipeline: StableDiffusionPipeline, images: Int, height: Int, width: Int, guidance: Float) -> Double {
        let scale = pipeline.vaeScaleFactor
        let latentHeight = (height + scale - 1) / scale, latentWidth = (width + scale - 1) / scale
        let unet = pipeline.unet.config.activationBytes(batch: images * (guidance > 1 ? 2 : 1), height: latentHeight, width: latentWidth,
                                                        contextTokens: 77, mode: .sampling)
        let vae = pipeline.vae.map { $0.config.decodeActivationBytes(batch: images, height: height, width: width) } ?? 0
        return unet + vae + 4 * Double(images) * 9 * Double(height) * Double(width)
    }

    /// A FLUX pipeline's run: per image and guidance pass, the token stream's activations (about
    /// 24 copies of tokens × width per block input, attention's tokens² scores per head) and
    /// the picture three times over.
    public static func estimatedBytes(pipeline: FluxPipeline, images: Int, height: Int, width: Int, guidance: Float) -> Double {
        let c = pipeline.transformer.config
        let scale = Double(pipeline.vaeScaleFactor)
        let tokens = Double(height) * Double(width) / (4 * scale * scale) + 512
        let perPass = 24 * tokens * Double(c.innerDim) + Double(c.numAttentionHeads) * tokens * tokens
        let vae = pipeline.vae.map { 4 * Double($0.config.blockOutChannels.first ?? 1) * Double(height) * Double(width) } ?? 0
        return 4 * Double(images) * (perPass * (guidance > 1 ? 2 : 1) + vae + 9 * Double(height) * Double(width))
    }

    /// Generates and writes the PNG; `progress` sees (steps done, steps in all).
    public func run(assets: Assets = Assets(), available: Double = availableMemoryBytes(),
                    progress: ((Int, Int) -> Void)? = nil) throws -> GenerationResult {
        try validate()
        let started = Date()
        let rowPrompts: [String]
        if grid {
            let prompts = try FashionPrompts.bundled()
            rowPrompts = prompts.classes.map { prompts.canonicalPrompt($0.label) }
        } else {
            rowPrompts = [prompt ?? ""]
        }
        let prompts = rowPrompts.flatMap { Array(repeating: $0, count: numImages) }
        func checkMemory(_ needed: Double, height: Int, width: Int) throws {
            guard needed <= available else {
                throw EvaluationError.invalidSetting(String(
                    format: "%d image%@ of %d×%d would need about %.1f GB, and %.1f GB is available: lower --num-images, --height or --width",
                    prompts.count, prompts.count == 1 ? "" : "s", width, height, needed / 1e9, available / 1e9))
            }
        }
        let images: Tensor, height: Int, width: Int, guidance: Float, schedulerName: String
        let fluxModel = try model.map { FluxPipeline.isFluxFolder(URL(fileURLWithPath: $0)) ? $0 : nil }
            ?? (family == "flux" ? DefaultModel.fluxFolder().path : nil)
        if let model = fluxModel {
            // The flow family: its own pipeline, the same denoising loop.
            guard scheduler == nil else {
                throw EvaluationError.invalidSetting("--scheduler is for UNet models; \(model) is a FLUX folder (flow-matching Euler)")
            }
            let pipeline = try ModelLoader.loadFlux(model, variant: variant, assets: assets)
            try pipeline.merge(loras)
            (height, width) = (self.height ?? pipeline.defaultSize, self.width ?? pipeline.defaultSize)
            guidance = self.guidance ?? MiniFlux.guidance
            try checkMemory(Self.estimatedBytes(pipeline: pipeline, images: prompts.count, height: height, width: width, guidance: guidance),
                            height: height, width: width)
            images = try pipeline.generate(prompts: prompts, negativePrompt: negativePrompt, steps: steps, guidance: guidance,
                                           seed: seed, height: height, width: width) { step, total in
                progress?(step, total)
                return .proceed
            }
            schedulerName = "\(type(of: pipeline.scheduler))"
        } else {
            let pipeline = try ModelLoader.load(model, variant: variant, assets: assets).pipeline
            try pipeline.merge(loras)
            if let scheduler { pipeline.scheduler = try StableDiffusionPipeline.makeScheduler(scheduler, config: pipeline.scheduler.config) }
            (height, width) = (self.height ?? pipeline.defaultHeight, self.width ?? pipeline.defaultWidth)
            guidance = self.guidance ?? (model == nil ? DefaultModel.guidance : Self.folderGuidance)
            try checkMemory(Self.estimatedBytes(pipeline: pipeline, images: prompts.count, height: height, width: width, guidance: guidance),
                            height: height, width: width)
            images = try pipeline.generate(prompts: prompts, negativePrompt: negativePrompt, steps: steps, guidance: guidance,
                                           seed: seed, height: height, width: width, progress: progress)
            schedulerName = "\(type(of: pipeline.scheduler))"
        }
        let total = prompts.count
        let picture: Tensor
        if total == 1 {
            picture = images.squeezed(0)
        } else {
            let rows = grid ? rowPrompts.count : gridRows ?? 1
            picture = imageGrid(images: (0..<total).map { images.narrowed(axis: 0, start: $0, length: 1) },
                                rows: rows, cols: (total + rows - 1) / rows)
        }
        let url = URL(fileURLWithPath: output)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let text: [(key: String, value: String)] = [
            ("prompt", rowPrompts.joined(separator: " | ")), ("negative_prompt", negativePrompt), ("seed", "\(seed)"),
            ("steps", "\(steps)"), ("guidance", "\(guidance)"), ("scheduler", schedulerName),
            ("size", "\(width)x\(height)"), ("images", "\(total)"), ("model", model ?? (family == "flux" ? "embedded mini-FLUX" : "embedded default")), ("Software", "score"),
        ]
        try PNG.write(PixelImage(tensor: picture), to: url, text: text)
        return GenerationResult(file: url, images: total, width: width, height: height, seconds: Date().timeIntervalSince(started))
    }
}

/// What `GenerationRun.run` wrote.
public struct GenerationResult: Sendable {
    public var file: URL
    public var images: Int
    public var width: Int
    public var height: Int
    public var seconds: Double
}
