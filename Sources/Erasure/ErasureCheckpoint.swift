import Foundation
import NN
import Tensor

/// The checkpoint of a training erasure run (SCORE, ESD): the trainable UNet tensors, the
/// optimiser's state, the run's own extra tensors (critics, pools), the step, the generator's
/// position, the losses so far and the config, so that a resumed run continues bit for bit.
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

    static func write<Config: Encodable>(to url: URL, method: String, config: Config, step: Int, generator: RandomGenerator,
                                         losses: [String: [Float]], seconds: Double, trainable: [(name: String, tensor: Tensor)],
                                         optimizer: any Optimizer, extra: [String: Tensor] = [:]) throws {
        var tensors = extra
        for (name, p) in trainable { tensors["unet.\(name)"] = p }
        for (name, t) in optimizer.state() { tensors["optimizer.\(name)"] = t }
        let lossJSON = try JSONEncoder().encode(losses.mapValues { $0.map { $0.isFinite ? Double($0) : nonFinite } })
        let metadata = ["method": method, "step": String(step), "seed": String(generator.seed), "offset": String(generator.offset),
                        "losses": String(decoding: lossJSON, as: UTF8.self), "seconds": String(seconds),
                        "config": String(decoding: try JSONEncoder().encode(config), as: UTF8.self)]
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Tensor.save(tensors, to: url, metadata: metadata)
    }

    /// Reads a checkpoint written by `method` with `config`, up to what `continuable` says may
    /// change on resume (more steps, another checkpoint interval): anything else is an error.
    init<Config: Codable & Equatable>(contentsOf url: URL, method: String, config: Config,
                                      continuable: (inout Config, Config) -> Void) throws {
        let archive = try TensorArchive(contentsOf: url)
        let meta = archive.metadata
        guard (meta["method"] ?? method) == method,
              var saved = meta["config"].flatMap({ try? JSONDecoder().decode(Config.self, from: Data($0.utf8)) }) else {
            throw ErasureError.invalidConfig("\(url.path): not a \(method) checkpoint")
        }
        continuable(&saved, config)
        guard saved == config else {
            throw ErasureError.invalidConfig("\(url.path) was written with a different config; resume with the same settings or use a new --out")
        }
        guard let step = meta["step"].flatMap(Int.init), let seed = meta["seed"].flatMap(UInt64.init),
              let offset = meta["offset"].flatMap(UInt64.init),
              let losses = meta["losses"].flatMap({ try? JSONDecoder().decode([String: [Double]].self, from: Data($0.utf8)) }) else {
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
