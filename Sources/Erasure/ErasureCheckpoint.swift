import Diffusion
import Foundation
import NN
import Tensor

/// The checkpoint of a training erasure run (`TrainingRun`): the trainable UNet tensors, the
/// optimiser's state, the method's own extra tensors (critics, pools), the step, the generator's
/// position, the losses so far, the elapsed time, the request and the config, so that a resumed
/// run continues bit for bit and a checkpoint of another request is refused.
struct ErasureCheckpoint {
    let url: URL
    let tensors: [String: Tensor]
    let step: Int
    let generator: RandomGenerator
    let losses: [String: [Float]]
    /// Wall time of the run's pieces up to this checkpoint (0 in checkpoints that predate it).
    let seconds: Double

    /// JSON has no NaN: a non-finite loss is stored as this and read back as NaN.
    private static let nonFinite = -1e30

    static func write<Config: Encodable>(to url: URL, method: String, config: Config, request: ErasureRequest, step: Int,
                                         generator: RandomGenerator, losses: [String: [Float]], seconds: Double,
                                         trainable: [(name: String, tensor: Tensor)], optimizer: any Optimizer,
                                         extra: [String: Tensor] = [:]) throws {
        var tensors = extra
        for (name, p) in trainable { tensors["unet.\(name)"] = p }
        for (name, t) in optimizer.state() { tensors["optimizer.\(name)"] = t }
        // Sorted keys: the same run writes the same bytes (a dictionary's order is per process).
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        func text(_ value: some Encodable) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }
        let metadata = ["method": method, "step": String(step), "seed": String(generator.seed), "offset": String(generator.offset),
                        "losses": try text(losses.mapValues { $0.map { $0.isFinite ? Double($0) : nonFinite } }),
                        "seconds": String(seconds), "config": try text(config), "request": try text(request)]
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Tensor.save(tensors, to: url, metadata: metadata)
    }

    /// Reads a checkpoint written by `method` for `request` with `config`. Any difference but in
    /// `resumableKeys` (more steps, another checkpoint interval) is an error naming it.
    /// Checkpoints that predate the request's recording are checked on their config alone.
    init<Config: Encodable>(contentsOf url: URL, method: String, config: Config, request: ErasureRequest,
                            resumableKeys: Set<String>) throws {
        let archive = try TensorArchive(contentsOf: url)
        let meta = archive.metadata
        func json(_ text: String?) -> Any? { text.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } }
        func now(_ value: some Encodable) throws -> Any { try JSONSerialization.jsonObject(with: JSONEncoder().encode(value)) }
        guard (meta["method"] ?? method) == method, var saved = json(meta["config"]) as? [String: Any],
              var current = try now(config) as? [String: Any] else {
            throw ErasureError.invalidConfig("\(url.path): not a \(method) checkpoint")
        }
        for key in resumableKeys { (saved[key], current[key]) = (nil, nil) }
        var differences = Self.differences(saved, current, path: "config")
        if let savedRequest = json(meta["request"]) {
            differences += Self.differences(savedRequest, try now(request), path: "request")
        }
        guard differences.isEmpty else {
            throw ErasureError.invalidConfig("\(url.path) was written with a different config or request (\(differences.prefix(4).joined(separator: "; "))); resume with the same settings or use a new --out")
        }
        guard let step = meta["step"].flatMap(Int.init), let seed = meta["seed"].flatMap(UInt64.init),
              let offset = meta["offset"].flatMap(UInt64.init),
              let losses = meta["losses"].flatMap({ try? JSONInput.decode([String: [Double]].self, from: Data($0.utf8)) }) else {
            throw ErasureError.invalidConfig("\(url.path): checkpoint metadata is incomplete")
        }
        var tensors: [String: Tensor] = [:]
        for name in archive.names { tensors[name] = try archive.tensor(name) }
        self.url = url
        self.tensors = tensors
        self.step = step
        self.generator = RandomGenerator(seed: seed, offset: offset)
        self.losses = losses.mapValues { $0.map { $0 <= Self.nonFinite ? Float.nan : Float($0) } }
        seconds = meta["seconds"].flatMap(Double.init) ?? 0
    }

    /// Where two JSON values differ, as "path: A in the checkpoint, B now".
    static func differences(_ saved: Any?, _ current: Any?, path: String) -> [String] {
        func text(_ value: Any?) -> String {
            guard let value else { return "absent" }
            guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys]) else {
                return "\(value)"
            }
            return String(decoding: data, as: UTF8.self)
        }
        switch (saved, current) {
        case let (a as [String: Any], b as [String: Any]):
            return Set(a.keys).union(b.keys).sorted().flatMap { differences(a[$0], b[$0], path: "\(path).\($0)") }
        case let (a as [Any], b as [Any]) where a.count == b.count:
            return zip(a, b).enumerated().flatMap { differences($1.0, $1.1, path: "\(path)[\($0)]") }
        default:
            return text(saved) == text(current) ? [] : ["\(path): \(text(saved)) in the checkpoint, \(text(current)) now"]
        }
    }

    /// The tensors under `prefix`, keyed by the rest of their name.
    func group(_ prefix: String) -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for (name, t) in tensors where name.hasPrefix(prefix) { result[String(name.dropFirst(prefix.count))] = t }
        return result
    }

    /// Puts the saved weights into the trainable tensors and the saved moments into the optimiser.
    func restore(trainable: [(name: String, tensor: Tensor)], optimizer: any Optimizer) throws {
        let weights = group("unet.")
        for (name, p) in trainable {
            guard let w = weights[name], w.shape == p.shape else {
                throw ErasureError.invalidConfig("\(url.path): no tensor unet.\(name) of shape \(p.shape)")
            }
            p.assign(w)
        }
        try optimizer.loadState(group("optimizer."))
    }
}
