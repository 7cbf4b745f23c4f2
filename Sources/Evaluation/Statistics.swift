import Erasure
import Foundation

// The intervals a benchmark table carries. Proportions (Acc_e, Acc_g, per-class Acc_s, attack
// success rates) get the 95% Wilson score interval of the pooled counts. H_o, a harmonic mean of
// three rates, has no closed form: it gets a percentile bootstrap that resamples erasure seeds
// and images together. Every method is sampled with the same noise (image k of a prompt list comes
// from the stream (evaluation seed, k)), so image k is one shared unit across methods and seeds:
// a replicate draws one set of image indices and applies it to every cell, which is what makes
// two rows paired and their difference testable.

/// A figure with its 95% interval.
public struct Estimate: Codable, Sendable, Equatable {
    public var value: Double
    public var low: Double
    public var high: Double
    /// Pooled successes and trials behind a Wilson interval; nil for bootstrap intervals.
    public var successes: Int?
    public var trials: Int?
    /// "wilson", "bootstrap (seeds × images, N replicates)" or "seeds × held-out trajectories".
    public var method: String

    public init(value: Double, low: Double, high: Double, successes: Int? = nil, trials: Int? = nil, method: String) {
        (self.value, self.low, self.high, self.successes, self.trials, self.method) = (value, low, high, successes, trials, method)
    }

    /// A proportion of pooled counts with its Wilson interval.
    public static func wilson(successes: Int, trials: Int) -> Estimate {
        let (low, high) = wilsonInterval(successes: successes, trials: trials)
        return Estimate(value: trials > 0 ? Double(successes) / Double(trials) : 0, low: low, high: high,
                        successes: successes, trials: trials, method: "wilson")
    }

    /// "62.5% [30.6, 86.3]" (percent) or "0.012 [0.003, 0.020]".
    public func text(percent: Bool = true, digits: Int = 1) -> String {
        let scale = percent ? 100.0 : 1.0, f = "%.\(digits)f"
        return String(format: "\(f)\(percent ? "%%" : "") [\(f), \(f)]", value * scale, low * scale, high * scale)
    }
}

/// Deterministic draws for resampling (SplitMix64): the same seed gives the same intervals.
struct ResamplingGenerator {
    private var bits: SplitMix64

    init(seed: UInt64) { bits = SplitMix64(seed: seed) }

    mutating func next() -> UInt64 { bits.next() }

    /// Uniform in 0..<n.
    mutating func index(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// Standard normal (Box–Muller).
    mutating func normal() -> Double {
        let u1 = (Double(next() >> 11) + 0.5) / 9_007_199_254_740_992, u2 = Double(next() >> 11) / 9_007_199_254_740_992
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }
}

/// The 2.5% and 97.5% percentiles of `values` (linear interpolation between order statistics).
func percentileInterval(_ values: [Double]) -> (low: Double, high: Double) {
    let sorted = values.sorted()
    func quantile(_ q: Double) -> Double {
        guard sorted.count > 1 else { return sorted.first ?? .nan }
        let position = q * Double(sorted.count - 1), below = Int(position.rounded(.down))
        let above = min(below + 1, sorted.count - 1), weight = position - Double(below)
        return sorted[below] * (1 - weight) + sorted[above] * weight
    }
    return (quantile(0.025), quantile(0.975))
}

/// What the judge said about each image of one cell's evaluation: enough to recompute Acc_e,
/// Acc_g, Acc_s and H_o on any resample of the images.
public struct JudgedImages: Codable, Sendable, Equatable {
    /// Predicted class of each target-prompt image, paraphrase image and retained-class image.
    public var target: [Int]
    public var paraphrase: [Int]
    public var retained: [Int]
    /// The class each retained image was prompted as.
    public var retained_labels: [Int]

    public init(target: [Int], paraphrase: [Int], retained: [Int], retainedLabels: [Int]) {
        (self.target, self.paraphrase, self.retained, retained_labels) = (target, paraphrase, retained, retainedLabels)
    }
}

/// One bootstrap draw of image indices, shared by every cell it is applied to.
struct ImageResample {
    var target: [Int]
    var paraphrase: [Int]
    /// Retained images resampled within each class, so every class keeps its count.
    var retained: [Int]

    /// The identity draw: the images as measured.
    init(identityFor images: JudgedImages) {
        target = Array(images.target.indices)
        paraphrase = Array(images.paraphrase.indices)
        retained = Array(images.retained.indices)
    }

    init(for images: JudgedImages, generator: inout ResamplingGenerator) {
        target = images.target.indices.map { _ in generator.index(images.target.count) }
        paraphrase = images.paraphrase.indices.map { _ in generator.index(images.paraphrase.count) }
        var byClass: [Int: [Int]] = [:]
        for (i, label) in images.retained_labels.enumerated() { byClass[label, default: []].append(i) }
        retained = images.retained_labels.map { label in
            let members = byClass[label]!
            return members[generator.index(members.count)]
        }
    }
}

/// Acc_e, Acc_g, Acc_s (mean of per-class rates) and H_o of `cells` pooled, each read at `draw`.
func pooledAccuracies(_ cells: [JudgedImages], label: Int, draw: ImageResample) -> (accE: Double, accG: Double, accS: Double, hO: Double) {
    var targetHits = 0, paraphraseHits = 0
    var classHits: [Int: (hits: Int, total: Int)] = [:]
    for cell in cells {
        targetHits += draw.target.filter { cell.target[$0] == label }.count
        paraphraseHits += draw.paraphrase.filter { cell.paraphrase[$0] == label }.count
        for i in draw.retained {
            let truth = cell.retained_labels[i]
            classHits[truth, default: (0, 0)].total += 1
            if cell.retained[i] == truth { classHits[truth, default: (0, 0)].hits += 1 }
        }
    }
    let accE = Double(targetHits) / Double(max(1, cells.count * draw.target.count))
    let accG = Double(paraphraseHits) / Double(max(1, cells.count * draw.paraphrase.count))
    let accS = classHits.values.map { Double($0.hits) / Double($0.total) }.reduce(0, +) / Double(max(1, classHits.count))
    return (accE, accG, accS, harmonicMean([1 - accE, accS, 1 - accG]))
}

public enum BenchmarkStatistics {
    /// Bootstrap replicates of every interval and test.
    public static let replicates = 2000

    /// H_o of the seeds' cells pooled, with a percentile bootstrap interval that resamples the
    /// erasure seeds (cells) and, within one replicate, the images shared by all of them.
    public static func hO(_ cells: [JudgedImages], label: Int, replicates: Int = replicates, seed: UInt64 = 0) -> Estimate? {
        guard let first = cells.first, cells.allSatisfy({ $0.target.count == first.target.count && $0.paraphrase.count == first.paraphrase.count && $0.retained_labels == first.retained_labels }) else { return nil }
        let value = pooledAccuracies(cells, label: label, draw: ImageResample(identityFor: first)).hO
        var generator = ResamplingGenerator(seed: seed)
        let draws = (0..<replicates).map { _ -> Double in
            let chosen = cells.indices.map { _ in cells[generator.index(cells.count)] }
            return pooledAccuracies(chosen, label: label, draw: ImageResample(for: first, generator: &generator)).hO
        }
        let (low, high) = percentileInterval(draws)
        return Estimate(value: value, low: low, high: high, method: "bootstrap (seeds × images, \(replicates) replicates)")
    }

    /// Mean Î over seeds with a two-stage bootstrap interval: seeds resampled, and each drawn
    /// seed's Î perturbed by its own sampling error over held-out trajectories, taken as normal
    /// with the standard deviation its recorded 95% interval implies (cells keep the interval,
    /// not the per-trajectory terms). One seed gives its own interval unchanged.
    public static func leakage(_ reports: [(nats: Double, low: Double, high: Double)], replicates: Int = replicates, seed: UInt64 = 0) -> Estimate? {
        guard !reports.isEmpty else { return nil }
        let mean = reports.map(\.nats).reduce(0, +) / Double(reports.count)
        if reports.count == 1 {
            return Estimate(value: mean, low: reports[0].low, high: reports[0].high, method: "held-out trajectories (one seed)")
        }
        var generator = ResamplingGenerator(seed: seed)
        let draws = (0..<replicates).map { _ -> Double in
            (0..<reports.count).map { _ in
                let r = reports[generator.index(reports.count)]
                return r.nats + generator.normal() * (r.high - r.low) / (2 * 1.959963984540054)
            }.reduce(0, +) / Double(reports.count)
        }
        let (low, high) = percentileInterval(draws)
        return Estimate(value: mean, low: low, high: high, method: "bootstrap (seeds × held-out trajectories, \(replicates) replicates)")
    }

    /// Whether a row's H_o differs from a reference row's (SCORE's) on the same images: a paired
    /// bootstrap. Each replicate draws one set of image indices for both rows and resamples each
    /// row's erasure seeds on its own (two methods' seeds are independent erasures, not pairs);
    /// p is twice the share of replicates whose difference falls on the far side of 0, at most 1.
    public static func pairedHODifference(_ cells: [JudgedImages], reference: [JudgedImages], label: Int,
                                          replicates: Int = replicates, seed: UInt64 = 0) -> PairedComparison? {
        guard let first = cells.first, let ref = reference.first, first.retained_labels == ref.retained_labels,
              first.target.count == ref.target.count, first.paraphrase.count == ref.paraphrase.count,
              hO(cells + reference, label: label, replicates: 1) != nil else { return nil }
        let identity = ImageResample(identityFor: first)
        let difference = pooledAccuracies(cells, label: label, draw: identity).hO - pooledAccuracies(reference, label: label, draw: identity).hO
        var generator = ResamplingGenerator(seed: seed)
        let draws = (0..<replicates).map { _ -> Double in
            let draw = ImageResample(for: first, generator: &generator)
            let a = cells.indices.map { _ in cells[generator.index(cells.count)] }
            let b = reference.indices.map { _ in reference[generator.index(reference.count)] }
            return pooledAccuracies(a, label: label, draw: draw).hO - pooledAccuracies(b, label: label, draw: draw).hO
        }
        let below = draws.filter { $0 <= 0 }.count, above = draws.filter { $0 >= 0 }.count
        let p = min(1, 2 * Double(min(below, above)) / Double(replicates))
        let (low, high) = percentileInterval(draws)
        return PairedComparison(metric: "h_o", difference: Estimate(value: difference, low: low, high: high,
                                                                    method: "paired bootstrap (images shared, seeds per row, \(replicates) replicates)"),
                                p_value: p, differs: p < 0.05)
    }
}

/// A row compared with the reference row on the same images.
public struct PairedComparison: Codable, Sendable, Equatable {
    public var metric: String
    /// This row's figure minus the reference's, with its 95% interval.
    public var difference: Estimate
    public var p_value: Double
    /// p < 0.05.
    public var differs: Bool
}
