import Foundation
import NN
import Tensor

/// A resumable snapshot of a training run: model (and EMA) weights, optimizer state, the random
/// generator's position and the loss history, in one safetensors file written atomically.
public struct TrainingCheckpoint {
    public var step: Int
    public var generator: RandomGenerator
    public var losses: [Float]
    /// Options a resumed run must share with the run that wrote the checkpoint (name → value).
    public var settings: [String: String]

    public init(step: Int, generator: RandomGenerator, losses: [Float], settings: [String: String] = [:]) {
        self.step = step
        self.generator = generator
        self.losses = losses
        self.settings = settings
    }

    public func save(to url: URL, model: Module, optimizer: Optimizer, ema: Module? = nil) throws {
        var tensors: [String: Tensor] = [:]
        for (name, t) in model.namedParameters() { tensors["model.\(name)"] = t }
        for (name, t) in ema?.namedParameters() ?? [] { tensors["ema.\(name)"] = t }
        for (name, t) in optimizer.state() { tensors["optimizer.\(name)"] = t }
        var metadata = [
            "step": String(step), "seed": String(generator.seed), "offset": String(generator.offset),
            "losses": losses.map { String($0) }.joined(separator: ","),
        ]
        for (name, value) in settings { metadata["setting.\(name)"] = value }
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Tensor.save(tensors, to: url, metadata: metadata)
    }

    /// Restores weights and optimizer state in place and returns the checkpoint's position.
    public static func load(from url: URL, model: Module, optimizer: Optimizer, ema: Module? = nil) throws -> TrainingCheckpoint {
        let archive = try TensorArchive(contentsOf: url)
        func group(_ prefix: String) throws -> [String: Tensor] {
            var result: [String: Tensor] = [:]
            for name in archive.names where name.hasPrefix(prefix) {
                result[String(name.dropFirst(prefix.count))] = try archive.tensor(name)
            }
            return result
        }
        try model.load(group("model."), source: url.path)
        if let ema { try ema.load(group("ema."), source: url.path) }
        try optimizer.loadState(group("optimizer."))
        let meta = archive.metadata
        guard let step = meta["step"].flatMap(Int.init), let seed = meta["seed"].flatMap(UInt64.init),
              let offset = meta["offset"].flatMap(UInt64.init) else {
            throw TrainingError.invalidFile(path: url.path, reason: "not a training checkpoint (no step/seed/offset metadata); pass a checkpoint written by `score train`")
        }
        let losses = (meta["losses"] ?? "").split(separator: ",").compactMap { Float(String($0)) }
        var settings: [String: String] = [:]
        for (key, value) in meta where key.hasPrefix("setting.") { settings[String(key.dropFirst("setting.".count))] = value }
        return TrainingCheckpoint(step: step, generator: RandomGenerator(seed: seed, offset: offset), losses: losses, settings: settings)
    }
}

/// Exponential moving average of a model's weights, kept in a second copy of the model.
public struct EMA {
    public let decay: Float

    public init(decay: Float) { self.decay = decay }

    /// shadow ← decay·shadow + (1 − decay)·model
    public func update(_ shadow: Module, from model: Module) {
        for ((_, s), (_, m)) in zip(shadow.namedParameters(), model.namedParameters()) {
            let ps = s.pointer, pm = m.pointer
            for i in 0..<s.count { ps[i] = decay * ps[i] + (1 - decay) * pm[i] }
        }
    }
}

extension TrainingCheckpoint {
    /// What every testbed trainer does with a step's loss: stop on a non-finite value (naming the
    /// last good checkpoint), clip and apply the gradient, update the EMA with warm-up (the decay
    /// grows with the step so early weights do not dominate), report progress and checkpoint on
    /// the cadence. Returns true when the run reached `stopAfter`.
    mutating func finishStep(loss: Tensor, training what: String, model: Module, optimizer: Adam, ema: Module,
                             emaMaxDecay: Float, progress: inout ProgressReporter, firstStep: Int, batch: Int,
                             checkpointURL: URL, checkpointEvery: Int, steps: Int, stopAfter: Int?) throws -> Bool {
        let value = loss.item
        guard value.isFinite else {
            throw TrainingError.nonFinite(what: what, loss: value, step: step, checkpoint: checkpointURL.path)
        }
        loss.backward()
        clipGradNorm(model.trainableParameters().map(\.tensor), maxNorm: 1)
        optimizer.step()
        model.zeroGrad()
        step += 1
        losses.append(value)
        EMA(decay: min(emaMaxDecay, Float(1 + step) / Float(10 + step))).update(ema, from: model)

        let recent = losses.suffix(20)
        progress.report(step: step, firstStep: firstStep, items: (step - firstStep) * batch,
                        values: [("loss", recent.reduce(0, +) / Float(recent.count)), ("lr", optimizer.learningRate)])
        if step % checkpointEvery == 0 || step == steps || step == stopAfter {
            try save(to: checkpointURL, model: model, optimizer: optimizer, ema: ema)
        }
        return step == stopAfter
    }
}
