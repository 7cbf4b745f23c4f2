import ArgumentParser
import Benchmarks
import Diffusion
import Evaluation
import Foundation
import Testbed

/// `--scheduler` values.
extension SamplerName: ExpressibleByArgument {}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images from a prompt and write them as one PNG.",
        discussion: """
            Images are written atomically, with the prompt, negative prompt, seed, steps, guidance, \
            scheduler, size and model in the PNG's tEXt chunks. Image k of a run comes from its own \
            random stream (seed, k), so it is the same image whatever --num-images is. A run that would \
            need more memory than is available is refused before it starts.
            """)

    private static let defaults = GenerationRun(output: "")
    @Option(help: "A diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), a testbed folder or an erased model/ folder. Default: the embedded testbed model.")
    var model: String?
    @Option(help: "Model family without --model: sd (the embedded mini-SD) or flux (the embedded mini-FLUX).") var family = defaults.family
    @Argument(help: "The prompt (not with --grid).") var prompt: String?
    @Flag(help: "Draw a class × seed grid of the testbed's canonical prompts (one row per class, --num-images seeds per row).") var grid = false
    @Option(name: .shortAndLong, help: "The PNG file to write.") var out: String
    @Option(help: "Denoising steps.") var steps = defaults.steps
    @Option(help: "Classifier-free guidance scale; at most 1: the prompt alone, no negative prompt (default: \(GenerationRun.folderGuidance) for --model folders, the default model's own otherwise).")
    var guidance: Float?
    @Option(help: "Random seed.") var seed = defaults.seed
    @Option(help: "Negative prompt (the unconditional text of guidance).") var negative = defaults.negativePrompt
    @Option(help: "Sampler: \(SamplerName.allCases.map(\.rawValue).joined(separator: ", ")) (default: the model's scheduler_config.json).")
    var scheduler: SamplerName?
    @Option(help: variantHelp) var variant: String?
    @Option(help: "Images to generate (tiled into one grid image when more than one).") var numImages = defaults.numImages
    @Option(help: "Rows of the grid (default: one row).") var gridRows: Int?
    @Option(help: "Image height in pixels (default: the model's).") var height: Int?
    @Option(help: "Image width in pixels (default: the model's).") var width: Int?
    @OptionGroup var lora: LoRAOptions
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var precision: PrecisionOptions

    func generation() -> GenerationRun {
        var run = GenerationRun(output: out)
        run.loras = lora.files
        run.model = model
        run.family = family
        run.prompt = prompt
        run.grid = grid
        run.steps = steps
        run.guidance = guidance
        run.seed = seed
        run.negativePrompt = negative
        run.scheduler = scheduler
        run.variant = variant
        run.numImages = numImages
        run.gridRows = gridRows
        run.height = height
        run.width = width
        return run
    }

    func validate() throws { try checking { try generation().validate() } }

    func run() throws {
        compute.apply()
        let result = try precision.run {
            try generation().run(assets: Assets(log: { print("… \($0)") })) { step, total in
                FileHandle.standardError.write("\rstep \(step)/\(total)\(step == total ? "\n" : "")".data(using: .utf8)!)
            }
        }
        print("wrote \(result.file.path) (\(result.images) image\(result.images == 1 ? "" : "s"), \(result.width)×\(result.height), "
              + String(format: "%.1f s)", result.seconds))
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the speed of the engine and models.",
        subcommands: [Engine.self, UNet.self, Critic.self])

    /// Progress on stderr, unless the command prints JSON.
    static func progress(json: Bool) -> (String) -> Void {
        { step in if !json { FileHandle.standardError.write("… \(step)\n".data(using: .utf8)!) } }
    }

    struct Engine: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "GEMM GFLOP/s, conv2d / attention / GroupNorm forward+backward times.")

        @OptionGroup var output: JSONOption
        @Option(help: "Timed runs per measurement (the median is reported).") var runs = EngineBenchmark.Settings().runs
        @OptionGroup var compute: ComputeOptions

        var settings: EngineBenchmark.Settings {
            var settings = EngineBenchmark.Settings()
            settings.runs = runs
            return settings
        }

        func validate() throws { try checking { try settings.validate() } }

        func run() throws {
            compute.apply()
            let result = try EngineBenchmark.run(settings, progress: Bench.progress(json: output.json))
            if output.json { return try printJSON(result) }
            func bf16(_ value: Double?, _ format: String) -> String {
                value.map { String(format: format, $0) } ?? "bf16 unavailable: \(result.bf16_unavailable ?? "")"
            }
            print("""
            engine benchmark (\(result.threads) threads, \(result.isa) kernels, median of \(runs) runs)
              GEMM 1024³                 \(String(format: "%8.1f", result.gemm_1024_gflops)) GFLOP/s
              GEMM 1024³ bf16            \(bf16(result.gemm_1024_bf16_gflops, "%8.1f GFLOP/s"))
              GEMM 256×4096×512          \(String(format: "%8.1f", result.gemm_256x4096x512_gflops)) GFLOP/s
              GEMM 256×4096×512 bf16     \(bf16(result.gemm_256x4096x512_bf16_gflops, "%8.1f GFLOP/s"))
              conv2d fwd                 \(String(format: "%8.2f", result.conv_fwd_ms)) ms  (8×64×32×32, 3×3, 64 out)
              conv2d fwd bf16            \(bf16(result.conv_fwd_bf16_ms, "%8.2f ms"))
              conv2d fwd+bwd             \(String(format: "%8.2f", result.conv_fwd_bwd_ms)) ms  (8×64×32×32, 3×3, 64 out)
              attention fwd+bwd          \(String(format: "%8.2f", result.attention_fwd_bwd_ms)) ms  (2×8 heads, 1024 tokens, d 64)
              GroupNorm fwd+bwd          \(String(format: "%8.2f", result.groupnorm_fwd_bwd_ms)) ms  (8×64×32×32, 32 groups)
            """)
        }
    }

    struct UNet: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unet",
            abstract: "Time a UNet with random weights: forward, forward+backward, peak memory.",
            discussion: "Same workload as tools/bench_unet_torch.py. SD 1.5 at --latent 64 needs about 10 GB and minutes per run on two cores.")

        private static let defaults = UNetBenchmark.Settings()
        @Option(help: "sd15, sd21, or a UNet config.json.") var config = defaults.config
        @Option(help: "Latent height and width (64 = 512×512 images for SD 1.5).") var latent = defaults.latent
        @Option(help: "Batch size.") var batch = defaults.batch
        @Option(help: "Text tokens (77 for CLIP).") var tokens = defaults.tokens
        @Option(help: "Timed runs per measurement (the median; one untimed warm-up when more than 1).") var runs = defaults.runs
        @Flag(help: "Time the forward pass only.") var forwardOnly = false
        @Flag(help: "Recompute each block's activations in the backward pass (diffusers' gradient_checkpointing).") var gradientCheckpointing = false
        @OptionGroup var output: JSONOption
        @OptionGroup var compute: ComputeOptions
        @OptionGroup var precision: PrecisionOptions

        var settings: UNetBenchmark.Settings {
            var settings = UNetBenchmark.Settings()
            settings.config = config
            settings.latent = latent
            settings.batch = batch
            settings.tokens = tokens
            settings.runs = runs
            settings.backward = !forwardOnly
            settings.gradientCheckpointing = gradientCheckpointing
            return settings
        }

        func validate() throws { try checking { try settings.validate() } }

        func run() throws {
            compute.apply()
            let result = try precision.run { try UNetBenchmark.run(settings, progress: Bench.progress(json: output.json)) }
            if output.json { return try printJSON(result) }
            func mb(_ value: Double?) -> String { value.map { String(format: "%.0f MB", $0) } ?? "n/a" }
            print("""
            UNet benchmark: \(result.config), \(result.parameters) parameters, batch \(result.batch), \
            \(result.latent)×\(result.latent) latents, \(result.tokens) tokens (\(result.threads) threads, \(result.isa)\(precision.bf16 ? ", bf16 forward" : ""), median of \(runs))
              forward            \(String(format: "%8.2f", result.forward_s)) s
              forward+backward   \(result.forward_backward_s.map { String(format: "%8.2f s", $0) } ?? "     n/a")
              peak RSS           \(mb(result.peak_rss_mb)) (after forward: \(mb(result.forward_peak_rss_mb)))
            """)
        }
    }

    struct Critic: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Seconds per training step of the leakage critics (widths 32 and 64 by default).")

        private static let defaults = CriticBenchmark.Settings()
        @Option(help: "Critic widths, comma-separated.") var widths = defaults.widths.map(String.init).joined(separator: ",")
        @Option(help: "Samples per step (at least 2: half target, half anchor).") var batch = defaults.batch
        @Option(help: "Image side (the testbed's x̂₀ is 32×32×1).") var side = defaults.side
        @Option(help: "Timed steps (the median is reported).") var runs = defaults.runs
        @OptionGroup var output: JSONOption
        @OptionGroup var compute: ComputeOptions

        func settings() throws -> CriticBenchmark.Settings {
            var settings = CriticBenchmark.Settings()
            settings.widths = try widths.split(separator: ",").map { text -> Int in
                guard let width = Int(text.trimmingCharacters(in: .whitespaces)) else {
                    throw ValidationError("--widths: '\(text)' is not an integer")
                }
                return width
            }
            settings.batch = batch
            settings.side = side
            settings.runs = runs
            return settings
        }

        func validate() throws { try checking { try settings().validate() } }

        func run() throws {
            compute.apply()
            let results = try CriticBenchmark.run(try settings())
            if output.json { return try printJSON(results) }
            for r in results {
                print(String(format: "critic width %d, batch %d, %d×%d: %.1f ms per step (%d threads, %@)",
                             r.width, r.batch, r.image_side, r.image_side, r.step_s * 1000, r.threads, r.isa))
            }
        }
    }
}
