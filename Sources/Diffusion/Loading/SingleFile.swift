import Foundation
import NN
import SafeTensors
import Tensor

// Stable Diffusion 1.x/2.x single-file checkpoints (`.safetensors` in the original layout; key
// map in SingleFileKeys.swift): read the family and the architecture from the keys and shapes,
// load the UNet, VAE and text encoder from the one file, and write them back in that layout.
//
// As diffusers' `from_single_file`, the configs the file cannot hold (head counts, group counts,
// the sampler) come from the family's published configs, or from a diffusers folder given as
// `config` (for a model that is not a published architecture); the tokenizer always comes from a
// folder, since the file has none.

/// An opened single-file checkpoint. Everything is checked before any parameter is written.
public final class SingleFileCheckpoint {
    public let url: URL
    public let family: SingleFileFamily
    let archive: SafeTensorsArchive
    /// Keys under each component's prefix, without it.
    let unetKeys: Set<String>, vaeKeys: Set<String>, textKeys: Set<String>

    /// Whether `path` names a single-file checkpoint (a `.safetensors`, `.ckpt`, `.pt` or `.bin`
    /// file) rather than a folder.
    public static func isSingleFile(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
        let suffixes = [".safetensors", ".ckpt", ".pt", ".pth", ".bin"]
        return exists ? !isDirectory.boolValue : suffixes.contains(where: path.lowercased().hasSuffix)
    }

    public init(url: URL) throws {
        let lower = url.lastPathComponent.lowercased()
        if [".ckpt", ".pt", ".pth", ".bin"].contains(where: lower.hasSuffix) {
            throw PipelineError.invalidFile(url, reason: "a pickled PyTorch checkpoint; score reads .safetensors only (pickles can run code when loaded). Convert it once, e.g. with safetensors' convert script or `torch.load` + `safetensors.torch.save_file`")
        }
        let archive = try SafeTensorsArchive(url: url)
        try archive.validateAllShards()
        self.archive = archive
        self.url = url
        let names = archive.names
        func keys(_ prefix: String) -> Set<String> {
            Set(names.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) })
        }
        unetKeys = keys(SingleFileKeys.unetPrefix)
        vaeKeys = keys(SingleFileKeys.vaePrefix)
        if names.contains(where: { $0.hasPrefix("conditioner.embedders.") }) {
            throw PipelineError.invalidFile(url, reason: "an SDXL checkpoint (conditioner.embedders.* keys); single files of SD 1.x and 2.x are supported")
        }
        guard !unetKeys.isEmpty else {
            throw PipelineError.invalidFile(url, reason: "not a Stable Diffusion single-file checkpoint: no \(SingleFileKeys.unetPrefix)* keys (a diffusers model is a folder with model_index.json)")
        }
        guard !vaeKeys.isEmpty else {
            throw PipelineError.invalidFile(url, reason: "holds no VAE (\(SingleFileKeys.vaePrefix)* keys)")
        }
        let openCLIP = keys(SingleFileKeys.openCLIPPrefix), clip = keys(SingleFileKeys.clipPrefix)
        if !openCLIP.isEmpty {
            family = .sd2
            textKeys = openCLIP
        } else if !clip.isEmpty {
            family = .sd1
            textKeys = clip
        } else {
            throw PipelineError.invalidFile(url, reason: "holds no text encoder (\(SingleFileKeys.clipPrefix)* for SD 1.x or \(SingleFileKeys.openCLIPPrefix)* for SD 2.x)")
        }
    }

    // MARK: Reading the architecture from the keys

    func shape(_ key: String) throws -> [Int] { try archive.info(key).shape }

    private func unetShape(_ key: String) throws -> [Int] {
        guard unetKeys.contains(key) else {
            throw PipelineError.invalidFile(url, reason: "missing \(SingleFileKeys.unetPrefix)\(key), which every SD UNet has")
        }
        return try shape(SingleFileKeys.unetPrefix + key)
    }

    /// The distinct integers `n` of keys `<prefix>n.…` in `keys`.
    private static func indices(_ keys: Set<String>, under prefix: String) -> Set<Int> {
        Set(keys.compactMap { key -> Int? in
            guard key.hasPrefix(prefix) else { return nil }
            return Int(key.dropFirst(prefix.count).prefix { $0 != "." })
        })
    }

    /// The UNet config the keys and shapes describe, as diffusers' `create_unet_diffusers_config`
    /// builds it from the original YAML for SD 1.x (8 heads) and SD 2.x (64-wide heads, upcast
    /// attention; 96² latents for v-prediction, the 768-px models, else 64²). Group counts are 32,
    /// as the original network hard-codes.
    public func inferredUNetConfig(predictionType: PredictionType? = nil) throws -> UNet2DConditionConfig {
        let levels = Self.indices(unetKeys, under: "input_blocks.").filter { unetKeys.contains("input_blocks.\($0).0.op.weight") }.count + 1
        let outputs = Self.indices(unetKeys, under: "output_blocks.").count
        guard outputs > 0, outputs % levels == 0, outputs / levels >= 2 else {
            throw PipelineError.invalidFile(url, reason: "the UNet keys do not form SD's levels (\(outputs) output blocks for \(levels) levels)")
        }
        let perLevel = outputs / levels
        var config = UNet2DConditionConfig()
        config.layersPerBlock = .one(perLevel - 1)
        var channels: [Int] = [], down: [String] = [], up: [String] = [], transformers: [Int] = []
        var linear: Bool? = nil
        for level in 0..<levels {
            let first = 1 + level * perLevel
            channels.append(try unetShape("input_blocks.\(first).0.out_layers.3.weight")[0])
            let attention = "input_blocks.\(first).1."
            if unetKeys.contains(attention + "proj_in.weight") {
                down.append("CrossAttnDownBlock2D")
                transformers.append(Self.indices(unetKeys, under: attention + "transformer_blocks.").count)
                linear = try unetShape(attention + "proj_in.weight").count == 2
            } else {
                down.append("DownBlock2D")
                transformers.append(1)
            }
            up.append(unetKeys.contains("output_blocks.\(level * perLevel).1.proj_in.weight") ? "CrossAttnUpBlock2D" : "UpBlock2D")
        }
        config.blockOutChannels = channels
        config.downBlockTypes = down
        config.upBlockTypes = up
        config.transformerLayersPerBlock = Set(transformers).count == 1 ? .one(.one(transformers[0])) : .many(transformers.map { .one($0) })
        if let key = unetKeys.sorted().first(where: { $0.hasSuffix(".attn2.to_k.weight") }) {
            config.crossAttentionDim = .one(try unetShape(key)[1])
        }
        if unetKeys.contains("middle_block.1.proj_in.weight") {
            linear = try unetShape("middle_block.1.proj_in.weight").count == 2
        } else {
            config.midBlockType = nil
        }
        config.useLinearProjection = linear ?? false
        config.inChannels = try unetShape("input_blocks.0.0.weight")[1]
        config.outChannels = try unetShape("out.2.weight")[0]
        let timeWidth = try unetShape("time_embed.0.weight")[0]
        if timeWidth != 4 * channels[0] { config.timeEmbeddingDim = timeWidth }
        switch family {
        case .sd1:
            config.attentionHeadDim = .one(8)
            config.sampleSize = .one(64)
        case .sd2:
            config.attentionHeadDim = .many(channels.map { max(1, $0 / 64) })
            config.upcastAttention = true
            config.sampleSize = .one(predictionType == .vPrediction || predictionType == nil ? 96 : 64)
        }
        return config
    }

    /// The VAE config of the keys and shapes (SD's published VAE constants: 32 groups, scaling 0.18215).
    public func inferredVAEConfig() throws -> AutoencoderKLConfig {
        func vaeShape(_ key: String) throws -> [Int] {
            guard vaeKeys.contains(key) else {
                throw PipelineError.invalidFile(url, reason: "missing \(SingleFileKeys.vaePrefix)\(key), which every SD VAE has")
            }
            return try shape(SingleFileKeys.vaePrefix + key)
        }
        let levels = Self.indices(vaeKeys, under: "encoder.down.").count
        guard levels > 0 else { throw PipelineError.invalidFile(url, reason: "no \(SingleFileKeys.vaePrefix)encoder.down.* keys") }
        var config = AutoencoderKLConfig()
        config.blockOutChannels = try (0..<levels).map { try vaeShape("encoder.down.\($0).block.0.conv2.weight")[0] }
        config.layersPerBlock = Self.indices(vaeKeys, under: "encoder.down.0.block.").count
        config.downBlockTypes = Array(repeating: "DownEncoderBlock2D", count: levels)
        config.upBlockTypes = Array(repeating: "UpDecoderBlock2D", count: levels)
        config.inChannels = try vaeShape("encoder.conv_in.weight")[1]
        config.outChannels = try vaeShape("decoder.conv_out.weight")[0]
        config.latentChannels = try vaeShape("decoder.conv_in.weight")[1]
        config.useQuantConv = vaeKeys.contains("quant_conv.weight")
        config.usePostQuantConv = vaeKeys.contains("post_quant_conv.weight")
        config.midBlockAddAttention = vaeKeys.contains("encoder.mid.attn_1.q.weight")
        config.sampleSize = .one(family == .sd2 ? 768 : 512)
        return config
    }

    /// The text encoder's config: CLIP ViT-L/14's constants for SD 1.x (quick GELU), OpenCLIP
    /// ViT-H/14's for SD 2.x (GELU); heads 64 wide. OpenCLIP-H has 24 layers, of which SD 2 uses
    /// the first 23 (its penultimate layer): a file with 24 gives a 23-layer model, as diffusers'.
    public func inferredTextConfig() throws -> CLIPTextConfig {
        var config = CLIPTextConfig()
        let prefix = family == .sd1 ? SingleFileKeys.clipPrefix : SingleFileKeys.openCLIPPrefix
        func textShape(_ key: String) throws -> [Int] {
            guard textKeys.contains(key) else {
                throw PipelineError.invalidFile(url, reason: "missing \(prefix)\(key), which every \(family == .sd1 ? "CLIP" : "OpenCLIP") text model has")
            }
            return try shape(prefix + key)
        }
        switch family {
        case .sd1:
            let root = textKeys.contains("text_model.embeddings.token_embedding.weight") ? "text_model." : ""
            let embedding = try textShape(root + "embeddings.token_embedding.weight")
            (config.vocabSize, config.hiddenSize) = (embedding[0], embedding[1])
            config.maxPositionEmbeddings = try textShape(root + "embeddings.position_embedding.weight")[0]
            config.numHiddenLayers = Self.indices(textKeys, under: root + "encoder.layers.").count
            config.intermediateSize = try textShape(root + "encoder.layers.0.mlp.fc1.weight")[0]
            config.hiddenAct = .quickGELU
            config.projectionDim = 768
        case .sd2:
            let embedding = try textShape("token_embedding.weight")
            (config.vocabSize, config.hiddenSize) = (embedding[0], embedding[1])
            config.maxPositionEmbeddings = try textShape("positional_embedding")[0]
            let layers = Self.indices(textKeys, under: "transformer.resblocks.").count
            config.numHiddenLayers = layers == 24 ? 23 : layers
            config.intermediateSize = try textShape("transformer.resblocks.0.mlp.c_fc.weight")[0]
            config.hiddenAct = .gelu
            config.projectionDim = 512
            // stable-diffusion-2's text_encoder/config.json.
            config.bosTokenId = 0
            config.eosTokenId = 2
            config.padTokenId = 1
        }
        config.numAttentionHeads = max(1, config.hiddenSize / 64)
        return config
    }

    // MARK: Loading

    /// Loads the UNet's parameters (checked as `loadModule` checks: every key, shape, dtype and value).
    public func load(_ unet: UNet2DConditionModel) throws {
        let l = try layersPerBlock(unet.config)
        let up = unet.config.upBlockTypes
        try load(unet, prefix: SingleFileKeys.unetPrefix, keys: unetKeys, ignoring: { _ in false }) { name in
            SingleFileKeys.unet(name, layersPerBlock: l, upBlockHasAttention: { up[$0].contains("CrossAttn") }).map { OriginalKey($0) }
        }
    }

    public func load(_ vae: AutoencoderKL) throws {
        let levels = vae.config.blockOutChannels.count
        try load(vae, prefix: SingleFileKeys.vaePrefix, keys: vaeKeys, ignoring: { _ in false }) { SingleFileKeys.vae($0, levels: levels) }
    }

    /// Loads the text model. Buffers (`position_ids`), OpenCLIP's projection and logit scale, and
    /// OpenCLIP blocks past the model's layers (SD 2 leaves the last one unused) are skipped.
    public func load(_ text: CLIPTextModel) throws {
        let family = self.family
        let layers = text.config.numHiddenLayers
        let legacyRoot = family == .sd1 && !textKeys.contains("text_model.embeddings.token_embedding.weight")
        try load(text, prefix: family == .sd1 ? SingleFileKeys.clipPrefix : SingleFileKeys.openCLIPPrefix, keys: textKeys,
                 ignoring: { key in
                     if key.hasSuffix("position_ids") || ["text_projection", "logit_scale", "attn_mask"].contains(key) { return true }
                     let block = "transformer.resblocks."
                     guard family == .sd2, key.hasPrefix(block), let i = Int(key.dropFirst(block.count).prefix { $0 != "." }) else { return false }
                     return i >= layers
                 }) { name in
            guard var key = SingleFileKeys.text(name, family: family) else { return nil }
            if legacyRoot { key.key = key.key.replacingOccurrences(of: SingleFileKeys.clipPrefix + "text_model.", with: SingleFileKeys.clipPrefix) }
            return key
        }
    }

    private func layersPerBlock(_ config: UNet2DConditionConfig) throws -> Int {
        switch config.layersPerBlock {
        case .one(let l): return l
        case .many(let list):
            guard let l = list.first, list.allSatisfy({ $0 == l }) else {
                throw PipelineError.incompatible("the original single-file layout has one layers_per_block for every level, not \(list)")
            }
            return l
        }
    }

    /// Every parameter of `module` from its original key; `keys` (without `prefix`) are the
    /// file's keys of this component, each of which must be used or `ignoring`.
    private func load(_ module: Module, prefix: String, keys: Set<String>, ignoring: (String) -> Bool,
                      original: (String) -> OriginalKey?) throws {
        var error = CheckpointError(file: url.path)
        var sources: [(tensor: Tensor, key: OriginalKey)] = []
        var used = Set<String>(), scanned = Set<String>()
        for (name, tensor) in module.namedParameters() {
            guard let key = original(name) else {
                error.unusable.append("\(name): the original layout has no key for this parameter")
                continue
            }
            guard keys.contains(String(key.key.dropFirst(prefix.count))) else { error.missing.append("\(key.key) (for \(name))"); continue }
            used.insert(key.key)
            let info = try archive.info(key.key)
            var expected = tensor.shape
            if let _ = key.third { expected[0] *= 3 }
            let fits = info.shape == expected || (key.storedAsConv && info.shape == expected + [1, 1])
            if !fits { error.mismatched.append("\(key.key) (for \(name)): checkpoint \(info.shape), model \(expected)") }
            if ![.f32, .f16, .bf16, .f64].contains(info.dtype) {
                error.unusable.append("\(key.key): dtype \(info.dtype) is not a float type")
            } else if !scanned.contains(key.key) {
                scanned.insert(key.key)
                if let reason = try archive.withRawBytes(key.key, { unusableWeightReason(in: $0, dtype: info.dtype) }) {
                    error.unusable.append("\(key.key): \(reason)")
                }
            }
            sources.append((tensor, key))
        }
        error.unexpected = keys.map { prefix + $0 }.filter { !used.contains($0) && !ignoring(String($0.dropFirst(prefix.count))) }.sorted()
        error.missing.sort()
        guard error.missing.isEmpty && error.unexpected.isEmpty && error.mismatched.isEmpty && error.unusable.isEmpty else { throw error }

        var cache: (key: String, values: [Float])? = nil
        for (tensor, key) in sources {
            if cache?.key != key.key { cache = (key.key, try archive.floats(key.key)) }
            let values = cache!.values
            let offset = (key.third ?? 0) * tensor.count
            precondition(offset + tensor.count <= values.count, "internal: \(key.key) is too small for its parameter")
            values.withUnsafeBufferPointer { tensor.pointer.update(from: $0.baseAddress! + offset, count: tensor.count) }
        }
    }
}

// MARK: Saving

public enum SingleFileWriter {
    /// The tensors of a Stable Diffusion model in the original single-file layout: the UNet under
    /// `model.diffusion_model.`, the VAE under `first_stage_model.` (mid-block attention weights
    /// as 1×1 convolutions), the text model under `cond_stage_model.transformer.text_model.` (SD
    /// 1.x) or as OpenCLIP under `cond_stage_model.model.` (SD 2.x, q/k/v fused into `in_proj`).
    public static func tensors(unet: UNet2DConditionModel, vae: AutoencoderKL, text: CLIPTextModel,
                               family: SingleFileFamily) throws -> [(key: String, shape: [Int], values: [Float])] {
        var out: [String: (shape: [Int], values: [Float])] = [:]
        func add(_ module: Module, _ original: (String) -> OriginalKey?) throws {
            for (name, tensor) in module.namedParameters() {
                guard let key = original(name) else { throw SavingError.mismatch("the original layout has no key for \(name)") }
                if let third = key.third {
                    var fused = out[key.key] ?? (shape: [tensor.shape[0] * 3] + tensor.shape.dropFirst(), values: Array(repeating: 0, count: 3 * tensor.count))
                    let values = tensor.scalars
                    fused.values.replaceSubrange(third * tensor.count..<(third + 1) * tensor.count, with: values)
                    out[key.key] = fused
                } else {
                    out[key.key] = (key.storedAsConv ? tensor.shape + [1, 1] : tensor.shape, tensor.scalars)
                }
            }
        }
        let l: Int
        switch unet.config.layersPerBlock {
        case .one(let value): l = value
        case .many(let list):
            guard let first = list.first, list.allSatisfy({ $0 == first }) else {
                throw SavingError.mismatch("the original single-file layout has one layers_per_block for every level, not \(list)")
            }
            l = first
        }
        let up = unet.config.upBlockTypes
        try add(unet) { SingleFileKeys.unet($0, layersPerBlock: l, upBlockHasAttention: { up[$0].contains("CrossAttn") }).map { OriginalKey($0) } }
        let levels = vae.config.blockOutChannels.count
        try add(vae) { SingleFileKeys.vae($0, levels: levels) }
        try add(text) { SingleFileKeys.text($0, family: family) }
        return out.keys.sorted().map { (key: $0, shape: out[$0]!.shape, values: out[$0]!.values) }
    }

    /// Writes the model as one `.safetensors` file in the original layout (atomically; `dtype`
    /// F32, F16 or BF16), readable by `SingleFileCheckpoint`, diffusers' `from_single_file` and the
    /// original repositories' loaders. The family is the text encoder's: SD 1.x for CLIP with
    /// quick GELU, SD 2.x for OpenCLIP (GELU).
    public static func write(unet: UNet2DConditionModel, vae: AutoencoderKL, text: CLIPTextModel, to url: URL,
                             dtype: DType = .f32, family: SingleFileFamily? = nil, metadata: [String: String] = [:]) throws {
        guard [.f32, .f16, .bf16].contains(dtype) else { throw SavingError.mismatch("weights are written as F32, F16 or BF16, not \(dtype)") }
        guard url.pathExtension == "safetensors" else {
            throw SavingError.mismatch("\(url.path): a single-file checkpoint is written as .safetensors")
        }
        let family = family ?? (text.config.hiddenAct == .quickGELU ? .sd1 : .sd2)
        let tensors = try tensors(unet: unet, vae: vae, text: text, family: family)
        var fields = metadata
        fields["format"] = "pt"
        try writeSafeTensors(tensors.map { TensorToWrite(name: $0.key, shape: $0.shape, data: .floats($0.values, storedAs: dtype)) },
                             metadata: fields, to: url)
    }
}
