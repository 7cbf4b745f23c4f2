import Foundation
import XCTest
import Tensor
@testable import Diffusion

/// PNDM, DPM-Solver multistep and Euler ancestral against diffusers 0.42 (fixtures from
/// tools/make_scheduler_fixtures.py; their whole runs are also checked, free-running, by
/// `SchedulerParityTests.testSamplingRunsMatchDiffusers`).
final class MultistepSchedulerParityTests: XCTestCase {
    typealias F = SchedulerFixtures
    static let multistepClasses: Set<String> = ["PNDMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler"]

    func scheduler(_ entry: [String: Any]) throws -> any NoiseScheduler {
        let config = try F.config(entry["config"] as! String, overrides: entry["overrides"] as? [String: Any] ?? [:])
        return try F.kind(entry["scheduler"] as! String).make(config: config)
    }

    /// ᾱ = 1/(1 + σ²) encoded by two σ, as a relative difference (σ near 0 and σ ≈ 2·10⁴ both
    /// compare sensibly; diffusers' float32 σ loses digits where 1 − ᾱ is small).
    func alphaGap(_ a: Double, _ b: Double) -> Double {
        Swift.abs(1 / (1 + a * a) - 1 / (1 + b * b)) * (1 + b * b)
    }

    func testTablesEqualDiffusers() throws {
        var checked = 0, refused = 0, worstSigma = 0.0
        for entry in F.multistepTables {
            let className = entry["scheduler"] as! String, steps = entry["steps"] as! Int
            let label = "\(entry["config"]!) \(className) \(entry["variant"]!) \(steps) steps"
            let prediction = (F.configs[entry["config"] as! String]!["prediction_type"] as? String) ?? "epsilon"
            if prediction == "sample" && className != "DPMSolverMultistepScheduler" {
                // diffusers builds the table but fails at the first step; we refuse at once.
                XCTAssertThrowsError(try scheduler(entry), label) { error in
                    guard case .unsupportedValue("prediction_type", "sample", _, _)? = error as? SchedulerError else {
                        return XCTFail("\(label): \(error)")
                    }
                }
                refused += 1
                continue
            }
            let made = try scheduler(entry)
            if let error = entry["error"] as? String {
                XCTAssertThrowsError(try made.schedule(steps: steps), "\(label): diffusers says \(error)")
                refused += 1
                continue
            }
            let expected = (entry["timesteps"] as! [NSNumber]).map { Float(truncating: $0) }
            if className != "EulerAncestralDiscreteScheduler", expected.contains(where: { $0 < 0 || $0 >= 1000 }) {
                // numpy's arange gave one value too many (trailing, 61 steps): diffusers would
                // index ᾱ[−1]; we refuse the table.
                XCTAssertThrowsError(try made.schedule(steps: steps), label) { error in
                    guard case .timestepOutOfRange? = error as? SchedulerError else { return XCTFail("\(label): \(error)") }
                }
                refused += 1
                continue
            }
            let schedule = try made.schedule(steps: steps)
            let isCosine = (F.configs[entry["config"] as! String]!["beta_schedule"] as? String) == "squaredcos_cap_v2"
            if let exact = (entry["timesteps_f64"] as? [NSNumber])?.map({ Float(truncating: $0) }) {
                // Karras: the table from the float64 training range equals ours exactly; diffusers'
                // float32 range moves a truncated (cosine) timestep by one where σ rises steeply.
                XCTAssertEqual(schedule.timesteps, exact, "\(label) vs float64")
                XCTAssertEqual(schedule.timesteps.count, expected.count, label)
                for (ours, theirs) in zip(schedule.timesteps, expected) {
                    XCTAssertLessThanOrEqual(Swift.abs(ours - theirs), isCosine ? 1 : 0, "\(label) \(schedule.timesteps) vs \(expected)")
                }
            } else {
                XCTAssertEqual(schedule.timesteps, expected, label)
            }
            XCTAssertEqual(schedule.inferenceSteps, steps, label)
            if let sigmas = (entry["sigmas"] as? [NSNumber])?.map(\.doubleValue) {
                XCTAssertEqual(schedule.sigmas.count, sigmas.count, label)
                let exact = (entry["sigmas_f64"] as? [NSNumber])?.map(\.doubleValue)
                for (i, (ours, theirs)) in zip(schedule.sigmas, sigmas).enumerated() {
                    let gap = alphaGap(ours, theirs)
                    if let exact {
                        // Karras σ interpolate between diffusers' float32 σ₀ and σ_max (σ₀ = √((1−ᾱ₀)/ᾱ₀)
                        // is ~1e-4 off in float32), so hold them to the float64 table and 3e-4 of diffusers.
                        XCTAssertLessThan(Swift.abs(ours - exact[i]), 1e-9 * max(1, exact[i]), "\(label) σ[\(i)] vs float64")
                        XCTAssertLessThan(gap, 3e-4, "\(label) σ[\(i)] \(ours) vs \(theirs)")
                    } else {
                        worstSigma = max(worstSigma, gap)
                        XCTAssertLessThan(gap, 2e-5, "\(label) σ[\(i)] \(ours) vs \(theirs)")
                    }
                }
            } else {
                XCTAssertTrue(schedule.sigmas.isEmpty, label)
            }
            if let initSigma = (entry["init_noise_sigma"] as? NSNumber)?.doubleValue {
                XCTAssertEqual(schedule.initNoiseSigma, initSigma, accuracy: 2e-5 * max(1, initSigma), label)
            } else {
                XCTAssertEqual(schedule.initNoiseSigma, 1, label)
            }
            checked += 1
        }
        XCTAssertGreaterThan(checked, 150)
        XCTAssertGreaterThan(refused, 5)
        print("multistep tables: \(checked) equal, \(refused) refused as diffusers fails; worst σ gap \(worstSigma)")
    }

    /// Each step of every run from diffusers' own previous sample (teacher-forced), so one step's
    /// error is not carried into the next: the single-step parity of every scheduler and option.
    /// Multistep schedulers then remember diffusers' own outputs, as diffusers does.
    func testSingleStepsFromDiffusersSamples() throws {
        var worst: [String: Double] = [:]
        var count = 0
        for run in F.runs {
            let name = run["name"] as! String
            let config = try F.config(run["config"] as! String, overrides: run["overrides"] as! [String: Any])
            guard Self.multistepClasses.contains(run["scheduler"] as! String) else { continue }
            let scheduler = try F.kind(run["scheduler"] as! String).make(config: config)
            let schedule = try scheduler.schedule(steps: run["steps"] as! Int)
            XCTAssertEqual(schedule.timesteps, (run["timesteps"] as! [NSNumber]).map { Float(truncating: $0) }, name)
            let samples = unstack(F.tensor("run.\(name).samples"))
            let noises = F.has("run.\(name).noise") ? unstack(F.tensor("run.\(name).noise")) : nil
            let preds = F.has("run.\(name).pred") ? unstack(F.tensor("run.\(name).pred")) : nil
            XCTAssertEqual(samples.count, schedule.count + 1, name)
            var runWorst = 0.0
            for i in schedule.indices {
                let x = samples[i]
                let output = F.model(scheduler.scaleModelInput(x, index: i, of: schedule), schedule.timesteps[i])
                let result = scheduler.step(modelOutput: output, index: i, of: schedule, sample: x, noise: noises?[i])
                let carried = 8 * Double(x.scalars.map { Swift.abs($0) }.max()!.ulp)
                runWorst = max(runWorst, maxScaledError(result.prevSample, samples[i + 1], slack: carried))
                if let preds { runWorst = max(runWorst, maxScaledError(result.predictedOriginal, preds[i], slack: carried)) }
            }
            XCTAssertLessThan(runWorst, 2e-5, "\(name): worst scaled error of one step \(runWorst)")
            let kind = name.split(separator: ".").dropFirst().dropLast().joined(separator: ".")
            worst[kind] = max(worst[kind] ?? 0, runWorst)
            count += 1
        }
        XCTAssertGreaterThanOrEqual(count, 60)
        print("multistep single steps, worst scaled error per kind:",
              worst.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.1e", $0.value))" }.joined(separator: ", "))
    }
}
