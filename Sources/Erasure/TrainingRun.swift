import Diffusion
import Foundation
import NN
import Tensor

/// The losses of one training step, as a method hands them to `TrainingRun`.
struct StepLosses {
    /// What the step minimises.
    var total: Tensor
    /// Each term's value, recorded per step; a non-finite one stops the run, named.
    var checked: [(String, Float)]
    /// Values recorded but not checked (a term that is switched off, a critic's accuracy).
    var recorded: [(String, Float)] = []
}

/// What the harness reads from a fine-tuning method's config.
protocol TrainingConfig: Encodable {
    /// Steps of the whole run, and the checkpoint interval.
    var steps: Int { get }
    var checkpointEvery: Int { get }
    /// The config keys a resumed run may change (the step count, the checkpoint interval).
    static var resumableKeys: Set<String> { get }
}

/// A fine-tuning erasure method as `TrainingRun` drives it: the method holds its state (frozen
/// copy, pools, critics) and says what one step's losses are; the harness owns the rest.
protocol FineTuning: AnyObject {
    associatedtype Config: TrainingConfig
    /// The method's name, as checkpoints record it.
    static var method: String { get }
    /// The model being trained and its trainable tensors.
    var model: Module { get }
    var trainable: [(name: String, tensor: Tensor)] { get }
    var optimizer: any Optimizer { get }
    /// Saliency masks (1 = may change) when the method uses them.
    var masks: [String: Tensor] { get }
    /// The generator of the steps' random draws, saved with every checkpoint.
    var generator: RandomGenerator { get set }

    /// Before the first step of a fresh run (not a resumed one): warm-ups, messages.
    func begin(log: (String) -> Void) throws
    /// The losses of step `step` (counted from 0), recorded for autodiff.
    func losses(step: Int) throws -> StepLosses
    /// After the backward pass, before the optimiser's step (gradient clipping).
    func beforeUpdate()
    /// After the update of step `done` − 1 (so `done` steps are finished).
    func afterUpdate(done: Int) throws
    /// What the progress line shows, from the losses so far.
    func progress(_ losses: [String: [Float]]) -> [(String, Float)]
    /// The method's own checkpoint tensors (critics, pools), and their restore.
    func checkpointTensors() -> [String: Tensor]
    func restore(from checkpoint: ErasureCheckpoint) throws
}

extension FineTuning {
    var masks: [String: Tensor] { [:] }
    func begin(log: (String) -> Void) throws {}
    func beforeUpdate() {}
    func afterUpdate(done: Int) throws {}
    func checkpointTensors() -> [String: Tensor] { [:] }
    func restore(from checkpoint: ErasureCheckpoint) throws {}
}

/// The training-run harness every fine-tuning method shares: resume from the run folder's
/// checkpoint (refused when the request or config differs), the step loop (backward, optimiser,
/// a named stop on a non-finite loss that keeps the last good checkpoint), progress with ETA,
/// checkpoints with the elapsed time, and `ErasureContext.stopAfter`.
enum TrainingRun {
    /// Checks a checkpoint to resume from against `config` and `request` (before any work), sets
    /// the run up (timed with it: pools, saliency) and trains it to its last step.
    static func train<Run: FineTuning>(config: Run.Config, request: ErasureRequest, context: ErasureContext,
                                       setUp: () throws -> Run) throws -> ErasureOutcome {
        // Fine-tuning is fp32 throughout (its frozen teachers too), whatever precision the caller set for inference.
        try InferencePrecision.withFP32 { try trainInFP32(config: config, request: request, context: context, setUp: setUp) }
    }

    private static func trainInFP32<Run: FineTuning>(config: Run.Config, request: ErasureRequest, context: ErasureContext,
                                                     setUp: () throws -> Run) throws -> ErasureOutcome {
        let started = Date()
        let log = context.log
        let url = context.output?.appendingPathComponent("checkpoint.safetensors")
        var resumed: ErasureCheckpoint?
        if context.resume, let url, FileManager.default.fileExists(atPath: url.path) {
            let checkpoint = try ErasureCheckpoint(contentsOf: url, method: Run.method, config: config, request: request,
                                                   resumableKeys: Run.Config.resumableKeys)
            guard checkpoint.step <= config.steps else {
                throw ErasureError.invalidConfig("\(url.path) is at step \(checkpoint.step), past the \(config.steps) steps asked for; ask for at least \(checkpoint.step) or use a new --out")
            }
            resumed = checkpoint
        }
        let run = try setUp()
        var step = 0, losses: [String: [Float]] = [:], earlierSeconds = 0.0
        if let checkpoint = resumed, let url {
            try checkpoint.restore(trainable: run.trainable, optimizer: run.optimizer)
            try run.restore(from: checkpoint)
            (step, losses, earlierSeconds) = (checkpoint.step, checkpoint.losses, checkpoint.seconds)
            run.generator = checkpoint.generator
            log("resumed from \(url.path) at step \(step)")
        } else {
            try run.begin(log: log)
        }
        var progress = ProgressReporter(total: config.steps, unit: "steps", print: log)
        let firstStep = step
        func outcome(stoppedEarly: Bool) -> ErasureOutcome {
            ErasureOutcome(losses: losses, steps: step, masks: run.masks, stoppedEarly: stoppedEarly,
                           trainableParameters: run.trainable.reduce(0) { $0 + $1.tensor.count }, earlierSeconds: earlierSeconds)
        }
        while step < config.steps {
            let terms = try run.losses(step: step)
            if let (term, _) = terms.checked.first(where: { !$0.1.isFinite }) {
                let kept = url.flatMap { FileManager.default.fileExists(atPath: $0.path) ? $0.path : nil }
                throw ErasureError.nonFinite(term: term, step: step + 1, checkpoint: kept)
            }
            terms.total.backward()
            run.beforeUpdate()
            run.optimizer.step()
            run.model.zeroGrad()
            step += 1
            for (term, value) in terms.checked + terms.recorded { losses[term, default: []].append(value) }
            try run.afterUpdate(done: step)
            progress.report(step: step, firstStep: firstStep, items: step - firstStep, values: run.progress(losses))
            if let url, step % config.checkpointEvery == 0 || step == config.steps || step == context.stopAfter {
                try ErasureCheckpoint.write(to: url, method: Run.method, config: config, request: request, step: step,
                                            generator: run.generator, losses: losses,
                                            seconds: earlierSeconds + Date().timeIntervalSince(started),
                                            trainable: run.trainable, optimizer: run.optimizer, extra: run.checkpointTensors())
            }
            if step == context.stopAfter, step < config.steps { return outcome(stoppedEarly: true) }
        }
        return outcome(stoppedEarly: false)
    }
}

/// The captions of a run, "" first, each once: the rows of its `CaptionTable`.
struct CaptionList {
    private(set) var captions = [""]
    let empty = 0

    /// The row of `text`, added if new.
    mutating func index(_ text: String) -> Int {
        if let i = captions.firstIndex(of: text) { return i }
        captions.append(text)
        return captions.count - 1
    }
}

extension UNet2DConditionModel {
    /// θ₀ beside the model being trained: a copy with no trainable parameter, in eval mode.
    func frozenCopy() throws -> UNet2DConditionModel {
        let frozen = try copy()
        frozen.freeze()
        frozen.eval()
        return frozen
    }
}
