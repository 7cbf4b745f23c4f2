import Foundation
import XCTest
import Tensor
@testable import Testbed

/// Tiny synthetic "Fashion-MNIST": class 0 is a bright top half, class 1 a bright left half.
func syntheticData(count: Int, seed: UInt64) -> LabelledImages {
    var g = RandomGenerator(seed: seed)
    let noise = g.uniform([count * 28 * 28]).scalars
    var pixels = [UInt8](repeating: 0, count: count * 28 * 28)
    let labels = (0..<count).map { $0 % 2 }
    for n in 0..<count { for y in 0..<28 { for x in 0..<28 {
        let bright = labels[n] == 0 ? y < 14 : x < 14
        let i = n * 784 + y * 28 + x
        pixels[i] = UInt8(min(255, (bright ? 180 : 20) + noise[i] * 60))
    } } }
    return LabelledImages(images: pixels, labels: labels, height: 28, width: 28)
}

final class JudgeTests: XCTestCase {
    func testBatchesArePaddedAndScaled() {
        let data = syntheticData(count: 4, seed: 1)
        let batch = data.batch([0, 3])
        XCTAssertEqual(batch.shape, [2, 1, 32, 32])
        XCTAssertEqual(batch.pointer[0], -1, "padding is background")
        XCTAssert(batch.scalars.allSatisfy { $0 >= -1 && $0 <= 1 })
    }

    func testKernelDistanceIsNearZeroForOneDistributionAndLargeForTwo() {
        var g = RandomGenerator(seed: 4)
        let a = g.normal([200, 8]), b = g.normal([200, 8]), c = g.normal([200, 8], mean: 1.5)
        XCTAssertLessThan(abs(kernelDistance(a, b)), 0.05)
        XCTAssertGreaterThan(kernelDistance(a, c), 0.5)
    }

    func testJudgeLearnsAndResumesToIdenticalWeights() throws {
        let data = FashionMNIST(train: syntheticData(count: 64, seed: 2), test: syntheticData(count: 32, seed: 3))
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("judge-\(UUID())")
        defer { try? FileManager.default.removeItem(at: folder) }
        var options = JudgeTrainingOptions(output: folder.appendingPathComponent("full"))
        options.architecture = "mlp"
        options.steps = 12
        options.batchSize = 16
        options.checkpointEvery = 5
        let (full, record) = try trainJudge(options, data: data) { _ in }
        XCTAssertGreaterThan(record.metrics["test_accuracy"]!, 0.9)

        // Stop after 5 steps, then resume to 12: the same bits as the uninterrupted run.
        var partial = options
        partial.output = folder.appendingPathComponent("split")
        partial.stopAfter = 5
        _ = try trainJudge(partial, data: data) { _ in }
        var resumed = options
        resumed.output = partial.output
        resumed.resume = true
        let (continued, _) = try trainJudge(resumed, data: data) { _ in }
        XCTAssertEqual(full.parameters().map(\.scalars), continued.parameters().map(\.scalars))
    }

    func testUnknownArchitectureIsAClearError() {
        var g = RandomGenerator(seed: 0)
        XCTAssertThrowsError(try makeJudge("resnet", generator: &g)) { XCTAssert("\($0)".contains("resnet")) }
    }
}
