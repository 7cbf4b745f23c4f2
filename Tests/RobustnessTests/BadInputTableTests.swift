import Diffusion
import Erasure
import Evaluation
import Foundation
import SafeTensors
import Tensor
import Testbed
import XCTest

/// A table of bad inputs to the library's loaders and writers: each row is an input and the
/// fragments its error must contain (the file, the key or tensor, and what is wrong). Every row
/// must throw; none may crash, hang or succeed.
final class BadInputTableTests: XCTestCase {
    struct Row {
        let name: String
        let expected: [String]
        let run: (Scratch) throws -> Void
    }

    /// A fresh folder per row, with helpers to lay out files in it.
    final class Scratch {
        let folder: URL
        init() throws {
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("score-bad-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(at: folder) }

        func url(_ path: String) -> URL { folder.appendingPathComponent(path) }

        @discardableResult
        func write(_ path: String, _ bytes: [UInt8]) throws -> URL {
            let url = url(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(bytes).write(to: url)
            return url
        }

        @discardableResult
        func write(_ path: String, _ text: String) throws -> URL { try write(path, Array(text.utf8)) }

        /// A fixture config with `overrides` (raw JSON text per key, written as is so that 3.5,
        /// 1e9 or 2⁶² reach the decoder exactly as a user would write them).
        @discardableResult
        func config(_ path: String, fixture: String, _ overrides: [String: String]) throws -> URL {
            let data = try Data(contentsOf: ParserFuzzTests.fixtures.appendingPathComponent(fixture))
            var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            for key in overrides.keys { object.removeValue(forKey: key) }
            var text = String(decoding: try JSONSerialization.data(withJSONObject: object, options: .sortedKeys), as: UTF8.self)
            text.removeLast()  // "}"
            for (key, raw) in overrides.sorted(by: { $0.key < $1.key }) { text += ", \"\(key)\": \(raw)" }
            return try write(path, text + "}")
        }

        /// A copy of a fixture folder.
        func copy(_ fixture: String, to path: String) throws -> URL {
            let target = url(path)
            try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: ParserFuzzTests.fixtures.appendingPathComponent(fixture), to: target)
            return target
        }

        /// Rewrites `file` with element 0 of `tensor` set to `value`, every float tensor stored as
        /// `dtype` (integer buffers such as `position_ids` are kept as they are).
        func poison(_ file: URL, tensor: String, value: Float, dtype: DType = .f32) throws {
            let source = try SafeTensorsFile(url: file)
            var tensors: [TensorToWrite] = []
            for name in source.names.sorted() {
                let info = try source.info(name)
                guard [.f32, .f16, .bf16, .f64].contains(info.dtype) else {
                    let raw = try source.withRawBytes(name) { [UInt8]($0) }
                    tensors.append(TensorToWrite(name: name, shape: info.shape, data: .raw(raw, dtype: info.dtype)))
                    continue
                }
                var values = try source.floats(name)
                if name == tensor { values[0] = value }
                tensors.append(TensorToWrite(name: name, shape: info.shape, data: .floats(values, storedAs: dtype)))
            }
            try FileManager.default.removeItem(at: file)
            try writeSafeTensors(tensors, to: file)
        }

        /// A safetensors file with `header` as its JSON header and `dataSize` zero bytes of data.
        @discardableResult
        func safetensors(_ header: String, dataSize: Int = 8, headerLength: UInt64? = nil) throws -> URL {
            var bytes: [UInt8] = []
            let json = Array(header.utf8)
            withUnsafeBytes(of: (headerLength ?? UInt64(json.count)).littleEndian) { bytes += $0 }
            return try write("weights.safetensors", bytes + json + [UInt8](repeating: 0, count: dataSize))
        }

        /// An erased-model folder whose erasure.json names `base`.
        @discardableResult
        func erased(_ path: String, base: String) throws -> URL {
            try write("\(path)/model_index.json", "{}")
            try write("\(path)/erasure.json", """
                {"base_model": "\(base)", "method": "uce", "concepts": ["cat"], "tensors_changed": 1, "parameters_changed": 1}
                """)
            return url(path)
        }
    }

    // MARK: Row builders

    static func unet(_ overrides: [String: String], _ expected: String...) -> Row {
        Row(name: "unet \(overrides)", expected: ["unet/config.json"] + expected) { s in
            let url = try s.config("unet/config.json", fixture: "unet_sd1/config.json", overrides)
            _ = try UNet2DConditionConfig(contentsOf: url)
        }
    }

    static func vae(_ overrides: [String: String], _ expected: String...) -> Row {
        Row(name: "vae \(overrides)", expected: ["vae/config.json"] + expected) { s in
            let url = try s.config("vae/config.json", fixture: "vae/config.json", overrides)
            _ = try AutoencoderKLConfig(contentsOf: url)
        }
    }

    static func flux(_ overrides: [String: String], _ expected: String...) -> Row {
        Row(name: "flux \(overrides)", expected: ["transformer/config.json"] + expected) { s in
            let url = try s.config("transformer/config.json", fixture: "flux/flux_plain/config.json", overrides)
            _ = try FluxTransformer2DConfig(contentsOf: url)
        }
    }

    static func clip(_ overrides: [String: String], _ expected: String...) -> Row {
        Row(name: "clip \(overrides)", expected: ["text_encoder/config.json"] + expected) { s in
            try s.config("text_encoder/config.json", fixture: "text/clip_sd1/text_encoder/config.json", overrides)
            _ = try CLIPTextModel.load(from: s.url("text_encoder"))
        }
    }

    static func bert(_ overrides: [String: String], _ expected: String...) -> Row {
        Row(name: "bert \(overrides)", expected: ["bert/config.json"] + expected) { s in
            try s.config("bert/config.json", fixture: "text/bert/config.json", overrides)
            _ = try BertModel.load(from: s.url("bert"))
        }
    }

    static func safetensors(_ name: String, _ header: String, dataSize: Int = 8, headerLength: UInt64? = nil,
                            _ expected: String...) -> Row {
        Row(name: "safetensors \(name)", expected: ["weights.safetensors"] + expected) { s in
            let url = try s.safetensors(header, dataSize: dataSize, headerLength: headerLength)
            try SafeTensorsArchive(url: url).validateAllShards()
        }
    }

    static func poisonedUNet(_ value: Float, dtype: DType = .f32, _ expected: String...) -> Row {
        Row(name: "unet weight \(value) as \(dtype)", expected: ["diffusion_pytorch_model.safetensors", "conv_in.weight"] + expected) { s in
            let folder = try s.copy("unet_sd1", to: "unet")
            try s.poison(folder.appendingPathComponent("diffusion_pytorch_model.safetensors"), tensor: "conv_in.weight",
                         value: value, dtype: dtype)
            _ = try UNet2DConditionModel(directory: folder)
        }
    }

    static func output(_ name: String, _ expected: String..., prepare: @escaping (Scratch) throws -> URL,
                       write: @escaping (URL) throws -> Void) -> Row {
        Row(name: "output onto \(name)", expected: expected) { s in try write(try prepare(s)) }
    }

    static func fifo(_ s: Scratch) throws -> URL {
        let url = s.url("out.fifo")
        guard mkfifo(url.path, 0o644) == 0 else { throw XCTSkip("mkfifo failed") }
        return url
    }

    static func symlink(_ s: Scratch) throws -> URL {
        let target = try s.write("target.txt", "keep me")
        let link = s.url("link.out")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: target)
        return link
    }

    static func scoreConfig(_ name: String, _ text: String, _ expected: String...) -> Row {
        Row(name: "SCORE config \(name)", expected: ["c.json"] + expected) { s in
            _ = try SCOREConfig.load(try s.write("c.json", text))
        }
    }

    static func idx(_ name: String, _ bytes: [UInt8], _ expected: String...) -> Row {
        Row(name: "idx \(name)", expected: ["train-images-idx3-ubyte"] + expected) { s in
            _ = try IDXArray(contentsOf: try s.write("train-images-idx3-ubyte", bytes))
        }
    }

    // MARK: The table

    static let rows: [Row] = allRows()

    static func allRows() -> [Row] {
        let pngBytes = [UInt8](PNG.encode(PixelImage(width: 2, height: 2, channels: 3, pixels: Array(repeating: 9, count: 12))))
        var rows: [Row] = []
        rows += [Row](arrayLiteral:
            // UNet config.json: ranges, types, overflow, consistency, memory.
            unet(["norm_num_groups": "0"], "norm_num_groups", "holds 0"),
            unet(["norm_num_groups": "-8"], "norm_num_groups", "-8"),
            unet(["norm_num_groups": "null"], "norm_num_groups", "not supported"),
            unet(["norm_num_groups": "3"], "block_out_channels", "not divisible by norm_num_groups 3"),
            unet(["norm_num_groups": "3.5"], "norm_num_groups", "must be an integer", "3.5"),
            unet(["norm_num_groups": "\"8\""], "norm_num_groups", "must be an integer", "\"8\""),
            unet(["norm_num_groups": "true"], "norm_num_groups", "must be an integer"),
            unet(["block_out_channels": "[-16, 32]"], "block_out_channels", "-16"),
            unet(["block_out_channels": "[0, 32]"], "block_out_channels", "holds 0"),
            unet(["block_out_channels": "[]"], "block_out_channels", "is empty"),
            unet(["block_out_channels": "[16, 4611686018427387904]"], "block_out_channels", "4611686018427387904"),
            unet(["block_out_channels": "[16, 9223372036854775807]"], "block_out_channels", "9223372036854775807"),
            unet(["block_out_channels": "[16, 1e12]"], "block_out_channels"),
            unet(["block_out_channels": "[16, 32.5]"], "block_out_channels", "must be a list of integers"),
            unet(["block_out_channels": "[16, 32, 64]"], "down_block_types", "for 3 blocks"),
            unet(["block_out_channels": "16"], "block_out_channels", "must be a list of integers"),
            unet(["layers_per_block": "-1"], "layers_per_block", "-1"),
            unet(["layers_per_block": "0"], "layers_per_block", "holds 0"),
            unet(["layers_per_block": "1e9"], "layers_per_block"),
            unet(["layers_per_block": "4611686018427387904"], "layers_per_block", "4611686018427387904"),
            unet(["layers_per_block": "[1]"], "layers_per_block", "1 entries for 2 blocks"),
            unet(["layers_per_block": "3.5"], "layers_per_block", "must be an integer or a list of integers", "3.5"),
            unet(["layers_per_block": "1000", "block_out_channels": "[1280, 1280]", "norm_num_groups": "32",
                  "attention_head_dim": "8", "cross_attention_dim": "768"], "UNet", "GB", "of memory available"),
            unet(["block_out_channels": "[1048576, 1048576]"], "UNet", "of memory available"),
            unet(["transformer_layers_per_block": "-1"], "transformer_layers_per_block", "-1"),
            unet(["transformer_layers_per_block": "4611686018427387904"], "transformer_layers_per_block"),
            unet(["transformer_layers_per_block": "[[1, 1], [1]]"], "transformer_layers_per_block", "2 entries for 1 layers"),
            unet(["transformer_layers_per_block": "[1, 1, 1]"], "transformer_layers_per_block", "3 entries for 2 blocks"),
            unet(["transformer_layers_per_block": "\"one\""], "transformer_layers_per_block", "must be"),
            unet(["reverse_transformer_layers_per_block": "[[1]]"], "reverse_transformer_layers_per_block"),
            unet(["reverse_transformer_layers_per_block": "[[-1, 1], [1, 1]]"], "reverse_transformer_layers_per_block", "-1"),
            unet(["conv_in_kernel": "-3"], "conv_in_kernel", "-3"),
            unet(["conv_in_kernel": "0"], "conv_in_kernel", "holds 0"),
            unet(["conv_in_kernel": "4"], "conv_in_kernel = 4 is not supported"),
            unet(["conv_in_kernel": "1000001"], "conv_in_kernel", "1000001"),
            unet(["conv_out_kernel": "-1"], "conv_out_kernel", "-1"),
            unet(["attention_head_dim": "0"], "attention_head_dim", "holds 0"),
            unet(["attention_head_dim": "3"], "attention_head_dim", "do not divide"),
            unet(["attention_head_dim": "[2, 2, 2]"], "attention_head_dim", "3 entries for 2 blocks"),
            unet(["attention_head_dim": "-2"], "attention_head_dim", "-2"),
            unet(["num_attention_heads": "-2"], "num_attention_heads", "-2"),
            unet(["num_attention_heads": "5"], "num_attention_heads", "do not divide"),
            unet(["cross_attention_dim": "0"], "cross_attention_dim", "holds 0"),
            unet(["cross_attention_dim": "9223372036854775807"], "cross_attention_dim"),
            unet(["cross_attention_dim": "[24]"], "cross_attention_dim", "1 entries for 2 blocks"),
            unet(["in_channels": "-4"], "in_channels", "-4"),
            unet(["in_channels": "4.0e100"], "in_channels"),
            unet(["out_channels": "0"], "out_channels", "holds 0"),
            unet(["norm_eps": "-1"], "norm_eps", "must be finite and > 0"),
            unet(["norm_eps": "0"], "norm_eps", "must be finite and > 0"),
            unet(["norm_eps": "\"small\""], "norm_eps", "must be a number"),
            unet(["norm_eps": "1e400"], "norm_eps"),
            unet(["resnet_out_scale_factor": "0"], "resnet_out_scale_factor", "> 0"),
            unet(["mid_block_scale_factor": "-1"], "mid_block_scale_factor", "> 0"),
            unet(["dropout": "1.5"], "dropout", "[0, 1)"),
            unet(["freq_shift": "1e39"], "freq_shift"),
            unet(["downsample_padding": "-1"], "downsample_padding", "-1"),
            unet(["sample_size": "0"], "sample_size", "holds 0"),
            unet(["sample_size": "[-64, 64]"], "sample_size", "-64"),
            unet(["time_embedding_dim": "0"], "time_embedding_dim", "holds 0"),
            unet(["down_block_types": "[\"CrossAttnDownBlock2D\"]"], "down_block_types", "1 entries for 2 blocks"),
            unet(["down_block_types": "5"], "down_block_types", "must be a list of strings"),
            unet(["up_block_types": "[\"Foo\", \"CrossAttnUpBlock2D\"]"], "up_block_types = Foo is not supported"),
            unet(["mid_block_type": "\"Bar\""], "mid_block_type = Bar is not supported"),
            unet(["only_cross_attention": "[true]"], "only_cross_attention", "1 entries for 2 blocks"),
            unet(["only_cross_attention": "3"], "only_cross_attention", "must be true or false"),
            unet(["upcast_attention": "\"yes\""], "upcast_attention", "must be true or false"),
            unet(["act_fn": "\"gelu\""], "act_fn = gelu is not supported"),
            unet(["class_embed_type": "\"timestep\""], "class_embed_type = timestep is not supported"),
            Row(name: "unet config is a list", expected: ["unet/config.json", "must be a JSON object"]) { s in
                _ = try UNet2DConditionConfig(contentsOf: try s.write("unet/config.json", "[1, 2]"))
            },
            Row(name: "unet config cut short", expected: ["unet/config.json", "not valid JSON"]) { s in
                _ = try UNet2DConditionConfig(contentsOf: try s.write("unet/config.json", "{\"in_channels\": 4,"))
            },
            Row(name: "unet config empty", expected: ["unet/config.json", "not valid JSON"]) { s in
                _ = try UNet2DConditionConfig(contentsOf: try s.write("unet/config.json", ""))
            },
            Row(name: "unet config missing", expected: ["no-such-folder/config.json", "cannot read config"]) { s in
                _ = try UNet2DConditionConfig(contentsOf: s.url("no-such-folder/config.json"))
            }
        )
        rows += [Row](arrayLiteral:
            // VAE config.json.
            vae(["norm_num_groups": "0"], "norm_num_groups", "holds 0"),
            vae(["norm_num_groups": "3"], "not divisible by norm_num_groups 3"),
            vae(["layers_per_block": "-1"], "layers_per_block", "-1"),
            vae(["layers_per_block": "2.5"], "layers_per_block", "must be an integer", "2.5"),
            vae(["block_out_channels": "[8, -16]"], "block_out_channels", "-16"),
            vae(["block_out_channels": "[1048576, 1048576]", "norm_num_groups": "4"], "VAE", "of memory available"),
            vae(["latent_channels": "0"], "latent_channels", "holds 0"),
            vae(["scaling_factor": "0"], "scaling_factor", "> 0"),
            vae(["scaling_factor": "-0.18215"], "scaling_factor", "> 0"),
            vae(["in_channels": "4611686018427387904"], "in_channels", "4611686018427387904"),
            vae(["down_block_types": "[\"AttnDownEncoderBlock2D\", \"DownEncoderBlock2D\"]"], "down_block_types = AttnDownEncoderBlock2D is not supported"),
            vae(["latents_std": "[0, 1, 1, 1]"], "latents_std", "> 0"),
            vae(["sample_size": "\"big\""], "sample_size", "must be an integer or a list of integers")
        )
        rows += [Row](arrayLiteral:
            // FLUX transformer config.json.
            flux(["num_layers": "-1"], "num_layers", "-1"),
            flux(["num_attention_heads": "0"], "num_attention_heads", "holds 0"),
            flux(["patch_size": "3.5"], "patch_size", "must be an integer", "3.5"),
            flux(["axes_dims_rope": "[2, 2, 3]"], "axes_dims_rope", "positive and even"),
            flux(["joint_attention_dim": "4611686018427387904"], "joint_attention_dim", "4611686018427387904"),

            // CLIP text encoder config.json.
            clip(["hidden_size": "0"], "hidden_size", "holds 0"),
            clip(["hidden_size": "30"], "hidden_size", "not a multiple of num_attention_heads 4"),
            clip(["num_attention_heads": "0"], "num_attention_heads", "holds 0"),
            clip(["num_attention_heads": "-4"], "num_attention_heads", "-4"),
            clip(["num_hidden_layers": "-1"], "num_hidden_layers", "-1"),
            clip(["vocab_size": "4611686018427387904"], "vocab_size", "4611686018427387904"),
            clip(["layer_norm_eps": "-1"], "layer_norm_eps", "> 0"),
            clip(["hidden_act": "\"tanh\""], "hidden_act", "must be one of"),
            clip(["max_position_embeddings": "0"], "max_position_embeddings", "holds 0"),
            clip(["intermediate_size": "3.5"], "intermediate_size", "must be an integer", "3.5"),
            clip(["text_config": "{\"hidden_size\": -1}"], "hidden_size", "-1"),
            clip(["eos_token_id": "-5"], "eos_token_id", "-5"),
            clip(["num_hidden_layers": "1000", "hidden_size": "1048576", "intermediate_size": "1048576"],
                 "CLIP text encoder", "of memory available")
        )
        rows += [Row](arrayLiteral:
            // BERT config.json.
            bert(["hidden_size": "0"], "hidden_size", "holds 0"),
            bert(["num_attention_heads": "5"], "hidden_size", "not a multiple of num_attention_heads 5"),
            bert(["num_hidden_layers": "-2"], "num_hidden_layers", "-2"),
            bert(["vocab_size": "0"], "vocab_size", "holds 0"),
            bert(["type_vocab_size": "-1"], "type_vocab_size", "-1"),
            bert(["layer_norm_eps": "-1e-12"], "layer_norm_eps", "> 0"),
            bert(["position_embedding_type": "\"relative_key\""], "position_embedding_type", "only \"absolute\""),
            bert(["hidden_act": "\"mish\""], "hidden_act", "must be one of"),
            bert(["intermediate_size": "\"x\""], "intermediate_size", "must be an integer"),
            bert(["max_position_embeddings": "1e12"], "max_position_embeddings")
        )
        rows += [Row](arrayLiteral:
            // safetensors files.
            Row(name: "safetensors empty", expected: ["weights.safetensors", "truncated"]) { s in
                _ = try SafeTensorsArchive(url: try s.write("weights.safetensors", [UInt8]()))
            },
            safetensors("header past the end", "{}", headerLength: 1 << 20, "runs past the end"),
            safetensors("header length 2^63", "{}", headerLength: 1 << 63, "header length"),
            safetensors("header not JSON", "{\"a\": ", "not valid JSON"),
            safetensors("header a list", "[1, 2]", "not a JSON object"),
            safetensors("unknown dtype", #"{"w": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}}"#, "'w'", "unknown dtype"),
            safetensors("negative shape", #"{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#, "'w'", "invalid shape"),
            safetensors("shape overflow", #"{"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}}"#, "'w'", "invalid shape"),
            safetensors("offsets past data", #"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#, "'w'", "outside"),
            safetensors("offsets reversed", #"{"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}"#, "'w'", "begin 8 > end 0"),
            safetensors("size mismatch", #"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}"#, "'w'", "need 4 bytes"),
            safetensors("overlap", #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#, "overlaps"),
            safetensors("duplicate key", #"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, "duplicate key 'w'"),
            safetensors("missing dtype", #"{"w": {"shape": [2], "data_offsets": [0, 8]}}"#, "'w'", "dtype")
        )
        rows += [Row](arrayLiteral:
            // Weights that would make every output NaN.
            poisonedUNet(.nan, "holds nan"),
            poisonedUNet(.infinity, "holds inf"),
            poisonedUNet(-.infinity, "holds -inf"),
            poisonedUNet(1e30, "holds 1e+30"),
            poisonedUNet(-1e20, "holds -1e+20"),
            poisonedUNet(.infinity, dtype: .f16, "holds inf"),
            poisonedUNet(.nan, dtype: .bf16, "holds nan"),
            Row(name: "erased weights with NaN", expected: ["erased_weights.safetensors", "conv_in.weight", "holds nan"]) { s in
                let folder = try s.copy("unet_sd1", to: "unet")
                let unet = try UNet2DConditionModel(directory: folder)
                let bad: [Float] = [.nan] + Array(repeating: 0, count: unet.conv_in.weight.count - 1)
                try writeSafeTensors([(name: "conv_in.weight", shape: unet.conv_in.weight.shape, values: bad)],
                                     to: s.url("erased_weights.safetensors"))
                try loadChangedWeights(into: unet, from: s.url("erased_weights.safetensors"))
            },
            Row(name: "VAE weight inf", expected: ["vae/diffusion_pytorch_model.safetensors", "holds inf"]) { s in
                let folder = try s.copy("vae", to: "vae")
                let file = folder.appendingPathComponent("diffusion_pytorch_model.safetensors")
                try s.poison(file, tensor: try SafeTensorsFile(url: file).names.sorted()[0], value: .infinity)
                _ = try AutoencoderKL(directory: folder)
            },
            Row(name: "CLIP weight NaN", expected: ["text_encoder/model.safetensors", "holds nan"]) { s in
                let folder = try s.copy("text/clip_sd1/text_encoder", to: "text_encoder")
                let file = folder.appendingPathComponent("model.safetensors")
                try s.poison(file, tensor: "text_model.final_layer_norm.weight", value: .nan)
                _ = try CLIPTextModel.load(from: folder)
            },
            Row(name: "BERT weight 1e25", expected: ["bert/model.safetensors", "holds 1e+25"]) { s in
                let folder = try s.copy("text/bert", to: "bert")
                let file = folder.appendingPathComponent("model.safetensors")
                try s.poison(file, tensor: "embeddings.LayerNorm.weight", value: 1e25)
                _ = try BertModel.load(from: folder)
            }
        )
        rows += [Row](arrayLiteral:
            // erasure.json.
            Row(name: "erasure.json names its own folder", expected: ["self/erasure.json", "leads back to this folder"]) { s in
                _ = try ModelLoader.load(try s.erased("self", base: ".").path)
            },
            Row(name: "erasure.json names its own absolute path", expected: ["self/erasure.json", "leads back"]) { s in
                _ = try ModelLoader.load(try s.erased("self", base: s.url("self").path).path)
            },
            Row(name: "two erasure.json files naming each other", expected: ["erasure.json", "leads back", "/a", "/b"]) { s in
                try s.erased("a", base: "../b")
                try s.erased("b", base: "../a")
                _ = try ModelLoader.load(s.url("a").path)
            },
            Row(name: "erasure.json chain deeper than 8", expected: ["erasure.json", "more than 8 erased folders"]) { s in
                for i in 0..<12 { try s.erased("m\(i)", base: "../m\(i + 1)") }
                _ = try ModelLoader.load(s.url("m0").path)
            },
            Row(name: "erasure.json without base_model", expected: ["e/erasure.json", "base_model: missing"]) { s in
                try s.write("e/model_index.json", "{}")
                try s.write("e/erasure.json", #"{"method": "uce", "concepts": [], "tensors_changed": 0, "parameters_changed": 0}"#)
                _ = try ModelLoader.load(s.url("e").path)
            },
            Row(name: "erasure.json base_model a number", expected: ["e/erasure.json", "base_model: expected a string"]) { s in
                try s.write("e/model_index.json", "{}")
                try s.write("e/erasure.json", #"{"base_model": 5, "method": "uce", "concepts": [], "tensors_changed": 0, "parameters_changed": 0}"#)
                _ = try ModelLoader.load(s.url("e").path)
            },
            Row(name: "erasure.json not JSON", expected: ["e/erasure.json", "not an erasure manifest"]) { s in
                try s.write("e/model_index.json", "{}")
                try s.write("e/erasure.json", "{base_model")
                _ = try ModelLoader.load(s.url("e").path)
            },
            Row(name: "erasure.json base missing", expected: ["gone/model_index.json", "not found"]) { s in
                _ = try ModelLoader.load(try s.erased("e", base: "../gone").path)
            }
        )
        rows += [Row](arrayLiteral:
            // SCORE's --config file: valid JSON of the wrong type names the key and the type it needs.
            scoreConfig("steps a fraction", #"{"steps": 2.5}"#, "key 'steps' must be a whole number, not 2.5"),
            scoreConfig("steps a string", #"{"steps": "10"}"#, "key 'steps' must be a whole number, not \"10\""),
            scoreConfig("steps too large", #"{"steps": 1e30}"#, "key 'steps' must be a whole number"),
            scoreConfig("eta a boolean", #"{"eta": true}"#, "key 'eta' must be a number, not true"),
            scoreConfig("learningRate null", #"{"learningRate": null}"#, "key 'learningRate' must be a number, not null"),
            scoreConfig("optimizer a number", #"{"optimizer": 1}"#, "key 'optimizer' must be a string, not 1"),
            scoreConfig("saliencyIntersect a string", #"{"saliencyIntersect": "yes"}"#, "key 'saliencyIntersect' must be true or false"),
            scoreConfig("adversarialForm unknown", #"{"adversarialForm": "loud"}"#, "key 'adversarialForm' must be one of", "confusion", "\"loud\""),
            scoreConfig("an unknown key", #"{"lamda_adv": 1}"#, "unknown key 'lamda_adv'"),
            scoreConfig("a list", "[1]", "not a JSON object"),
            scoreConfig("cut short", #"{"steps": "#, "not a JSON object"),
            Row(name: "SCORE config missing", expected: ["gone/c.json", "cannot be read (no such file or folder)"]) { s in
                _ = try SCOREConfig.load(s.url("gone/c.json"))
            }
        )
        rows += [Row](arrayLiteral:
            // Outputs that must not be replaced.
            output("a FIFO", "out.fifo", "a FIFO", prepare: fifo) { try SafeTensors.writeAtomically(Data("x".utf8), to: $0) },
            output("a symlink", "link.out", "a symbolic link", prepare: symlink) { try SafeTensors.writeAtomically(Data("x".utf8), to: $0) },
            output("a character device", "/dev/null", "a character device", prepare: { _ in URL(fileURLWithPath: "/dev/null") }) {
                try SafeTensors.writeAtomically(Data("x".utf8), to: $0)
            },
            output("a directory", "folder", "a directory", prepare: { s in
                try FileManager.default.createDirectory(at: s.url("folder"), withIntermediateDirectories: true)
                return s.url("folder")
            }) { try SafeTensors.writeAtomically(Data("x".utf8), to: $0) },
            output("a FIFO, by the safetensors writer", "out.fifo", "a FIFO", prepare: fifo) {
                try writeSafeTensors([(name: "w", shape: [1], values: [Float(1)])], to: $0)
            },
            output("a symlink, by the PNG writer", "link.out", "a symbolic link", prepare: symlink) {
                try PNG.write(PixelImage(width: 1, height: 1, channels: 1, pixels: [0]), to: $0)
            },
            output("a FIFO where a model folder goes", "out.fifo", "a FIFO", prepare: fifo) { try checkReplaceable($0, directory: true) }
        )
        rows += [Row](arrayLiteral:
            // IDX (Fashion-MNIST).
            idx("bad magic", [0, 0, 9, 3, 0, 0, 0, 1], "magic"),
            idx("short header", [0, 0, 8, 3, 0, 0], "truncated"),
            idx("short data", [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2], "truncated"),
            idx("overflowing dimensions", [0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "more than 4 GB")
        )
        rows += [Row](arrayLiteral:
            // PNG (libpng).
            Row(name: "png not a PNG", expected: ["x.png", "libpng"]) { _ in _ = try decodePNG(Data("GIF89a".utf8), file: "x.png") },
            Row(name: "png truncated", expected: ["x.png", "libpng"]) { _ in _ = try decodePNG(Data(pngBytes.prefix(30)), file: "x.png") },
            Row(name: "png corrupt header", expected: ["x.png", "libpng"]) { _ in
                var bytes = pngBytes
                bytes[20] ^= 0xff
                _ = try decodePNG(Data(bytes), file: "x.png")
            }
        )
        rows += [Row](arrayLiteral:
            // Tokenizer files.
            Row(name: "vocab.json not JSON", expected: ["vocab.json"]) { s in
                _ = try CLIPTokenizer(vocabularyURL: try s.write("t/vocab.json", "{\"a\": "),
                                      mergesURL: try s.write("t/merges.txt", "#version: 0.2\n"))
            },
            Row(name: "vocab.json a list", expected: ["vocab.json"]) { s in
                _ = try CLIPTokenizer(vocabularyURL: try s.write("t/vocab.json", "[1, 2]"),
                                      mergesURL: try s.write("t/merges.txt", "#version: 0.2\n"))
            },
            Row(name: "vocab.txt missing", expected: ["vocab.txt"]) { s in
                _ = try WordPieceTokenizer(vocabularyURL: s.url("w/vocab.txt"))
            }
        )
        rows += [Row](arrayLiteral:
            // scheduler_config.json: bytes that are not UTF-8 once made Foundation's JSON5 reader trap.
            Row(name: "scheduler config not UTF-8", expected: ["scheduler_config.json", "not UTF-8"]) { _ in
                _ = try SchedulerConfig(json: Data([0x7b, 0x0a, 0x20, 0xfe, 0x5b, 0x5b, 0x22, 0x61, 0x22]), source: "scheduler_config.json")
            },

            // model_index.json.
            Row(name: "model_index.json not JSON", expected: ["model_index.json", "not valid JSON"]) { s in
                try s.write("p/model_index.json", "{")
                _ = try PipelineIndex(directory: s.url("p"))
            },
            Row(name: "model_index.json a list", expected: ["model_index.json", "expected a JSON object"]) { s in
                try s.write("p/model_index.json", "[]")
                _ = try PipelineIndex(directory: s.url("p"))
            },
            Row(name: "model_index.json bad component", expected: ["model_index.json", "\"unet\"", "[library, class]"]) { s in
                try s.write("p/model_index.json", #"{"unet": ["diffusers", 5]}"#)
                _ = try PipelineIndex(directory: s.url("p"))
            }
        )
        rows.sort { $0.name < $1.name }
        return rows
    }

    func testEveryBadInputFailsWithANamedError() throws {
        XCTAssertGreaterThanOrEqual(Self.rows.count, 100)
        var failures: [String] = []
        for row in Self.rows {
            let scratch = try Scratch()
            do {
                try row.run(scratch)
                failures.append("\(row.name): no error")
            } catch let skip as XCTSkip {
                print("skipped \(row.name): \(skip)")
            } catch {
                let message = "\(error)"
                let missing = row.expected.filter { !message.contains($0) }
                if !missing.isEmpty { failures.append("\(row.name): \(missing) not in: \(message)") }
            }
        }
        XCTAssertTrue(failures.isEmpty, "\(failures.count) of \(Self.rows.count) rows:\n" + failures.joined(separator: "\n"))
        print("bad inputs: \(Self.rows.count) rows, \(Self.rows.count - failures.count) with the expected error")
    }
}
