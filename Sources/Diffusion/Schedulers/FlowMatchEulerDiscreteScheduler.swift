import Foundation
import Tensor

// Flow matching (rectified flow; Lipman et al. 2023, Liu et al. 2023), diffusers'
// `FlowMatchEulerDiscreteScheduler` as FLUX and SD3 use it.
//
// The sample at noise level σ ∈ [0, 1] is the straight line x_σ = (1 − σ)·x₀ + σ·ε, and the model
// predicts its velocity v = dx_σ/dσ = ε − x₀. Sampling integrates that ODE from σ = 1 (pure
// noise) to 0 with Euler steps x ← x + (σ_next − σ)·v̂; x̂₀ = x − σ·v̂.
//
// Why this is not a `NoiseScheduler`: that protocol is built on the variance-preserving process
// xₜ = √ᾱₜ·x₀ + √(1−ᾱₜ)·ε over integer training timesteps — it requires a β/ᾱ table, adds noise
// at integer timesteps and reads model outputs as ε, v = √ᾱ·ε − √(1−ᾱ)·x₀ or x₀. A flow model has
// no ᾱ table (its "timestep" is σ·1000, continuous), mixes x₀ and ε linearly rather than on the
// unit circle, and its velocity is not diffusers' v-prediction. Forcing it through would need a
// fake ᾱ = (1−σ)²/((1−σ)² + σ²) and rescaled inputs, which diffusers does not do. The seam is
// instead the part of a scheduler that a sampling loop uses: `SamplingScheduler` below (the
// schedule as a `SamplingSchedule` value, an optional input scaling, and one step returning
// `SchedulerStepOutput` with x̂₀). `NoiseScheduler` already has every one of those requirements
// with the same signatures, so it can refine that protocol without any other change.

/// What a sampling loop needs from a scheduler, whatever the model predicts: the table of
/// timesteps, the model's input at a step, and one update that also reports x̂₀.
public protocol SamplingScheduler: Sendable {
    /// The sampling table for `steps` inference steps.
    func schedule(steps: Int) throws -> SamplingSchedule
    /// The model's input at step `index`.
    func scaleModelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor
    /// Whether step `index` draws fresh noise.
    func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool
    /// One update from `sample` at step `index` given the model's output there.
    func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
              noise: Tensor?) -> SchedulerStepOutput
}

/// diffusers' `calculate_shift` (FLUX pipeline): μ linear in the image's token count, from
/// `baseShift` at `baseSeqLen` tokens to `maxShift` at `maxSeqLen` tokens.
public func calculateShift(imageSequenceLength: Int, baseSeqLen: Int = 256, maxSeqLen: Int = 4096,
                           baseShift: Double = 0.5, maxShift: Double = 1.15) -> Double {
    let m = (maxShift - baseShift) / Double(maxSeqLen - baseSeqLen)
    let b = baseShift - m * Double(baseSeqLen)
    return Double(imageSequenceLength) * m + b
}

public struct FlowMatchEulerDiscreteScheduler: SamplingScheduler {
    /// The scheduler's `scheduler_config.json`, with diffusers' defaults for absent keys; unknown
    /// keys are ignored (as `from_config` does).
    public struct Config: Codable, Equatable, Sendable {
        public var numTrainTimesteps = 1000
        /// The static shift s: σ ← s·σ / (1 + (s − 1)·σ) (SD3: 3.0).
        public var shift: Double = 1
        /// Resolution-dependent shift from μ (FLUX): σ ← e^μ / (e^μ + 1/σ − 1).
        public var useDynamicShifting = false
        public var baseShift: Double = 0.5
        public var maxShift: Double = 1.15
        public var baseImageSeqLen = 256
        public var maxImageSeqLen = 4096
        public var invertSigmas = false
        /// Stretches the schedule so that its last σ is this value (LTX-Video).
        public var shiftTerminal: Double?
        public var useKarrasSigmas = false
        public var useExponentialSigmas = false
        public var useBetaSigmas = false
        /// "exponential" (e^μ) or "linear" (μ) in the dynamic shift.
        public var timeShiftType = "exponential"
        public var stochasticSampling = false
        /// Where the config came from, for error messages.
        public var source = "<scheduler config>"

        enum CodingKeys: String, CodingKey {
            case numTrainTimesteps = "num_train_timesteps", shift, useDynamicShifting = "use_dynamic_shifting"
            case baseShift = "base_shift", maxShift = "max_shift", baseImageSeqLen = "base_image_seq_len"
            case maxImageSeqLen = "max_image_seq_len", invertSigmas = "invert_sigmas", shiftTerminal = "shift_terminal"
            case useKarrasSigmas = "use_karras_sigmas", useExponentialSigmas = "use_exponential_sigmas"
            case useBetaSigmas = "use_beta_sigmas", timeShiftType = "time_shift_type"
            case stochasticSampling = "stochastic_sampling"
        }

        public init() {}

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Config()
            numTrainTimesteps = try c.value(.numTrainTimesteps, or: d.numTrainTimesteps)
            shift = try c.value(.shift, or: d.shift)
            useDynamicShifting = try c.value(.useDynamicShifting, or: d.useDynamicShifting)
            baseShift = try c.value(.baseShift, or: d.baseShift)
            maxShift = try c.value(.maxShift, or: d.maxShift)
            baseImageSeqLen = try c.value(.baseImageSeqLen, or: d.baseImageSeqLen)
            maxImageSeqLen = try c.value(.maxImageSeqLen, or: d.maxImageSeqLen)
            invertSigmas = try c.value(.invertSigmas, or: d.invertSigmas)
            shiftTerminal = try c.decodeIfPresent(Double.self, forKey: .shiftTerminal)
            useKarrasSigmas = try c.value(.useKarrasSigmas, or: d.useKarrasSigmas)
            useExponentialSigmas = try c.value(.useExponentialSigmas, or: d.useExponentialSigmas)
            useBetaSigmas = try c.value(.useBetaSigmas, or: d.useBetaSigmas)
            timeShiftType = try c.value(.timeShiftType, or: d.timeShiftType)
            stochasticSampling = try c.value(.stochasticSampling, or: d.stochasticSampling)
        }

        /// Reads `scheduler_config.json`, naming the file (and the key) on failure.
        public init(contentsOf url: URL) throws {
            let data: Data
            do { data = try Data(contentsOf: url) } catch {
                throw SchedulerError.unreadableConfig(source: url.path, reason: error.localizedDescription)
            }
            do {
                self = try JSONInput.decode(Config.self, from: data)
            } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
                throw SchedulerError.invalidValue(key: context.codingPath.first?.stringValue ?? "?",
                                                  reason: context.debugDescription, source: url.path)
            } catch {
                throw SchedulerError.unreadableConfig(source: url.path, reason: "\(error)")
            }
            source = url.path
        }
    }

    public let config: Config
    /// σ of the training table, descending from 1 (float32 values, as diffusers' table).
    public let trainSigmas: [Float]

    public init(config: Config = Config()) throws {
        let source = config.source
        func unsupported(_ key: String, _ value: String, _ supported: [String]) -> SchedulerError {
            .unsupportedValue(key: key, value: value, supported: supported, source: source)
        }
        guard config.numTrainTimesteps >= 1 else {
            throw SchedulerError.invalidValue(key: "num_train_timesteps", reason: "must be at least 1, is \(config.numTrainTimesteps)", source: source)
        }
        guard config.shift > 0 else {
            throw SchedulerError.invalidValue(key: "shift", reason: "must be positive, is \(config.shift)", source: source)
        }
        if !["exponential", "linear"].contains(config.timeShiftType) {
            throw unsupported("time_shift_type", config.timeShiftType, ["exponential", "linear"])
        }
        if let terminal = config.shiftTerminal, !(terminal < 1) {
            throw SchedulerError.invalidValue(key: "shift_terminal", reason: "must be below 1, is \(terminal)", source: source)
        }
        // Not implemented: each is an error naming its key rather than a silently different schedule.
        for (key, value) in [("use_karras_sigmas", config.useKarrasSigmas), ("use_exponential_sigmas", config.useExponentialSigmas),
                             ("use_beta_sigmas", config.useBetaSigmas), ("invert_sigmas", config.invertSigmas),
                             ("stochastic_sampling", config.stochasticSampling)] where value {
            throw unsupported(key, "true", ["false"])
        }
        self.config = config
        // diffusers' __init__: t = linspace(1, N, N) reversed, σ = t/N (float32), statically
        // shifted unless the shift is dynamic.
        let n = config.numTrainTimesteps
        let shift = Float(config.shift), shiftMinusOne = Float(config.shift - 1)
        trainSigmas = (0..<n).map { i in
            let sigma = Float(n - i) / Float(n)
            return config.useDynamicShifting ? sigma : shift * sigma / (1 + shiftMinusOne * sigma)
        }
    }

    public var sigmaMax: Double { Double(trainSigmas.first!) }
    public var sigmaMin: Double { Double(trainSigmas.last!) }

    /// μ for an image of `imageSequenceLength` packed tokens, from this config's base/max shift
    /// and sequence lengths (what the FLUX pipeline passes to `set_timesteps`).
    public func mu(imageSequenceLength: Int) -> Double {
        calculateShift(imageSequenceLength: imageSequenceLength, baseSeqLen: config.baseImageSeqLen,
                       maxSeqLen: config.maxImageSeqLen, baseShift: config.baseShift, maxShift: config.maxShift)
    }

    /// The FLUX pipeline's custom sigmas: linspace(1, 1/n, n).
    public static func fluxSigmas(steps: Int) -> [Double] {
        linspace(1, 1 / Double(steps), steps)
    }

    /// numpy's `linspace` (float64): start + i·step, the last value exactly `stop`.
    static func linspace(_ start: Double, _ stop: Double, _ count: Int) -> [Double] {
        guard count > 1 else { return count == 1 ? [start] : [] }
        let step = (stop - start) / Double(count - 1)
        var values = (0..<count).map { start + Double($0) * step }
        values[count - 1] = stop
        return values
    }

    /// The shift of `set_timesteps` (static or dynamic, then the terminal stretch), in the
    /// floating-point type diffusers computes it in: float64 for its own linspace, float32 for
    /// custom sigmas (numpy keeps a float32 array float32 against Python scalars).
    private func shifted<F: BinaryFloatingPoint>(_ sigmas: [F], mu: Double?) -> [F] {
        var out: [F]
        if config.useDynamicShifting, let mu {
            let a = F(config.timeShiftType == "exponential" ? Foundation.exp(mu) : mu)
            // (1/t − 1)^1: the FLUX pipeline's time-shift exponent is 1.
            out = sigmas.map { a / (a + (1 / $0 - 1)) }
        } else {
            let s = F(config.shift), sMinusOne = F(config.shift - 1)
            out = sigmas.map { s * $0 / (1 + sMinusOne * $0) }
        }
        if let terminal = config.shiftTerminal, terminal != 0, let last = out.last, last != 1 {
            let scale = (1 - last) / F(1 - terminal)
            out = out.map { 1 - (1 - $0) / scale }
        }
        return out
    }

    /// diffusers' `set_timesteps(steps)`: n σ evenly spaced in t between the training table's
    /// ends. Throws if the config uses dynamic shifting, which needs μ (`schedule(steps:mu:)`).
    public func schedule(steps: Int) throws -> SamplingSchedule { try schedule(steps: steps, sigmas: nil, mu: nil) }

    /// diffusers' `set_timesteps(steps, sigmas:, mu:)`. `sigmas` (n values, e.g. `fluxSigmas`)
    /// replace the evenly spaced ones; `mu` is required exactly when `use_dynamic_shifting` is
    /// set. The schedule's `timesteps` are σ·N (float32), its `sigmas` the n values plus a final
    /// 0, all as float32 values; the run starts from standard-normal noise.
    public func schedule(steps: Int, sigmas custom: [Double]?, mu: Double?) throws -> SamplingSchedule {
        guard steps >= 1 else { throw SchedulerError.invalidStepCount(steps: steps, numTrainTimesteps: config.numTrainTimesteps) }
        if config.useDynamicShifting && mu == nil {
            throw SchedulerError.invalidValue(key: "use_dynamic_shifting",
                                              reason: "is true, so set_timesteps needs mu (from the image's sequence length)",
                                              source: config.source)
        }
        if let terminal = config.shiftTerminal, terminal != 0, steps == 1 {
            // The stretch divides by 1 − σ_last, and a one-step schedule's only σ is 1
            // (diffusers returns NaN).
            throw SchedulerError.invalidValue(key: "shift_terminal", reason: "cannot stretch a one-step schedule (its only σ is 1)",
                                              source: config.source)
        }
        let n = Double(config.numTrainTimesteps)
        let sigmas32: [Float]
        if let custom {
            guard custom.count == steps else {
                throw SchedulerError.invalidValue(key: "sigmas", reason: "has \(custom.count) values for \(steps) steps",
                                                  source: config.source)
            }
            sigmas32 = shifted(custom.map { Float($0) }, mu: mu)
        } else {
            let t = Self.linspace(sigmaMax * n, sigmaMin * n, steps)
            sigmas32 = shifted(t.map { $0 / n }, mu: mu).map { Float($0) }
        }
        let timesteps = sigmas32.map { $0 * Float(config.numTrainTimesteps) }
        return SamplingSchedule(timesteps: timesteps, sigmas: sigmas32.map(Double.init) + [0], initNoiseSigma: 1,
                                inferenceSteps: steps)
    }

    /// FLUX's schedule: `fluxSigmas(steps)` shifted by μ of an image with `imageSequenceLength`
    /// packed tokens (dynamic shifting; with a static shift μ is not used).
    public func fluxSchedule(steps: Int, imageSequenceLength: Int) throws -> SamplingSchedule {
        try schedule(steps: steps, sigmas: Self.fluxSigmas(steps: steps),
                     mu: config.useDynamicShifting ? mu(imageSequenceLength: imageSequenceLength) : nil)
    }

    /// The model sees the sample as it is.
    public func scaleModelInput(_ sample: Tensor, index: Int, of schedule: SamplingSchedule) -> Tensor { sample }

    public func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool { false }

    /// One Euler step x + (σ_next − σ)·v̂ (σ_next − σ in float32, as diffusers), with x̂₀ = x − σ·v̂.
    /// `noise` is unused (the step is deterministic).
    public func step(modelOutput velocity: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     noise: Tensor? = nil) -> SchedulerStepOutput {
        precondition(velocity.shape == sample.shape, "flow-match step: output \(velocity.shape) vs sample \(sample.shape)")
        precondition(schedule.sigmas.count == schedule.count + 1, "flow-match step needs a schedule with a final σ")
        let sigma = Float(schedule.sigmas[index]), next = Float(schedule.sigmas[index + 1])
        return SchedulerStepOutput(prevSample: sample + velocity * (next - sigma),
                                   predictedOriginal: sample - velocity * sigma)
    }

    /// The forward process (diffusers' `scale_noise`): σ·ε + (1 − σ)·x₀ with one σ per sample
    /// (or one for the batch). Training draws σ, builds this, and regresses `velocity(…)`.
    public func scaleNoise(sample: Tensor, noise: Tensor, sigmas: [Float]) -> Tensor {
        precondition(sample.shape == noise.shape, "scaleNoise: sample \(sample.shape) vs noise \(noise.shape)")
        precondition(sample.rank >= 1 && (sigmas.count == 1 || sigmas.count == sample.shape[0]),
                     "scaleNoise: \(sigmas.count) sigmas for a batch of \(sample.shape.first ?? 0)")
        var shape = [Int](repeating: 1, count: sample.rank)
        shape[0] = sigmas.count
        let s = Tensor(shape: shape, scalars: sigmas)
        return noise * s + sample * (1 - s)
    }

    /// `scaleNoise` at the steps of a schedule whose timesteps are `timesteps` (one per sample),
    /// found as diffusers' `index_for_timestep` finds them (the second match if one repeats).
    public func scaleNoise(sample: Tensor, noise: Tensor, timesteps: [Float], of schedule: SamplingSchedule) -> Tensor {
        let sigmas = timesteps.map { t -> Float in
            let matches = schedule.timesteps.indices.filter { schedule.timesteps[$0] == t }
            precondition(!matches.isEmpty, "scaleNoise: timestep \(t) is not in the schedule")
            return Float(schedule.sigmas[matches.count > 1 ? matches[1] : matches[0]])
        }
        return scaleNoise(sample: sample, noise: noise, sigmas: sigmas)
    }

    /// The training target of the flow model: v = ε − x₀ (diffusers' FLUX/SD3 training scripts).
    public func velocity(sample: Tensor, noise: Tensor) -> Tensor {
        precondition(sample.shape == noise.shape, "velocity: sample \(sample.shape) vs noise \(noise.shape)")
        return noise - sample
    }

    /// x̂₀ = x_σ − σ·v̂ with one σ per sample (or one for the batch).
    public func predictedOriginal(velocity: Tensor, sample: Tensor, sigmas: [Float]) -> Tensor {
        precondition(velocity.shape == sample.shape, "predictedOriginal: velocity \(velocity.shape) vs sample \(sample.shape)")
        var shape = [Int](repeating: 1, count: sample.rank)
        shape[0] = sigmas.count
        return sample - velocity * Tensor(shape: shape, scalars: sigmas)
    }
}
