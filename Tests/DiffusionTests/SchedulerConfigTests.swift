import Foundation
import XCTest
@testable import Diffusion

/// Reading scheduler_config.json: defaults, tolerance of unknown keys, errors that name the key
/// and the file.
final class SchedulerConfigTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("score-scheduler-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func write(_ json: String, name: String = "scheduler_config.json") throws -> URL {
        let url = directory.appendingPathComponent(name)
        try json.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    func testSD15ConfigWithUnknownKeysAndNulls() throws {
        let url = try write("""
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
         "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
         "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
         "trained_betas": null, "clip_sample": false, "some_future_key": {"nested": [1, 2]}}
        """)
        let config = try SchedulerConfig(contentsOf: url)
        XCTAssertEqual(config.className, "PNDMScheduler")
        XCTAssertEqual(config.betaSchedule, .scaledLinear)
        XCTAssertEqual(config.betaStart, 0.00085)
        XCTAssertEqual(config.stepsOffset, 1)
        XCTAssertFalse(config.setAlphaToOne)
        XCTAssertFalse(config.clipSample)
        XCTAssertNil(config.trainedBetas)
        XCTAssertNil(config.timestepSpacing)
        XCTAssertEqual(config.predictionType, .epsilon)
        XCTAssertEqual(config.source, url.path)
        // The class decides the spacing default, as diffusers' from_config does.
        XCTAssertEqual(try DDIMScheduler(config: config).timestepSpacing, .leading)
        XCTAssertEqual(try DDPMScheduler(config: config).timestepSpacing, .leading)
        XCTAssertEqual(try EulerDiscreteScheduler(config: config).timestepSpacing, .linspace)
        XCTAssertEqual(try DDIMScheduler(config: config).timesteps(steps: 5), [801, 601, 401, 201, 1])
    }

    func testEmptyConfigTakesDiffusersDefaults() throws {
        let config = try SchedulerConfig(json: Data("{}".utf8))
        XCTAssertEqual(config.numTrainTimesteps, 1000)
        XCTAssertEqual(config.betaStart, 0.0001)
        XCTAssertEqual(config.betaEnd, 0.02)
        XCTAssertEqual(config.betaSchedule, .linear)
        XCTAssertEqual(config.predictionType, .epsilon)
        XCTAssertEqual(config.stepsOffset, 0)
        XCTAssertTrue(config.clipSample)
        XCTAssertEqual(config.clipSampleRange, 1)
        XCTAssertTrue(config.setAlphaToOne)
        XCTAssertEqual(try DDPMScheduler(config: config).varianceType, .fixedSmall)
        XCTAssertEqual(config, SchedulerConfig())
    }

    func assertUnsupported(_ json: String, key: String, value: String, build: (SchedulerConfig) throws -> Void = { _ in },
                           file: StaticString = #filePath, line: UInt = #line) throws {
        let url = try write(json, name: "config-\(key).json")
        do {
            let config = try SchedulerConfig(contentsOf: url)
            try build(config)
            XCTFail("\(key) = \(value) was accepted", file: file, line: line)
        } catch let error as SchedulerError {
            guard case let .unsupportedValue(k, v, supported, source) = error else {
                return XCTFail("unexpected error \(error)", file: file, line: line)
            }
            XCTAssertEqual(k, key, file: file, line: line)
            XCTAssertEqual(v, value, file: file, line: line)
            XCTAssertFalse(supported.isEmpty, file: file, line: line)
            XCTAssertEqual(source, url.path, file: file, line: line)
            let message = error.description
            XCTAssertTrue(message.contains(key) && message.contains(url.path) && message.contains(value),
                          message, file: file, line: line)
        }
    }

    func testUnknownValuesNameTheKeyAndTheFile() throws {
        try assertUnsupported(#"{"prediction_type": "flow"}"#, key: "prediction_type", value: "flow")
        try assertUnsupported(#"{"beta_schedule": "sigmoid"}"#, key: "beta_schedule", value: "sigmoid")
        try assertUnsupported(#"{"timestep_spacing": "karras"}"#, key: "timestep_spacing", value: "karras")
        try assertUnsupported(#"{"variance_type": "learned_range"}"#, key: "variance_type", value: "learned_range") {
            _ = try DDPMScheduler(config: $0)
        }
        try assertUnsupported(#"{"interpolation_type": "log_linear"}"#, key: "interpolation_type", value: "log_linear") {
            _ = try EulerDiscreteScheduler(config: $0)
        }
        try assertUnsupported(#"{"use_karras_sigmas": true}"#, key: "use_karras_sigmas", value: "true") {
            _ = try EulerDiscreteScheduler(config: $0)
        }
        try assertUnsupported(#"{"thresholding": true}"#, key: "thresholding", value: "true") {
            _ = try DDIMScheduler(config: $0)
        }
        try assertUnsupported(#"{"rescale_betas_zero_snr": true}"#, key: "rescale_betas_zero_snr", value: "true") {
            _ = try DDIMScheduler(config: $0)
        }
        // A DDIM scheduler ignores DDPM's variance_type, as diffusers does.
        let url = try write(#"{"variance_type": "learned_range"}"#)
        XCTAssertNoThrow(try DDIMScheduler(config: SchedulerConfig(contentsOf: url)))
    }

    func testWrongTypesAndMissingFiles() throws {
        let url = try write(#"{"num_train_timesteps": "many"}"#)
        XCTAssertThrowsError(try SchedulerConfig(contentsOf: url)) { error in
            guard case let .invalidValue(key, _, source)? = error as? SchedulerError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "num_train_timesteps")
            XCTAssertEqual(source, url.path)
        }
        let missing = directory.appendingPathComponent("nope.json")
        XCTAssertThrowsError(try SchedulerConfig(contentsOf: missing)) { error in
            XCTAssertTrue("\(error)".contains(missing.path), "\(error)")
        }
        XCTAssertThrowsError(try SchedulerConfig(json: Data("[1, 2]".utf8), source: "list.json")) { error in
            guard case .unreadableConfig(let source, _)? = error as? SchedulerError else { return XCTFail("\(error)") }
            XCTAssertEqual(source, "list.json")
        }
        let short = try write(#"{"num_train_timesteps": 10, "trained_betas": [0.1, 0.2]}"#)
        XCTAssertThrowsError(try DDPMScheduler(config: SchedulerConfig(contentsOf: short))) { error in
            guard case .invalidValue("trained_betas", _, short.path)? = error as? SchedulerError else { return XCTFail("\(error)") }
        }
    }

    func testTrainedBetasReplaceTheSchedule() throws {
        let config = try SchedulerConfig(json: Data(#"{"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.3, 0.4], "beta_schedule": "scaled_linear"}"#.utf8))
        let scheduler = try DDPMScheduler(config: config)
        XCTAssertEqual(scheduler.noiseSchedule.betas, [0.1, 0.2, 0.3, 0.4])
        let expected = [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7, 0.9 * 0.8 * 0.7 * 0.6]
        for (a, b) in zip(scheduler.alphasCumprod, expected) { XCTAssertEqual(a, b, accuracy: 1e-15) }
    }

    func testEncodeRoundTripsWithDiffusersKeys() throws {
        var config = SchedulerConfig()
        config.betaSchedule = .squaredcosCapV2
        config.predictionType = .vPrediction
        config.timestepSpacing = .trailing
        config.stepsOffset = 1
        config.clipSample = false
        let data = try JSONEncoder().encode(config)
        let object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        XCTAssertEqual(object["beta_schedule"] as? String, "squaredcos_cap_v2")
        XCTAssertEqual(object["prediction_type"] as? String, "v_prediction")
        XCTAssertEqual(object["timestep_spacing"] as? String, "trailing")
        XCTAssertEqual(try SchedulerConfig(json: data), config)
    }

    func testStepCountsOutsideTheTrainingRangeAreErrors() throws {
        let ddim = try DDIMScheduler(config: SchedulerConfig())
        XCTAssertThrowsError(try ddim.schedule(steps: 0))
        XCTAssertThrowsError(try ddim.schedule(steps: 1001)) { error in
            XCTAssertEqual(error as? SchedulerError, .invalidStepCount(steps: 1001, numTrainTimesteps: 1000))
        }
        XCTAssertEqual(try ddim.schedule(steps: 1000).timesteps, (0..<1000).reversed().map(Float.init))
        // leading + steps_offset 1 with 1000 steps would reach t = 1000.
        var offset = SchedulerConfig(); offset.stepsOffset = 1
        XCTAssertThrowsError(try DDPMScheduler(config: offset).schedule(steps: 1000)) { error in
            guard case .timestepOutOfRange(1000, 1000, .leading, _)? = error as? SchedulerError else { return XCTFail("\(error)") }
        }
    }
}
