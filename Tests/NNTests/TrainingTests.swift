import XCTest
import Kernels
import NN
import Tensor

/// A small CNN classifier: conv → GroupNorm → SiLU → pool → conv → mean-pool → linear.
final class TinyCNN: Module {
    let conv1: Conv2d, norm1: GroupNorm, conv2: Conv2d, head: Linear

    init(generator: inout RandomGenerator) {
        conv1 = Conv2d(1, 8, kernelSize: 3, padding: 1, generator: &generator)
        norm1 = GroupNorm(groups: 4, channels: 8)
        conv2 = Conv2d(8, 16, kernelSize: 3, stride: 2, padding: 1, generator: &generator)
        head = Linear(16, 2, generator: &generator)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        var h = norm1(conv1(x)).silu().avgPool2d(kernel: 2)
        h = conv2(h).silu().mean(axes: [2, 3])
        return head(h)
    }
}

/// Images of a bright horizontal or vertical bar at a random place, with noise.
func barImages(_ count: Int, generator: inout RandomGenerator) -> (Tensor, [Int]) {
    let noise = generator.normal([count, 1, 8, 8], std: 0.3)
    let positions = generator.uniform([count]).scalars.map { Int($0 * 8) }
    let labels = (0..<count).map { $0 % 2 }
    for n in 0..<count {
        for i in 0..<8 {
            let (y, x) = labels[n] == 0 ? (positions[n], i) : (i, positions[n])
            noise.pointer[n * 64 + y * 8 + x] += 1.5
        }
    }
    return (noise, labels)
}

final class TrainingTests: XCTestCase {
    /// Trains for `steps` and returns (first loss, last loss, final weights).
    func train(steps: Int, threads: Int) -> (Float, Float, [Float]) {
        let saved = Kernels.threadCount
        Kernels.threadCount = threads
        defer { Kernels.threadCount = saved }
        var generator = RandomGenerator(seed: 2024)
        let model = TinyCNN(generator: &generator)
        let optimizer = Adam(model.trainableParameters(), learningRate: 1e-2)
        var first: Float = 0, last: Float = 0
        for step in 0..<steps {
            let (images, labels) = barImages(32, generator: &generator)
            let loss = crossEntropy(model(images), targets: labels)
            loss.backward()
            optimizer.step()
            model.zeroGrad()
            if step == 0 { first = loss.item }
            last = loss.item
        }
        return (first, last, model.parameters().flatMap(\.scalars))
    }

    func testSmallCNNLearnsBarOrientation() {
        let (first, last, _) = train(steps: 60, threads: Kernels.threadCount)
        XCTAssertGreaterThan(first, 0.5, "an untrained classifier should be near ln 2")
        XCTAssertLessThan(last, 0.15, "the CNN should learn to tell horizontal from vertical bars")
    }

    func testTrainingIsBitIdenticalOnOneAndTwoThreads() {
        let (_, _, one) = train(steps: 5, threads: 1)
        let (_, _, two) = train(steps: 5, threads: 2)
        XCTAssertEqual(one, two)
    }
}
