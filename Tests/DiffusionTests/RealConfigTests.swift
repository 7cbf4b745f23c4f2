import Foundation
import XCTest
import Diffusion
import NN
import Tensor

/// The published SD configs build models whose parameter names and shapes are exactly
/// diffusers' (fixtures/real_configs, written from diffusers models on the meta device).
///
/// The VAE (84 M parameters) is always checked. The UNets hold 860 M parameters (3.4 GB) each, so
/// they are checked only with `SCORE_LARGE_TESTS=1`, which also runs one SD 1.5 forward pass on
/// 64×64 latents with 77 tokens and prints its time and the process's peak memory.
final class RealConfigTests: XCTestCase {
    struct Record: Decodable {
        let parameters: [String: [Int]]
    }

    static var largeTests: Bool { ProcessInfo.processInfo.environment["SCORE_LARGE_TESTS"] == "1" }

    func load(_ name: String) throws -> (config: Data, parameters: [String: [Int]]) {
        let url = Fixtures.root.appendingPathComponent("real_configs/\(name).json")
        let data = try Data(contentsOf: url)
        let object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let config = try JSONSerialization.data(withJSONObject: object["config"]!)
        return (config, try JSONDecoder().decode(Record.self, from: data).parameters)
    }

    func checkNames(_ module: Module, _ expected: [String: [Int]], _ name: String) {
        let actual = module.namedParameters()
        XCTAssertEqual(actual.count, expected.count, "\(name): parameter count")
        XCTAssertEqual(Set(actual.map(\.name)), Set(expected.keys), name)
        for (key, tensor) in actual where expected[key] != nil {
            XCTAssertEqual(tensor.shape, expected[key]!, "\(name): \(key)")
        }
    }

    func testSDVAEConfigBuildsDiffusersParameters() throws {
        let (data, parameters) = try load("sd_vae")
        var generator = RandomGenerator(seed: 0)
        let vae = try AutoencoderKL(config: JSONDecoder().decode(AutoencoderKLConfig.self, from: data), generator: &generator)
        checkNames(vae, parameters, "sd_vae")
    }

    func testSD21UNetConfigBuildsDiffusersParameters() throws {
        try XCTSkipUnless(Self.largeTests, "set SCORE_LARGE_TESTS=1 (builds an 865 M-parameter model)")
        let (data, parameters) = try load("sd21_unet")
        var generator = RandomGenerator(seed: 0)
        let unet = try UNet2DConditionModel(config: JSONDecoder().decode(UNet2DConditionConfig.self, from: data),
                                            generator: &generator)
        checkNames(unet, parameters, "sd21_unet")
    }

    func testSD15UNetConfigBuildsDiffusersParametersAndRuns64x64() throws {
        try XCTSkipUnless(Self.largeTests, "set SCORE_LARGE_TESTS=1 (builds an 860 M-parameter model)")
        let (data, parameters) = try load("sd15_unet")
        var generator = RandomGenerator(seed: 0)
        let unet = try UNet2DConditionModel(config: JSONDecoder().decode(UNet2DConditionConfig.self, from: data),
                                            generator: &generator)
        checkNames(unet, parameters, "sd15_unet")
        XCTAssertEqual(unet.parameterCount, 859_520_964)

        let sample = generator.normal([1, 4, 64, 64])
        let context = generator.normal([1, 77, 768])
        let before = peakResidentMegabytes()
        let start = Date()
        let out = noGrad { unet(sample, timestep: [500], encoderHiddenStates: context) }
        let seconds = Date().timeIntervalSince(start)
        XCTAssertEqual(out.shape, [1, 4, 64, 64])
        XCTAssertTrue(out.scalars.allSatisfy(\.isFinite))
        print("SD 1.5 UNet forward, 64×64, batch 1: \(String(format: "%.1f", seconds)) s; peak RSS \(before) MB before, \(peakResidentMegabytes()) MB after")
    }

    /// VmHWM of this process in MB (Linux), or -1.
    func peakResidentMegabytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return -1 }
        let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        return kilobytes < 0 ? -1 : kilobytes / 1024
    }
}
