import Diffusion
import Erasure
import Foundation
import XCTest

/// UCE counts a text given twice twice, as the official script's sums over its lists do.
final class UCERepeatTests: XCTestCase {
    func edited(_ targets: [String], retain: [String], eraseScale: Double = 1) throws -> [Float] {
        let pipeline = try Tiny.pipeline()
        var config = UCEConfig()
        config.eraseScale = eraseScale
        let request = ErasureRequest(concepts: [Concept(name: "cat", targetPrompts: targets, anchor: "")], retainPrompts: retain)
        _ = try UCE(config: config).erase(request, pipeline: pipeline, context: ErasureContext(output: nil))
        return pipeline.unet.namedParameters().filter { UCE.edits($0.name) }.flatMap(\.tensor.scalars)
    }

    func testARepeatedEditTextCountsTwice() throws {
        // The test encoder embeds a text by its word before the last of up to three (here "photo"
        // and "dog"), so the edit and the preserved text are different directions.
        let once = try edited(["a photo of cat"], retain: ["my dog here"])
        let twice = try edited(["a photo of cat", "a photo of cat"], retain: ["my dog here"])
        XCTAssertFalse(once == twice, "a repeated edit text changed nothing")
        // Σ over the list holds the term twice: the same as the term once at twice the scale.
        let doubled = try edited(["a photo of cat"], retain: ["my dog here"], eraseScale: 2)
        for (a, b) in zip(twice, doubled) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b))) }
        // And a repeated preserved text counts twice too.
        let preserved = try edited(["a photo of cat"], retain: ["my dog here", "my dog here"])
        XCTAssertFalse(once == preserved, "a repeated preserved text changed nothing")
    }
}
