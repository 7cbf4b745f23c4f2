import Foundation
import XCTest
import Diffusion
import Tensor

/// FlowMatchEulerDiscreteScheduler against diffusers 0.42 (tools/make_flux_fixtures.py): the
/// sigma and timestep tables of several configs, FLUX's dynamic shift, scale_noise, and a whole
/// FLUX sampling loop with a tiny transformer as the fixed model.
final class FluxSchedulerTests: XCTestCase {
    static let root = Fixtures.folder("flux")
    static let json: [String: Any] = {
        let data = try! Data(contentsOf: root.appendingPathComponent("scheduler.json"))
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    func tensors() throws -> TensorArchive {
        try TensorArchive(contentsOf: Self.root.appendingPathComponent("scheduler.safetensors"))
    }

    func scheduler(_ name: String) throws -> FlowMatchEulerDiscreteScheduler {
        let configs = Self.json["configs"] as! [String: Any]
        let data = try JSONSerialization.data(withJSONObject: configs[name]!)
        var config = try JSONDecoder().decode(FlowMatchEulerDiscreteScheduler.Config.self, from: data)
        config.source = "fixture:\(name)"
        return try FlowMatchEulerDiscreteScheduler(config: config)
    }

    func floats(_ value: Any?) -> [Float] { (value as! [NSNumber]).map { Float(truncating: $0) } }

    /// Largest difference in units of float32 spacing at the value (ulps).
    func ulps(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { Swift.abs($0 - $1) / max($1.ulp, Float.leastNormalMagnitude) }.max() ?? 0
    }

    func testSigmasAndTimestepsEqualDiffusers() throws {
        var checked = 0
        for case let entry as [String: Any] in Self.json["cases"] as! [Any] {
            let name = entry["config"] as! String, steps = entry["steps"] as! Int, kind = entry["kind"] as! String
            let s = try scheduler(name)
            let schedule: SamplingSchedule
            var label = "\(name) \(kind) \(steps) steps"
            if kind == "plain" {
                schedule = try s.schedule(steps: steps)
            } else {
                let seq = entry["image_seq_len"] as! Int
                label += " seq \(seq)"
                XCTAssertEqual(s.mu(imageSequenceLength: seq), (entry["mu"] as! NSNumber).doubleValue, accuracy: 1e-12, label)
                schedule = try s.fluxSchedule(steps: steps, imageSequenceLength: seq)
            }
            let sigmas = floats(entry["sigmas"]), timesteps = floats(entry["timesteps"])
            XCTAssertEqual(schedule.sigmas.count, sigmas.count, label)
            XCTAssertEqual(schedule.timesteps.count, timesteps.count, label)
            // The same float32 operations in the same order: equal, or one rounding apart where
            // numpy's and Foundation's exp or division of a float64 intermediate differ.
            XCTAssertLessThanOrEqual(ulps(schedule.sigmas.map(Float.init), sigmas), 1, label)
            XCTAssertLessThanOrEqual(ulps(schedule.timesteps, timesteps), 1, label)
            XCTAssertEqual(schedule.sigmas.last, 0, label)
            XCTAssertEqual(schedule.initNoiseSigma, 1, label)
            checked += 1
        }
        XCTAssertGreaterThan(checked, 50)
    }

    func testCalculateShiftEqualsDiffusers() {
        for case let entry as [String: Any] in Self.json["calculate_shift"] as! [Any] {
            let seq = entry["image_seq_len"] as! Int
            XCTAssertEqual(calculateShift(imageSequenceLength: seq), (entry["mu"] as! NSNumber).doubleValue, accuracy: 1e-12)
        }
        // FLUX's two ends: 256 tokens → 0.5, 4096 tokens → 1.15.
        XCTAssertEqual(calculateShift(imageSequenceLength: 256), 0.5, accuracy: 1e-12)
        XCTAssertEqual(calculateShift(imageSequenceLength: 4096), 1.15, accuracy: 1e-12)
    }

    func testScaleNoiseEqualsDiffusers() throws {
        let entry = Self.json["scale_noise"] as! [String: Any]
        let s = try scheduler("flux")
        let schedule = try s.fluxSchedule(steps: entry["steps"] as! Int, imageSequenceLength: entry["image_seq_len"] as! Int)
        let t = try tensors()
        let out = s.scaleNoise(sample: try t.tensor("scale_noise.sample"), noise: try t.tensor("scale_noise.noise"),
                               timesteps: floats(entry["timesteps"]), of: schedule)
        assertClose(out, try t.tensor("scale_noise.out"), tolerance: 1e-6, "scale_noise")
        // σ = 1 is pure noise and σ = 0 the clean sample; the velocity target is their difference.
        let x = Tensor(shape: [1, 2], scalars: [1, 2]), e = Tensor(shape: [1, 2], scalars: [5, -3])
        XCTAssertEqual(s.scaleNoise(sample: x, noise: e, sigmas: [1]).scalars, e.scalars)
        XCTAssertEqual(s.scaleNoise(sample: x, noise: e, sigmas: [0]).scalars, x.scalars)
        XCTAssertEqual(s.velocity(sample: x, noise: e).scalars, [4, -5])
        // x̂₀ = x_σ − σ·v recovers the clean sample from the exact velocity.
        let xt = s.scaleNoise(sample: x, noise: e, sigmas: [0.3])
        XCTAssertEqual(s.predictedOriginal(velocity: s.velocity(sample: x, noise: e), sample: xt, sigmas: [0.3]).scalars[0], 1, accuracy: 1e-6)
    }

    func testWholeFluxSamplingLoopEqualsDiffusers() throws {
        let entry = Self.json["loop"] as! [String: Any]
        let model = try FluxTransformer2DModel(directory: Self.root.appendingPathComponent("flux_guided"))
        let s = try scheduler("flux")
        let steps = entry["steps"] as! Int, seq = entry["image_seq_len"] as! Int
        let schedule = try s.fluxSchedule(steps: steps, imageSequenceLength: seq)
        XCTAssertLessThanOrEqual(ulps(schedule.sigmas.map(Float.init), floats(entry["sigmas"])), 1)
        let t = try tensors()
        let text = try t.tensor("loop.encoder_hidden_states"), pooled = try t.tensor("loop.pooled_projections")
        var x = try t.tensor("loop.latents")
        // flux_guided's 8×4 latent packs into a 4×2 token grid.
        let imageIds = FluxTransformer2DModel.latentImageIds(height: 4, width: 2)
        XCTAssertEqual(imageIds.shape[0], seq)
        let textIds = FluxTransformer2DModel.textIds(tokens: text.shape[1])
        let guidance = Float((entry["guidance"] as! NSNumber).doubleValue)
        // The transformer's timestep input is t / 1000 in float32, as diffusers' FLUX pipeline passes it.
        noGrad {
            for i in schedule.indices {
                let v = model(s.scaleModelInput(x, index: i, of: schedule), encoderHiddenStates: text, pooledProjections: pooled,
                              timestep: [schedule.timesteps[i] / 1000], imageIds: imageIds, textIds: textIds,
                              guidance: [guidance])
                x = s.step(modelOutput: v, index: i, of: schedule, sample: x).prevSample
                assertClose(x, try! t.tensor("loop.step\(i)"), tolerance: 1e-4, "loop step \(i)")
            }
        }
        assertClose(x, try t.tensor("loop.final"), tolerance: 1e-4, "loop final")
    }

    func testStepIsEulerOnTheVelocity() throws {
        let s = try FlowMatchEulerDiscreteScheduler()
        let schedule = try s.schedule(steps: 4)
        // linspace(1000, 1, 4) / 1000 with no shift, then the final 0.
        XCTAssertEqual(schedule.sigmas.map(Float.init), [1, 0.667, 0.334, 0.001, 0])
        XCTAssertEqual(schedule.timesteps, [1000, 667, 334, 1])
        let x = Tensor(shape: [2], scalars: [1, -2]), v = Tensor(shape: [2], scalars: [0.5, 4])
        let out = s.step(modelOutput: v, index: 1, of: schedule, sample: x)
        let dt = Float(schedule.sigmas[2]) - Float(schedule.sigmas[1])
        XCTAssertEqual(out.prevSample.scalars, [1 + dt * 0.5, -2 + dt * 4])
        XCTAssertEqual(out.predictedOriginal.scalars, [1 - Float(schedule.sigmas[1]) * 0.5, -2 - Float(schedule.sigmas[1]) * 4])
        XCTAssertFalse(s.addsNoise(index: 0, of: schedule))
    }

    func testBadConfigsAndCallsNameTheKey() throws {
        func key(_ json: String) -> String? {
            do {
                var config = try JSONDecoder().decode(FlowMatchEulerDiscreteScheduler.Config.self, from: Data(json.utf8))
                config.source = "test"
                _ = try FlowMatchEulerDiscreteScheduler(config: config)
                return nil
            } catch let SchedulerError.unsupportedValue(key, _, _, _) { return key } catch let SchedulerError.invalidValue(key, _, _) { return key } catch {
                return "\(error)"
            }
        }
        XCTAssertNil(key("{\"shift\": 3.0, \"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"unknown\": 1}"))
        XCTAssertEqual(key("{\"use_karras_sigmas\": true}"), "use_karras_sigmas")
        XCTAssertEqual(key("{\"invert_sigmas\": true}"), "invert_sigmas")
        XCTAssertEqual(key("{\"stochastic_sampling\": true}"), "stochastic_sampling")
        XCTAssertEqual(key("{\"time_shift_type\": \"cosine\"}"), "time_shift_type")
        XCTAssertEqual(key("{\"shift\": 0}"), "shift")
        XCTAssertEqual(key("{\"shift_terminal\": 1.0}"), "shift_terminal")

        // Dynamic shifting without μ cannot make a schedule.
        let flux = try scheduler("flux")
        XCTAssertThrowsError(try flux.schedule(steps: 10)) { error in
            guard case let SchedulerError.invalidValue(key, _, source) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "use_dynamic_shifting")
            XCTAssertEqual(source, "fixture:flux")
        }
        XCTAssertThrowsError(try flux.schedule(steps: 3, sigmas: [1, 0.5], mu: 1))
        XCTAssertThrowsError(try flux.schedule(steps: 0, sigmas: nil, mu: 1))
    }
}
