import Foundation
import Tensor

// Does SCORE's leakage estimate predict which erasures the attacks break? Across benchmark rows
// (method × erased concept), Spearman's ρ between the leakage estimate Î and each attack's
// post-attack ASR, with a permutation p-value and a bootstrap interval: few rows, many ties
// (ASRs of 0 and 1), no normality to lean on.

/// Spearman's rank correlation of paired values with its uncertainty.
public struct RankCorrelation: Codable, Sendable, Equatable {
    /// ρ: Pearson's correlation of the ranks (ties get their average rank, as scipy's spearmanr).
    public var rho: Double
    public var n: Int
    /// Two-sided: the fraction of pairings of x with a permutation of y whose |ρ| is at least the
    /// observed |ρ|. Exact (all n! permutations) when n ≤ `exactLimit`, else Monte Carlo with the
    /// observed pairing counted, (1 + hits) / (1 + permutations).
    public var p_value: Double
    public var exact: Bool
    public var permutations: Int
    /// 95% percentile bootstrap interval of ρ over resampled pairs (resamples where ρ is
    /// undefined, x or y constant, are drawn again); nil when no resample defines ρ.
    public var ci_low: Double?
    public var ci_high: Double?
    public var resamples: Int

    /// Up to this many points the permutation test enumerates every permutation (8! = 40,320).
    public static let exactLimit = 8

    /// Average ranks (1-based) of `values`, ties sharing the mean of their positions.
    public static func ranks(_ values: [Double]) -> [Double] {
        let order = values.indices.sorted { values[$0] < values[$1] }
        var ranks = [Double](repeating: 0, count: values.count)
        var start = 0
        while start < order.count {
            var end = start
            while end + 1 < order.count && values[order[end + 1]] == values[order[start]] { end += 1 }
            let rank = Double(start + end) / 2 + 1
            for k in start...end { ranks[order[k]] = rank }
            start = end + 1
        }
        return ranks
    }

    /// Pearson's correlation; nil when either side is constant.
    static func pearson(_ x: [Double], _ y: [Double]) -> Double? {
        let n = Double(x.count)
        let mx = x.reduce(0, +) / n, my = y.reduce(0, +) / n
        var sxy = 0.0, sxx = 0.0, syy = 0.0
        for i in x.indices {
            sxy += (x[i] - mx) * (y[i] - my)
            sxx += (x[i] - mx) * (x[i] - mx)
            syy += (y[i] - my) * (y[i] - my)
        }
        guard sxx > 0, syy > 0 else { return nil }
        return sxy / (sxx * syy).squareRoot()
    }

    /// Spearman's ρ of `x` and `y`; nil when fewer than 2 pairs or either side is constant.
    public static func spearman(_ x: [Double], _ y: [Double]) -> Double? {
        precondition(x.count == y.count, "spearman: \(x.count) x values, \(y.count) y values")
        guard x.count >= 2 else { return nil }
        return pearson(ranks(x), ranks(y))
    }

    /// ρ with its permutation p-value and bootstrap interval; nil when ρ is undefined (fewer
    /// than 3 pairs, or x or y constant). Same inputs and seed, same numbers.
    public static func test(_ x: [Double], _ y: [Double], permutations: Int = 10_000, resamples: Int = 2000,
                            seed: UInt64 = 0) -> RankCorrelation? {
        precondition(x.count == y.count, "RankCorrelation: \(x.count) x values, \(y.count) y values")
        guard x.count >= 3, let rho = spearman(x, y) else { return nil }
        let n = x.count
        let rx = ranks(x), ry = ranks(y)
        // Rounding must not turn a tie with the observed |ρ| into a miss.
        let threshold = Swift.abs(rho) - 1e-12
        var generator = RandomGenerator(seed: seed)
        func index(_ count: Int) -> Int { min(count - 1, Int(generator.uniform([1]).item * Float(count))) }

        var p = 1.0, exact = false, count = 0
        if n <= exactLimit {
            var hits = 0, total = 0
            var permutation = Array(0..<n)
            // Heap's algorithm: every permutation once.
            func visit() {
                total += 1
                if let r = pearson(rx, permutation.map { ry[$0] }), Swift.abs(r) >= threshold { hits += 1 }
            }
            var c = [Int](repeating: 0, count: n)
            visit()
            var i = 0
            while i < n {
                if c[i] < i {
                    permutation.swapAt(i % 2 == 0 ? 0 : c[i], i)
                    visit()
                    c[i] += 1
                    i = 0
                } else {
                    c[i] = 0
                    i += 1
                }
            }
            (p, exact, count) = (Double(hits) / Double(total), true, total)
        } else {
            var hits = 0
            var shuffled = ry
            for _ in 0..<permutations {
                for i in stride(from: n - 1, to: 0, by: -1) { shuffled.swapAt(i, index(i + 1)) }
                if let r = pearson(rx, shuffled), Swift.abs(r) >= threshold { hits += 1 }
            }
            (p, exact, count) = (Double(1 + hits) / Double(1 + permutations), false, permutations)
        }

        var draws: [Double] = []
        var attempts = 0
        while draws.count < resamples && attempts < resamples * 20 {
            attempts += 1
            let picks = (0..<n).map { _ in index(n) }
            if let r = spearman(picks.map { x[$0] }, picks.map { y[$0] }) { draws.append(r) }
        }
        draws.sort()
        func quantile(_ q: Double) -> Double? {
            guard !draws.isEmpty else { return nil }
            // Linear interpolation between order statistics (numpy's default).
            let position = q * Double(draws.count - 1)
            let low = Int(position.rounded(.down)), high = min(low + 1, draws.count - 1)
            return draws[low] + (draws[high] - draws[low]) * (position - Double(low))
        }
        return RankCorrelation(rho: rho, n: n, p_value: p, exact: exact, permutations: count, ci_low: quantile(0.025),
                               ci_high: quantile(0.975), resamples: draws.count)
    }
}

/// The leakage estimate against each attack's post-attack ASR over a benchmark's rows.
public enum LeakageAttackCorrelation {
    /// One benchmark row: a method on a concept, its mean leakage Î over seeds and each attack's
    /// pooled post-attack ASR.
    public struct Row: Equatable, Sendable {
        public var concept: String
        public var method: String
        public var leakage: Double?
        public var asr: [String: Double]

        public init(concept: String, method: String, leakage: Double?, asr: [String: Double]) {
            self.concept = concept
            self.method = method
            self.leakage = leakage
            self.asr = asr
        }
    }

    /// The key of the column that takes, per row, the highest ASR of any attack it ran.
    public static let worstAttack = "any attack (highest ASR)"

    /// The rows of `cells` (the original model's excluded: it erased nothing), with `leakage`
    /// read from each cell's evaluation; ASRs pool successes over trials across seeds.
    public static func rows<E: Codable & Sendable>(_ cells: [BenchmarkCell<E>], leakage: (E) -> Double?) -> [Row] {
        benchmarkRows(cells).filter { $0.method != "original" }.map { concept, method, group in
            let values = group.compactMap { leakage($0.evaluation) }
            var asr: [String: Double] = [:]
            for key in Set(group.flatMap { $0.attacks.map { Array($0.keys) } ?? [] }) {
                let summaries = group.compactMap { $0.attacks?[key] }
                let trials = summaries.map(\.trials).reduce(0, +)
                if trials > 0 { asr[key] = Double(summaries.map(\.successes).reduce(0, +)) / Double(trials) }
            }
            if let worst = asr.values.max() { asr[worstAttack] = worst }
            return Row(concept: concept, method: method, leakage: values.isEmpty ? nil : values.reduce(0, +) / Double(values.count),
                       asr: asr)
        }
    }

    /// ρ per attack over the rows that have both a leakage estimate and that attack's ASR, for
    /// attacks with at least `minimumRows` such rows.
    public static func correlations(_ rows: [Row], minimumRows: Int = 3, seed: UInt64 = 0) -> [(attack: String, result: RankCorrelation?, rows: Int)] {
        let attacks = Set(rows.flatMap(\.asr.keys)).sorted { ($0 == worstAttack ? 1 : 0, $0) < ($1 == worstAttack ? 1 : 0, $1) }
        return attacks.compactMap { attack in
            let pairs = rows.compactMap { row in row.leakage.flatMap { l in row.asr[attack].map { (l, $0) } } }
            guard pairs.count >= minimumRows else { return nil }
            return (attack: attack, result: RankCorrelation.test(pairs.map(\.0), pairs.map(\.1), seed: seed), rows: pairs.count)
        }
    }

    /// A Markdown section for the benchmark report: one line per attack with at least 3 rows;
    /// "" when none has.
    public static func markdown(_ rows: [Row], minimumRows: Int = 3) -> String {
        let found = correlations(rows, minimumRows: minimumRows)
        guard !found.isEmpty else { return "" }
        var text = "\n### Leakage Î vs post-attack ASR (Spearman, rows = method × concept, original model excluded)\n\n"
        text += "| attack | rows | ρ | p (permutation) | 95% bootstrap CI |\n|---|---|---|---|---|\n"
        for (attack, result, count) in found {
            guard let r = result else {
                text += "| \(attack) | \(count) | undefined (constant leakage or ASR) | — | — |\n"
                continue
            }
            let ci = r.ci_low.flatMap { low in r.ci_high.map { String(format: "[%.2f, %.2f]", low, $0) } } ?? "—"
            text += String(format: "| %@ | %d | %.2f | %.3f%@ | %@ |\n", attack, count, r.rho, r.p_value, r.exact ? " (exact)" : "", ci)
        }
        return text + "\nA positive ρ: a lower leakage estimate goes with a lower ASR.\n"
    }
}
