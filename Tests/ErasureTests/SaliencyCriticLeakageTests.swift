@testable import Erasure
import Foundation
import NN
import Tensor
import XCTest

final class SaliencyTests: XCTestCase {
    func testTopFractionKeepsExactlyTheLargestEntries() {
        var g = RandomGenerator(seed: 1)
        let scores = g.uniform([7, 13])
        for ratio: Float in [0.1, 0.5, 0.77, 1] {
            let mask = Saliency.topFraction(scores, ratio: ratio)
            let keep = Int((Double(ratio) * 91).rounded(.up))
            XCTAssertEqual(Int(mask.scalars.reduce(0, +)), keep)
            let kept = zip(scores.scalars, mask.scalars).filter { $0.1 == 1 }.map(\.0)
            let dropped = zip(scores.scalars, mask.scalars).filter { $0.1 == 0 }.map(\.0)
            if let lowestKept = kept.min(), let highestDropped = dropped.max() { XCTAssertGreaterThan(lowestKept, highestDropped) }
        }
    }

    func testTiesBreakByIndexAndMasksArePerTensor() {
        let flat = Tensor(shape: [4], scalars: [1, 1, 1, 1])
        XCTAssertEqual(Saliency.topFraction(flat, ratio: 0.5).scalars, [1, 1, 0, 0])
        let masks = Saliency.masks(scores: ["a": Tensor(shape: [2], scalars: [5, 1]), "b": Tensor(shape: [2], scalars: [0, 9])], ratio: 0.5)
        XCTAssertEqual(masks["a"]!.scalars, [1, 0])
        XCTAssertEqual(masks["b"]!.scalars, [0, 1])
    }

    func testIntersectionKeepsOnlyCommonEntries() {
        let a = ["w": Tensor(shape: [4], scalars: [1, 1, 0, 1])]
        let b = ["w": Tensor(shape: [4], scalars: [1, 0, 0, 1])]
        XCTAssertEqual(Saliency.intersection([a, b])["w"]!.scalars, [1, 0, 0, 1])
        XCTAssertEqual(a["w"]!.scalars, [1, 1, 0, 1], "inputs are not modified")
    }

    func testMaskedAdamMovesOnlyMaskedEntries() {
        let p = Tensor(shape: [4], scalars: [1, 2, 3, 4], requiresGrad: true)
        let optimizer = Adam([("p", p)], learningRate: 0.1, masks: ["p": Tensor(shape: [4], scalars: [0, 1, 0, 1])])
        p.grad = Tensor(shape: [4], scalars: [1, 1, 1, 1])
        optimizer.step()
        XCTAssertEqual(p.scalars[0], 1)
        XCTAssertEqual(p.scalars[2], 3)
        XCTAssertNotEqual(p.scalars[1], 2)
        XCTAssertNotEqual(p.scalars[3], 4)
    }
}

final class CriticTests: XCTestCase {
    /// Held-out accuracy of a critic trained on samples from `target` and `anchor`.
    func heldOutAccuracy(target: (inout RandomGenerator, Int) -> Tensor, anchor: (inout RandomGenerator, Int) -> Tensor,
                         steps: Int) -> Double {
        var g = RandomGenerator(seed: 11)
        let trainer = CriticTrainer(channels: 1, width: 8, learningRate: 2e-3, betas: (0.5, 0.999), generator: &g)
        for _ in 0..<steps {
            trainer.step(target: target(&g, 16), targetTimesteps: Array(repeating: 100, count: 16),
                         anchor: anchor(&g, 16), anchorTimesteps: Array(repeating: 100, count: 16))
        }
        trainer.critic.eval()
        let x = Tensor.concat([target(&g, 200), anchor(&g, 200)], axis: 0)
        let logits = noGrad { trainer.critic(x, timesteps: Array(repeating: 100, count: 400)).scalars }
        let labels = Array(repeating: Float(1), count: 200) + Array(repeating: 0, count: 200)
        return Leakage.estimate(logits: logits, labels: labels).accuracy
    }

    func testCriticSeparatesSeparableDistributions() {
        // Bright squares vs dark squares.
        let accuracy = heldOutAccuracy(target: { g, n in g.normal([n, 1, 8, 8], mean: 0.8, std: 0.3) },
                                       anchor: { g, n in g.normal([n, 1, 8, 8], mean: -0.8, std: 0.3) }, steps: 60)
        XCTAssertGreaterThan(accuracy, 0.9)
    }

    /// Without spectral normalisation the critic is the same network with plain layers: no
    /// power-iteration step in training mode, and scaling a weight scales what it passes on.
    func testPlainCriticUsesItsWeightsAsTheyAre() {
        var g = RandomGenerator(seed: 2)
        let plain = Critic(channels: 1, width: 4, spectralNorm: false, generator: &g)
        plain.train()
        let u = plain.conv1.u.copy()
        let x = g.normal([3, 1, 8, 8])
        let before = noGrad { plain(x, timesteps: [1, 2, 3]).scalars }
        XCTAssertEqual(plain.conv1.u.scalars, u.scalars, "no power iteration")
        plain.head.weight.assign(plain.head.weight * 2)
        plain.head.bias!.assign(plain.head.bias! * 2)
        let after = noGrad { plain(x, timesteps: [1, 2, 3]).scalars }
        for (a, b) in zip(after, before) { XCTAssertEqual(a, 2 * b, accuracy: 1e-5) }
        // The spectrally normalised head divides the doubled weight by its doubled σ.
        var h = RandomGenerator(seed: 2)
        let normalised = Critic(channels: 1, width: 4, generator: &h)
        normalised.eval()
        let once = noGrad { normalised(x, timesteps: [1, 2, 3]).scalars }
        normalised.head.weight.assign(normalised.head.weight * 2)
        let twice = noGrad { normalised(x, timesteps: [1, 2, 3]).scalars }
        for (a, b) in zip(twice, once) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    }

    func testCriticStaysNearChanceOnIdenticalDistributions() {
        let same: (inout RandomGenerator, Int) -> Tensor = { g, n in g.normal([n, 1, 8, 8]) }
        let accuracy = heldOutAccuracy(target: same, anchor: same, steps: 60)
        XCTAssertEqual(accuracy, 0.5, accuracy: 0.1)
    }
}

final class LeakageTests: XCTestCase {
    func testEstimateAndBound() {
        let labels: [Float] = [1, 1, 0, 0]
        // A confident, correct critic: Î → ln 2, accuracy 1; a critic at chance: Î = 0.
        let sure = Leakage.estimate(logits: [30, 30, -30, -30], labels: labels)
        XCTAssertEqual(sure.nats, log(2), accuracy: 1e-9)
        XCTAssertEqual(sure.accuracy, 1)
        XCTAssertEqual(Leakage.estimate(logits: [0, 0, 0, 0], labels: labels).nats, 0, accuracy: 1e-12)
        // A confidently wrong critic gives a negative estimate (CE above H(C)).
        XCTAssertLessThan(Leakage.estimate(logits: [-3, -3, 3, 3], labels: labels).nats, 0)
        XCTAssertEqual(Leakage.bound(nats: 0), 0.5)
        XCTAssertEqual(Leakage.bound(nats: 0.02), 0.6, accuracy: 1e-12)
        XCTAssertEqual(Leakage.bound(nats: -0.1), 0.5)
        XCTAssertEqual(Leakage.bound(nats: log(2)), 1, "capped at 1")
    }

    func testBoundHoldsForAnExactDetector() {
        // Two Gaussians N(±μ, 1): the Bayes detector's accuracy is Φ(μ); the Bayes-optimal critic's
        // Î equals I(C;X); the bound ½ + √(I/2) must not be below Φ(μ).
        var g = RandomGenerator(seed: 4)
        let mu: Float = 0.7
        let n = 20_000
        let x = g.normal([n])
        var logits: [Float] = [], labels: [Float] = []
        for i in 0..<n {
            let y: Float = i % 2 == 0 ? 1 : 0
            let sample = x.scalars[i] + (y == 1 ? mu : -mu)
            logits.append(2 * mu * sample)   // the log-likelihood ratio
            labels.append(y)
        }
        let (nats, accuracy) = Leakage.estimate(logits: logits, labels: labels)
        XCTAssertGreaterThanOrEqual(Leakage.bound(nats: nats), accuracy)
        var bootstrap = RandomGenerator(seed: 1)
        let interval = Leakage.bootstrapInterval(logits: logits, labels: labels, groups: Array(0..<n).map { $0 / 10 },
                                                 rounds: 200, generator: &bootstrap)
        XCTAssertLessThanOrEqual(interval.low, nats)
        XCTAssertGreaterThanOrEqual(interval.high, nats)
    }

    /// Wilson intervals against hand-computed values: 8 of 10 gives [0.4902, 0.9433] (the
    /// textbook example); 64 of 64 gives n / (n + z²) = 0.94338 below and 1 above.
    func testWilsonInterval() {
        let eight = Leakage.wilsonInterval(successes: 8, samples: 10)
        XCTAssertEqual(eight.low, 0.49016, accuracy: 1e-5)
        XCTAssertEqual(eight.high, 0.94332, accuracy: 1e-5)
        let all = Leakage.wilsonInterval(successes: 64, samples: 64)
        XCTAssertEqual(all.low, 64 / (64 + 1.959964 * 1.959964), accuracy: 1e-6)
        XCTAssertEqual(all.high, 1, accuracy: 1e-12)
        let none = Leakage.wilsonInterval(successes: 0, samples: 20)
        XCTAssertEqual(none.low, 0, accuracy: 1e-12)
        XCTAssertEqual(none.high, 0.16113, accuracy: 1e-5)
    }

    /// ln 2 − H_b(a): 0.3681 nats at a = 0.9 (H_b = 0.1·ln 10 + 0.9·ln(10/9) = 0.3251), 0.1308 at
    /// 0.75, 0 at and below ½, ln 2 at 1; symmetric in a ↔ 1 − a for H_b.
    func testAccuracyImpliedInformation() {
        XCTAssertEqual(Leakage.binaryEntropy(0.9), 0.1 * log(10) + 0.9 * log(10.0 / 9), accuracy: 1e-12)
        XCTAssertEqual(Leakage.binaryEntropy(0.1), Leakage.binaryEntropy(0.9), accuracy: 1e-12)
        XCTAssertEqual(Leakage.accuracyImpliedNats(accuracyLowerLimit: 0.9), 0.36806, accuracy: 1e-5)
        XCTAssertEqual(Leakage.accuracyImpliedNats(accuracyLowerLimit: 0.75), 0.13081, accuracy: 1e-5)
        XCTAssertEqual(Leakage.accuracyImpliedNats(accuracyLowerLimit: 0.5), 0)
        XCTAssertEqual(Leakage.accuracyImpliedNats(accuracyLowerLimit: 0.3), 0)
        XCTAssertEqual(Leakage.accuracyImpliedNats(accuracyLowerLimit: 1), log(2), accuracy: 1e-12)
        // A detector row: 90% of 100 held-out trajectories → [0.8256, 0.9448], ≥ 0.2304 nats;
        // 55% → a lower limit under ½, nothing proven.
        let row = CriticLeakage(critic: "c", leakage_nats: 0.2, interval_low: 0.1, interval_high: 0.3, accuracy: 0.9,
                                test_samples: 1500, accuracy_samples: 100)
        XCTAssertEqual(row.accuracy_interval![0], 0.82563, accuracy: 1e-5)
        XCTAssertEqual(row.accuracy_interval![1], 0.94477, accuracy: 1e-5)
        XCTAssertEqual(row.accuracy_implied_nats!, 0.23041, accuracy: 1e-5)
        let chance = CriticLeakage(critic: "c", leakage_nats: 0, interval_low: 0, interval_high: 0, accuracy: 0.55,
                                   test_samples: 100, accuracy_samples: 100)
        XCTAssertEqual(chance.accuracy_implied_nats, 0)
        // The report names the estimated bound and the strongest proof separately.
        let report = LeakageReport(concept: "x", critics: [chance, row], trajectories_per_class: 400)
        XCTAssertEqual(report.estimated_bound, Leakage.bound(nats: 0.2))
        XCTAssertEqual(report.leakage_bound, report.estimated_bound)
        XCTAssertEqual(report.accuracy_implied_nats, row.accuracy_implied_nats)
        XCTAssertTrue(report.note.contains("estimated bound"))
    }

    /// A report written before the accuracy figures existed still reads (benchmark cells are kept).
    func testEarlierReportsStillDecode() throws {
        let old = """
            {"concept": "sneaker", "critics": [{"critic": "critic w32", "leakage_nats": 0.1, "interval_low": 0.05, \
            "interval_high": 0.15, "accuracy": 0.7, "test_samples": 120}], "leakage_nats": 0.1, "leakage_interval": [0.05, 0.15], \
            "best_critic": "critic w32", "leakage_bound": 0.72, "trajectories_per_class": 32, "note": "n"}
            """
        let report = try JSONDecoder().decode(LeakageReport.self, from: Data(old.utf8))
        XCTAssertEqual(report.leakage_bound, 0.72)
        XCTAssertNil(report.critics[0].accuracy_interval)
        XCTAssertNil(report.accuracy_implied_nats)
        XCTAssertTrue(report.summary.contains("estimated bound"))
    }

    /// The pixel-space critic, cross-fitted like the probes: bright against dark images is found
    /// with every image tested once; two samples of one distribution read near 0.
    func testCrossFittedImageCritic() throws {
        let n = 16
        func detect(shift: Float, seed: UInt64) throws -> (nats: Double, low: Double, high: Double, accuracy: Double, tested: Int) {
            var g = RandomGenerator(seed: seed)
            let images = Tensor.concat([g.normal([n, 1, 8, 8], mean: shift, std: 0.5), g.normal([n, 1, 8, 8], mean: -shift, std: 0.5)], axis: 0)
            let labels = Array(repeating: Float(1), count: n) + Array(repeating: 0, count: n)
            var critic = RandomGenerator(seed: seed + 1), bootstrap = RandomGenerator(seed: 3)
            return try Leakage.crossFitted(labels: labels, groups: Array(0..<(2 * n)), n: n, rounds: 50, generator: &bootstrap) { train, validation, test in
                let logits = try Leakage.fitCritic(x: images, timesteps: Array(repeating: 0, count: 2 * n), labels: labels, train: train,
                                                   validation: validation, width: 4, steps: 50, batchSize: 16, generator: &critic)
                return (logits(validation), logits(test))
            }
        }
        let separable = try detect(shift: 0.5, seed: 1)
        XCTAssertEqual(separable.tested, 2 * n)
        XCTAssertGreaterThan(separable.accuracy, 0.9)
        XCTAssertGreaterThan(separable.nats, 0.3)
        let same = try detect(shift: 0, seed: 2)
        XCTAssertEqual(same.tested, 2 * n)
        XCTAssertLessThan(same.nats, 0.1)
    }

    /// The cross-fitted probe tests every image once, finds a mean shift along one feature, and
    /// stays near zero when both classes come from one distribution.
    func testCrossFittedProbeTestsEveryImageOnce() {
        let n = 32, d = 6
        func probe(shift: Float, seed: UInt64) -> (nats: Double, low: Double, high: Double, accuracy: Double, tested: Int) {
            var g = RandomGenerator(seed: seed)
            let noise = g.normal([2 * n, d])
            let features = Tensor(shape: [2 * n, d]) { out in
                for i in 0..<(2 * n) { for j in 0..<d { out[i * d + j] = noise.scalars[i * d + j] + (i < n && j == 2 ? shift : 0) } }
            }
            let labels = Array(repeating: Float(1), count: n) + Array(repeating: 0, count: n)
            var bootstrap = RandomGenerator(seed: 3)
            return Leakage.linearProbe(features: features, labels: labels, groups: Array(0..<(2 * n)), n: n, rounds: 100, generator: &bootstrap)
        }
        let separable = probe(shift: 4, seed: 1)
        XCTAssertEqual(separable.tested, 2 * n)
        XCTAssertGreaterThan(separable.accuracy, 0.9)
        XCTAssertGreaterThan(separable.nats, 0.4)
        XCTAssertLessThanOrEqual(separable.low, separable.nats)
        XCTAssertGreaterThanOrEqual(separable.high, separable.nats)
        let same = probe(shift: 0, seed: 2)
        XCTAssertEqual(same.tested, 2 * n)
        XCTAssertLessThan(same.nats, 0.1)
    }

    /// A probe on the judged class alone (one-hot rows, as `Judge.judgedClassOneHot` gives) reads
    /// the information in the class mix: the Jensen–Shannon divergence of the two sets' class
    /// frequencies, here 0.205 nats (70% of one class against the uniform mix), and about 0
    /// when both sets have the same mix. Classes nobody drew (constant columns) do no harm.
    func testJudgedClassProbeReadsTheInformationInTheClassMix() {
        let n = 256, classes = 10
        func oneHot(_ drawn: [Int]) -> Tensor {
            Tensor(shape: [drawn.count, classes]) { out in
                out.update(repeating: 0, count: drawn.count * classes)
                for (i, c) in drawn.enumerated() { out[i * classes + c] = 1 }
            }
        }
        func probe(targetShare: Double, seed: UInt64) -> Double {
            var g = RandomGenerator(seed: seed)
            let u = g.uniform([3 * n]).scalars.map(Double.init)
            let target = (0..<n).map { i in u[i] < targetShare ? 3 : [0, 1, 2, 4, 5, 6, 7, 8][Int(u[n + i] * 8) % 8] }
            let reference = (0..<n).map { i in Int(u[2 * n + i] * 9) % 9 }
            let labels = Array(repeating: Float(1), count: n) + Array(repeating: 0, count: n)
            var bootstrap = RandomGenerator(seed: 3)
            return Leakage.linearProbe(features: oneHot(target + reference), labels: labels, groups: Array(0..<(2 * n)), n: n,
                                       rounds: 20, generator: &bootstrap).nats
        }
        // Reference: 9 classes at 1/9 (class 9 never drawn); target: class 3 at 70%, the other 8 at 30%/8.
        let p = (0..<9).map { $0 == 3 ? 0.7 : 0.3 / 8 }, q = [Double](repeating: 1.0 / 9, count: 9)
        let jensenShannon = zip(p, q).reduce(0.0) { sum, pq in
            let m = (pq.0 + pq.1) / 2
            return sum + 0.5 * pq.0 * Foundation.log(pq.0 / m) + 0.5 * pq.1 * Foundation.log(pq.1 / m)
        }
        let mixed = probe(targetShare: 0.7, seed: 21)
        XCTAssertEqual(mixed, jensenShannon, accuracy: 0.07, "JSD \(jensenShannon)")
        let same = probe(targetShare: 1.0 / 9, seed: 22)
        XCTAssertLessThan(abs(same), 0.03)
    }

    /// In many dimensions (64 features, 32 images per class) the fitted probe is over-confident;
    /// calibrated on its stopping fold it reads Î near 0 for identical classes instead of far
    /// below, and still finds a real shift.
    func testProbeIsCalibratedWhenFeaturesOutnumberImages() {
        let n = 32, d = 64
        func probe(shift: Float, seed: UInt64) -> (nats: Double, accuracy: Double) {
            var g = RandomGenerator(seed: seed)
            let noise = g.normal([2 * n, d])
            let features = Tensor(shape: [2 * n, d]) { out in
                for i in 0..<(2 * n) { for j in 0..<d { out[i * d + j] = noise.scalars[i * d + j] + (i < n && j < 16 ? shift : 0) } }
            }
            let labels = Array(repeating: Float(1), count: n) + Array(repeating: 0, count: n)
            var bootstrap = RandomGenerator(seed: 3)
            let r = Leakage.linearProbe(features: features, labels: labels, groups: Array(0..<(2 * n)), n: n, rounds: 20, generator: &bootstrap)
            return (r.nats, r.accuracy)
        }
        for seed: UInt64 in [4, 5, 6] {
            let same = probe(shift: 0, seed: seed)
            XCTAssertGreaterThan(same.nats, -0.1, "seed \(seed): accuracy \(same.accuracy)")
            XCTAssertLessThan(same.nats, 0.1, "seed \(seed)")
        }
        let shifted = probe(shift: 1, seed: 7)
        XCTAssertGreaterThan(shifted.nats, 0.1, "accuracy \(shifted.accuracy)")
    }

    /// Well-separated classes with a few images drawn from the other class (32 per class, 3 of
    /// them outliers): a fold whose stopping images are all classified right must not sharpen
    /// its probe so far that one outlier in its test fold costs more than the rest gain. (A
    /// benchmark cell read Î = −3.5 nats at 89% held-out accuracy that way.)
    func testProbeCalibrationSurvivesAnOutlierInTheTestFold() {
        let n = 32, d = 8
        var g = RandomGenerator(seed: 11)
        let noise = g.normal([2 * n, d])
        let outliers: Set<Int> = [1, 6, n + 3]   // in folds 1, 2 and 3 of their class
        let features = Tensor(shape: [2 * n, d]) { out in
            for i in 0..<(2 * n) {
                let looksLikeTarget = (i < n) != outliers.contains(i)
                for j in 0..<d { out[i * d + j] = noise.scalars[i * d + j] * 0.5 + (looksLikeTarget ? 1.5 : -1.5) }
            }
        }
        let labels = Array(repeating: Float(1), count: n) + Array(repeating: 0, count: n)
        var bootstrap = RandomGenerator(seed: 3)
        let r = Leakage.linearProbe(features: features, labels: labels, groups: Array(0..<(2 * n)), n: n, rounds: 20, generator: &bootstrap)
        XCTAssertEqual(r.accuracy, 61.0 / 64.0, accuracy: 1e-9)
        // 61 of 64 right: a calibrated probe reads well above 0 (the Pinsker relation alone
        // gives 2·(0.45)² ≈ 0.4 nats for that accuracy).
        XCTAssertGreaterThan(r.nats, 0.2, "accuracy \(r.accuracy)")
    }

    /// The noise floor runs the same estimate on one prompt against itself through one model:
    /// one report per repeat, each with its own seeds (so they differ), the same bits on a rerun.
    func testNoiseFloorComparesAPromptWithItself() throws {
        let pipeline = try Tiny.pipeline()
        let options = Tiny.leakageOptions()
        let floor = try Leakage.noiseFloor(prompt: "a photo of a sneaker", pipeline: pipeline, options: options, repeats: 2)
        XCTAssertEqual(floor.count, 2)
        XCTAssertEqual(floor[0].concept, "\"a photo of a sneaker\" against itself")
        for report in floor {
            XCTAssertEqual(report.trajectories_per_class, 8)
            XCTAssertEqual(report.leakage_nats, report.critics.map(\.leakage_nats).max())
            XCTAssertEqual(report.critics.map(\.critic), ["x̂₀ critic w4", "x̂₀ critic w8 ×3 steps", "image critic w4"])
            XCTAssertEqual(report.critics.map(\.accuracy_samples), [4, 4, 16], "x̂₀ critics: two test trajectories per class")
            XCTAssertEqual(report.critics[2].test_samples, 16, "the image critic tests every image once")
        }
        XCTAssertNotEqual(floor[0].critics.map(\.leakage_nats), floor[1].critics.map(\.leakage_nats))
        let again = try Leakage.noiseFloor(prompt: "a photo of a sneaker", pipeline: pipeline, options: options, repeats: 1)
        XCTAssertEqual(again[0].critics.map(\.leakage_nats), floor[0].critics.map(\.leakage_nats))
        XCTAssertThrowsError(try Leakage.noiseFloor(prompt: "", pipeline: pipeline, options: options, repeats: 0)) {
            XCTAssertTrue("\($0)".contains("at least 1 repeat"))
        }
    }

    /// With a reference model the second class is drawn through it: passing the model's own
    /// denoiser reads the floor bit for bit, another model's denoiser reads something else.
    func testNoiseFloorAgainstAReferenceModelDrawsTheSecondClassThroughIt() throws {
        let pipeline = try Tiny.pipeline()
        let options = Tiny.leakageOptions()
        let floor = try Leakage.noiseFloor(prompt: "", pipeline: pipeline, options: options, repeats: 1)
        let own = try Leakage.noiseFloor(prompt: "", pipeline: pipeline, reference: pipeline.denoiser, options: options, repeats: 1)
        XCTAssertEqual(own[0].critics.map(\.leakage_nats), floor[0].critics.map(\.leakage_nats))
        let other = try Tiny.pipeline(seed: 5)
        let drift = try Leakage.noiseFloor(prompt: "", pipeline: pipeline, reference: other.denoiser, options: options, repeats: 1)
        XCTAssertNotEqual(drift[0].critics.map(\.leakage_nats), floor[0].critics.map(\.leakage_nats))
        XCTAssertEqual(drift[0].concept, "\"\" against the reference model")
    }
}
