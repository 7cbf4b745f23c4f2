import Diffusion
@testable import Evaluation
import Foundation
import Tensor
import Testbed
import XCTest

/// The original model's benchmark cell evaluates the images it generated as the reference
/// instead of sampling them again: given `erasedImages`, `evaluate` judges exactly those.
final class ObjectEvaluationReuseTests: XCTestCase {
    func testEvaluateJudgesTheImagesItIsGiven() throws {
        var generator = RandomGenerator(seed: 5)
        func images(_ n: Int) -> Tensor { generator.normal([n, 1, 32, 32]).clamped(-1, 1) }
        let retainedLabels = (0..<10).filter { $0 != 7 }.flatMap { [$0, $0] }
        let given = EvaluationImages(target: images(4), paraphrase: images(3), paraphrasePrompts: ["a", "b", "c"],
                                     retained: images(retainedLabels.count), retainedLabels: retainedLabels)
        func idx(_ magic: [UInt8], _ dims: [Int], _ payload: [UInt8]) -> Data {
            var bytes = magic
            for d in dims { bytes += [UInt8(d >> 24 & 255), UInt8(d >> 16 & 255), UInt8(d >> 8 & 255), UInt8(d & 255)] }
            return Data(bytes + payload)
        }
        let count = 40
        let pixels = (0..<(count * 28 * 28)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }
        let test = try LabelledImages(images: try IDXArray(idx([0, 0, 8, 3], [count, 28, 28], pixels), file: "img"),
                                      labels: try IDXArray(idx([0, 0, 8, 1], [count], (0..<count).map { UInt8($0 % 10) }), file: "lab"),
                                      imagesFile: "img", labelsFile: "lab")
        var settings = EvaluationSettings()
        settings.targetImages = 4
        settings.paraphraseImages = 3
        settings.retainImagesPerClass = 2
        let (evaluation, after, before) = try ObjectEvaluator.evaluate(
            erased: try Tiny.pipeline(), original: nil, originalImages: given, erasedImages: given, label: 7,
            prompts: try FashionPrompts.bundled(), test: test, settings: settings, modelName: "original", originalName: "original")
        XCTAssert(after.retained === given.retained && after.target === given.target, "the given images, not new ones")
        XCTAssert(before?.retained === given.retained)
        let original = try XCTUnwrap(evaluation.original)
        XCTAssertEqual([evaluation.acc_e, evaluation.acc_s, evaluation.acc_g], [original.acc_e, original.acc_s, original.acc_g])
        XCTAssertEqual(evaluation.acc_s_relative ?? 0, original.acc_s > 0 ? 1 : 0)
        // Where the target prompt's images go: a distribution whose share of the concept is Acc_e.
        let classes = try XCTUnwrap(evaluation.target_classes)
        XCTAssertEqual(classes.values.reduce(0, +), 1, accuracy: 1e-9)
        XCTAssertEqual(classes["Sneaker"] ?? 0, evaluation.acc_e, accuracy: 1e-9)
    }

    func testOriginalImagesAreKeptOnDiskAndReadBackForTheSameKeyOnly() throws {
        var settings = EvaluationSettings()
        settings.targetImages = 3
        settings.paraphraseImages = 2
        settings.retainImagesPerClass = 1
        let prompts = try FashionPrompts.bundled()
        let sets = ObjectEvaluator.promptSets(label: 7, prompts: prompts, settings: settings)
        var generator = RandomGenerator(seed: 9)
        var calls = 0
        func make() -> EvaluationImages {
            calls += 1
            return EvaluationImages(target: generator.normal([3, 1, 8, 8]), paraphrase: generator.normal([2, 1, 8, 8]),
                                    paraphrasePrompts: sets.paraphrase, retained: generator.normal([9, 1, 8, 8]),
                                    retainedLabels: sets.retainedLabels)
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("original-images-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: file) }
        let first = try ObjectEvaluator.cachedImages(file: file, key: "model A", label: 7, prompts: prompts, settings: settings, generate: make)
        let again = try ObjectEvaluator.cachedImages(file: file, key: "model A", label: 7, prompts: prompts, settings: settings, generate: make)
        XCTAssertEqual(calls, 1, "the second call reads the file")
        XCTAssertEqual(again.target.scalars, first.target.scalars)
        XCTAssertEqual(again.paraphrase.scalars, first.paraphrase.scalars)
        XCTAssertEqual(again.retained.scalars, first.retained.scalars)
        XCTAssertEqual(again.retainedLabels, sets.retainedLabels)
        XCTAssertEqual(again.paraphrasePrompts, sets.paraphrase)
        let other = try ObjectEvaluator.cachedImages(file: file, key: "model B", label: 7, prompts: prompts, settings: settings, generate: make)
        XCTAssertEqual(calls, 2, "another model (or class, or settings) samples again")
        XCTAssertNotEqual(other.target.scalars, first.target.scalars)
        var more = settings
        more.targetImages = 4
        _ = try? ObjectEvaluator.cachedImages(file: file, key: "model B", label: 7, prompts: prompts, settings: more, generate: make)
        XCTAssertEqual(calls, 3, "a file whose image counts do not fit the settings is not used")
    }

    func testWeightsDigestChangesWithAnyWeight() throws {
        let unet = try Tiny.pipeline().unet
        let before = weightsDigest(unet)
        XCTAssertEqual(weightsDigest(try Tiny.pipeline().unet), before, "the same weights, the same digest")
        let (_, first) = unet.namedParameters()[0]
        first.assign(first + 1e-3)
        XCTAssertNotEqual(weightsDigest(unet), before)
    }
}
