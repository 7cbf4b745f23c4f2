@testable import Evaluation
import Foundation
import XCTest

final class RankCorrelationTests: XCTestCase {
    func testRanksAverageTies() {
        XCTAssertEqual(RankCorrelation.ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
        XCTAssertEqual(RankCorrelation.ranks([3, 1, 2]), [3, 1, 2])
        XCTAssertEqual(RankCorrelation.ranks([0, 0, 0]), [2, 2, 2])
    }

    func testSpearmanMatchesScipy() throws {
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]).statistic = 8/√95.
        XCTAssertEqual(try XCTUnwrap(RankCorrelation.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])), 0.8207826816681233, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(RankCorrelation.spearman([1, 2, 3, 4], [40, 30, 20, 10])), -1, accuracy: 1e-12)
        // A monotone transform changes nothing.
        XCTAssertEqual(try XCTUnwrap(RankCorrelation.spearman([0.1, 0.5, 0.2, 0.9], [1, 25, 4, 81])), 1, accuracy: 1e-12)
        XCTAssertNil(RankCorrelation.spearman([1, 2, 3], [0.5, 0.5, 0.5]))
        XCTAssertNil(RankCorrelation.test([1, 2], [1, 2]))
    }

    func testExactPermutationPValueOfAPerfectOrder() throws {
        // Of the 5! pairings only the order and its reverse reach |ρ| = 1: p = 2/120.
        let r = try XCTUnwrap(RankCorrelation.test([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]))
        XCTAssertEqual(r.rho, 1, accuracy: 1e-12)
        XCTAssertTrue(r.exact)
        XCTAssertEqual(r.permutations, 120)
        XCTAssertEqual(r.p_value, 2.0 / 120, accuracy: 1e-12)
        // Every bootstrap resample of a perfect order that defines ρ gives 1.
        XCTAssertEqual(try XCTUnwrap(r.ci_low), 1, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(r.ci_high), 1, accuracy: 1e-12)
        let reversed = try XCTUnwrap(RankCorrelation.test([1, 2, 3, 4, 5], [10, 8, 6, 4, 2]))
        XCTAssertEqual(reversed.p_value, r.p_value, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(reversed.ci_high), -1, accuracy: 1e-12)
    }

    func testExactPValueCountsByHand() throws {
        // x = 1…4, y a permutation with ρ = 0.8 (ranks 1 2 4 3): the pairings with |ρ| ≥ 0.8 are
        // the 4 with Σd² ≤ 2 (ρ ≥ 0.8) and the 4 with Σd² ≥ 18 (ρ ≤ −0.8), of 24.
        let r = try XCTUnwrap(RankCorrelation.test([1, 2, 3, 4], [1, 2, 4, 3]))
        XCTAssertEqual(r.rho, 0.8, accuracy: 1e-12)
        XCTAssertEqual(r.p_value, 8.0 / 24, accuracy: 1e-12)
    }

    func testMonteCarloPValueForManyPointsAndSameSeedSameNumbers() throws {
        let x = (0..<20).map(Double.init)
        let r = try XCTUnwrap(RankCorrelation.test(x, x.map { $0 * $0 }, permutations: 2000, resamples: 500, seed: 3))
        XCTAssertFalse(r.exact)
        XCTAssertEqual(r.p_value, 1.0 / 2001, accuracy: 1e-12)
        // Unrelated values: a large p, and an interval that covers 0.
        let y: [Double] = [3, 17, 8, 1, 12, 19, 5, 10, 14, 0, 7, 16, 2, 11, 18, 6, 9, 13, 4, 15]
        let noise = try XCTUnwrap(RankCorrelation.test(x, y, permutations: 2000, resamples: 500, seed: 3))
        XCTAssertGreaterThan(noise.p_value, 0.2, "ρ \(noise.rho)")
        XCTAssertLessThan(try XCTUnwrap(noise.ci_low), 0)
        XCTAssertGreaterThan(try XCTUnwrap(noise.ci_high), 0)
        XCTAssertEqual(RankCorrelation.test(x, y, permutations: 2000, resamples: 500, seed: 3), noise)
    }

    // MARK: Over benchmark cells

    func cell(_ method: String, seed: UInt64, leakage: Double?, attacks: [String: (Int, Int)]) -> ObjectBenchmarkCell {
        let evaluation = ObjectEvaluation(concept: "sneaker", label: 7, acc_e: 0.1, acc_s: 0.9, acc_g: 0, h_o: 0.9, kid: nil,
                                          kid_real: 1, acc_s_relative: nil, original: nil,
                                          second_judge: Accuracies(acc_e: 0.5, acc_s: 0.5, acc_g: 0.5, h_o: 0.5),
                                          per_class_accuracy: [:], target_classes: nil, leakage_nats: leakage, leakage_bound: nil,
                                          leakage: nil, settings: EvaluationSettings(), model: method, original_model: nil)
        let budget = AttackBudget(mode: "testbed", steps: 1, instances: 4, seeds: 1)
        var cell = ObjectBenchmarkCell(concept: "sneaker", method: method, seed: seed, evaluation: evaluation, wall_seconds: 1,
                                       parameters_changed: 1)
        cell.attacks = attacks.mapValues { AttackSummary(successes: $0.0, trials: $0.1, budget: budget) }
        return cell
    }

    func testRowsPoolSeedsSkipTheOriginalAndTheSectionNeedsThreeRows() throws {
        let cells = [
            cell("original", seed: 0, leakage: 0.9, attacks: ["cce": (4, 4)]),
            cell("esd-x", seed: 0, leakage: 0.4, attacks: ["cce": (3, 4), "p4d": (4, 4)]),
            cell("esd-x", seed: 1, leakage: 0.2, attacks: ["cce": (1, 4)]),
            cell("uce", seed: 0, leakage: 0.5, attacks: ["cce": (4, 4)]),
            cell("score", seed: 0, leakage: 0.01, attacks: ["cce": (0, 4), "p4d": (0, 4)]),
            cell("rece", seed: 0, leakage: nil, attacks: ["cce": (2, 4)]),
        ]
        let rows = LeakageAttackCorrelation.rows(cells) { $0.leakage_nats }
        XCTAssertEqual(rows.map(\.method), ["esd-x", "uce", "score", "rece"])
        XCTAssertEqual(try XCTUnwrap(rows[0].leakage), 0.3, accuracy: 1e-12)
        XCTAssertEqual(rows[0].asr["cce"], 0.5)  // (3 + 1) / 8
        XCTAssertEqual(rows[0].asr[LeakageAttackCorrelation.worstAttack], 1)
        XCTAssertNil(rows[3].leakage)
        let found = LeakageAttackCorrelation.correlations(rows)
        // p4d has 2 rows with both: left out. cce: esd-x 0.3 → 0.5, uce 0.5 → 1, score 0.01 → 0.
        XCTAssertEqual(found.map { $0.attack }, ["cce", LeakageAttackCorrelation.worstAttack])
        XCTAssertEqual(try XCTUnwrap(found[0].result).rho, 1, accuracy: 1e-12)
        XCTAssertEqual(found[0].rows, 3)
        let section = LeakageAttackCorrelation.markdown(rows)
        XCTAssertTrue(section.contains("| cce | 3 | 1.00 | 0.333 (exact) |"), section)
        XCTAssertEqual(LeakageAttackCorrelation.markdown(Array(rows.prefix(2))), "")
    }
}
