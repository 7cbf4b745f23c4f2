import Foundation
import NN
import SafeTensors
import Tensor

// LoRA files as the ecosystem writes them, read, written and merged into a model's weights.
//
// A LoRA changes a weight W [out, in…] by (alpha / r)·B·A, with A = "down" [r, in…] and
// B = "up" [out, r, 1…] (a convolution's A has the kernel, its B is 1 × 1: kohya's LoCon and
// PEFT's Conv2d LoRA alike). Two key layouts:
//
// - diffusers / PEFT (`pipe.load_lora_weights`, `save_lora_weights`): `unet.<module>.lora_A.weight`
//   and `unet.<module>.lora_B.weight` (`text_encoder.text_model.<module>…` for CLIP), the adapter
//   config (rank, alpha, per-module patterns) as JSON in the `lora_adapter_metadata` entry of the
//   file's metadata. Older diffusers files (attention processors) spell the same factors
//   `<attention>.processor.to_q_lora.down.weight` / `.up.weight`; those are read too.
// - kohya (sd-scripts, A1111, ComfyUI): `lora_unet_<module path with _>.lora_down.weight`,
//   `.lora_up.weight` and a scalar `.alpha` (`lora_te_text_model_…` for CLIP). The underscores
//   make the module path ambiguous on its own, so a kohya key is resolved against the modules of
//   the model it is loaded into.
//
// Without an alpha, alpha = r (a scale of 1), as PEFT and kohya both default.

/// Why a LoRA file cannot be written, read or merged. Each case names the file, key or module.
public enum LoRAError: Error, CustomStringConvertible, Equatable {
    /// Factors that do not fit each other or the model (shape, rank, unknown module).
    case invalid(String)
    /// A file whose key cannot be used, with why.
    case invalidKey(URL, key: String, reason: String)
    /// A file that cannot be used as a whole.
    case invalidFile(URL, reason: String)

    public var description: String {
        switch self {
        case let .invalid(reason): return "LoRA: \(reason)"
        case let .invalidKey(url, key, reason): return "\(url.path): \(key): \(reason)"
        case let .invalidFile(url, reason): return "\(url.path): \(reason)"
        }
    }
}

extension LoRAError: LocalizedError {
    public var errorDescription: String? { description }
}

/// One module's LoRA factors: the update is (alpha / r)·B·A, with A = `down` [r, in] (or
/// [r, in, kh, kw] for a convolution) and B = `up` [out, r] (or [out, r, 1, 1]).
public struct LoRAFactors {
    /// A, PEFT's `lora_A` (kohya's `lora_down`).
    public var down: Tensor
    /// B, PEFT's `lora_B` (kohya's `lora_up`).
    public var up: Tensor
    public var alpha: Float

    public init(down: Tensor, up: Tensor, alpha: Float) {
        self.down = down
        self.up = up
        self.alpha = alpha
    }

    public var rank: Int { down.shape[0] }
    /// alpha / r, the factor PEFT and kohya apply to B·A.
    public var scale: Float { alpha / Float(rank) }
    /// The shape of the weight the factors update: [out] + A's [in…].
    public var weightShape: [Int] { [up.shape[0]] + down.shape.dropFirst() }

    /// Why the shapes do not fit each other, or nil.
    var shapeProblem: String? {
        guard down.rank >= 2, up.rank == down.rank, up.shape[1] == rank, up.shape.dropFirst(2).allSatisfy({ $0 == 1 }) else {
            return "A \(down.shape) and B \(up.shape) are not [r, in…] and [out, r, 1…]"
        }
        guard rank > 0, alpha.isFinite else { return "rank \(rank), alpha \(alpha)" }
        return nil
    }

    /// B·A as a tensor of the updated weight's shape (without the scale).
    public func product() -> Tensor {
        let flatIn = down.count / rank
        return matmul(up.reshaped([up.shape[0], rank]), down.reshaped([rank, flatIn])).reshaped(weightShape)
    }
}

/// The model a LoRA's modules belong to, and its key prefixes in the two layouts.
public enum LoRAComponent: String, Sendable, CaseIterable {
    case unet
    /// CLIP: module paths as this package names them (`encoder.layers.0.self_attn.q_proj`); files
    /// spell them as transformers does, under `text_model.`.
    case textEncoder = "text_encoder"
    /// A FLUX transformer (diffusers' `FluxPipeline.save_lora_weights`: `transformer.<module>…`).
    case transformer

    /// What files put between the component and this package's module path.
    var modulePrefix: String { self == .textEncoder ? "text_model." : "" }
    /// kohya's key prefix (SD 1.x/2.x, one text encoder). kohya names FLUX modules after Black
    /// Forest Labs' checkpoint (`lora_unet_double_blocks_0_img_attn_qkv`), not diffusers', so a
    /// transformer is written and read in the peft layout only; its prefix here matches no file.
    var kohyaPrefix: String {
        switch self {
        case .unet: return "lora_unet_"
        case .textEncoder: return "lora_te_"
        case .transformer: return "lora_transformer_"
        }
    }
}

/// The two key layouts LoRA files are written in.
public enum LoRALayout: String, Sendable, CaseIterable {
    /// diffusers / PEFT: `unet.<module>.lora_A.weight`, `lora_B.weight`, config in the metadata.
    case peft
    /// kohya sd-scripts: `lora_unet_<module_path>.lora_down.weight`, `lora_up.weight`, `alpha`.
    case kohya
}

/// LoRA factors per component and module path (this package's parameter names without
/// `.weight`), as read from a file or extracted from a weight change.
public struct LoRA {
    public var modules: [LoRAComponent: [String: LoRAFactors]]

    public init(_ modules: [LoRAComponent: [String: LoRAFactors]]) { self.modules = modules }

    /// Module count over all components.
    public var count: Int { modules.values.reduce(0) { $0 + $1.count } }

    // MARK: Writing

    /// Writes the factors in `layout` (F32, F16 or BF16), atomically. `metadata` is added to the
    /// file's (after the layout's own entries, which it cannot replace).
    public func write(to url: URL, layout: LoRALayout, dtype: DType = .f32, metadata: [String: String] = [:]) throws {
        guard [.f32, .f16, .bf16].contains(dtype) else { throw LoRAError.invalid("factors are written as F32, F16 or BF16, not \(dtype)") }
        var tensors: [TensorToWrite] = []
        func add(_ name: String, _ tensor: Tensor) {
            tensors.append(TensorToWrite(name: name, shape: tensor.shape, data: .floats(tensor.scalars, storedAs: dtype)))
        }
        var fields = metadata
        fields["format"] = "pt"
        var adapterMetadata: [String: Any] = [:]
        for component in LoRAComponent.allCases {
            guard let entries = modules[component], !entries.isEmpty else { continue }
            if component == .transformer && layout == .kohya {
                throw LoRAError.invalid("a FLUX transformer's LoRA is written in the peft layout (kohya names FLUX modules after Black Forest Labs' checkpoint)")
            }
            for (path, factors) in entries.sorted(by: { $0.key < $1.key }) {
                if let problem = factors.shapeProblem { throw LoRAError.invalid("\(path): \(problem)") }
                let name = component.modulePrefix + path
                switch layout {
                case .peft:
                    add("\(component.rawValue).\(name).lora_A.weight", factors.down)
                    add("\(component.rawValue).\(name).lora_B.weight", factors.up)
                case .kohya:
                    let key = component.kohyaPrefix + name.replacingOccurrences(of: ".", with: "_")
                    add("\(key).lora_down.weight", factors.down)
                    add("\(key).lora_up.weight", factors.up)
                    add("\(key).alpha", Tensor(shape: [], scalars: [factors.alpha]))
                }
            }
            // Module names in the config go without `text_model.`: PEFT matches them as suffixes,
            // so they fit transformers 4's CLIPTextModel (modules under text_model.) and
            // transformers 5's flattened one.
            for (key, value) in Self.peftConfig(entries) { adapterMetadata["\(component.rawValue).\(key)"] = value }
        }
        guard !tensors.isEmpty else { throw LoRAError.invalid("no LoRA factors to write") }
        switch layout {
        case .peft:
            let json = try JSONSerialization.data(withJSONObject: adapterMetadata, options: [.prettyPrinted, .sortedKeys])
            fields["lora_adapter_metadata"] = String(decoding: json, as: UTF8.self)
        case .kohya:
            fields["ss_network_module"] = "networks.lora"
            if let rank = adapterMetadata["unet.r"] ?? adapterMetadata["text_encoder.r"] { fields["ss_network_dim"] = "\(rank)" }
            if let alpha = adapterMetadata["unet.lora_alpha"] ?? adapterMetadata["text_encoder.lora_alpha"] { fields["ss_network_alpha"] = "\(alpha)" }
        }
        try writeSafeTensors(tensors, metadata: fields, to: url)
    }

    /// PEFT's `LoraConfig` fields for a set of modules, as diffusers stores them: the most common
    /// rank and alpha, and per-module exceptions.
    static func peftConfig(_ factors: [String: LoRAFactors]) -> [String: Any] {
        func mostCommon<T: Hashable & Comparable>(_ values: [T]) -> T {
            var counts: [T: Int] = [:]
            for v in values { counts[v, default: 0] += 1 }
            return counts.max { a, b in a.value != b.value ? a.value < b.value : a.key > b.key }!.key
        }
        func number(_ value: Float) -> Any { value == value.rounded() && abs(value) < 1e9 ? Int(value) as Any : Double(value) as Any }
        let rank = mostCommon(factors.values.map(\.rank))
        let alpha = mostCommon(factors.values.map(\.alpha))
        var rankPattern: [String: Any] = [:], alphaPattern: [String: Any] = [:]
        for (path, lora) in factors {
            if lora.rank != rank { rankPattern[path] = lora.rank }
            if lora.alpha != alpha { alphaPattern[path] = number(lora.alpha) }
        }
        return ["r": rank, "lora_alpha": number(alpha), "rank_pattern": rankPattern, "alpha_pattern": alphaPattern,
                "target_modules": factors.keys.sorted(), "use_dora": false, "lora_bias": false]
    }

    // MARK: Reading

    /// Reads a LoRA file in either layout (told apart by its keys) for the modules of `targets`:
    /// every key must name a weight of one of them (kohya's flattened names are resolved against
    /// their parameters) with factors of its shape and finite values. Errors name the file and key.
    public static func read(from url: URL, for targets: [LoRAComponent: Module]) throws -> LoRA {
        let archive = try TensorArchive(contentsOf: url)
        var config: [String: Any] = [:]
        if let text = archive.metadata["lora_adapter_metadata"] {
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                throw LoRAError.invalidFile(url, reason: "the metadata's lora_adapter_metadata is not a JSON object")
            }
            config = object
        }
        let weights = targets.mapValues { module in
            Dictionary(module.namedParameters().map { ($0.name, $0.tensor.shape) }, uniquingKeysWith: { a, _ in a })
        }
        // kohya's `lora_unet_down_blocks_0_…` → `down_blocks.0.…`, per component.
        let flattened = weights.mapValues { shapes in
            Dictionary(shapes.keys.filter { $0.hasSuffix(".weight") }.map { name -> (String, String) in
                let path = String(name.dropLast(".weight".count))
                return (path.replacingOccurrences(of: ".", with: "_"), path)
            }, uniquingKeysWith: { a, _ in a })
        }

        /// A key's form: (component, module path, role) with role "down", "up" or "alpha".
        func parse(_ key: String) throws -> (LoRAComponent, String, String) {
            let peftRoles = [".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha"]
            let kohyaRoles = [".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"]
            for component in LoRAComponent.allCases where key.hasPrefix(component.kohyaPrefix) {
                guard let (suffix, role) = kohyaRoles.first(where: { key.hasSuffix($0.key) }) else {
                    throw LoRAError.invalidKey(url, key: key, reason: "not a kohya LoRA key (…lora_down.weight, …lora_up.weight or …alpha; LoHa, LoKr and DoRA are not read)")
                }
                let flat = String(key.dropFirst(component.kohyaPrefix.count).dropLast(suffix.count))
                let withPrefix = component.modulePrefix.replacingOccurrences(of: ".", with: "_")
                let name = flat.hasPrefix(withPrefix) ? String(flat.dropFirst(withPrefix.count)) : flat
                guard let table = flattened[component] else {
                    throw LoRAError.invalidKey(url, key: key, reason: "the model has no \(component.rawValue) to apply it to")
                }
                guard let path = table[name] else {
                    throw LoRAError.invalidKey(url, key: key, reason: "no module of the \(component.rawValue) is named \(name) (with dots for underscores)")
                }
                return (component, path, role)
            }
            var rest = key
            var component = LoRAComponent.unet
            if let named = LoRAComponent.allCases.first(where: { key.hasPrefix($0.rawValue + ".") }) {
                component = named
                rest = String(key.dropFirst(named.rawValue.count + 1))
            }
            if rest.hasPrefix(component.modulePrefix) { rest.removeFirst(component.modulePrefix.count) }
            if let (suffix, role) = peftRoles.first(where: { rest.hasSuffix($0.key) }) {
                return (component, String(rest.dropLast(suffix.count)), role)
            }
            // Attention processors: `<attention>.processor.to_q_lora.down.weight` (to_out_lora: to_out.0).
            let processor = rest.components(separatedBy: ".processor.")
            if processor.count == 2, let (suffix, role) = ["_lora.down.weight": "down", "_lora.up.weight": "up"].first(where: { processor[1].hasSuffix($0.key) }) {
                let projection = String(processor[1].dropLast(suffix.count))
                return (component, "\(processor[0]).\(projection == "to_out" ? "to_out.0" : projection)", role)
            }
            throw LoRAError.invalidKey(url, key: key, reason: "not a LoRA key in the diffusers/PEFT (…lora_A.weight, …lora_B.weight) or kohya (lora_unet_…lora_down.weight) layout")
        }

        var parts: [LoRAComponent: [String: [String: String]]] = [:]  // component → path → role → key
        for key in archive.names {
            let (component, path, role) = try parse(key)
            if let other = parts[component]?[path]?[role] {
                throw LoRAError.invalidKey(url, key: key, reason: "names the same \(role) factor as \(other)")
            }
            parts[component, default: [:]][path, default: [:]][role] = key
        }
        guard !parts.isEmpty else { throw LoRAError.invalidFile(url, reason: "holds no LoRA factors") }

        var result: [LoRAComponent: [String: LoRAFactors]] = [:]
        for (component, paths) in parts {
            guard let shapes = weights[component] else {
                let key = paths.values.first!.values.sorted().first!
                throw LoRAError.invalidKey(url, key: key, reason: "the model has no \(component.rawValue) to apply it to")
            }
            for (path, roles) in paths.sorted(by: { $0.key < $1.key }) {
                let anyKey = roles.values.sorted().first!
                guard let downKey = roles["down"], let upKey = roles["up"] else {
                    throw LoRAError.invalidKey(url, key: anyKey, reason: "has no \(roles["down"] == nil ? "down (lora_A)" : "up (lora_B)") partner")
                }
                for key in [downKey, upKey] + (roles["alpha"].map { [$0] } ?? []) {
                    let dtype = try archive.source.info(key).dtype
                    guard [.f32, .f16, .bf16, .f64].contains(dtype) else {
                        throw LoRAError.invalidKey(url, key: key, reason: "is \(dtype), not a float tensor")
                    }
                    if let reason = try archive.source.withRawBytes(key, { unusableWeightReason(in: $0, dtype: dtype) }) {
                        throw LoRAError.invalidKey(url, key: key, reason: reason)
                    }
                }
                guard let weightShape = shapes[path + ".weight"] else {
                    throw LoRAError.invalidKey(url, key: downKey, reason: "the \(component.rawValue) has no weight \(path).weight")
                }
                let alpha: Float
                if let alphaKey = roles["alpha"] {
                    let values = try archive.source.floats(alphaKey)
                    guard values.count == 1 else { throw LoRAError.invalidKey(url, key: alphaKey, reason: "alpha holds \(values.count) values, not 1") }
                    alpha = values[0]
                } else {
                    let prefix = component.rawValue + "."
                    let pattern = config[prefix + "alpha_pattern"] as? [String: Any] ?? [:]
                    let value = pattern[path] ?? pattern[component.modulePrefix + path] ?? config[prefix + "lora_alpha"]
                    let rank = try archive.shape(downKey).first ?? 1
                    alpha = (value as? NSNumber)?.floatValue ?? Float(rank)
                }
                var factors = LoRAFactors(down: try archive.tensor(downKey), up: try archive.tensor(upKey), alpha: alpha)
                // A linear LoRA on a 1 × 1 convolution (SD 1.x's proj_in / proj_out): the product's
                // shape needs the kernel's trailing 1s.
                if weightShape.count == 4, factors.down.rank == 2, weightShape.dropFirst(2).allSatisfy({ $0 == 1 }) {
                    factors.down = factors.down.reshaped(factors.down.shape + [1, 1])
                    factors.up = factors.up.reshaped(factors.up.shape + [1, 1])
                }
                if let problem = factors.shapeProblem { throw LoRAError.invalidKey(url, key: downKey, reason: problem) }
                guard factors.weightShape == weightShape else {
                    throw LoRAError.invalidKey(url, key: downKey, reason: "the factors make \(factors.weightShape), and \(path).weight is \(weightShape)")
                }
                result[component, default: [:]][path] = factors
            }
        }
        return LoRA(result)
    }

    // MARK: Merging

    /// Adds (alpha/r)·B·A × `scale` to the weight `<path>.weight` of each target for every module.
    /// Every path and shape is checked before any weight changes.
    public func merge(into targets: [LoRAComponent: Module], scale: Float = 1) throws {
        var updates: [(Tensor, LoRAFactors)] = []
        for (component, entries) in modules where !entries.isEmpty {
            guard let module = targets[component] else { throw LoRAError.invalid("no \(component.rawValue) to merge \(entries.count) modules into") }
            let parameters = module.stateDict()
            for (path, factors) in entries.sorted(by: { $0.key < $1.key }) {
                if let problem = factors.shapeProblem { throw LoRAError.invalid("\(path): \(problem)") }
                guard let weight = parameters[path + ".weight"] else {
                    throw LoRAError.invalid("the \(component.rawValue) has no weight \(path).weight")
                }
                guard weight.shape == factors.weightShape else {
                    throw LoRAError.invalid("\(path).weight is \(weight.shape), the factors make \(factors.weightShape)")
                }
                updates.append((weight, factors))
            }
        }
        noGrad {
            for (weight, factors) in updates {
                let delta = factors.product() * (factors.scale * scale)
                let w = weight.pointer, d = delta.pointer
                for i in 0..<weight.count { w[i] += d[i] }
            }
        }
    }
}

/// A LoRA file to merge into a pipeline's weights, at a scale (`--lora F --lora-scale S`).
public struct LoRAFile: Sendable, Equatable {
    public var path: String
    public var scale: Float

    public init(path: String, scale: Float = 1) {
        self.path = path
        self.scale = scale
    }
}

extension StableDiffusionPipeline {
    /// The modules a LoRA file may address: the UNet, and the text encoder when it is CLIP.
    public var loraTargets: [LoRAComponent: Module] {
        var targets: [LoRAComponent: Module] = [.unet: unet]
        if let clip = textEncoder as? CLIPTextEncoder { targets[.textEncoder] = clip.model }
        return targets
    }

    /// Reads each file (either layout) and merges it into the weights, in order. A file is checked
    /// whole before any weight changes.
    public func merge(_ files: [LoRAFile]) throws { try LoRA.merge(files, into: loraTargets) }
}

extension FluxPipeline {
    /// The modules a LoRA file may address: the transformer (the text encoders are not FLUX.1's).
    public var loraTargets: [LoRAComponent: Module] { [.transformer: transformer] }

    /// Reads each file (peft layout, `transformer.` keys) and merges it into the transformer's
    /// weights, in order. A file is checked whole before any weight changes.
    public func merge(_ files: [LoRAFile]) throws { try LoRA.merge(files, into: loraTargets) }
}

extension LoRA {
    /// Reads each file and merges it into `targets` at its scale, in order.
    static func merge(_ files: [LoRAFile], into targets: [LoRAComponent: Module]) throws {
        for file in files {
            guard file.scale.isFinite else { throw LoRAError.invalid("--lora-scale of \(file.path) must be a number, not \(file.scale)") }
            let url = URL(fileURLWithPath: file.path)
            guard FileManager.default.fileExists(atPath: url.path) else { throw LoRAError.invalidFile(url, reason: "no such LoRA file") }
            try LoRA.read(from: url, for: targets).merge(into: targets, scale: file.scale)
        }
    }
}
