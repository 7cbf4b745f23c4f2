import Foundation

// The key layout of Stable Diffusion's original single-file checkpoints (CompVis/Stability
// `LatentDiffusion` state dicts, as `v1-5-pruned-emaonly.safetensors` and
// `v2-1_768-ema-pruned.safetensors` ship), written as the map from each diffusers parameter name
// to its original key. diffusers converts the other way (`convert_ldm_unet_checkpoint`,
// `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint` in
// `loaders/single_file_utils.py`); its `scripts/convert_diffusers_to_original_stable_diffusion.py`
// goes this way. One direction serves both loading (look each parameter's key up) and saving.
//
//     model.diffusion_model.*          the UNet: input_blocks / middle_block / output_blocks
//     first_stage_model.*              the VAE: encoder.down.i.block.j, mid.attn_1 (1×1 convs), …
//     cond_stage_model.transformer.*   SD 1.x: a transformers CLIPTextModel (text_model.…)
//     cond_stage_model.model.*         SD 2.x: OpenCLIP (transformer.resblocks.i, fused in_proj)

/// Where a diffusers parameter lives in an original single-file checkpoint.
public struct OriginalKey: Equatable, Sendable {
    /// The checkpoint key.
    public var key: String
    /// For OpenCLIP's fused `in_proj_weight` / `in_proj_bias` [3·d, …]: which third (0 q, 1 k, 2 v)
    /// the parameter is; nil when the tensor is the whole parameter.
    public var third: Int?
    /// The original stores this linear weight [O, I] as a 1×1 convolution [O, I, 1, 1] (the VAE's
    /// mid-block attention); either shape is read.
    public var storedAsConv = false

    public init(_ key: String, third: Int? = nil, storedAsConv: Bool = false) {
        self.key = key
        self.third = third
        self.storedAsConv = storedAsConv
    }
}

/// The two text-encoder layouts of SD 1.x/2.x single files.
public enum SingleFileFamily: String, Sendable, CaseIterable {
    /// SD 1.x: CLIP ViT-L/14 under `cond_stage_model.transformer.`.
    case sd1 = "v1"
    /// SD 2.x: OpenCLIP ViT-H/14 under `cond_stage_model.model.`.
    case sd2 = "v2"
}

public enum SingleFileKeys {
    public static let unetPrefix = "model.diffusion_model."
    public static let vaePrefix = "first_stage_model."
    public static let clipPrefix = "cond_stage_model.transformer."
    public static let openCLIPPrefix = "cond_stage_model.model."

    /// The original key of UNet parameter `name` (diffusers naming) for a UNet with
    /// `layersPerBlock` resnets per down block, whose up block `b` has attentions when
    /// `upBlockHasAttention(b)`. The original numbers every block of a level in one list:
    /// `input_blocks.0` is conv_in, then per level `layersPerBlock` (resnet, attention) pairs and a
    /// downsampler; `output_blocks` has `layersPerBlock + 1` per level, the last with the upsampler.
    public static func unet(_ name: String, layersPerBlock l: Int, upBlockHasAttention: (Int) -> Bool) -> String? {
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        func rest(_ from: Int) -> String { parts[from...].joined(separator: ".") }
        func resnet(_ from: Int) -> String {
            let renames = ["norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"]
            if let renamed = renames[parts[from]] { parts[from] = renamed }
            return rest(from)
        }
        let key: String
        switch parts.first {
        case "conv_in": key = "input_blocks.0.0." + rest(1)
        case "time_embedding":
            guard parts.count > 2, let index = ["linear_1": 0, "linear_2": 2][parts[1]] else { return nil }
            key = "time_embed.\(index)." + rest(2)
        case "conv_norm_out": key = "out.0." + rest(1)
        case "conv_out": key = "out.2." + rest(1)
        case "down_blocks", "up_blocks":
            guard parts.count > 4, let b = Int(parts[1]), let j = Int(parts[3]) else { return nil }
            let down = parts[0] == "down_blocks"
            let base = down ? 1 + b * (l + 1) : b * (l + 1)
            switch parts[2] {
            case "resnets": key = "\(down ? "input" : "output")_blocks.\(base + j).0." + resnet(4)
            case "attentions": key = "\(down ? "input" : "output")_blocks.\(base + j).1." + rest(4)
            case "downsamplers" where down && parts[4] == "conv": key = "input_blocks.\(base + l).0.op." + rest(5)
            case "upsamplers" where !down && parts[4] == "conv":
                key = "output_blocks.\(base + l).\(upBlockHasAttention(b) ? 2 : 1).conv." + rest(5)
            default: return nil
            }
        case "mid_block":
            guard parts.count > 3, let j = Int(parts[2]) else { return nil }
            switch parts[1] {
            case "resnets": key = "middle_block.\(j == 0 ? 0 : 2)." + resnet(3)
            case "attentions": key = "middle_block.1." + rest(3)
            default: return nil
            }
        default: return nil
        }
        return unetPrefix + key
    }

    /// The original key of VAE parameter `name` for a VAE with `levels` resolution levels. The
    /// decoder's levels are numbered from the lowest resolution in diffusers (`up_blocks.0`) and
    /// from the highest in the original (`up.0`).
    public static func vae(_ name: String, levels: Int) -> OriginalKey? {
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 2 else { return nil }
        func rest(_ from: Int) -> String { parts[from...].joined(separator: ".") }
        if parts[0] == "quant_conv" || parts[0] == "post_quant_conv" { return OriginalKey(vaePrefix + name) }
        guard parts[0] == "encoder" || parts[0] == "decoder" else { return nil }
        let side = parts[0]
        var storedAsConv = false
        let key: String
        switch parts[1] {
        case "conv_in", "conv_out": key = rest(1)
        case "conv_norm_out": key = "norm_out." + rest(2)
        case "down_blocks", "up_blocks":
            guard parts.count > 5, let i = Int(parts[2]) else { return nil }
            let level = parts[1] == "down_blocks" ? "down.\(i)" : "up.\(levels - 1 - i)"
            switch parts[3] {
            case "resnets":
                guard let j = Int(parts[4]) else { return nil }
                if parts[5] == "conv_shortcut" { parts[5] = "nin_shortcut" }
                key = "\(level).block.\(j)." + rest(5)
            case "downsamplers" where parts[5] == "conv": key = "\(level).downsample.conv." + rest(6)
            case "upsamplers" where parts[5] == "conv": key = "\(level).upsample.conv." + rest(6)
            default: return nil
            }
        case "mid_block":
            guard parts.count > 4, let j = Int(parts[3]) else { return nil }
            switch parts[2] {
            case "resnets": key = "mid.block_\(j + 1)." + rest(4)
            case "attentions":
                let renames = ["group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"]
                guard let renamed = renames[parts[4]] else { return nil }
                var tail = rest(5)
                if parts[4] == "to_out" {
                    guard parts.count > 6, parts[5] == "0" else { return nil }
                    tail = rest(6)
                }
                storedAsConv = renamed != "norm" && tail == "weight"
                key = "mid.attn_1.\(renamed)." + tail
            default: return nil
            }
        default: return nil
        }
        return OriginalKey(vaePrefix + side + "." + key, storedAsConv: storedAsConv)
    }

    /// The original key of CLIP text-model parameter `name` (transformers naming, without
    /// `text_model.`) in `family`'s layout.
    public static func text(_ name: String, family: SingleFileFamily) -> OriginalKey? {
        switch family {
        case .sd1: return OriginalKey(clipPrefix + "text_model." + name)
        case .sd2: return openCLIP(name)
        }
    }

    /// OpenCLIP's names: `transformer.resblocks.i.{ln_1, ln_2, attn, mlp.c_fc, mlp.c_proj}`, the
    /// attention's q, k and v stacked in one `in_proj_weight` [3·d, d] (and `in_proj_bias`).
    static func openCLIP(_ name: String) -> OriginalKey? {
        let fixed = ["embeddings.token_embedding.weight": "token_embedding.weight",
                     "embeddings.position_embedding.weight": "positional_embedding",
                     "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"]
        if let key = fixed[name] { return OriginalKey(openCLIPPrefix + key) }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 5, parts[0] == "encoder", parts[1] == "layers", let i = Int(parts[2]) else { return nil }
        let block = openCLIPPrefix + "transformer.resblocks.\(i)."
        let tail = parts[3...].joined(separator: ".")
        let renames = ["layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
                       "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
                       "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
                       "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
                       "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias"]
        if let key = renames[tail] { return OriginalKey(block + key) }
        let thirds = ["q_proj": 0, "k_proj": 1, "v_proj": 2]
        guard parts.count == 6, parts[3] == "self_attn", let third = thirds[parts[4]] else { return nil }
        return OriginalKey(block + "attn.in_proj_\(parts[5])", third: third)
    }
}
