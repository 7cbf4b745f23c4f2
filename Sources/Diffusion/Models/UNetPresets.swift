import Foundation

// The UNet configs of the published checkpoints, for building models with random weights
// (benchmarks, memory estimates) without their folders. Tests check them against
// Tests/DiffusionTests/Fixtures/real_configs, written by diffusers.

extension UNet2DConditionConfig {
    /// stable-diffusion-v1-5's `unet/config.json`: 4 blocks (320, 640, 1280, 1280), 8 heads,
    /// CLIP ViT-L/14 states (768), 64×64 latents; 859.5 M parameters.
    public static var stableDiffusion15: UNet2DConditionConfig {
        var config = UNet2DConditionConfig()
        config.sampleSize = .one(64)
        config.crossAttentionDim = .one(768)
        config.attentionHeadDim = .one(8)
        return config
    }

    /// stable-diffusion-2-1's `unet/config.json`: linear projections, head dims 64 (5, 10, 20, 20
    /// heads), OpenCLIP ViT-H states (1024), upcast attention, 96×96 latents; 865.9 M parameters.
    public static var stableDiffusion21: UNet2DConditionConfig {
        var config = stableDiffusion15
        config.sampleSize = .one(96)
        config.crossAttentionDim = .one(1024)
        config.attentionHeadDim = .many([5, 10, 20, 20])
        config.useLinearProjection = true
        config.upcastAttention = true
        return config
    }

    /// A preset by name ("sd15", "sd21"), nil for others.
    public static func preset(_ name: String) -> UNet2DConditionConfig? {
        switch name.lowercased() {
        case "sd15", "sd1.5", "sd-1.5", "stable-diffusion-v1-5": return stableDiffusion15
        case "sd21", "sd2.1", "sd-2.1", "stable-diffusion-2-1": return stableDiffusion21
        default: return nil
        }
    }
}
