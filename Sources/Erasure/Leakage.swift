import Diffusion
import Foundation
import NN
import Tensor

/// One detector's reading of the information the erased model's outputs still carry about the
/// concept, in two forms. Î = H(C) − CE on held-out samples (nats; H(C) = ln 2 with balanced
/// classes) estimates I(C; X) from below for a well-calibrated detector, but is itself noisy.
/// The accuracy-implied figure is a lower bound (at 95% confidence) that needs no calibration:
/// by Fano's inequality for a binary C, any detector right with probability a ≥ ½ shows
/// I(C; X) ≥ ln 2 − H_b(a), and a ≥ the lower Wilson limit of its held-out accuracy.
public struct CriticLeakage: Codable, Sendable {
    public var critic: String
    public var leakage_nats: Double
    /// 95% bootstrap interval over held-out trajectories.
    public var interval_low: Double
    public var interval_high: Double
    /// Held-out accuracy at threshold ½.
    public var accuracy: Double
    public var test_samples: Int
    /// 95% Wilson interval of the held-out accuracy, counting `accuracy_samples` independent
    /// samples: one per held-out trajectory (the x̂₀ of one trajectory are correlated, so counting
    /// each of them would make the interval too narrow). nil in cells measured before it existed.
    public var accuracy_interval: [Double]?
    public var accuracy_samples: Int?
    /// ln 2 − H_b(lower Wilson limit), 0 when that limit is ≤ ½: the information (nats) the
    /// accuracy alone proves to be there.
    public var accuracy_implied_nats: Double?

    public init(critic: String, leakage_nats: Double, interval_low: Double, interval_high: Double,
                accuracy: Double, test_samples: Int, accuracy_samples: Int) {
        (self.critic, self.leakage_nats, self.interval_low, self.interval_high) = (critic, leakage_nats, interval_low, interval_high)
        (self.accuracy, self.test_samples, self.accuracy_samples) = (accuracy, test_samples, accuracy_samples)
        let wilson = Leakage.wilsonInterval(successes: accuracy * Double(accuracy_samples), samples: accuracy_samples)
        accuracy_interval = [wilson.low, wilson.high]
        accuracy_implied_nats = Leakage.accuracyImpliedNats(accuracyLowerLimit: wilson.low)
    }
}

/// The leakage report of one concept: the largest Î over the detectors tried (a trained detector
/// only under-estimates I, so the strongest one is the best estimate) and the *estimated* bound
/// it gives on a detector's accuracy, ½ + √(Î/2). An estimate, not a certificate: a stronger
/// detector than those tried may exist. Beside it, the largest accuracy-implied information, a
/// lower bound that holds for the detector that reached that accuracy.
public struct LeakageReport: Codable, Sendable {
    public var concept: String
    public var critics: [CriticLeakage]
    public var leakage_nats: Double
    public var leakage_interval: [Double]
    public var best_critic: String
    /// ½ + √(Î/2) of the reported Î: the estimated bound (`estimated_bound`, the same figure under
    /// a name that says what it is; this key is kept for the readers of earlier cells).
    public var leakage_bound: Double
    public var estimated_bound: Double?
    /// The largest `accuracy_implied_nats` over the detectors and the detector that gave it.
    public var accuracy_implied_nats: Double?
    public var accuracy_implied_critic: String?
    public var trajectories_per_class: Int
    /// The guidance both classes were sampled at (nil in reports written before it was recorded,
    /// which were all at the evaluation's 7.5).
    public var guidance: Float?
    public var note: String

    public init(concept: String, critics: [CriticLeakage], trajectories_per_class: Int) {
        let strongest = critics.max { $0.leakage_nats < $1.leakage_nats }!
        let proven = critics.max { ($0.accuracy_implied_nats ?? 0) < ($1.accuracy_implied_nats ?? 0) }!
        (self.concept, self.critics, self.trajectories_per_class) = (concept, critics, trajectories_per_class)
        (leakage_nats, leakage_interval, best_critic) = (strongest.leakage_nats, [strongest.interval_low, strongest.interval_high], strongest.critic)
        leakage_bound = Leakage.bound(nats: strongest.leakage_nats)
        estimated_bound = leakage_bound
        (accuracy_implied_nats, accuracy_implied_critic) = (proven.accuracy_implied_nats, proven.critic)
        note = """
            Estimated leakage: the largest held-out Î = ln 2 − CE over the detectors tried, with a 95% bootstrap \
            interval over trajectories. A trained detector only under-estimates I(C; X), so this is a lower \
            estimate, and the estimated bound ½ + √(Î/2) on a detector's accuracy holds only as far as no \
            stronger detector exists. The accuracy-implied information ln 2 − H_b(a), a the lower 95% Wilson \
            limit of a detector's held-out accuracy, is a lower bound on I(C; X) that needs no calibration.
            """
    }

    /// Whether this estimate was sampled as `options` asks: as many trajectories per class, at the
    /// same guidance (a report without its guidance was sampled at the evaluation's default).
    public func isSampled(as options: LeakageOptions) -> Bool {
        trajectories_per_class == options.trajectories && (guidance ?? LeakageOptions().guidance) == options.guidance
    }

    /// One line for a console: Î with its interval, the estimated bound, the accuracy-implied information.
    public var summary: String {
        String(format: "estimated leakage Î %.4f nats [%.4f, %.4f] (%@), estimated bound on a detector's accuracy %.3f; ",
               leakage_nats, leakage_interval[0], leakage_interval[1], best_critic, leakage_bound)
            + (accuracy_implied_nats.map { String(format: "accuracy implies ≥ %.4f nats (%@)", $0, accuracy_implied_critic ?? "") }
                ?? "no accuracy-implied figure (measured before it existed)")
    }
}

/// A feature map for a linear-probe critic on finished images (e.g. an image classifier's
/// penultimate layer): images [N, C, H, W] in [−1, 1] → features [N, d].
public struct FeatureProbe {
    public var name: String
    public var features: (Tensor) -> Tensor

    public init(name: String, features: @escaping (Tensor) -> Tensor) {
        self.name = name
        self.features = features
    }
}

public struct LeakageOptions: Codable, Sendable {
    /// Trajectories sampled per class (target prompts through the erased model, anchor through θ₀).
    public var trajectories = 48
    public var steps = 25
    /// The testbed's evaluation guidance (`DefaultModel.guidance`): leakage is about the images
    /// users get at the default settings.
    public var guidance = StableDiffusionPipeline.defaultGuidance
    /// Only entries with t ≤ this are judged (the critic's view during training).
    public var splitTimestep = 600
    public var criticWidth = 32
    public var criticSteps = 300
    public var batchSize = 64
    public var bootstrapRounds = 1000
    public var seed: UInt64 = 7

    public init() {}

    /// Checked before any sampling. The trajectories split four ways (two quarters train the
    /// critics, one picks their step, one tests), so each class needs at least 4.
    public func validate() throws {
        let check = ConfigCheck(method: "leakage")
        try check.atLeast(4, ["trajectories per class (--leakage-trajectories)": trajectories])
        try check.atLeast(2, ["sampling steps": steps, "critic batch": batchSize])
        try check.atLeast(1, ["critic steps (--leakage-critic-steps)": criticSteps, "critic width": criticWidth, "bootstrap rounds": bootstrapRounds])
        try check.require(guidance.isFinite && guidance >= 0, "guidance (--leakage-guidance) must be a number ≥ 0, not \(guidance)")
    }
}

public enum Leakage {
    /// ½ + √(I/2), at most 1: the bound on any detector's accuracy with balanced classes given the
    /// true I (Pinsker). Fed an estimate Î it is an estimated bound.
    public static func bound(nats: Double) -> Double { min(1, 0.5 + (max(0, nats) / 2).squareRoot()) }

    /// The 95% Wilson score interval of a proportion `successes` / `samples`.
    public static func wilsonInterval(successes: Double, samples: Int, z: Double = 1.959963984540054) -> (low: Double, high: Double) {
        guard samples > 0 else { return (0, 1) }
        let n = Double(samples), p = min(1, max(0, successes / n)), z2 = z * z
        let centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        let half = z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)).squareRoot()
        return (max(0, centre - half), min(1, centre + half))
    }

    /// H_b(p) in nats.
    public static func binaryEntropy(_ p: Double) -> Double {
        func term(_ q: Double) -> Double { q > 0 ? -q * Foundation.log(q) : 0 }
        return term(p) + term(1 - p)
    }

    /// ln 2 − H_b(a), 0 for a ≤ ½: the least I(C; X) of balanced binary C that lets a detector be
    /// right with probability a (Fano's inequality, H(C | X) ≤ H_b(1 − a)).
    public static func accuracyImpliedNats(accuracyLowerLimit a: Double) -> Double {
        a <= 0.5 ? 0 : Foundation.log(2) - binaryEntropy(min(1, a))
    }

    /// Î = ln 2 − mean BCE of `logits` against `labels`, and the accuracy at threshold ½.
    public static func estimate(logits: [Float], labels: [Float]) -> (nats: Double, accuracy: Double) {
        precondition(logits.count == labels.count && !logits.isEmpty, "Leakage.estimate: \(logits.count) logits, \(labels.count) labels")
        var ce = 0.0, correct = 0
        for (z, y) in zip(logits, labels) {
            let z = Double(z), y = Double(y)
            ce += max(z, 0) - y * z + Foundation.log1p(Foundation.exp(-Swift.abs(z)))
            if (z > 0) == (y > 0.5) { correct += 1 }
        }
        return (Foundation.log(2) - ce / Double(logits.count), Double(correct) / Double(logits.count))
    }

    /// A 95% percentile interval of Î, resampling whole groups (trajectories) with replacement:
    /// entries of one trajectory are correlated, so resampling entries would be too narrow.
    public static func bootstrapInterval(logits: [Float], labels: [Float], groups: [Int], rounds: Int,
                                         generator: inout RandomGenerator) -> (low: Double, high: Double) {
        var members: [Int: [Int]] = [:]
        for (i, g) in groups.enumerated() { members[g, default: []].append(i) }
        let keys = members.keys.sorted()
        guard rounds > 0, !keys.isEmpty else { let e = estimate(logits: logits, labels: labels).nats; return (e, e) }
        var values: [Double] = []
        for _ in 0..<rounds {
            var l: [Float] = [], y: [Float] = []
            for u in generator.uniform([keys.count]).scalars {
                for i in members[keys[min(keys.count - 1, Int(u * Float(keys.count)))]]! { l.append(logits[i]); y.append(labels[i]) }
            }
            values.append(estimate(logits: l, labels: y).nats)
        }
        values.sort()
        return (values[Int(0.025 * Double(rounds - 1))], values[Int(0.975 * Double(rounds - 1))])
    }

    /// Samples fresh trajectories (target prompts through `pipeline.unet`, the anchors through
    /// `original`) and measures them with three kinds of detector, all without spectral
    /// normalisation: CNN critics on x̂₀ at t ≤ t′ (trained on half of the trajectories, stopped
    /// on a quarter, tested on the last), a CNN critic on the finished guided images, and linear
    /// probes on `probes`' features of those images. Those two see one image per trajectory, so
    /// they are cross-fitted over the four quarters (every image tested once) and calibrated
    /// with one temperature.
    /// Either family: the critics read x̂₀ in image layout (FLUX: x_σ − σ·v̂, unpacked).
    public static func report<Model: ErasableModel>(concept: Concept, pipeline: Model, original: Model.Denoiser,
                              options: LeakageOptions = LeakageOptions(), probes: [FeatureProbe] = [],
                              log: (String) -> Void = { _ in }) throws -> LeakageReport {
        let table = ConditioningTable(captions: [""] + concept.targetPrompts + concept.anchors, model: pipeline)
        let anchorIndices = concept.anchors.indices.map { 1 + concept.targetPrompts.count + $0 }
        let n = options.trajectories
        let started = Date()
        let target = try TrajectoryPool.sample(
            pipeline: pipeline, table: table, promptIndices: (0..<n).map { 1 + $0 % concept.targetPrompts.count },
            unconditionalIndex: 0, steps: options.steps, guidance: options.guidance, seed: options.seed &+ 11)
        let anchor = try TrajectoryPool.sample(
            pipeline: pipeline, table: table, promptIndices: (0..<n).map { anchorIndices[$0 % anchorIndices.count] },
            unconditionalIndex: 0, steps: options.steps, guidance: options.guidance, seed: options.seed &+ 13, model: original)
        log(String(format: "leakage '%@': sampled %d + %d trajectories in %.0f s", concept.name, n, n, Date().timeIntervalSince(started)))

        // The critic's view: x̂₀ of each model on its own prompt at t ≤ t′, grouped by trajectory.
        func estimates(_ pool: TrajectoryPool, model: Model.Denoiser?) -> (Tensor, [Int], [Int]) {
            let late = pool.indices { $0 <= Float(options.splitTimestep) }
            var parts: [Tensor] = []
            for start in stride(from: 0, to: late.count, by: 64) {
                let (z, t, p) = pool.batch(Array(late[start..<min(late.count, start + 64)]))
                let eps = noGrad { pipeline.predict(z, timesteps: t, conditioning: table.batch(p), model: model) }
                parts.append(pipeline.imageLayout(pipeline.cleanEstimate(z, prediction: eps, timesteps: t)))
            }
            return (Tensor.concat(parts, axis: 0), late.map { Int(pool.timesteps[$0]) }, late.map { pool.trajectories[$0] })
        }
        let (xT, tT, gT) = estimates(target, model: nil)
        let (xA, tA, gA) = estimates(anchor, model: original)
        let x = Tensor.concat([xT, xA], axis: 0)
        let timesteps = tT + tA
        let groups = gT + gA.map { $0 + n }   // anchor trajectories numbered after the target ones
        let labels = Array(repeating: Float(1), count: tT.count) + Array(repeating: 0, count: tA.count)
        // Trajectory k of either class: train if k % 4 < 2, validation if 2, test if 3.
        func split(_ part: Int) -> [Int] { groups.indices.filter { part == 0 ? groups[$0] % n % 4 < 2 : groups[$0] % n % 4 == part + 1 } }
        let (train, validation, test) = (split(0), split(1), split(2))
        guard !train.isEmpty, !validation.isEmpty, !test.isEmpty else {
            throw ErasureError.invalidConfig("leakage needs at least 4 trajectories per class, got \(n)")
        }

        var results: [CriticLeakage] = []
        func record(_ row: CriticLeakage) {
            results.append(row)
            log(String(format: "  %@: Î %.4f nats [%.4f, %.4f], held-out accuracy %.3f [%.3f, %.3f] (implies ≥ %.4f nats)",
                       row.critic, row.leakage_nats, row.interval_low, row.interval_high, row.accuracy,
                       row.accuracy_interval![0], row.accuracy_interval![1], row.accuracy_implied_nats!))
        }
        var generator = RandomGenerator(seed: options.seed)
        let critics: [(String, Int, Int)] = [("x̂₀ critic w\(options.criticWidth)", options.criticWidth, options.criticSteps),
                                             ("x̂₀ critic w\(2 * options.criticWidth) ×3 steps", 2 * options.criticWidth, 3 * options.criticSteps)]
        for (k, (name, width, steps)) in critics.enumerated() {
            var criticGenerator = generator.fork(UInt64(k))
            let logits = try fitCritic(x: x, timesteps: timesteps, labels: labels, train: train, validation: validation,
                                       width: width, steps: steps, batchSize: options.batchSize, generator: &criticGenerator)
            let temperature = calibratingTemperature(logits: logits(validation), labels: validation.map { labels[$0] })
            let testLogits = logits(test).map { $0 / temperature }, testLabels = test.map { labels[$0] }
            let (nats, accuracy) = estimate(logits: testLogits, labels: testLabels)
            let interval = bootstrapInterval(logits: testLogits, labels: testLabels, groups: test.map { groups[$0] },
                                             rounds: options.bootstrapRounds, generator: &generator)
            record(CriticLeakage(critic: name, leakage_nats: nats, interval_low: interval.low, interval_high: interval.high,
                                 accuracy: accuracy, test_samples: test.count, accuracy_samples: Set(test.map { groups[$0] }).count))
        }

        // Detectors on the finished guided images, one per trajectory.
        let images = noGrad { Tensor.concat([pipeline.images(fromSamples: target.finals), pipeline.images(fromSamples: anchor.finals)], axis: 0) }
        let imageLabels = Array(repeating: Float(1), count: n) + Array(repeating: 0, count: n)
        let imageGroups = Array(0..<(2 * n))
        var imageCriticGenerator = generator.fork(UInt64(critics.count))
        let imageCritic = try crossFitted(labels: imageLabels, groups: imageGroups, n: n, rounds: options.bootstrapRounds,
                                          generator: &generator) { train, validation, scoring in
            let logits = try fitCritic(x: images, timesteps: Array(repeating: 0, count: 2 * n), labels: imageLabels, train: train,
                                       validation: validation, width: options.criticWidth, steps: options.criticSteps,
                                       batchSize: options.batchSize, generator: &imageCriticGenerator)
            return (logits(validation), logits(scoring))
        }
        record(CriticLeakage(critic: "image critic w\(options.criticWidth)", leakage_nats: imageCritic.nats, interval_low: imageCritic.low,
                             interval_high: imageCritic.high, accuracy: imageCritic.accuracy, test_samples: imageCritic.tested,
                             accuracy_samples: imageCritic.tested))
        for probe in probes {
            let features = noGrad { probe.features(images) }
            let result = linearProbe(features: features, labels: imageLabels, groups: imageGroups, n: n,
                                     rounds: options.bootstrapRounds, generator: &generator)
            record(CriticLeakage(critic: probe.name, leakage_nats: result.nats, interval_low: result.low, interval_high: result.high,
                                 accuracy: result.accuracy, test_samples: result.tested, accuracy_samples: result.tested))
        }
        var report = LeakageReport(concept: concept.name, critics: results, trajectories_per_class: n)
        report.guidance = options.guidance
        return report
    }

    /// Trains a fresh critic (plain layers, Adam 1e-3) on balanced batches of `train`, keeps the
    /// state with the lowest cross-entropy on `validation` (checked every 25 steps), and returns
    /// its logits on any rows of `x`.
    /// (`spectralNorm: true` trains the training critic's normalised network instead, to compare.)
    static func fitCritic(x: Tensor, timesteps: [Int], labels: [Float], train: [Int], validation: [Int], width: Int, steps: Int,
                          batchSize: Int, spectralNorm: Bool = false, generator: inout RandomGenerator) throws -> ([Int]) -> [Float] {
        let trainer = CriticTrainer(channels: x.shape[1], width: width, learningRate: 1e-3, betas: (0.9, 0.999),
                                    spectralNorm: spectralNorm, generator: &generator)
        let critic = trainer.critic
        // The detectors are fitted and read in fp32 even when the trajectories were sampled in bf16.
        func logits(_ indices: [Int]) -> [Float] {
            critic.eval()
            return InferencePrecision.withFP32 { noGrad { critic(gather(x, indices), timesteps: indices.map { timesteps[$0] }).scalars } }
        }
        var best = (ce: Double.infinity, state: critic.stateDict().mapValues { $0.copy() })
        let positives = train.filter { labels[$0] == 1 }, negatives = train.filter { labels[$0] == 0 }
        for step in 1...steps {
            let p = draw(batchSize / 2, from: positives, generator: &generator)
            let q = draw(batchSize / 2, from: negatives, generator: &generator)
            InferencePrecision.withFP32 {
                trainer.step(target: gather(x, p), targetTimesteps: p.map { timesteps[$0] },
                             anchor: gather(x, q), anchorTimesteps: q.map { timesteps[$0] })
            }
            if step % 25 == 0 || step == steps {
                let ce = Foundation.log(2) - estimate(logits: logits(validation), labels: validation.map { labels[$0] }).nats
                if ce < best.ce { best = (ce, critic.stateDict().mapValues { $0.copy() }) }
            }
        }
        try critic.load(best.state)
        return { indices in logits(indices) }
    }

    /// The estimate's reading when there is nothing to find: both classes are fresh trajectories
    /// of the same `prompt` through the same model, with independent noise, so the true I is 0.
    /// Repeat r runs `report` with seed `options.seed + 100·r`. The largest-over-detectors Î
    /// these read is the floor under any erased model's estimate at the same sample size: an
    /// estimated bound ½ + √(Î/2) below the floor's cannot be told from independence.
    /// With a `reference` (θ₀ beside an erased `pipeline`), class 0 comes from it instead: the
    /// estimate then reads how far the erasure moved the model on a prompt it should have kept.
    public static func noiseFloor<Model: ErasableModel>(prompt: String, pipeline: Model, reference: Model.Denoiser? = nil,
                                  options: LeakageOptions = LeakageOptions(),
                                  probes: [FeatureProbe] = [], repeats: Int,
                                  log: (String) -> Void = { _ in }) throws -> [LeakageReport] {
        guard repeats > 0 else { throw ErasureError.invalidConfig("the leakage noise floor needs at least 1 repeat, got \(repeats)") }
        let concept = Concept(name: "\"\(prompt)\" against \(reference == nil ? "itself" : "the reference model")", targetPrompts: [prompt], anchors: [prompt])
        return try (0..<repeats).map { r in
            var o = options
            o.seed = options.seed &+ UInt64(100 * r)
            return try report(concept: concept, pipeline: pipeline, original: reference ?? pipeline.denoiser, options: o, probes: probes, log: log)
        }
    }

    /// The temperature, a power of 2^¼ in [1/4, 16], that gives `logits` / T the lowest
    /// cross-entropy against `labels` (the stopping samples). Fitted on a few dozen images, a
    /// detector comes out over-confident (a probe at 84% held-out accuracy with Î below 0 was
    /// seen), and Î = ln 2 − CE then reads less than its accuracy implies; plain critics on x̂₀
    /// can be as sharp. For the cross-fitted detectors it is one temperature for the four
    /// stopping folds together: chosen per fold, a fold whose 16 stopping images were all right
    /// sharpened its probe 16-fold, and one wrong test image then cost more than the rest gained
    /// (Î = −3.5 nats at 89% accuracy).
    static func calibratingTemperature(logits: [Float], labels: [Float]) -> Float {
        let temperatures = (-8...16).map { Float(Foundation.pow(2, Double($0) / 4)) }
        return temperatures.max { a, b in
            estimate(logits: logits.map { $0 / a }, labels: labels).nats < estimate(logits: logits.map { $0 / b }, labels: labels).nats
        }!
    }

    /// Logistic regression (full-batch Adam on standardised features), cross-fitted (`crossFitted`).
    static func linearProbe(features: Tensor, labels: [Float], groups: [Int], n: Int, rounds: Int,
                            generator: inout RandomGenerator) -> (nats: Double, low: Double, high: Double, accuracy: Double, tested: Int) {
        crossFitted(labels: labels, groups: groups, n: n, rounds: rounds, generator: &generator) { train, validation, test in
            fitLogistic(features: features, labels: labels, train: train, validation: validation, scoring: test)
        }
    }

    /// A detector `fit` on two folds of trajectories, stopped on a third and scoring the fourth,
    /// cross-fitted: fold f is tested by a detector trained on two other folds and stopped on the
    /// remaining one, so every sample is tested exactly once (four times the test samples of a
    /// single split, about half its interval width, at no extra sampling). Trajectory k of either
    /// class (entry i belongs to k = i mod n) is in fold k mod 4. `fit` returns its logits on
    /// the stopping fold and on the test fold.
    static func crossFitted(labels: [Float], groups: [Int], n: Int, rounds: Int, generator: inout RandomGenerator,
                            fit: (_ train: [Int], _ validation: [Int], _ test: [Int]) throws -> (validation: [Float], scoring: [Float]))
        rethrows -> (nats: Double, low: Double, high: Double, accuracy: Double, tested: Int) {
        let count = labels.count
        var tested: [Int] = [], logits: [Float] = [], stopping: [Float] = [], stoppingLabels: [Float] = []
        for fold in 0..<4 {
            let members = { (f: Int) in (0..<count).filter { $0 % n % 4 == f } }
            let (test, validation) = (members(fold), members((fold + 1) % 4))
            let train = members((fold + 2) % 4) + members((fold + 3) % 4)
            guard !test.isEmpty else { continue }
            let fitted = try fit(train, validation, test)
            logits += fitted.scoring
            stopping += fitted.validation
            stoppingLabels += validation.map { labels[$0] }
            tested += test
        }
        let temperature = calibratingTemperature(logits: stopping, labels: stoppingLabels)
        logits = logits.map { $0 / temperature }
        let y = tested.map { labels[$0] }
        let (nats, accuracy) = estimate(logits: logits, labels: y)
        let interval = bootstrapInterval(logits: logits, labels: y, groups: tested.map { groups[$0] }, rounds: rounds, generator: &generator)
        return (nats, interval.low, interval.high, accuracy, tested.count)
    }

    /// Trains logistic regression on `train` (features standardised with its statistics, L2 1e-3,
    /// 500 full-batch Adam steps), keeps the step with the lowest cross-entropy on `validation`,
    /// and returns its logits on `validation` and on `scoring`.
    static func fitLogistic(features: Tensor, labels: [Float], train: [Int], validation: [Int],
                            scoring: [Int]) -> (validation: [Float], scoring: [Float]) {
        InferencePrecision.withFP32 { fitLogisticInFP32(features: features, labels: labels, train: train, validation: validation, scoring: scoring) }
    }

    private static func fitLogisticInFP32(features: Tensor, labels: [Float], train: [Int], validation: [Int],
                                          scoring: [Int]) -> (validation: [Float], scoring: [Float]) {
        let (count, d) = (features.shape[0], features.shape[1])
        var mean = [Float](repeating: 0, count: d), scale = [Float](repeating: 0, count: d)
        let f = features.pointer
        for i in train { for j in 0..<d { mean[j] += f[i * d + j] / Float(train.count) } }
        for i in train { for j in 0..<d { let v = f[i * d + j] - mean[j]; scale[j] += v * v / Float(train.count) } }
        let standardised = Tensor(shape: [count, d]) { out in
            for i in 0..<count { for j in 0..<d { out[i * d + j] = (f[i * d + j] - mean[j]) / max(scale[j].squareRoot(), 1e-6) } }
        }
        let weight = Tensor.zeros([1, d], requiresGrad: true), bias = Tensor.zeros([1], requiresGrad: true)
        let optimizer = Adam([("weight", weight), ("bias", bias)], learningRate: 1e-2, weightDecay: .l2(1e-3))
        func logits(_ indices: [Int]) -> [Float] {
            noGrad { linear(gather(standardised, indices), weight: weight, bias: bias).scalars }
        }
        var best = (ce: Double.infinity, w: weight.copy(), b: bias.copy())
        let targets = Tensor(shape: [train.count], scalars: train.map { labels[$0] })
        for step in 1...500 {
            let z = linear(gather(standardised, train), weight: weight, bias: bias).reshaped([train.count])
            binaryCrossEntropy(logits: z, targets: targets).mean().backward()
            optimizer.step()
            weight.zeroGrad(); bias.zeroGrad()
            if step % 10 == 0 {
                let ce = Foundation.log(2) - estimate(logits: logits(validation), labels: validation.map { labels[$0] }).nats
                if ce < best.ce { best = (ce, weight.copy(), bias.copy()) }
            }
        }
        weight.assign(best.w); bias.assign(best.b)
        return (logits(validation), logits(scoring))
    }
}

/// Rows `indices` of `x` (first axis), untracked.
func gather(_ x: Tensor, _ indices: [Int]) -> Tensor {
    let item = x.count / max(x.shape[0], 1)
    return Tensor(shape: [indices.count] + Array(x.shape.dropFirst())) { out in
        for (i, k) in indices.enumerated() { (out + i * item).update(from: x.pointer + k * item, count: item) }
    }
}
