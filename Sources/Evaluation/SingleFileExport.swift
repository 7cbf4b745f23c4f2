import Diffusion
import Foundation
import SafeTensors
import Testbed

/// `score convert`: any model `--model` accepts (an erased model/ folder over its base, a
/// diffusers folder, a single file), with `--lora` files merged, written as one SD 1.x/2.x
/// single-file checkpoint in the original layout (`SingleFileWriter`).
public struct SingleFileExportRun {
    public var model: String?
    public var variant: String?
    public var loras: [LoRAFile] = []
    public var output: String
    public var dtype: DType = .f32

    public init(model: String?, output: String) {
        self.model = model
        self.output = output
    }

    public func validate() throws {
        guard output.hasSuffix(".safetensors") else {
            throw EvaluationError.invalidSetting("--out \(output): a single-file checkpoint is written as .safetensors")
        }
        guard [.f32, .f16, .bf16].contains(dtype) else { throw EvaluationError.invalidSetting("--dtype must be f32, f16 or bf16") }
        try ModelLoader.checkVariant(variant, model: model)
        _ = try OutputPath.file(output, flag: "--out")
    }

    /// Loads, merges and writes; returns the file written.
    @discardableResult
    public func run(assets: Assets = Assets(), log: (String) -> Void = { _ in }) throws -> URL {
        try validate()
        var loaded = try ModelLoader.load(model, variant: variant, assets: assets)
        try loaded.merge(loras)
        let url = URL(fileURLWithPath: output)
        var metadata = ["score_source": loaded.name]
        if let manifest = loaded.manifest {
            metadata["score_method"] = manifest.method
            metadata["score_concepts"] = manifest.concepts.joined(separator: ",")
        }
        log("writing \(loaded.name) as a single file")
        try loaded.pipeline.saveSingleFile(to: url, dtype: dtype, metadata: metadata)
        return url
    }
}
