import Diffusion
import Erasure
import Foundation
import SafeTensors
import Testbed

/// `score export-lora`: an erased model's change to its base UNet written as a LoRA file in the
/// diffusers/PEFT or kohya layout (see `LoRAExtraction`), with the reconstruction error.
public struct LoRAExportRun {
    /// The erased model: the model/ folder of `score erase`, or any standalone folder with `base`.
    public var model: String
    /// The base the change is measured from (nil: the erased folder's `base_model`).
    public var base: String?
    public var output: String
    public var layout: LoRALayout = .peft
    public var choice: LoRAExtraction.RankChoice = .energy(0.99)
    public var dtype: DType = .f32

    public init(model: String, output: String) {
        self.model = model
        self.output = output
    }

    /// What the export wrote, as `--json` prints it.
    public struct Result: Codable, Sendable {
        public var file: String
        public var format: String
        public var model: String
        public var base_model: String
        /// The rank limit or the energy kept, as asked.
        public var rank: Int?
        public var energy: Double?
        public var modules: Int
        public var report: LoRAExtraction.Report
    }

    public func validate() throws {
        switch choice {
        case let .rank(r): guard r >= 1 else { throw EvaluationError.invalidSetting("--rank must be at least 1, not \(r)") }
        case let .energy(e): guard e > 0 && e <= 1 else { throw EvaluationError.invalidSetting("--energy must be in (0, 1], not \(e)") }
        }
        guard [.f32, .f16, .bf16].contains(dtype) else { throw EvaluationError.invalidSetting("--dtype must be f32, f16 or bf16") }
        _ = try OutputPath.file(output, flag: "--out")
    }

    public func run(assets: Assets = Assets(), log: @escaping (String) -> Void) throws -> Result {
        try validate()
        let erased = try ModelLoader.load(model, assets: assets)
        let baseName: String?
        if let base {
            baseName = base
        } else if let manifest = erased.manifest {
            baseName = manifest.baseFolder(relativeTo: erased.folder)?.path
        } else {
            throw EvaluationError.invalidRequest("--model \(model) holds a whole model (no \(ErasedModel.manifestName)): give --base, the model its change is measured from")
        }
        let reference = try ModelLoader.load(baseName, variant: base == nil ? erased.manifest?.base_variant : nil, assets: assets)
        log("factorising the change of \(erased.name) from \(reference.name)")
        let (lora, report) = try LoRAExtraction.extract(erased: erased.pipeline.unet, base: reference.pipeline.unet, choice: choice)
        guard lora.count > 0 else {
            let reason = report.omitted.isEmpty ? "the model's UNet equals its base's"
                : "only biases or normalisation weights changed (\(report.omitted.map(\.name).joined(separator: ", "))), which LoRA cannot carry"
            throw EvaluationError.invalidRequest("nothing to export from \(model): \(reason)")
        }
        var rank: Int?, energy: Double?
        switch choice {
        case let .rank(r): rank = r
        case let .energy(e): energy = e
        }
        var metadata = ["score_base_model": reference.name, "score_relative_error": String(report.relative_error)]
        if let manifest = erased.manifest {
            metadata["score_method"] = manifest.method
            metadata["score_concepts"] = manifest.concepts.joined(separator: ",")
        }
        let url = URL(fileURLWithPath: output)
        try lora.write(to: url, layout: layout, dtype: dtype, metadata: metadata)
        return Result(file: url.path, format: layout.rawValue, model: erased.name, base_model: reference.name, rank: rank,
                      energy: energy, modules: lora.count, report: report)
    }
}
