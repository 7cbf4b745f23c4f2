import Foundation

/// How the betas βₜ grow over the training timesteps (`beta_schedule`).
public enum BetaSchedule: String, Codable, Sendable, CaseIterable {
    /// βₜ evenly spaced from `beta_start` to `beta_end`.
    case linear
    /// √βₜ evenly spaced from √`beta_start` to √`beta_end` (Stable Diffusion's latent schedule).
    case scaledLinear = "scaled_linear"
    /// The Improved-DDPM / GLIDE cosine schedule: ᾱ(s) = cos²((s + 0.008)/1.008 · π/2),
    /// βₜ = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999).
    case squaredcosCapV2 = "squaredcos_cap_v2"
}

/// What the denoising model predicts (`prediction_type`).
public enum PredictionType: String, Codable, Sendable, CaseIterable {
    /// The added noise ε.
    case epsilon
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768-px models).
    case vPrediction = "v_prediction"
    /// The clean sample x₀ itself.
    case sample
}

/// How inference timesteps are picked from the training timesteps (`timestep_spacing`; Table 2
/// of "Common Diffusion Noise Schedules and Sample Steps are Flawed", Lin et al. 2023).
public enum TimestepSpacing: String, Codable, Sendable, CaseIterable {
    /// 0, r, 2r, … (r = T div n) plus `steps_offset`, descending; never reaches T − 1.
    case leading
    /// T, T − T/n, … rounded, minus one; always starts at T − 1.
    case trailing
    /// n evenly spaced values from 0 to T − 1 (rounded for the discrete schedulers).
    case linspace
}

/// DDPM's posterior variance choices (`variance_type`) that this package implements.
public enum VarianceType: String, Codable, Sendable, CaseIterable {
    /// σₜ² = β̃ₜ = (1−ᾱₜ₋₁)/(1−ᾱₜ)·βₜ, the posterior variance (diffusers' default).
    case fixedSmall = "fixed_small"
    /// The same β̃ₜ, computed through its logarithm (as in rl-diffuser).
    case fixedSmallLog = "fixed_small_log"
    /// σₜ² = βₜ.
    case fixedLarge = "fixed_large"
}

/// A scheduler's `scheduler_config.json`, read the way diffusers' `from_config` reads it.
///
/// Every key is optional in the file and takes diffusers' default when absent; unknown keys
/// (`_class_name`, `skip_prk_steps`, keys of other scheduler classes, …) are ignored. Values this
/// package does not implement are errors that name the key and the file, never silently ignored:
/// an unknown `beta_schedule`, `prediction_type` or `timestep_spacing` fails when the file is read;
/// keys only one scheduler uses (`variance_type`, `interpolation_type`, `thresholding`, …) fail
/// when that scheduler is built from the config.
///
/// Two defaults depend on the scheduler class, as in diffusers: `timestep_spacing` is `leading`
/// for DDPM and DDIM but `linspace` for Euler (so it is kept optional here), and `clip_sample`
/// only exists for DDPM and DDIM.
public struct SchedulerConfig: Sendable, Equatable {
    /// `_class_name`, e.g. "PNDMScheduler" (informational; SD 1.5 ships a PNDM config that every
    /// scheduler here can be built from).
    public var className: String?
    public var numTrainTimesteps: Int = 1000
    public var betaStart: Double = 0.0001
    public var betaEnd: Double = 0.02
    public var betaSchedule: BetaSchedule = .linear
    /// Explicit betas; when present they replace `beta_schedule` (as in diffusers).
    public var trainedBetas: [Double]?
    public var predictionType: PredictionType = .epsilon
    /// nil: the scheduler's own default (leading for DDPM/DDIM, linspace for Euler).
    public var timestepSpacing: TimestepSpacing?
    public var stepsOffset: Int = 0
    /// DDPM/DDIM: clamp x̂₀ to ±`clipSampleRange` in each step.
    public var clipSample: Bool = true
    public var clipSampleRange: Double = 1
    /// DDIM/PNDM: ᾱ used after the last step: 1 when true, else ᾱ₀. The class defaults differ
    /// (DDIM true, PNDM false), so the file's value is kept apart from the default.
    public var setAlphaToOne: Bool {
        get { setAlphaToOneValue ?? true }
        set { setAlphaToOneValue = newValue }
    }
    /// `set_alpha_to_one` as the file gives it (nil: the scheduler class's default).
    public var setAlphaToOneValue: Bool?
    /// PNDM: skip the Runge–Kutta warm-up and run PLMS from the first step (SD 1.x configs set it;
    /// the class default is false).
    public var skipPrkSteps: Bool = false
    /// DPM-Solver: the order of the multistep solver (1, 2 or 3; 2 is DPM-Solver++ 2M).
    public var solverOrder: Int = 2
    /// DPM-Solver: raw `algorithm_type` ("dpmsolver++" or "dpmsolver" are implemented).
    public var algorithmType: String = "dpmsolver++"
    /// DPM-Solver: raw `solver_type` of the second-order step ("midpoint" or "heun").
    public var solverType: String = "midpoint"
    /// DPM-Solver: lower the order for the last steps of runs under 15 steps.
    public var lowerOrderFinal: Bool = true
    /// DPM-Solver: a first-order step at the end whatever the step count.
    public var eulerAtFinal: Bool = false
    /// DPM-Solver: the timestep table stops where λ(t) = log(αₜ/σₜ) falls below this
    /// (`lambda_min_clipped`; nil is diffusers' −∞, no clipping).
    public var lambdaMinClipped: Double?
    /// DPM-Solver: Lu et al.'s λ spacing, flow sigmas, dynamic shifting (not implemented: must be false).
    public var useLuLambdas: Bool = false
    public var useFlowSigmas: Bool = false
    public var useDynamicShifting: Bool = false
    /// Dynamic thresholding (not implemented: must be false).
    public var thresholding: Bool = false
    /// DDPM: raw `variance_type`, checked when a DDPM scheduler is built.
    public var varianceType: String = VarianceType.fixedSmall.rawValue
    /// Euler: raw `interpolation_type` (only "linear" is implemented).
    public var interpolationType: String = "linear"
    /// Euler: raw `final_sigmas_type` ("zero" or "sigma_min").
    public var finalSigmasType: String = "zero"
    /// Euler: raw `timestep_type` (only "discrete" is implemented).
    public var timestepType: String = "discrete"
    /// Euler: Karras / exponential / beta sigmas (not implemented there: must be false). DPM-Solver
    /// implements Karras sigmas.
    public var useKarrasSigmas: Bool = false
    public var useExponentialSigmas: Bool = false
    public var useBetaSigmas: Bool = false
    /// Zero-terminal-SNR rescaling (not implemented: must be false).
    public var rescaleBetasZeroSnr: Bool = false

    /// Where the config came from (a file path), for error messages; not part of the JSON.
    public var source: String = "<in-memory scheduler config>"

    public init() {}

    /// Reads `scheduler_config.json` (or any file in that format).
    public init(contentsOf url: URL) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw SchedulerError.unreadableConfig(source: url.path, reason: error.localizedDescription)
        }
        try self.init(json: data, source: url.path)
    }

    /// Parses the JSON text of a scheduler config; `source` names it in error messages.
    public init(json data: Data, source: String = "<in-memory scheduler config>") throws {
        // Foundation's JSON5 reader traps on bytes that are not UTF-8 (found by the fuzzer).
        guard String(data: data, encoding: .utf8) != nil else {
            throw SchedulerError.unreadableConfig(source: source, reason: "not UTF-8 text")
        }
        let decoder = JSONDecoder()
        // diffusers writes configs with Python's json, which spells −∞ as `-Infinity`
        // (`lambda_min_clipped` of every DPM-Solver config it saves); JSON5 reads that.
        decoder.allowsJSON5 = true
        decoder.userInfo[SchedulerConfig.sourceKey] = source
        do {
            self = try JSONInput.decode(SchedulerConfig.self, from: data, decoder: decoder)
        } catch let error as SchedulerError {
            throw error
        } catch let DecodingError.dataCorrupted(context) where !context.codingPath.isEmpty {
            // A number that does not fit the key's type (1e30 for an integer count).
            throw SchedulerError.invalidValue(key: context.codingPath.first?.stringValue ?? "?",
                                              reason: context.debugDescription, source: source)
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            guard !context.codingPath.isEmpty else {
                throw SchedulerError.unreadableConfig(source: source, reason: "not a JSON object")
            }
            throw SchedulerError.invalidValue(
                key: context.codingPath.first?.stringValue ?? "?", reason: context.debugDescription,
                source: source)
        } catch {
            throw SchedulerError.unreadableConfig(source: source, reason: "\(error)")
        }
        self.source = source
    }

    /// The largest `num_train_timesteps` accepted: the tables are a few arrays of this length
    /// (8 MB each at the limit); real models use 1000 (a few, 4000).
    public static let maxTrainTimesteps = 1_000_000

    static let sourceKey = CodingUserInfoKey(rawValue: "score.schedulerConfigSource")!

    /// The effective spacing for a scheduler whose class default is `classDefault`.
    public func spacing(default classDefault: TimestepSpacing) -> TimestepSpacing {
        timestepSpacing ?? classDefault
    }

    /// Checks the values every scheduler relies on (counts, ranges, trained betas).
    func validateCommon() throws {
        if numTrainTimesteps < 1 || numTrainTimesteps > SchedulerConfig.maxTrainTimesteps {
            throw SchedulerError.invalidValue(
                key: "num_train_timesteps",
                reason: "must be in 1...\(SchedulerConfig.maxTrainTimesteps), is \(numTrainTimesteps)", source: source)
        }
        if trainedBetas == nil {
            for (key, value) in [("beta_start", betaStart), ("beta_end", betaEnd)] where !(value >= 0 && value < 1) {
                throw SchedulerError.invalidValue(key: key, reason: "must be in [0, 1), is \(value)", source: source)
            }
        }
        if stepsOffset < 0 || stepsOffset >= numTrainTimesteps {
            throw SchedulerError.invalidValue(
                key: "steps_offset", reason: "must be in 0..<num_train_timesteps (\(numTrainTimesteps)), is \(stepsOffset)",
                source: source)
        }
        if !clipSampleRange.isFinite {
            throw SchedulerError.invalidValue(key: "clip_sample_range", reason: "must be finite, is \(clipSampleRange)", source: source)
        }
        if let trainedBetas, trainedBetas.count != numTrainTimesteps {
            throw SchedulerError.invalidValue(
                key: "trained_betas",
                reason: "has \(trainedBetas.count) values for \(numTrainTimesteps) training timesteps",
                source: source)
        }
        if rescaleBetasZeroSnr {
            throw SchedulerError.unsupportedValue(key: "rescale_betas_zero_snr", value: "true",
                                                  supported: ["false"], source: source)
        }
        if clipSampleRange <= 0 {
            throw SchedulerError.invalidValue(key: "clip_sample_range", reason: "must be positive, is \(clipSampleRange)", source: source)
        }
    }

    /// Rejects `true` for a boolean option that is not implemented.
    func requireFalse(_ value: Bool, key: String) throws {
        if value {
            throw SchedulerError.unsupportedValue(key: key, value: "true", supported: ["false"], source: source)
        }
    }

    /// Parses a raw string option into an enum, or fails naming the key and the file.
    func parse<E: RawRepresentable & CaseIterable>(_ raw: String, key: String, as type: E.Type) throws -> E
    where E.RawValue == String {
        guard let value = E(rawValue: raw) else {
            throw SchedulerError.unsupportedValue(key: key, value: raw, supported: E.allCases.map(\.rawValue),
                                                  source: source)
        }
        return value
    }

    /// Schedulers that implement, as diffusers' do, only ε and v prediction refuse `sample`.
    func requireNoiseOrVelocityPrediction() throws {
        if predictionType == .sample {
            throw SchedulerError.unsupportedValue(key: "prediction_type", value: predictionType.rawValue,
                                                  supported: ["epsilon", "v_prediction"], source: source)
        }
    }
}

extension SchedulerConfig: Codable {
    enum CodingKeys: String, CodingKey {
        case className = "_class_name"
        case numTrainTimesteps = "num_train_timesteps"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
        case betaSchedule = "beta_schedule"
        case trainedBetas = "trained_betas"
        case predictionType = "prediction_type"
        case timestepSpacing = "timestep_spacing"
        case stepsOffset = "steps_offset"
        case clipSample = "clip_sample"
        case clipSampleRange = "clip_sample_range"
        case setAlphaToOne = "set_alpha_to_one"
        case skipPrkSteps = "skip_prk_steps"
        case solverOrder = "solver_order"
        case algorithmType = "algorithm_type"
        case solverType = "solver_type"
        case lowerOrderFinal = "lower_order_final"
        case eulerAtFinal = "euler_at_final"
        case lambdaMinClipped = "lambda_min_clipped"
        case useLuLambdas = "use_lu_lambdas"
        case useFlowSigmas = "use_flow_sigmas"
        case useDynamicShifting = "use_dynamic_shifting"
        case thresholding
        case varianceType = "variance_type"
        case interpolationType = "interpolation_type"
        case finalSigmasType = "final_sigmas_type"
        case timestepType = "timestep_type"
        case useKarrasSigmas = "use_karras_sigmas"
        case useExponentialSigmas = "use_exponential_sigmas"
        case useBetaSigmas = "use_beta_sigmas"
        case rescaleBetasZeroSnr = "rescale_betas_zero_snr"
    }

    public init(from decoder: Decoder) throws {
        let source = decoder.userInfo[SchedulerConfig.sourceKey] as? String ?? "<in-memory scheduler config>"
        let c = try decoder.container(keyedBy: CodingKeys.self)
        var config = SchedulerConfig()
        config.source = source

        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            // JSON null means "use the default", as it does for diffusers' keyword arguments.
            try c.decodeIfPresent(T.self, forKey: key) ?? fallback
        }
        // Counts are read as numbers first, so that 1e30 is an error naming the key (the decoder
        // reports an integer it cannot hold as invalid JSON, without the key).
        func integer(_ key: CodingKeys, _ fallback: Int) throws -> Int {
            guard let number = try c.decodeIfPresent(Double.self, forKey: key) else { return fallback }
            guard number.rounded() == number, Swift.abs(number) <= 9_007_199_254_740_992 else {
                throw SchedulerError.invalidValue(key: key.rawValue, reason: "must be an integer of at most 2^53, is \(number)",
                                                  source: source)
            }
            return Int(number)
        }
        func enumValue<E: RawRepresentable & CaseIterable>(_ key: CodingKeys, _ type: E.Type) throws -> E?
        where E.RawValue == String {
            guard let raw = try c.decodeIfPresent(String.self, forKey: key) else { return nil }
            return try config.parse(raw, key: key.rawValue, as: E.self)
        }

        config.className = try c.decodeIfPresent(String.self, forKey: .className)
        config.numTrainTimesteps = try integer(.numTrainTimesteps, config.numTrainTimesteps)
        config.betaStart = try value(.betaStart, config.betaStart)
        config.betaEnd = try value(.betaEnd, config.betaEnd)
        config.betaSchedule = try enumValue(.betaSchedule, BetaSchedule.self) ?? config.betaSchedule
        config.trainedBetas = try c.decodeIfPresent([Double].self, forKey: .trainedBetas)
        config.predictionType = try enumValue(.predictionType, PredictionType.self) ?? config.predictionType
        config.timestepSpacing = try enumValue(.timestepSpacing, TimestepSpacing.self)
        config.stepsOffset = try integer(.stepsOffset, config.stepsOffset)
        config.clipSample = try value(.clipSample, config.clipSample)
        config.clipSampleRange = try value(.clipSampleRange, config.clipSampleRange)
        config.setAlphaToOneValue = try c.decodeIfPresent(Bool.self, forKey: .setAlphaToOne)
        config.skipPrkSteps = try value(.skipPrkSteps, config.skipPrkSteps)
        config.solverOrder = try integer(.solverOrder, config.solverOrder)
        config.algorithmType = try value(.algorithmType, config.algorithmType)
        config.solverType = try value(.solverType, config.solverType)
        config.lowerOrderFinal = try value(.lowerOrderFinal, config.lowerOrderFinal)
        config.eulerAtFinal = try value(.eulerAtFinal, config.eulerAtFinal)
        if let clipped = try c.decodeIfPresent(Double.self, forKey: .lambdaMinClipped), clipped != -.infinity {
            config.lambdaMinClipped = clipped
        }
        config.useLuLambdas = try value(.useLuLambdas, config.useLuLambdas)
        config.useFlowSigmas = try value(.useFlowSigmas, config.useFlowSigmas)
        config.useDynamicShifting = try value(.useDynamicShifting, config.useDynamicShifting)
        config.thresholding = try value(.thresholding, config.thresholding)
        config.varianceType = try value(.varianceType, config.varianceType)
        config.interpolationType = try value(.interpolationType, config.interpolationType)
        config.finalSigmasType = try value(.finalSigmasType, config.finalSigmasType)
        config.timestepType = try value(.timestepType, config.timestepType)
        config.useKarrasSigmas = try value(.useKarrasSigmas, config.useKarrasSigmas)
        config.useExponentialSigmas = try value(.useExponentialSigmas, config.useExponentialSigmas)
        config.useBetaSigmas = try value(.useBetaSigmas, config.useBetaSigmas)
        config.rescaleBetasZeroSnr = try value(.rescaleBetasZeroSnr, config.rescaleBetasZeroSnr)
        self = config
    }

    /// Writes the config with diffusers' key names (the spacing only when it was set).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(className, forKey: .className)
        try c.encode(numTrainTimesteps, forKey: .numTrainTimesteps)
        try c.encode(betaStart, forKey: .betaStart)
        try c.encode(betaEnd, forKey: .betaEnd)
        try c.encode(betaSchedule, forKey: .betaSchedule)
        try c.encodeIfPresent(trainedBetas, forKey: .trainedBetas)
        try c.encode(predictionType, forKey: .predictionType)
        try c.encodeIfPresent(timestepSpacing, forKey: .timestepSpacing)
        try c.encode(stepsOffset, forKey: .stepsOffset)
        try c.encode(clipSample, forKey: .clipSample)
        try c.encode(clipSampleRange, forKey: .clipSampleRange)
        try c.encodeIfPresent(setAlphaToOneValue, forKey: .setAlphaToOne)
        try c.encode(skipPrkSteps, forKey: .skipPrkSteps)
        try c.encode(solverOrder, forKey: .solverOrder)
        try c.encode(algorithmType, forKey: .algorithmType)
        try c.encode(solverType, forKey: .solverType)
        try c.encode(lowerOrderFinal, forKey: .lowerOrderFinal)
        try c.encode(eulerAtFinal, forKey: .eulerAtFinal)
        try c.encodeIfPresent(lambdaMinClipped, forKey: .lambdaMinClipped)
        try c.encode(useLuLambdas, forKey: .useLuLambdas)
        try c.encode(useFlowSigmas, forKey: .useFlowSigmas)
        try c.encode(useDynamicShifting, forKey: .useDynamicShifting)
        try c.encode(thresholding, forKey: .thresholding)
        try c.encode(varianceType, forKey: .varianceType)
        try c.encode(interpolationType, forKey: .interpolationType)
        try c.encode(finalSigmasType, forKey: .finalSigmasType)
        try c.encode(timestepType, forKey: .timestepType)
        try c.encode(useKarrasSigmas, forKey: .useKarrasSigmas)
        try c.encode(useExponentialSigmas, forKey: .useExponentialSigmas)
        try c.encode(useBetaSigmas, forKey: .useBetaSigmas)
        try c.encode(rescaleBetasZeroSnr, forKey: .rescaleBetasZeroSnr)
    }
}

/// Errors from reading a scheduler config or building a sampling schedule.
public enum SchedulerError: Error, Equatable, CustomStringConvertible {
    /// A key holds a value this package does not implement (or diffusers does not know).
    case unsupportedValue(key: String, value: String, supported: [String], source: String)
    /// A key holds a value of the wrong type or out of range.
    case invalidValue(key: String, reason: String, source: String)
    /// The file could not be read or is not a JSON object.
    case unreadableConfig(source: String, reason: String)
    /// `steps` is not in 1...`numTrainTimesteps` (the Euler schedulers' limit is
    /// `EulerDiscreteScheduler.maxSteps` instead; PNDM's Runge–Kutta warm-up needs at least 4).
    case invalidStepCount(steps: Int, numTrainTimesteps: Int)
    /// A combination of steps and options the scheduler cannot build a table for.
    case invalidSchedule(reason: String, source: String)
    /// The spacing produced a timestep outside 0..<num_train_timesteps (e.g. `leading` with
    /// `steps_offset` 1 and as many steps as training timesteps, or `trailing` with a step count
    /// where numpy's arange yields one value too many). diffusers would index out of range.
    case timestepOutOfRange(timestep: Int, steps: Int, spacing: TimestepSpacing, source: String)

    public var description: String {
        switch self {
        case let .unsupportedValue(key, value, supported, source):
            return "\(source): unsupported \(key) \"\(value)\" (supported: \(supported.joined(separator: ", ")))"
        case let .invalidValue(key, reason, source):
            return "\(source): invalid \(key): \(reason)"
        case let .unreadableConfig(source, reason):
            return "\(source): cannot read scheduler config: \(reason)"
        case let .invalidStepCount(steps, n):
            return "number of inference steps \(steps) must be in 1...\(n)"
        case let .invalidSchedule(reason, source):
            return "\(source): \(reason)"
        case let .timestepOutOfRange(t, steps, spacing, source):
            return "\(source): \(spacing.rawValue) spacing with \(steps) steps gives timestep \(t), outside the training range"
        }
    }
}
