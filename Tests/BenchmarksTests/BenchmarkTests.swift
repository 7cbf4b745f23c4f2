import Benchmarks
import Diffusion
import Foundation
import XCTest

/// The benches run on tiny sizes and report what they measured: positive, finite times and the
/// JSON keys `score bench --json` prints. Speeds themselves are for `score bench`, not tests.
final class BenchmarkTests: XCTestCase {
    func keys<T: Encodable>(_ value: T) throws -> Set<String> {
        let object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(value))
        let first = (object as? [[String: Any]])?.first ?? (object as? [String: Any]) ?? [:]
        return Set(first.keys)
    }

    func testCriticBenchReportsOneResultPerWidth() throws {
        var settings = CriticBenchmark.Settings()
        settings.widths = [2, 4]
        settings.batch = 4
        settings.side = 8
        settings.runs = 2
        let results = try CriticBenchmark.run(settings)
        XCTAssertEqual(results.map(\.width), [2, 4])
        for r in results {
            XCTAssert(r.step_s > 0 && r.step_s.isFinite, "\(r.step_s)")
            XCTAssertEqual(r.batch, 4)
            XCTAssertEqual(r.image_side, 8)
            XCTAssertEqual(r.runs, 2)
            XCTAssertGreaterThanOrEqual(r.threads, 1)
        }
        XCTAssertEqual(try keys(results), ["width", "batch", "image_side", "channels", "step_s", "runs", "threads", "isa"])
    }

    func testUNetBenchTimesATinyConfigFile() throws {
        var c = UNet2DConditionConfig()
        c.sampleSize = .one(8)
        c.inChannels = 1
        c.outChannels = 1
        c.blockOutChannels = [8, 16]
        c.layersPerBlock = .one(1)
        c.downBlockTypes = ["DownBlock2D", "CrossAttnDownBlock2D"]
        c.upBlockTypes = ["CrossAttnUpBlock2D", "UpBlock2D"]
        c.crossAttentionDim = .one(8)
        c.attentionHeadDim = .one(2)
        c.normNumGroups = 4
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("tiny-unet-\(UUID().uuidString).json")
        try JSONEncoder().encode(c).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }

        var settings = UNetBenchmark.Settings()
        settings.config = file.path
        settings.latent = 8
        settings.batch = 2
        settings.tokens = 3
        settings.runs = 2
        var steps: [String] = []
        let result = try UNetBenchmark.run(settings) { steps.append($0) }
        XCTAssertEqual(result.latent, 8)
        XCTAssertEqual(result.batch, 2)
        XCTAssertGreaterThan(result.parameters, 1000)
        XCTAssert(result.forward_s > 0 && result.forward_s.isFinite)
        let backward = try XCTUnwrap(result.forward_backward_s)
        XCTAssert(backward > 0 && backward.isFinite)
        XCTAssertEqual(steps.count, 3, "\(steps)")
        XCTAssert(try keys(result).isSuperset(of: ["config", "parameters", "forward_s", "forward_backward_s", "runs", "threads", "isa",
                                                     "forward_backward_mapped_mb", "buffer_cache_peak_mb"]))

        settings.backward = false
        XCTAssertNil(try UNetBenchmark.run(settings).forward_backward_s)
    }

    func testEngineBenchReportsEveryFigure() throws {
        var settings = EngineBenchmark.Settings()
        settings.runs = 1
        let result = try EngineBenchmark.run(settings)
        let bf16 = [result.gemm_1024_bf16_gflops, result.gemm_256x4096x512_bf16_gflops, result.conv_fwd_bf16_ms]
        for value in [result.gemm_1024_gflops, result.gemm_256x4096x512_gflops, result.conv_fwd_ms, result.conv_fwd_bwd_ms,
                      result.attention_fwd_bwd_ms, result.groupnorm_fwd_bwd_ms] + bf16.compactMap({ $0 }) {
            XCTAssert(value > 0 && value.isFinite, "\(value)")
        }
        // The bf16 rows are there exactly when bf16 is available, and say why when it is not.
        XCTAssertEqual(bf16.compactMap { $0 }.count, result.bf16_unavailable == nil ? 3 : 0)
        XCTAssertEqual(try keys(result).count, result.bf16_unavailable == nil ? 11 : 9)
    }

    func testSettingsAreCheckedBeforeAnythingIsBuilt() {
        var critic = CriticBenchmark.Settings()
        critic.batch = 0
        XCTAssertThrowsError(try CriticBenchmark.run(critic)) { XCTAssert("\($0)".contains("--batch"), "\($0)") }
        critic = CriticBenchmark.Settings()
        critic.side = 0
        XCTAssertThrowsError(try CriticBenchmark.run(critic)) { XCTAssert("\($0)".contains("--side"), "\($0)") }
        critic = CriticBenchmark.Settings()
        critic.widths = [32, -1]
        XCTAssertThrowsError(try CriticBenchmark.run(critic)) { XCTAssert("\($0)".contains("--widths"), "\($0)") }
        var unet = UNetBenchmark.Settings()
        unet.config = "sd99"
        XCTAssertThrowsError(try UNetBenchmark.run(unet)) { XCTAssert("\($0)".contains("--config"), "\($0)") }
        var engine = EngineBenchmark.Settings()
        engine.runs = 0
        XCTAssertThrowsError(try EngineBenchmark.run(engine)) { XCTAssert("\($0)".contains("--runs"), "\($0)") }
    }
}
