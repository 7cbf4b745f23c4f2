import Foundation
import Tensor

/// DPM-Solver and DPM-Solver++ multistep (Lu et al. 2022, arXiv 2206.00927 and 2211.01095), as
/// diffusers' `DPMSolverMultistepScheduler`; its defaults are DPM-Solver++ 2M.
///
/// The sample lives in the variance-preserving form xₜ = αₜ·x₀ + σₜ·ε with αₜ = 1/√(s² + 1),
/// σₜ = s·αₜ for the table's noise level s, and λₜ = log(αₜ/σₜ). Each step turns the model output
/// into x̂₀ (DPM-Solver++, `algorithm_type` dpmsolver++) or ε̂ (dpmsolver) and integrates the
/// probability-flow ODE exactly in λ with a polynomial through the last `solver_order` of those
/// (h = λ_next − λₜ); DPM-Solver++ first order:
///
///     x_next = (σ_next/σₜ)·xₜ − α_next·(e^(−h) − 1)·x̂₀
///
/// Runs start at first order and climb one order per step. With `lower_order_final` (default) runs
/// under 15 steps end in lower order, and a final σ of 0 (`final_sigmas_type` zero, the default)
/// always ends with a first-order step; `euler_at_final` forces that too.
///
/// Implemented: `solver_order` 1, 2, 3; `algorithm_type` dpmsolver++ and dpmsolver (the latter
/// needs `final_sigmas_type` sigma_min, as in diffusers); `solver_type` midpoint and heun;
/// `use_karras_sigmas`; `final_sigmas_type` zero and sigma_min; `lower_order_final`;
/// `euler_at_final`; `lambda_min_clipped`; every `timestep_spacing` (default linspace); prediction
/// types epsilon, v_prediction and sample. Refused by name: the SDE variants (sde-dpmsolver,
/// sde-dpmsolver++), thresholding, learned variance, exponential/beta/flow sigmas, Lu lambdas,
/// dynamic shifting, zero-SNR rescaling.
public struct DPMSolverMultistepScheduler: NoiseScheduler {
    public enum Algorithm: String, Sendable, CaseIterable {
        /// Integrates the data prediction x̂₀ (DPM-Solver++).
        case dpmSolverPlusPlus = "dpmsolver++"
        /// Integrates the noise prediction ε̂ (the original DPM-Solver).
        case dpmSolver = "dpmsolver"
    }

    public enum SolverType: String, Sendable, CaseIterable {
        case midpoint, heun
    }

    public let config: SchedulerConfig
    public let noiseSchedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    public let algorithm: Algorithm
    public let solverType: SolverType
    public let solverOrder: Int
    /// σ of each training timestep, ascending in t.
    public let trainSigmas: [Double]
    let finalSigmaIsMinimum: Bool

    public init(config: SchedulerConfig) throws {
        let source = config.source
        // diffusers maps DEIS's and UniPC's values (a config written for those classes) as here.
        algorithm = config.algorithmType == "deis" ? .dpmSolverPlusPlus
            : try config.parse(config.algorithmType, key: "algorithm_type", as: Algorithm.self)
        solverType = ["logrho", "bh1", "bh2"].contains(config.solverType) ? .midpoint
            : try config.parse(config.solverType, key: "solver_type", as: SolverType.self)
        guard (1...3).contains(config.solverOrder) else {
            throw SchedulerError.unsupportedValue(key: "solver_order", value: "\(config.solverOrder)",
                                                  supported: ["1", "2", "3"], source: source)
        }
        solverOrder = config.solverOrder
        switch config.finalSigmasType {
        case "zero": finalSigmaIsMinimum = false
        case "sigma_min": finalSigmaIsMinimum = true
        default:
            throw SchedulerError.unsupportedValue(key: "final_sigmas_type", value: config.finalSigmasType,
                                                  supported: ["zero", "sigma_min"], source: source)
        }
        if algorithm == .dpmSolver && !finalSigmaIsMinimum {
            throw SchedulerError.invalidValue(
                key: "final_sigmas_type", reason: "zero is not supported with algorithm_type dpmsolver; use sigma_min",
                source: source)
        }
        if ["learned", "learned_range"].contains(config.varianceType) {
            throw SchedulerError.unsupportedValue(key: "variance_type", value: config.varianceType,
                                                  supported: ["null"], source: source)
        }
        try config.requireFalse(config.thresholding, key: "thresholding")
        try config.requireFalse(config.useExponentialSigmas, key: "use_exponential_sigmas")
        try config.requireFalse(config.useBetaSigmas, key: "use_beta_sigmas")
        try config.requireFalse(config.useLuLambdas, key: "use_lu_lambdas")
        try config.requireFalse(config.useFlowSigmas, key: "use_flow_sigmas")
        try config.requireFalse(config.useDynamicShifting, key: "use_dynamic_shifting")
        if let clipped = config.lambdaMinClipped, clipped.isNaN {
            throw SchedulerError.invalidValue(key: "lambda_min_clipped", reason: "is NaN", source: source)
        }
        self.config = config
        self.noiseSchedule = try NoiseSchedule(config: config)
        self.timestepSpacing = config.spacing(default: .linspace)
        self.trainSigmas = noiseSchedule.sigmas
    }

    public func schedule(steps n: Int) throws -> SamplingSchedule {
        let total = numTrainTimesteps
        guard n >= 1 && n <= total else { throw SchedulerError.invalidStepCount(steps: n, numTrainTimesteps: total) }
        var timesteps: [Double]
        var sigmas: [Double]
        if config.useKarrasSigmas {
            // Karras et al.'s ρ = 7 ramp between the training range's σ, mapped back to timesteps
            // by interpolating log σ (rounded, except for the cosine schedule; then truncated to
            // integers, as diffusers' int64 cast does).
            sigmas = Self.karrasSigmas(min: trainSigmas[0], max: trainSigmas[total - 1], count: n)
            let logSigmas = trainSigmas.map { Foundation.log($0) }
            timesteps = sigmas.map { Self.timestep(sigma: $0, logSigmas: logSigmas) }
            if config.betaSchedule != .squaredcosCapV2 {
                timesteps = timesteps.map(NumpyReplica.round)
            }
            timesteps = timesteps.map { $0.rounded(.towardZero) }
        } else {
            timesteps = try table(steps: n).map(Double.init)
            sigmas = timesteps.map { trainSigmas[Int($0)] }
        }
        sigmas.append(finalSigmaIsMinimum ? trainSigmas[0] : 0)
        return SamplingSchedule(timesteps: timesteps.map { Float($0) }, sigmas: sigmas, inferenceSteps: n)
    }

    /// The integer timestep table without Karras sigmas, descending; it ends where λ(t) drops
    /// below `lambda_min_clipped`.
    func table(steps n: Int) throws -> [Int] {
        let total = numTrainTimesteps
        var last = total
        if let clipped = config.lambdaMinClipped {
            // diffusers: searchsorted over the ascending λ (t from T − 1 down to 0).
            last = total - noiseSchedule.alphasCumprod.filter { Self.lambda(alphaCumprod: $0) < clipped }.count
        }
        let table: [Int]
        switch timestepSpacing {
        case .linspace:
            table = NumpyReplica.linspace(0, Double(last - 1), count: n + 1).map { Int(NumpyReplica.round($0)) }
                .reversed().dropLast()
        case .leading:
            let ratio = last / (n + 1)
            table = (0...n).reversed().dropLast().map { $0 * ratio + config.stepsOffset }
        case .trailing:
            table = NumpyReplica.arange(Double(last), 0, step: -(Double(total) / Double(n)))
                .map { Int(NumpyReplica.round($0)) - 1 }
        }
        if let bad = table.first(where: { $0 < 0 || $0 >= total }) {
            throw SchedulerError.timestepOutOfRange(timestep: bad, steps: n, spacing: timestepSpacing, source: config.source)
        }
        if table.isEmpty {
            throw SchedulerError.invalidSchedule(reason: "lambda_min_clipped leaves no timesteps for \(n) steps",
                                                 source: config.source)
        }
        return table
    }

    static func lambda(alphaCumprod a: Double) -> Double { 0.5 * (Foundation.log(a) - Foundation.log(1 - a)) }

    /// Karras et al. (2022) eq. 5: σᵢ = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, ρ = 7.
    static func karrasSigmas(min: Double, max: Double, count n: Int) -> [Double] {
        let rho = 7.0
        let lo = Foundation.pow(min, 1 / rho), hi = Foundation.pow(max, 1 / rho)
        return NumpyReplica.linspace(0, 1, count: n).map { Foundation.pow(hi + $0 * (lo - hi), rho) }
    }

    /// diffusers' `_sigma_to_t`: the fractional timestep whose log σ interpolates to log `sigma`.
    static func timestep(sigma: Double, logSigmas: [Double]) -> Double {
        let logSigma = Foundation.log(Swift.max(sigma, 1e-10))
        let count = logSigmas.count
        // The last node at or below log σ (0 when none), at most the second-to-last node.
        let atOrBelow = logSigmas.lastIndex(where: { logSigma - $0 >= 0 }) ?? 0
        let low = Swift.min(atOrBelow, count - 2), high = low + 1
        let w = Swift.min(Swift.max((logSigmas[low] - logSigma) / (logSigmas[low] - logSigmas[high]), 0), 1)
        return (1 - w) * Double(low) + w * Double(high)
    }

    /// αₜ, σₜ and λₜ of the table's noise level s (λ = +∞ at s = 0).
    static func coefficients(_ s: Double) -> (alpha: Double, sigma: Double, lambda: Double) {
        let alpha = 1 / (s * s + 1).squareRoot(), sigma = s * alpha
        return (alpha, sigma, Foundation.log(alpha) - Foundation.log(sigma))
    }

    public func addsNoise(index: Int, of schedule: SamplingSchedule) -> Bool { false }

    /// The order step `index` of a schedule of `count` steps uses, `previous` steps into its run.
    func order(index: Int, count: Int, previous: Int) -> Int {
        let lowerFinal = index == count - 1
            && (config.eulerAtFinal || (config.lowerOrderFinal && count < 15) || !finalSigmaIsMinimum)
        let lowerSecond = index == count - 2 && config.lowerOrderFinal && count < 15
        if solverOrder == 1 || previous < 1 || lowerFinal { return 1 }
        if solverOrder == 2 || previous < 2 || lowerSecond { return 2 }
        return 3
    }

    public func step(modelOutput: Tensor, index: Int, of schedule: SamplingSchedule, sample: Tensor,
                     noise: Tensor?) -> SchedulerStepOutput {
        precondition(modelOutput.shape == sample.shape, "DPM-Solver step: output \(modelOutput.shape) vs sample \(sample.shape)")
        precondition(schedule.sigmas.count == schedule.count + 1, "DPM-Solver step needs a schedule made by a DPM-Solver scheduler")
        let s0 = Self.coefficients(schedule.sigmas[index])
        let (x0, eps) = SchedulerMath.splitPrediction(modelOutput, sample: sample, sqrtAlpha: s0.alpha, sqrtBeta: s0.sigma,
                                                      type: config.predictionType)
        let converted = algorithm == .dpmSolverPlusPlus ? x0 : eps
        let run = schedule.history.record(index: index, output: converted, sample: sample)
        let previous = Swift.min(index - run.start, solverOrder)
        let order = order(index: index, count: schedule.count, previous: previous)

        let t = Self.coefficients(schedule.sigmas[index + 1])
        let h = t.lambda - s0.lambda
        let m0 = converted
        var prev: Tensor
        // dpmsolver++ integrates x̂₀ with e^(−h) terms, dpmsolver ε̂ with e^(h) terms.
        let plus = algorithm == .dpmSolverPlusPlus
        let phi = plus ? t.alpha * (Foundation.exp(-h) - 1) : t.sigma * (Foundation.exp(h) - 1)
        let sampleCoefficient = plus ? t.sigma / s0.sigma : t.alpha / s0.alpha
        switch order {
        case 1:
            prev = sample * Float(sampleCoefficient) - m0 * Float(phi)
        case 2:
            let s1 = Self.coefficients(schedule.sigmas[index - 1])
            let m1 = run.steps[index - 1]!.output
            let r0 = (s0.lambda - s1.lambda) / h
            let d1 = (m0 - m1) * Float(1 / r0)
            let d1Coefficient: Double
            switch (solverType, plus) {
            case (.midpoint, _): d1Coefficient = -0.5 * phi
            case (.heun, true): d1Coefficient = t.alpha * ((Foundation.exp(-h) - 1) / h + 1)
            case (.heun, false): d1Coefficient = -t.sigma * ((Foundation.exp(h) - 1) / h - 1)
            }
            prev = sample * Float(sampleCoefficient) - m0 * Float(phi) + d1 * Float(d1Coefficient)
        default:
            let s1 = Self.coefficients(schedule.sigmas[index - 1]), s2 = Self.coefficients(schedule.sigmas[index - 2])
            let m1 = run.steps[index - 1]!.output, m2 = run.steps[index - 2]!.output
            let r0 = (s0.lambda - s1.lambda) / h, r1 = (s1.lambda - s2.lambda) / h
            let d10 = (m0 - m1) * Float(1 / r0), d11 = (m1 - m2) * Float(1 / r1)
            let d1 = d10 + (d10 - d11) * Float(r0 / (r0 + r1))
            let d2 = (d10 - d11) * Float(1 / (r0 + r1))
            let (c1, c2): (Double, Double)
            if plus {
                c1 = t.alpha * ((Foundation.exp(-h) - 1) / h + 1)
                c2 = -t.alpha * ((Foundation.exp(-h) - 1 + h) / (h * h) - 0.5)
            } else {
                c1 = -t.sigma * ((Foundation.exp(h) - 1) / h - 1)
                c2 = -t.sigma * ((Foundation.exp(h) - 1 - h) / (h * h) - 0.5)
            }
            prev = sample * Float(sampleCoefficient) - m0 * Float(phi) + d1 * Float(c1) + d2 * Float(c2)
        }
        return SchedulerStepOutput(prevSample: prev, predictedOriginal: x0)
    }
}
