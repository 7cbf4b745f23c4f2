import XCTest
import NN
import Tensor

/// A two-level module tree with checkpoint-style names.
final class Block: Module {
    let norm: GroupNorm
    @Key("proj_in") var projection: Conv2d
    @Key("to_out") var output: [Module]
    let optionalLayer: Linear?

    init(generator: inout RandomGenerator) {
        norm = GroupNorm(groups: 2, channels: 4)
        optionalLayer = nil
        super.init()
        projection = Conv2d(4, 4, kernelSize: 1, generator: &generator)
        output = [Linear(4, 3, generator: &generator), Dropout(0.1)]
    }
}

final class ModuleTests: XCTestCase {
    func testParameterNamesFollowCheckpointKeys() {
        var g = RandomGenerator(seed: 1)
        let block = Block(generator: &g)
        XCTAssertEqual(block.namedParameters().map(\.name), [
            "norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias", "to_out.0.weight", "to_out.0.bias",
        ])
        XCTAssertEqual(block.parameterCount, 4 + 4 + 16 + 4 + 12 + 3)
    }

    func testFreezeAndUnfreezeByName() {
        var g = RandomGenerator(seed: 1)
        let block = Block(generator: &g)
        block.freeze()
        block.unfreeze { $0.hasPrefix("to_out") }
        XCTAssertEqual(block.trainableParameters().map(\.name), ["to_out.0.weight", "to_out.0.bias"])
    }

    func testTrainAndEvalReachNestedModules() {
        var g = RandomGenerator(seed: 1)
        let block = Block(generator: &g)
        block.eval()
        XCTAssertFalse((block.output[1] as! Dropout).isTraining)
        block.train()
        XCTAssertTrue((block.output[1] as! Dropout).isTraining)
    }

    func testLoadingReportsEveryProblemAndChangesNothing() {
        var g = RandomGenerator(seed: 1)
        let block = Block(generator: &g)
        var weights = block.stateDict().mapValues { Tensor.full(7, $0.shape) }
        weights["norm.bias"] = nil
        weights["extra.weight"] = Tensor.zeros([1])
        weights["proj_in.weight"] = Tensor.zeros([4, 4, 3, 3])
        let before = block.stateDict().mapValues(\.scalars)
        XCTAssertThrowsError(try block.load(weights, source: "unet.safetensors")) { error in
            let e = error as! WeightLoadingError
            XCTAssertEqual(e.missing, ["norm.bias"])
            XCTAssertEqual(e.unexpected, ["extra.weight"])
            XCTAssertEqual(e.mismatched.count, 1)
            XCTAssert(e.description.contains("unet.safetensors") && e.description.contains("proj_in.weight"))
        }
        XCTAssertEqual(block.stateDict().mapValues(\.scalars), before)

        let good = block.stateDict().mapValues { Tensor.full(7, $0.shape) }
        XCTAssertNoThrow(try block.load(good))
        XCTAssertEqual(block.norm.bias!.scalars, [7, 7, 7, 7])
    }
}
