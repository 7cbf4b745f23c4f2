import Foundation
import XCTest
import Tensor
@testable import Diffusion

/// Schedulers against diffusers 0.42 (fixtures from tools/make_scheduler_fixtures.py).
final class SchedulerParityTests: XCTestCase {
    typealias F = SchedulerFixtures

    /// diffusers' float32 ᾱ₉₉₉ of the capped cosine schedule is off by 1.3e-5 relative (1 − 0.999
    /// in float32); everywhere else its float32 tables are within 1e-6 of the exact values.
    func diffusersTolerance(config: String, timestep: Int) -> Double {
        let cosine = (F.configs[config]!["beta_schedule"] as? String) == "squaredcos_cap_v2"
        return cosine && timestep >= 998 ? 2e-5 : 1e-6
    }

    func testAlphasCumprodMatchFloat64FormulasAndDiffusers() throws {
        for name in F.configs.keys.sorted() {
            let scheduler = try DDPMScheduler(config: F.config(name))
            let ours = scheduler.alphasCumprod
            let exact = F.doubles("config.\(name).alphas_cumprod_f64")
            XCTAssertEqual(ours.count, 1000)
            XCTAssertLessThan(maxRelativeError(ours, exact), 1e-12, "\(name) vs float64 formulas")
            let torch = F.tensor("config.\(name).alphas_cumprod").scalars.map(Double.init)
            for t in 0..<1000 {
                let rel = Swift.abs(ours[t] - torch[t]) / torch[t]
                XCTAssertLessThan(rel, diffusersTolerance(config: name, timestep: t), "\(name) ᾱ[\(t)] vs diffusers")
            }
        }
    }

    func testTimestepTablesEqualDiffusers() throws {
        var checked = 0, outOfRange = 0
        for table in F.tables {
            let name = table["config"] as! String, className = table["scheduler"] as! String
            let steps = table["steps"] as! Int
            let expected = (table["timesteps"] as! [NSNumber]).map { Float(truncating: $0) }
            let scheduler = try F.kind(className).make(config: F.config(name))
            let label = "\(name) \(className) \(steps) steps"
            if className != "EulerDiscreteScheduler", let bad = expected.first(where: { $0 < 0 || $0 >= 1000 }) {
                // diffusers' table leaves the training range here (trailing spacing, 61 steps:
                // numpy's arange gives 62 values, the last −1); we refuse it instead of indexing ᾱ[−1].
                XCTAssertThrowsError(try scheduler.schedule(steps: steps), label) { error in
                    XCTAssertEqual(error as? SchedulerError, .timestepOutOfRange(
                        timestep: Int(bad), steps: steps, spacing: .trailing, source: "fixture:\(name)"))
                }
                XCTAssertEqual(TimestepTable.discrete(spacing: .trailing, steps: steps, trainTimesteps: 1000, offset: 0)
                    .map(Float.init), expected, label)
                outOfRange += 1
                continue
            }
            let schedule = try scheduler.schedule(steps: steps)
            XCTAssertEqual(schedule.timesteps, expected, label)
            if className == "EulerDiscreteScheduler" {
                let torchSigmas = (table["sigmas"] as! [NSNumber]).map(\.doubleValue)
                let exactSigmas = (table["sigmas_f64"] as! [NSNumber]).map(\.doubleValue)
                XCTAssertEqual(schedule.sigmas.count, expected.count + 1, label)
                for (i, (ours, (torch, exact))) in zip(schedule.sigmas, zip(torchSigmas, exactSigmas)).enumerated() {
                    let scale = max(Swift.abs(exact), 1e-30)
                    XCTAssertLessThan(Swift.abs(ours - exact) / scale, 1e-10, "\(label) σ[\(i)] vs float64")
                    // diffusers' float32 σ = √((1−ᾱ)/ᾱ) loses digits where 1 − ᾱ is small (σ₀ of the
                    // cosine schedule is 2.6e-4 relative off), so compare the ᾱ = 1/(1 + σ²) it encodes.
                    let t = i < expected.count ? Int(expected[i].rounded(.up)) : 0
                    let rel = Swift.abs(1 / (1 + ours * ours) - 1 / (1 + torch * torch)) * (1 + torch * torch)
                    XCTAssertLessThanOrEqual(rel, diffusersTolerance(config: name, timestep: t), "\(label) σ[\(i)] vs diffusers")
                }
                let initSigma = (table["init_noise_sigma"] as! NSNumber).doubleValue
                if initSigma > 1 {
                    XCTAssertEqual(schedule.initNoiseSigma, initSigma,
                                   accuracy: diffusersTolerance(config: name, timestep: 999) * initSigma, label)
                } else {  // one step at t = 0 (linspace): σ₀ as above
                    XCTAssertEqual(schedule.initNoiseSigma, schedule.sigmas[0], label)
                    XCTAssertEqual(schedule.initNoiseSigma, initSigma, accuracy: 1e-3 * initSigma, label)
                }
            } else {
                XCTAssertEqual(schedule.initNoiseSigma, 1)
                XCTAssertTrue(schedule.sigmas.isEmpty)
            }
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 95)
        XCTAssertGreaterThan(outOfRange, 0)
    }

    /// Full sampling loops with the fixtures' model, free-running (each step starts from our own
    /// previous sample), compared at every step: |ours − diffusers| ≤ 1e-4·max(1, |diffusers|)
    /// + 8 float32 ulps of the largest |x| the step started from. The ulp term is the rounding both
    /// sides carry in float32; it only matters for Euler on the cosine schedule, whose first
    /// step goes from |x| ≈ 2·10⁴ (σ₉₉₉ = 2.03e4) to |x| ≈ 10, where float32 keeps ~3 digits.
    /// There diffusers' own float32 run is up to 1.6e-4 off the exact (float64) trajectory, so
    /// those runs are held to 1e-4 of the float64 trajectory and 5e-4 of diffusers.
    func testSamplingRunsMatchDiffusers() throws {
        var worstByKind: [String: Double] = [:]
        for run in F.runs {
            let name = run["name"] as! String
            let className = run["scheduler"] as! String
            let steps = run["steps"] as! Int
            let overrides = run["overrides"] as! [String: Any]
            let kwargs = run["step_kwargs"] as! [String: Any]
            let config = try F.config(run["config"] as! String, overrides: overrides)
            var scheduler = try F.kind(className).make(config: config)
            if var ddim = scheduler as? DDIMScheduler {
                ddim.eta = (kwargs["eta"] as? NSNumber)?.doubleValue ?? 0
                ddim.useClippedModelOutput = kwargs["use_clipped_model_output"] as? Bool ?? false
                scheduler = ddim
            }
            let schedule = try scheduler.schedule(steps: steps)
            XCTAssertEqual(schedule.timesteps, (run["timesteps"] as! [NSNumber]).map { Float(truncating: $0) }, name)

            let samples = unstack(F.tensor("run.\(name).samples"))
            let preds = F.has("run.\(name).pred") ? unstack(F.tensor("run.\(name).pred")) : nil
            let noises = F.has("run.\(name).noise") ? unstack(F.tensor("run.\(name).noise")) : nil
            var exact: [Tensor]?
            if F.has("run.\(name).samples_f64") {
                let values = F.doubles("run.\(name).samples_f64").map { Float($0) }
                exact = unstack(Tensor(shape: [schedule.count + 1] + samples[0].shape, scalars: values))
            }
            XCTAssertEqual(samples.count, schedule.count + 1, name)
            var x = exact?[0] ?? samples[0]
            var worst = 0.0, worstExact = 0.0
            for i in schedule.indices {
                let input = scheduler.scaleModelInput(x, index: i, of: schedule)
                let output = F.model(input, schedule.timesteps[i])
                let result = scheduler.step(modelOutput: output, index: i, of: schedule, sample: x, noise: noises?[i])
                let carried = 8 * Double(x.scalars.map { Swift.abs($0) }.max()!.ulp)
                x = result.prevSample
                worst = max(worst, maxScaledError(x, samples[i + 1], slack: carried))
                if let preds { worst = max(worst, maxScaledError(result.predictedOriginal, preds[i], slack: carried)) }
                if let exact { worstExact = max(worstExact, maxScaledError(x, exact[i + 1], slack: carried)) }
            }
            XCTAssertLessThan(worst, exact == nil ? 1e-4 : 5e-4, "\(name): worst scaled error \(worst)")
            XCTAssertLessThan(worstExact, 1e-4, "\(name): worst scaled error vs float64 \(worstExact)")
            let kind = name.split(separator: ".").dropFirst().dropLast().joined(separator: ".")
            worstByKind[kind] = max(worstByKind[kind] ?? 0, worst)
            if exact != nil { worstByKind[kind + " vs float64"] = max(worstByKind[kind + " vs float64"] ?? 0, worstExact) }
        }
        XCTAssertGreaterThanOrEqual(F.runs.count, 30)
        print("scheduler runs, worst scaled error per kind:",
              worstByKind.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.1e", $0.value))" }.joined(separator: ", "))
    }

    /// add_noise, get_velocity and x̂₀ with a different timestep per sample.
    func testTrainingHelpersMatchDiffusers() throws {
        for helper in F.helpers {
            let name = helper["config"] as! String
            let timesteps = helper["timesteps"] as! [Int]
            let key = "helpers.\(name)"
            let original = F.tensor("\(key).original"), noise = F.tensor("\(key).noise")
            let output = F.tensor("\(key).model_output")
            let ddpm = try DDPMScheduler(config: F.config(name))
            let euler = try EulerDiscreteScheduler(config: F.config(name))
            var epsilonConfig = try F.config(name); epsilonConfig.predictionType = .epsilon
            var vConfig = try F.config(name); vConfig.predictionType = .vPrediction
            let eps = try DDIMScheduler(config: epsilonConfig), v = try DDIMScheduler(config: vConfig)

            let cases: [(String, Tensor)] = [
                ("add_noise", ddpm.addNoise(original: original, noise: noise, timesteps: timesteps)),
                ("velocity", ddpm.velocity(sample: original, noise: noise, timesteps: timesteps)),
                ("x0_epsilon", eps.predictedOriginal(modelOutput: output, sample: original, timesteps: timesteps)),
                ("x0_v", v.predictedOriginal(modelOutput: output, sample: original, timesteps: timesteps)),
            ]
            // Exact (float64 formulas) within 1e-6; diffusers' own float32 coefficients are off by up
            // to 7e-4 relative in √(1−ᾱ₀) (cancellation) and 6.5e-6 in √ᾱ₉₉₉ of the capped cosine
            // schedule, hence 1e-5 against diffusers.
            for (what, ours) in cases {
                XCTAssertLessThan(maxScaledError(ours, F.tensor("\(key).\(what)")), 1e-5, "\(name) \(what) vs diffusers")
                let exact = Tensor(shape: ours.shape, scalars: F.doubles("\(key).\(what)_f64").map { Float($0) })
                XCTAssertLessThan(maxScaledError(ours, exact), 1e-6, "\(name) \(what) vs float64")
            }
            let eulerNoised = euler.addNoise(original: original, noise: noise, timesteps: timesteps)
            XCTAssertLessThan(maxScaledError(eulerNoised, F.tensor("\(key).euler_add_noise")), 1e-5, "\(name) Euler add_noise")
            // Euler's training helpers other than add_noise are the shared variance-preserving ones.
            XCTAssertLessThan(maxScaledError(euler.velocity(sample: original, noise: noise, timesteps: timesteps),
                                             F.tensor("\(key).velocity")), 1e-5, "\(name) Euler velocity")
        }
    }

    /// The sampler pitfall of docs/TESTBED.md: squaredcos_cap_v2, clipped x̂₀, first DDIM step at
    /// t = 960 (leading spacing; ᾱ[999] ≈ 2.4e-9). Keeping the raw ε̂ and recomputing it from the clipped x̂₀ give different
    /// samples, ours as diffusers' do.
    func testDDIMClippedModelOutputPitfall() throws {
        var config = try F.config("testbed")
        XCTAssertEqual(config.betaSchedule, .squaredcosCapV2)
        XCTAssertTrue(config.clipSample)  // diffusers' default for DDIM
        config.source = "testbed"
        let raw = try DDIMScheduler(config: config)
        let recomputed = try DDIMScheduler(config: config, useClippedModelOutput: true)
        let schedule = try raw.schedule(steps: 25)
        XCTAssertEqual(schedule.timesteps.first, 960)  // leading: 24·40
        XCTAssertLessThan(raw.alphasCumprod[999], 3e-9)

        for (scheduler, run) in [(raw, "testbed.ddim.clip.25"), (recomputed, "testbed.ddim.clip_clippedeps.25")] {
            let samples = unstack(F.tensor("run.\(run).samples"))
            var x = samples[0]
            for i in schedule.indices {
                let eps = F.model(x, schedule.timesteps[i])
                x = scheduler.step(modelOutput: eps, index: i, of: schedule, sample: x, noise: nil).prevSample
            }
            XCTAssertLessThan(maxScaledError(x, samples.last!), 1e-4, run)
        }
        let torchRaw = unstack(F.tensor("run.testbed.ddim.clip.25.samples")).last!
        let torchRecomputed = unstack(F.tensor("run.testbed.ddim.clip_clippedeps.25.samples")).last!
        let torchGap = zip(torchRaw.scalars, torchRecomputed.scalars).map { Swift.abs($0 - $1) }.max()!
        XCTAssertGreaterThan(torchGap, 0.05, "the option must matter in diffusers too")

        // One step at t = 960 from the same sample: the clipped x̂₀ is the same, the ε̂ differs.
        let x = unstack(F.tensor("run.testbed.ddim.clip.25.samples"))[0]
        let eps = F.model(x, schedule.timesteps[0])
        let a = raw.step(modelOutput: eps, index: 0, of: schedule, sample: x, noise: nil)
        let b = recomputed.step(modelOutput: eps, index: 0, of: schedule, sample: x, noise: nil)
        XCTAssertEqual(a.predictedOriginal.scalars, b.predictedOriginal.scalars)
        XCTAssertTrue(a.predictedOriginal.scalars.allSatisfy { Swift.abs($0) <= 1 })
        XCTAssertGreaterThan(zip(a.prevSample.scalars, b.prevSample.scalars).map { Swift.abs($0 - $1) }.max()!, 0.05)
        // Recomputing ε̂ from the clipped x̂₀ makes the step consistent: xₜ = √ᾱ·x̂₀ + √(1−ᾱ)·ε̂.
        let alpha = raw.alphasCumprod[960]
        let epsHat = (x - b.predictedOriginal * Float(alpha.squareRoot())) * Float(1 / (1 - alpha).squareRoot())
        let rebuilt = b.predictedOriginal * Float(raw.alphasCumprod[920].squareRoot())
            + epsHat * Float((1 - raw.alphasCumprod[920]).squareRoot())
        XCTAssertLessThan(maxScaledError(b.prevSample, rebuilt), 1e-5)
    }
}
