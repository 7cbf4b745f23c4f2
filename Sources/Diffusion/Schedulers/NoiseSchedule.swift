import Foundation

/// The training-time noise schedule: βₜ and ᾱₜ = ∏ₛ≤ₜ (1 − βₛ) for t in 0..<T, in Float64.
///
/// diffusers builds these in float32 (torch.linspace / cumprod); here they come from the formulas
/// in Float64, so they are the exact values those float32 ones approximate. The two agree to
/// about 1e-6 relative everywhere except where the cosine schedule caps βₜ at 0.999: 1 − 0.999
/// loses four digits in float32, so diffusers' ᾱ₉₉₉ is 1.3e-5 relative off the exact value.
public struct NoiseSchedule: Sendable, Equatable {
    public let betas: [Double]
    public let alphasCumprod: [Double]

    public init(config: SchedulerConfig) throws {
        try config.validateCommon()
        let n = config.numTrainTimesteps
        let betas: [Double]
        if let trained = config.trainedBetas {
            betas = trained
        } else {
            switch config.betaSchedule {
            case .linear:
                betas = NumpyReplica.linspace(config.betaStart, config.betaEnd, count: n)
            case .scaledLinear:
                betas = NumpyReplica.linspace(config.betaStart.squareRoot(), config.betaEnd.squareRoot(), count: n).map { $0 * $0 }
            case .squaredcosCapV2:
                betas = NoiseSchedule.cosineBetas(count: n)
            }
        }
        if let bad = betas.firstIndex(where: { !($0 >= 0 && $0 < 1) }) {
            throw SchedulerError.invalidValue(key: config.trainedBetas == nil ? "beta_start/beta_end" : "trained_betas",
                                              reason: "beta[\(bad)] = \(betas[bad]) is not in [0, 1)",
                                              source: config.source)
        }
        var product = 1.0
        self.betas = betas
        self.alphasCumprod = betas.map { beta in
            product *= 1 - beta
            return product
        }
    }

    /// GLIDE's cosine schedule, βₜ = min(1 − f((t+1)/T)/f(t/T), 0.999), f(s) = cos²((s+0.008)/1.008·π/2).
    static func cosineBetas(count n: Int, maxBeta: Double = 0.999) -> [Double] {
        func alphaBar(_ s: Double) -> Double {
            let c = Foundation.cos((s + 0.008) / 1.008 * Double.pi / 2)
            return c * c
        }
        return (0..<n).map { i in
            min(1 - alphaBar(Double(i + 1) / Double(n)) / alphaBar(Double(i) / Double(n)), maxBeta)
        }
    }

    /// T, the number of training timesteps.
    public var count: Int { alphasCumprod.count }

    /// ᾱ at a training timestep; `nil` timesteps (before the first, t < 0) give `final`.
    @inline(__always)
    func alphaCumprod(_ t: Int, final: Double) -> Double { t >= 0 ? alphasCumprod[t] : final }

    /// The variance-exploding noise level σₜ = √((1 − ᾱₜ)/ᾱₜ) of each training timestep
    /// (k-diffusion's sigmas, used by the Euler scheduler), ascending in t.
    public var sigmas: [Double] { alphasCumprod.map { ((1 - $0) / $0).squareRoot() } }
}

// MARK: numpy replicas (diffusers computes timestep tables with numpy; these reproduce it exactly)

enum NumpyReplica {
    /// `np.linspace(start, stop, count)`: i·step + start with step = (stop − start)/(count − 1), and
    /// the last value set to `stop` exactly.
    static func linspace(_ start: Double, _ stop: Double, count: Int) -> [Double] {
        guard count > 1 else { return count == 1 ? [start] : [] }
        let step = (stop - start) / Double(count - 1)
        var values = (0..<count).map { Double($0) * step + start }
        values[count - 1] = stop
        return values
    }

    /// `np.arange(start, stop, step)` for floats: ⌈(stop − start)/step⌉ values; the first two are
    /// start and start + step, and the rest start + i·δ with δ = (start + step) − start recomputed
    /// (numpy's fill). Its length can exceed what one expects from rounding (1000/61 steps give 62).
    static func arange(_ start: Double, _ stop: Double, step: Double) -> [Double] {
        let length = max(0, Int(((stop - start) / step).rounded(.up)))
        guard length > 0 else { return [] }
        var values = [start]
        if length > 1 { values.append(start + step) }
        let delta = (start + step) - start
        if length > 2 { for i in 2..<length { values.append(start + Double(i) * delta) } }
        return values
    }

    /// numpy's `round`: to nearest, ties to even.
    @inline(__always)
    static func round(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

    /// `np.interp(x, 0..<fp.count, fp)`: linear interpolation on integer nodes, clamped at both ends.
    static func interpolateOnIntegerGrid(_ x: Double, _ fp: [Double]) -> Double {
        if x <= 0 { return fp[0] }
        let last = fp.count - 1
        if x >= Double(last) { return fp[last] }
        let i = Int(x.rounded(.down))
        let w = x - Double(i)
        if w == 0 { return fp[i] }
        return fp[i] + (fp[i + 1] - fp[i]) * w
    }
}

/// Inference timestep tables exactly as diffusers' `set_timesteps` builds them.
enum TimestepTable {
    /// DDPM / DDIM: integer timesteps, descending.
    static func discrete(spacing: TimestepSpacing, steps n: Int, trainTimesteps t: Int, offset: Int) -> [Int] {
        switch spacing {
        case .linspace:
            return NumpyReplica.linspace(0, Double(t - 1), count: n).map { Int(NumpyReplica.round($0)) }.reversed()
        case .leading:
            let ratio = t / n
            return (0..<n).reversed().map { $0 * ratio + offset }
        case .trailing:
            return NumpyReplica.arange(Double(t), 0, step: -(Double(t) / Double(n))).map { Int(NumpyReplica.round($0)) - 1 }
        }
    }

    /// Euler: float32 timesteps, descending (linspace spacing gives fractional values).
    static func continuous(spacing: TimestepSpacing, steps n: Int, trainTimesteps t: Int, offset: Int) -> [Float] {
        switch spacing {
        case .linspace:
            return NumpyReplica.linspace(0, Double(t - 1), count: n).map { Float($0) }.reversed()
        case .leading:
            let ratio = t / n
            return (0..<n).reversed().map { Float($0 * ratio) + Float(offset) }
        case .trailing:
            return NumpyReplica.arange(Double(t), 0, step: -(Double(t) / Double(n))).map { Float(NumpyReplica.round($0)) - 1 }
        }
    }
}
