import Foundation
import XCTest
import Diffusion

/// The UNet presets (used by `score bench unet --config sd15`) equal the published configs.
final class PipelinePresetsTests: XCTestCase {
    func realConfig(_ name: String) throws -> UNet2DConditionConfig {
        let data = try Data(contentsOf: Fixtures.root.appendingPathComponent("real_configs/\(name).json"))
        let object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        return try JSONDecoder().decode(UNet2DConditionConfig.self, from: JSONSerialization.data(withJSONObject: object["config"]!))
    }

    func testPresetsAreThePublishedConfigs() throws {
        XCTAssertEqual(UNet2DConditionConfig.stableDiffusion15, try realConfig("sd15_unet"))
        XCTAssertEqual(UNet2DConditionConfig.stableDiffusion21, try realConfig("sd21_unet"))
        XCTAssertEqual(UNet2DConditionConfig.preset("sd15"), .stableDiffusion15)
        XCTAssertNil(UNet2DConditionConfig.preset("sdxl"))
        XCTAssertNoThrow(try UNet2DConditionConfig.stableDiffusion21.validate())
    }
}
