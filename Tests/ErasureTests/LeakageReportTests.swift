import Erasure
@testable import Evaluation
import Foundation
import Tensor
import XCTest

/// The evaluation report shows Î with its interval, names the bound an estimate, and gives each
/// detector's accuracy interval and what it proves; a report measured before those existed
/// still renders.
final class LeakageReportTests: XCTestCase {
    private func report(leakage: LeakageReport) -> EvaluationReport {
        let accuracies = Accuracies(acc_e: 0.5, acc_s: 0.5, acc_g: 0.5, h_o: 0.5)
        let evaluation = ObjectEvaluation(concept: "sneaker", label: 7, acc_e: 0.1, acc_s: 0.9, acc_g: 0, h_o: 0.9, kid: nil,
                                          kid_real: 1, acc_s_relative: nil, original: nil, second_judge: accuracies,
                                          per_class_accuracy: [:], target_classes: nil, leakage_nats: leakage.leakage_nats,
                                          leakage_bound: leakage.leakage_bound, leakage: leakage,
                                          settings: EvaluationSettings(), model: "m", original_model: nil)
        let images = EvaluationImages(target: Tensor.zeros([2, 1, 4, 4]), paraphrase: Tensor.zeros([2, 1, 4, 4]), paraphrasePrompts: ["p", "p"],
                                      retained: Tensor.zeros([2, 1, 4, 4]), retainedLabels: [0, 1])
        return EvaluationReport(evaluation: evaluation, after: images, before: nil, record: nil)
    }

    func testReportNamesTheEstimateAndWhatAccuracyProves() {
        let critics = [CriticLeakage(critic: "x̂₀ critic w32", leakage_nats: 0.2, interval_low: 0.1, interval_high: 0.3, accuracy: 0.9,
                                     test_samples: 1500, accuracy_samples: 100),
                       CriticLeakage(critic: "image critic w32", leakage_nats: 0.05, interval_low: -0.01, interval_high: 0.11,
                                     accuracy: 0.55, test_samples: 100, accuracy_samples: 100)]
        let r = report(leakage: LeakageReport(concept: "sneaker", critics: critics, trajectories_per_class: 200))
        let markdown = r.markdown(), html = r.html()
        for text in [markdown, html] {
            XCTAssertTrue(text.contains("0.2000 [0.1000, 0.3000]"), "Î with its interval")
            XCTAssertTrue(text.contains("estimated bound on a detector"))
            XCTAssertFalse(text.contains("bound on any detector"))
            XCTAssertTrue(text.contains("[0.826, 0.945]"), "the Wilson interval of 90% over 100 trajectories")
            XCTAssertTrue(text.contains("0.2304"), "what that accuracy proves")
            XCTAssertTrue(text.contains("image critic w32"))
        }
        XCTAssertTrue(markdown.contains("| detector | Î (nats) | 95% interval | held-out accuracy | 95% Wilson interval | accuracy implies ≥ (nats) |"))
    }

    func testAnEarlierReportStillRenders() throws {
        let old = """
            {"concept": "sneaker", "critics": [{"critic": "critic w32", "leakage_nats": 0.1, "interval_low": 0.05, \
            "interval_high": 0.15, "accuracy": 0.7, "test_samples": 120}], "leakage_nats": 0.1, "leakage_interval": [0.05, 0.15], \
            "best_critic": "critic w32", "leakage_bound": 0.72, "trajectories_per_class": 32, "note": "n"}
            """
        let markdown = report(leakage: try JSONDecoder().decode(LeakageReport.self, from: Data(old.utf8))).markdown()
        XCTAssertTrue(markdown.contains("| critic w32 | 0.1000 | [0.0500, 0.1500] | 0.700 | – | – |"))
    }
}
