import ArgumentParser
import Diffusion
import Erasure
import Evaluation
import Foundation
import SafeTensors
import Testbed

extension LoRALayout: ExpressibleByArgument {}

/// `--lora F [--lora-scale S]`, for the commands that load a model.
struct LoRAOptions: ParsableArguments {
    @Option(help: "A LoRA file (diffusers/PEFT or kohya layout) merged into the model's weights; repeat for several.")
    var lora: [String] = []
    @Option(help: "The scale of the --lora file(s): one for all, or one per --lora in order (default: 1).")
    var loraScale: [Float] = []

    var files: [LoRAFile] {
        lora.enumerated().map { index, path in
            LoRAFile(path: path, scale: loraScale.count == lora.count ? loraScale[index] : loraScale.first ?? 1)
        }
    }

    func validate() throws {
        guard loraScale.isEmpty || loraScale.count == 1 || loraScale.count == lora.count else {
            throw ValidationError("--lora-scale: give one scale for all, or one per --lora (\(lora.count)), not \(loraScale.count)")
        }
        guard !lora.isEmpty || loraScale.isEmpty else { throw ValidationError("--lora-scale needs a --lora file") }
        if let bad = loraScale.first(where: { !$0.isFinite }) { throw ValidationError("--lora-scale must be a number, not \(bad)") }
        if let missing = lora.first(where: { !FileManager.default.fileExists(atPath: $0) }) {
            throw ValidationError("--lora \(missing): no such file")
        }
    }
}

struct ExportLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-lora",
        abstract: "Write an erased model's change to its base UNet as a LoRA file (diffusers/PEFT or kohya layout).",
        discussion: """
            Each changed linear or convolution weight's difference is truncated by SVD to --rank R, or to \
            the smallest rank keeping --energy E of its squared singular values (default: 0.99); alpha = \
            rank. The relative Frobenius error of each tensor and overall is printed. Changed biases and \
            normalisation weights cannot be LoRA factors: they are counted and named, not written.
            """)

    @Option(help: "The erased model: the model/ folder of `score erase` (its base is the one in erasure.json), or a whole model folder with --base.")
    var model: String
    @Option(help: "The model the change is measured from (default: the erased folder's base).") var base: String?
    @Option(name: .shortAndLong, help: "The LoRA file to write (.safetensors).") var out: String
    @Option(help: "Key layout: peft (diffusers' load_lora_weights) or kohya (lora_unet_…).") var format = LoRALayout.peft
    @Option(help: "The largest rank per tensor.") var rank: Int?
    @Option(help: "Keep the smallest rank holding this fraction of each tensor's squared singular values, in (0, 1].") var energy: Double?
    @Option(help: "Stored dtype: f32, f16 or bf16.") var dtype = Convert.StoredDType.f32
    @OptionGroup var output: JSONOption
    @OptionGroup var compute: ComputeOptions

    func export() throws -> LoRAExportRun {
        var run = LoRAExportRun(model: model, output: out)
        run.base = base
        run.layout = format
        guard rank == nil || energy == nil else { throw ValidationError("give --rank or --energy, not both") }
        if let rank { run.choice = .rank(rank) }
        if let energy { run.choice = .energy(energy) }
        run.dtype = dtype.stored
        return run
    }

    func validate() throws { try export().validate() }

    func run() throws {
        compute.apply()
        let result = try export().run(assets: Assets(log: { if !output.json { print("… \($0)") } }), log: output.log)
        if output.json { return try printJSON(result) }
        let report = result.report
        print("wrote \(result.file) (\(result.format), \(result.modules) modules, \(report.lora_parameters) LoRA entries for \(report.changed_parameters) changed)")
        for tensor in report.tensors {
            print(String(format: "  %@  rank %d of %d  error %.2e  energy %.4f", tensor.name, tensor.rank, tensor.full_rank,
                         tensor.relative_error, tensor.energy_kept))
        }
        print(String(format: "relative error (Frobenius, factorised tensors): %.3e", report.relative_error))
        if !report.omitted.isEmpty {
            print("\(report.omitted.count) changed tensors are not linear or convolution weights and are not in the file: "
                  + report.omitted.map(\.name).joined(separator: ", "))
            print(String(format: "relative error counting them: %.3e", report.relative_error_with_omitted))
        }
    }
}
