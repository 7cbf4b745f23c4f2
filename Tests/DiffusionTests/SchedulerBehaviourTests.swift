import Foundation
import XCTest
import Tensor
@testable import Diffusion

/// Properties that hold without a reference: inverses, noise handling, gradients, numpy replicas.
final class SchedulerBehaviourTests: XCTestCase {
    func config(_ json: String) throws -> SchedulerConfig { try SchedulerConfig(json: Data(json.utf8)) }

    func testPredictedOriginalInvertsAddNoiseAndVelocity() throws {
        var rng = RandomGenerator(seed: 7)
        let x0 = rng.normal([3, 2, 4, 4]), noise = rng.normal([3, 2, 4, 4])
        let timesteps = [5, 400, 990]
        for schedule in BetaSchedule.allCases {
            var c = SchedulerConfig(); c.betaSchedule = schedule; c.betaStart = 0.00085; c.betaEnd = 0.012
            let eps = try DDPMScheduler(config: c)
            c.predictionType = .vPrediction
            let v = try DDPMScheduler(config: c)
            c.predictionType = .sample
            let s = try DDPMScheduler(config: c)
            let xt = eps.addNoise(original: x0, noise: noise, timesteps: timesteps)
            // x̂₀ from the true ε is x₀ up to float32 rounding amplified by 1/√ᾱ.
            let fromEps = eps.predictedOriginal(modelOutput: noise, sample: xt, timesteps: timesteps)
            let scale = Double(1 / eps.alphasCumprod[990].squareRoot())
            XCTAssertLessThan(maxScaledError(fromEps, x0), 4e-7 * scale, "\(schedule) ε")
            let velocity = v.velocity(sample: x0, noise: noise, timesteps: timesteps)
            XCTAssertLessThan(maxScaledError(v.predictedOriginal(modelOutput: velocity, sample: xt, timesteps: timesteps), x0), 1e-5)
            XCTAssertLessThan(maxScaledError(v.predictedNoise(modelOutput: velocity, sample: xt, timesteps: timesteps), noise), 1e-5)
            XCTAssertLessThan(maxScaledError(s.predictedNoise(modelOutput: x0, sample: xt, timesteps: timesteps).narrowed(axis: 0, start: 1, length: 2),
                                             noise.narrowed(axis: 0, start: 1, length: 2)), 1e-5)
        }
    }

    func testOneTimestepBroadcastsOverTheBatch() throws {
        let ddpm = try DDPMScheduler(config: SchedulerConfig())
        var rng = RandomGenerator(seed: 3)
        let x0 = rng.normal([4, 3]), noise = rng.normal([4, 3])
        let once = ddpm.addNoise(original: x0, noise: noise, timesteps: [250])
        let each = ddpm.addNoise(original: x0, noise: noise, timesteps: [250, 250, 250, 250])
        XCTAssertEqual(once.scalars, each.scalars)
        XCTAssertEqual(once.shape, [4, 3])
    }

    func testGeneratorIsUsedOnlyByStochasticSteps() throws {
        var rng = RandomGenerator(seed: 11)
        let x = rng.normal([1, 1, 4, 4])
        let eps = rng.normal([1, 1, 4, 4])

        let ddim = try DDIMScheduler(config: SchedulerConfig())
        let schedule = try ddim.schedule(steps: 10)
        var g = RandomGenerator(seed: 1)
        _ = ddim.step(modelOutput: eps, index: 0, of: schedule, sample: x, generator: &g)
        XCTAssertEqual(g.offset, 0, "η = 0 draws nothing")

        var noisy = ddim; noisy.eta = 1
        var g1 = RandomGenerator(seed: 1), g2 = RandomGenerator(seed: 1)
        let a = noisy.step(modelOutput: eps, index: 0, of: schedule, sample: x, generator: &g1)
        let b = noisy.step(modelOutput: eps, index: 0, of: schedule, sample: x, generator: &g2)
        XCTAssertGreaterThan(g1.offset, 0)
        XCTAssertEqual(a.prevSample.scalars, b.prevSample.scalars, "same seed, same draw")
        var g3 = RandomGenerator(seed: 1)
        let drawn = g3.normal(x.shape)
        let given = noisy.step(modelOutput: eps, index: 0, of: schedule, sample: x, noise: drawn)
        XCTAssertEqual(a.prevSample.scalars, given.prevSample.scalars)
        let mean = noisy.step(modelOutput: eps, index: 0, of: schedule, sample: x, noise: nil)
        XCTAssertNotEqual(a.prevSample.scalars, mean.prevSample.scalars)

        let ddpm = try DDPMScheduler(config: SchedulerConfig())
        let full = try ddpm.schedule(steps: 1000)
        XCTAssertTrue(ddpm.addsNoise(index: 0, of: full))
        XCTAssertFalse(ddpm.addsNoise(index: 999, of: full), "no noise at t = 0")
        var g4 = RandomGenerator(seed: 5)
        _ = ddpm.step(modelOutput: eps, index: 999, of: full, sample: x, generator: &g4)
        XCTAssertEqual(g4.offset, 0)
        // fixed_small: σ² = β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ)·βₜ for consecutive timesteps.
        let t = 500, index = 999 - t
        let a500 = ddpm.alphasCumprod[t], a499 = ddpm.alphasCumprod[t - 1]
        XCTAssertEqual(ddpm.noiseStandardDeviation(index: index, of: full),
                       ((1 - a499) / (1 - a500) * ddpm.noiseSchedule.betas[t]).squareRoot(), accuracy: 1e-12)

        let euler = try EulerDiscreteScheduler(config: SchedulerConfig())
        var g5 = RandomGenerator(seed: 5)
        let es = try euler.schedule(steps: 10)
        _ = euler.step(modelOutput: eps, index: 0, of: es, sample: x, generator: &g5)
        XCTAssertEqual(g5.offset, 0)
        let start = euler.initialNoise(shape: [2, 2], schedule: es, generator: &g5)
        var g6 = RandomGenerator(seed: 5)
        XCTAssertEqual(start.scalars, (g6.normal([2, 2]) * Float(es.initNoiseSigma)).scalars)
    }

    func testGradientsFlowThroughStepsAndHelpers() throws {
        let ddim = try DDIMScheduler(config: try config(#"{"clip_sample": false}"#))
        let schedule = try ddim.schedule(steps: 10)
        var rng = RandomGenerator(seed: 2)
        let x = rng.normal([2, 1, 2, 2])
        let output = Tensor.randn([2, 1, 2, 2], generator: &rng, requiresGrad: true)
        let prev = ddim.step(modelOutput: output, index: 3, of: schedule, sample: x, noise: nil).prevSample
        prev.sum().backward()
        // ∂x_prev/∂ε = √(1−ᾱ_prev) − √ᾱ_prev·√(1−ᾱₜ)/√ᾱₜ, the same for every element.
        let t = schedule.discreteTimestep(3), p = t - 100
        let a = ddim.alphasCumprod[t], ap = ddim.alphasCumprod[p]
        let expected = (1 - ap).squareRoot() - ap.squareRoot() * (1 - a).squareRoot() / a.squareRoot()
        for g in output.grad!.scalars { XCTAssertEqual(Double(g), expected, accuracy: 1e-5) }

        let target = Tensor.randn([2, 1, 2, 2], generator: &rng, requiresGrad: true)
        let x0 = ddim.predictedOriginal(modelOutput: target, sample: x, timesteps: [10, 900])
        x0.sum().backward()
        let g = target.grad!.scalars
        XCTAssertEqual(Double(g[0]), -((1 - ddim.alphasCumprod[10]) / ddim.alphasCumprod[10]).squareRoot(), accuracy: 1e-5)
        XCTAssertEqual(Double(g[7]), -((1 - ddim.alphasCumprod[900]) / ddim.alphasCumprod[900]).squareRoot(), accuracy: 1e-4)
    }

    func testNumpyReplicas() {
        // np.arange(1000, 0, -1000/61) has 62 values (numpy's length is ceil of a rounded quotient).
        XCTAssertEqual(NumpyReplica.arange(1000, 0, step: -1000.0 / 61).count, 62)
        XCTAssertEqual(NumpyReplica.arange(1000, 0, step: -1000.0 / 7).count, 7)
        XCTAssertEqual(NumpyReplica.arange(0, 10, step: 3), [0, 3, 6, 9])
        XCTAssertEqual(NumpyReplica.linspace(0, 999, count: 1), [0])
        XCTAssertEqual(NumpyReplica.linspace(0, 999, count: 3), [0, 499.5, 999])
        // linspace spacing rounds half to even: 499.5 → 500, 166.5 → 166.
        XCTAssertEqual(TimestepTable.discrete(spacing: .linspace, steps: 3, trainTimesteps: 1000, offset: 0), [999, 500, 0])
        XCTAssertEqual(TimestepTable.discrete(spacing: .linspace, steps: 7, trainTimesteps: 1000, offset: 5),
                       [999, 832, 666, 500, 333, 166, 0])
        XCTAssertEqual(TimestepTable.discrete(spacing: .trailing, steps: 4, trainTimesteps: 1000, offset: 1), [999, 749, 499, 249])
        XCTAssertEqual(NumpyReplica.interpolateOnIntegerGrid(-1, [1, 2, 4]), 1)
        XCTAssertEqual(NumpyReplica.interpolateOnIntegerGrid(1.25, [1, 2, 4]), 2.5)
        XCTAssertEqual(NumpyReplica.interpolateOnIntegerGrid(7, [1, 2, 4]), 4)
    }

    func testFactoryBuildsEachKind() throws {
        let config = SchedulerConfig()
        XCTAssertTrue(try SchedulerKind.ddpm.make(config: config) is DDPMScheduler)
        XCTAssertTrue(try SchedulerKind.ddim.make(config: config) is DDIMScheduler)
        XCTAssertTrue(try SchedulerKind.eulerDiscrete.make(config: config) is EulerDiscreteScheduler)
        XCTAssertEqual(SchedulerKind(rawValue: "EulerDiscreteScheduler"), .eulerDiscrete)
    }
}
