import Foundation
import XCTest
import Tensor
@testable import Diffusion

/// Config validation (values that would crash or allocate without bound are refused), the
/// options the multistep schedulers refuse by name, and the run history multistep schedulers keep.
final class MultistepSchedulerBehaviourTests: XCTestCase {
    let source = "/models/x/scheduler/scheduler_config.json"

    func config(_ json: String) throws -> SchedulerConfig { try SchedulerConfig(json: Data(json.utf8), source: source) }

    /// The error of reading `json` and building every scheduler kind from it names `key` and the file.
    func assertRejected(_ json: String, key: String, kinds: [SchedulerKind] = SchedulerKind.allCases,
                        file: StaticString = #filePath, line: UInt = #line) {
        for kind in kinds {
            XCTAssertThrowsError(try kind.make(config: config(json)), "\(json) \(kind)", file: file, line: line) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains(key) && message.contains(source), "\(kind): \(message)", file: file, line: line)
            }
        }
    }

    func testOutOfRangeValuesAreRejectedBeforeAllocating() {
        assertRejected(#"{"num_train_timesteps": 1e12}"#, key: "num_train_timesteps")
        assertRejected(#"{"num_train_timesteps": 1e30}"#, key: "num_train_timesteps")
        assertRejected(#"{"num_train_timesteps": 0}"#, key: "num_train_timesteps")
        assertRejected(#"{"num_train_timesteps": -5}"#, key: "num_train_timesteps")
        assertRejected(#"{"num_train_timesteps": 4611686018427387904}"#, key: "num_train_timesteps")
        assertRejected(#"{"beta_start": -0.1}"#, key: "beta_start")
        assertRejected(#"{"beta_end": 1.5}"#, key: "beta_end")
        assertRejected(#"{"beta_end": NaN}"#, key: "beta_end")
        assertRejected(#"{"steps_offset": -1}"#, key: "steps_offset")
        assertRejected(#"{"steps_offset": 1000}"#, key: "steps_offset")
        assertRejected(#"{"clip_sample_range": Infinity}"#, key: "clip_sample_range")
        assertRejected(#"{"trained_betas": [0.5, 1.5], "num_train_timesteps": 2}"#, key: "trained_betas")
    }

    func testValidEdgeValuesAreAccepted() throws {
        // diffusers writes −∞ as -Infinity (lambda_min_clipped of every DPM-Solver config it saves).
        let dpm = try DPMSolverMultistepScheduler(config: config(#"{"lambda_min_clipped": -Infinity, "solver_order": 3}"#))
        XCTAssertNil(dpm.config.lambdaMinClipped)
        XCTAssertEqual(try dpm.schedule(steps: 20).count, 20)
        XCTAssertEqual(try config(#"{"num_train_timesteps": 4000}"#).numTrainTimesteps, 4000)
        XCTAssertNoThrow(try DDPMScheduler(config: config(#"{"beta_start": 0.5, "beta_end": 0.99, "num_train_timesteps": 3}"#)))
    }

    func testStepCountsAreBounded() throws {
        for kind in SchedulerKind.allCases {
            let scheduler = try kind.make(config: SchedulerConfig())
            for steps in [0, -3, Int.max] {
                XCTAssertThrowsError(try scheduler.schedule(steps: steps), "\(kind) \(steps)") { error in
                    guard case .invalidStepCount(steps, _)? = error as? SchedulerError else { return XCTFail("\(kind): \(error)") }
                }
            }
        }
        // PNDM's Runge–Kutta start needs 4 steps (diffusers fails in numpy below that).
        XCTAssertThrowsError(try PNDMScheduler(config: config(#"{"skip_prk_steps": false}"#)).schedule(steps: 3))
        XCTAssertEqual(try PNDMScheduler(config: config(#"{"skip_prk_steps": false}"#)).schedule(steps: 4).count, 13)
        XCTAssertEqual(try PNDMScheduler(config: config(#"{"skip_prk_steps": true}"#)).schedule(steps: 1).count, 1)
    }

    func testUnimplementedOptionsAreRefusedByName() {
        let dpm: [SchedulerKind] = [.dpmSolverMultistep]
        assertRejected(#"{"algorithm_type": "sde-dpmsolver++"}"#, key: "algorithm_type", kinds: dpm)
        assertRejected(#"{"algorithm_type": "dpmsolver"}"#, key: "final_sigmas_type", kinds: dpm)
        assertRejected(#"{"solver_order": 4}"#, key: "solver_order", kinds: dpm)
        assertRejected(#"{"solver_type": "euler"}"#, key: "solver_type", kinds: dpm)
        // UniPC's and DEIS's values read as diffusers' from_config maps them.
        let unipc = try! DPMSolverMultistepScheduler(config: config(#"{"solver_type": "bh2", "algorithm_type": "deis"}"#))
        XCTAssertEqual(unipc.solverType, .midpoint)
        XCTAssertEqual(unipc.algorithm, .dpmSolverPlusPlus)
        assertRejected(#"{"final_sigmas_type": "denoise_to_zero"}"#, key: "final_sigmas_type", kinds: dpm)
        assertRejected(#"{"variance_type": "learned_range"}"#, key: "variance_type", kinds: dpm)
        for key in ["thresholding", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
                    "use_dynamic_shifting", "rescale_betas_zero_snr"] {
            assertRejected(#"{"\#(key)": true}"#, key: key, kinds: dpm)
        }
        assertRejected(#"{"prediction_type": "sample"}"#, key: "prediction_type", kinds: [.pndm, .eulerAncestralDiscrete])
    }

    func testOtherClassesKeysAreIgnoredAsDiffusersFromConfigDoes() throws {
        // A DPM-Solver config with Karras sigmas builds Euler ancestral and PNDM (they have no such key).
        let karras = try config(#"{"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true, "solver_order": 2}"#)
        XCTAssertNoThrow(try EulerAncestralDiscreteScheduler(config: karras))
        XCTAssertNoThrow(try PNDMScheduler(config: karras))
        // PNDM's set_alpha_to_one defaults to false, DDIM's to true.
        let empty = try config("{}")
        let pndm = try PNDMScheduler(config: empty), ddim = try DDIMScheduler(config: empty)
        XCTAssertEqual(pndm.finalAlphaCumprod, pndm.alphasCumprod[0])
        XCTAssertEqual(ddim.finalAlphaCumprod, 1)
        XCTAssertEqual(try PNDMScheduler(config: config(#"{"set_alpha_to_one": true}"#)).finalAlphaCumprod, 1)
    }

    /// A whole run with a fixed model; returns the final sample.
    func run(_ scheduler: any NoiseScheduler, schedule: SamplingSchedule, seed: UInt64) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        var x = scheduler.initialNoise(shape: [2, 1, 4, 4], schedule: schedule, generator: &generator)
        for i in schedule.indices {
            let input = scheduler.scaleModelInput(x, index: i, of: schedule)
            x = scheduler.step(modelOutput: SchedulerFixtures.model(input, schedule.timesteps[i]), index: i, of: schedule,
                               sample: x, generator: &generator).prevSample
        }
        return x
    }

    func testRunsThatShareAScheduleOneAfterAnotherGiveTheSameBits() throws {
        let sd15 = try SchedulerFixtures.config("sd15")
        for kind in [SchedulerKind.pndm, .dpmSolverMultistep, .eulerAncestralDiscrete] {
            let scheduler = try kind.make(config: sd15)
            let shared = try scheduler.schedule(steps: 12)
            let first = run(scheduler, schedule: shared, seed: 3)
            let again = run(scheduler, schedule: shared, seed: 3)
            let fresh = run(scheduler, schedule: try scheduler.schedule(steps: 12), seed: 3)
            XCTAssertEqual(first.scalars, again.scalars, "\(kind): a second run on the same schedule")
            XCTAssertEqual(first.scalars, fresh.scalars, "\(kind): a fresh schedule")
            XCTAssertNotEqual(first.scalars, run(scheduler, schedule: shared, seed: 4).scalars, "\(kind): another seed")
        }
    }

    func testHistoryStartsAtIndexZeroOrAfterAGap() {
        let history = SamplingHistory()
        let a = Tensor(shape: [1], scalars: [1]), b = Tensor(shape: [1], scalars: [2])
        XCTAssertEqual(history.record(index: 0, output: a, sample: a).steps.count, 1)
        XCTAssertEqual(history.record(index: 1, output: b, sample: b).steps.count, 2)
        let restarted = history.record(index: 0, output: b, sample: b)
        XCTAssertEqual(restarted.start, 0)
        XCTAssertEqual(restarted.steps.count, 1)
        XCTAssertEqual(restarted.steps[0]?.output.scalars, [2])
        let partWay = history.record(index: 5, output: a, sample: a)
        XCTAssertEqual(partWay.start, 5, "a run may start part-way down the table")
        XCTAssertEqual(history.record(index: 6, output: a, sample: a).start, 5)
    }

    /// Euler ancestral draws its noise from the run's Philox stream at every step (the last too,
    /// as diffusers draws it), so its runs are the same bits for the same seed and only then.
    func testEulerAncestralNoiseComesFromTheGenerator() throws {
        let scheduler = try EulerAncestralDiscreteScheduler(config: SchedulerFixtures.config("sd15"))
        let schedule = try scheduler.schedule(steps: 5)
        XCTAssertTrue(schedule.indices.allSatisfy { scheduler.addsNoise(index: $0, of: schedule) })
        XCTAssertEqual(scheduler.noiseSplit(index: 4, of: schedule).up, 0, "no noise reaches σ = 0")
        var rng = RandomGenerator(seed: 1)
        let x = rng.normal([1, 1, 4, 4]), eps = rng.normal([1, 1, 4, 4])
        var g1 = RandomGenerator(seed: 9), g2 = RandomGenerator(seed: 9)
        let drawn = scheduler.step(modelOutput: eps, index: 1, of: schedule, sample: x, generator: &g1)
        let noise = g2.normal(x.shape)
        let given = scheduler.step(modelOutput: eps, index: 1, of: schedule, sample: x, noise: noise)
        XCTAssertEqual(drawn.prevSample.scalars, given.prevSample.scalars)
        XCTAssertEqual(g1.offset, g2.offset)
        let mean = scheduler.step(modelOutput: eps, index: 1, of: schedule, sample: x, noise: nil)
        let (up, _) = scheduler.noiseSplit(index: 1, of: schedule)
        XCTAssertGreaterThan(up, 0)
        XCTAssertLessThan(maxScaledError(mean.prevSample + noise * Float(up), given.prevSample), 1e-6)
    }

    func testSamplerNamesBuildTheirSchedulers() throws {
        let sd15 = try SchedulerFixtures.config("sd15")
        let built = try SamplerName.allCases.map { try StableDiffusionPipeline.makeScheduler($0, config: sd15) }
        XCTAssertTrue(built[SamplerName.allCases.firstIndex(of: .pndm)!] is PNDMScheduler)
        XCTAssertTrue(built[SamplerName.allCases.firstIndex(of: .eulerAncestral)!] is EulerAncestralDiscreteScheduler)
        let karras = built[SamplerName.allCases.firstIndex(of: .dpmSolverPlusPlus2MKarras)!] as! DPMSolverMultistepScheduler
        XCTAssertTrue(karras.config.useKarrasSigmas)
        let plain = built[SamplerName.allCases.firstIndex(of: .dpmSolverPlusPlus2M)!] as! DPMSolverMultistepScheduler
        XCTAssertFalse(plain.config.useKarrasSigmas)
        XCTAssertEqual(plain.solverOrder, 2)
        XCTAssertEqual(plain.algorithm, .dpmSolverPlusPlus)
        XCTAssertNotEqual(try karras.schedule(steps: 10).timesteps, try plain.schedule(steps: 10).timesteps)
    }
}
