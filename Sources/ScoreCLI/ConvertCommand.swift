import ArgumentParser
import Evaluation
import Foundation
import SafeTensors
import Testbed

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model as one SD 1.x/2.x single-file checkpoint (the original model.diffusion_model.* layout).",
        discussion: """
            --model is anything the other commands accept: an erased model/ folder (loaded over its base), \
            a diffusers Stable Diffusion folder or a single file; --lora files are merged first. The file \
            holds the UNet, the VAE (first_stage_model.*) and the text encoder (CLIP for SD 1.x, OpenCLIP \
            with fused in_proj for SD 2.x), and loads in diffusers' from_single_file and the original \
            repositories. Only .safetensors is written or read.
            """)

    @Option(help: "The model to convert: a diffusers folder, the model/ folder of `score erase`, or a single file.") var model: String
    @Option(help: variantHelp) var variant: String?
    @Option(name: .shortAndLong, help: "The single file to write (.safetensors).") var out: String
    @Option(help: "Stored dtype: f32, f16 or bf16.") var dtype = StoredDType.f32
    @OptionGroup var lora: LoRAOptions
    @OptionGroup var compute: ComputeOptions

    func export() -> SingleFileExportRun {
        var run = SingleFileExportRun(model: model, output: out)
        run.variant = variant
        run.loras = lora.files
        run.dtype = dtype.stored
        return run
    }

    /// `--dtype`, the precision a written weights file stores (also `export-lora`'s).
    enum StoredDType: String, ExpressibleByArgument {
        case f32, f16, bf16

        /// DType's raw values are these names in capitals.
        var stored: DType { DType(rawValue: rawValue.uppercased())! }
    }

    func validate() throws {
        try lora.validate()
        try export().validate()
    }

    func run() throws {
        compute.apply()
        let url = try export().run(assets: Assets(log: { print("… \($0)") }), log: { print($0) })
        print("wrote \(url.path)")
    }
}
