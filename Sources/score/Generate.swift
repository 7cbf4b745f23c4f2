import ArgumentParser
import Benchmarks
import Diffusion
import Foundation
import Tensor

// `score generate` and `score bench unet`. Register `Generate.self` in `Score`'s subcommands and
// `Bench.UNetBenchmarkCommand.self` in `Bench`'s.

// Hooks the lead wires at start-up (e.g. in `Score.main()`), so that this file needs no Testbed:
//     defaultPipelineProvider = { try DefaultModel.pipeline() }
//     folderPipelineProvider = { try ModelLoader.load($0.path).pipeline }
//     defaultModelGuidance = DefaultModel.guidance

/// Builds the embedded default model (the testbed's mini-SD) for commands run without `--model`.
/// Set by the testbed; nil until it exists.
nonisolated(unsafe) var defaultPipelineProvider: (() throws -> StableDiffusionPipeline)? = nil

/// Builds a pipeline from any `--model` folder the tool accepts (a diffusers folder, a testbed
/// folder whose MiniLM comes from the asset cache, an erased folder of changed weights).
nonisolated(unsafe) var folderPipelineProvider: ((URL) throws -> StableDiffusionPipeline)? = nil

/// The prompts of `score generate --grid`: one row per class of the testbed.
nonisolated(unsafe) var gridPromptsProvider: (() throws -> [String])? = nil

/// The guidance `score generate` uses for the default model when `--guidance` is not given
/// (the testbed measures with 4); `--model` folders get Stable Diffusion's 7.5.
nonisolated(unsafe) var defaultModelGuidance: Float = 7.5

/// A command's failure, printed as "Error: <message>" (without the usage text of a ValidationError).
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The embedded default pipeline, or an error asking for `--model` when there is none.
func defaultPipeline() throws -> StableDiffusionPipeline {
    guard let provider = defaultPipelineProvider else {
        throw CommandFailure("no default model is built in yet: pass --model DIR, a diffusers pipeline folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/, vae/)")
    }
    return try provider()
}

/// `--scheduler` values.
enum SchedulerChoice: String, ExpressibleByArgument, CaseIterable {
    case ddim, euler, ddpm

    var kind: SchedulerKind {
        switch self {
        case .ddim: return .ddim
        case .euler: return .eulerDiscrete
        case .ddpm: return .ddpm
        }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images from a prompt and write them as one PNG.",
        discussion: """
            Images are written atomically, with the prompt, negative prompt, seed, steps, guidance, \
            scheduler, size and model in the PNG's tEXt chunks. Image k of a run comes from its own \
            random stream (seed, k), so it is the same image whatever --num-images is.
            """)

    @Option(help: "A diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/). Default: the embedded testbed model.")
    var model: String?

    @Argument(help: "The prompt (not with --grid).")
    var prompt: String?

    @Flag(help: "Draw a class × seed grid of the testbed's canonical prompts (one row per class, --num-images seeds per row).")
    var grid = false

    @Option(name: .shortAndLong, help: "The PNG file to write.")
    var out: String

    @Option(help: "Denoising steps.")
    var steps = 25

    @Option(help: "Classifier-free guidance scale; at most 1: the prompt alone, no negative prompt (default: 7.5 for --model folders, the default model's own otherwise).")
    var guidance: Float?

    @Option(help: "Random seed.")
    var seed: UInt64 = 0

    @Option(help: "Negative prompt (the unconditional text of guidance).")
    var negative = ""

    @Option(help: "Sampler: ddim, euler or ddpm (default: the model's scheduler_config.json).")
    var scheduler: SchedulerChoice?

    @Option(help: "Images to generate (tiled into one grid image when more than one).")
    var numImages = 1

    @Option(help: "Rows of the grid (default: one row).")
    var gridRows: Int?

    @Option(help: "Image height in pixels (default: the model's).")
    var height: Int?

    @Option(help: "Image width in pixels (default: the model's).")
    var width: Int?

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        guard (prompt != nil) != grid else { throw ValidationError("give either a prompt or --grid") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1, got \(steps)") }
        guard numImages >= 1 else { throw ValidationError("--num-images must be at least 1, got \(numImages)") }
        if let gridRows, !(1...numImages).contains(gridRows) {
            throw ValidationError("--grid-rows must be between 1 and --num-images (\(numImages)), got \(gridRows)")
        }
        if let guidance, !guidance.isFinite { throw ValidationError("--guidance must be a number") }
    }

    func run() throws {
        try compute.apply()
        let pipeline: StableDiffusionPipeline
        if let model {
            let folder = URL(fileURLWithPath: model)
            pipeline = try folderPipelineProvider.map { try $0(folder) } ?? StableDiffusionPipeline(directory: folder)
        } else {
            pipeline = try defaultPipeline()
        }
        if let scheduler {
            pipeline.scheduler = try StableDiffusionPipeline.makeScheduler(scheduler.kind, config: pipeline.scheduler.config)
        }
        let height = self.height ?? pipeline.defaultHeight, width = self.width ?? pipeline.defaultWidth
        let guidance = self.guidance ?? (model == nil ? defaultModelGuidance : 7.5)
        let schedulerName = "\(type(of: pipeline.scheduler))"

        let start = Date()
        let rowPrompts: [String]
        if grid {
            guard let gridPromptsProvider else { throw CommandFailure("--grid needs the testbed's prompts") }
            rowPrompts = try gridPromptsProvider()
        } else {
            rowPrompts = [prompt!]
        }
        let prompts = rowPrompts.flatMap { Array(repeating: $0, count: numImages) }
        let prompt = rowPrompts.joined(separator: " | ")
        let images = try pipeline.generate(
            prompts: prompts, negativePrompt: negative, steps: steps,
            guidance: guidance, seed: seed, height: height, width: width
        ) { step, total in
            FileHandle.standardError.write("\rstep \(step)/\(total)".data(using: .utf8)!)
            if step == total { FileHandle.standardError.write("\n".data(using: .utf8)!) }
        }

        let picture: Tensor
        let total = prompts.count
        if total == 1 {
            picture = images.squeezed(0)
        } else {
            let rows = grid ? rowPrompts.count : gridRows ?? 1
            let cols = (total + rows - 1) / rows
            picture = imageGrid(images: (0..<total).map { images.narrowed(axis: 0, start: $0, length: 1) },
                                rows: rows, cols: cols)
        }
        let url = URL(fileURLWithPath: out)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let text: [(key: String, value: String)] = [
            ("prompt", prompt), ("negative_prompt", negative), ("seed", "\(seed)"), ("steps", "\(steps)"),
            ("guidance", "\(guidance)"), ("scheduler", schedulerName), ("size", "\(width)x\(height)"),
            ("images", "\(total)"), ("model", model ?? "embedded default"), ("Software", "score"),
        ]
        try PNG.write(PixelImage(tensor: picture), to: url, text: text)
        print("wrote \(url.path) (\(total) image\(total == 1 ? "" : "s"), \(width)×\(height), \(String(format: "%.1f", Date().timeIntervalSince(start))) s)")
    }
}

extension Bench {
    struct UNetBenchmarkCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unet",
            abstract: "Time a UNet with random weights: forward, forward+backward, peak memory.",
            discussion: "Same workload as tools/bench_unet_torch.py. SD 1.5 at --latent 64 needs about 10 GB and minutes per run on two cores.")

        @Option(help: "sd15, sd21, or a UNet config.json.")
        var config = "sd15"

        @Option(help: "Latent height and width (64 = 512×512 images for SD 1.5).")
        var latent = 64

        @Option(help: "Batch size.")
        var batch = 1

        @Option(help: "Text tokens (77 for CLIP).")
        var tokens = 77

        @Option(help: "Timed runs per measurement (the median; one untimed warm-up when more than 1).")
        var runs = 1

        @Flag(help: "Time the forward pass only.")
        var forwardOnly = false

        @Flag(help: "Print one JSON object instead of a table.")
        var json = false

        @OptionGroup var compute: ComputeOptions

        func run() throws {
            try compute.apply()
            guard runs >= 1, latent >= 1, batch >= 1, tokens >= 1 else {
                throw ValidationError("--runs, --latent, --batch and --tokens must be at least 1")
            }
            let unetConfig: UNet2DConditionConfig
            if let preset = UNet2DConditionConfig.preset(config) {
                unetConfig = preset
            } else if FileManager.default.fileExists(atPath: config) {
                unetConfig = try UNet2DConditionConfig(contentsOf: URL(fileURLWithPath: config))
            } else {
                throw ValidationError("--config must be sd15, sd21 or a UNet config.json, got \(config)")
            }
            let result = try UNetBenchmark.run(config: unetConfig, name: config, latent: latent, batch: batch, tokens: tokens,
                                               runs: runs, backward: !forwardOnly) { step in
                if !json { FileHandle.standardError.write("… \(step)\n".data(using: .utf8)!) }
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(data: try encoder.encode(result), encoding: .utf8)!)
            } else {
                func mb(_ value: Double?) -> String { value.map { String(format: "%.0f MB", $0) } ?? "n/a" }
                print("""
                UNet benchmark: \(result.config), \(result.parameters) parameters, batch \(result.batch), \
                \(result.latent)×\(result.latent) latents, \(result.tokens) tokens (\(result.threads) threads, \(result.isa), median of \(runs))
                  forward            \(String(format: "%8.2f", result.forward_s)) s
                  forward+backward   \(result.forward_backward_s.map { String(format: "%8.2f s", $0) } ?? "     n/a")
                  peak RSS           \(mb(result.peak_rss_mb)) (after forward: \(mb(result.forward_peak_rss_mb)))
                """)
            }
        }
    }
}
