// swift-tools-version:6.1
// Layers, bottom to top (arrows point down only):
//   score (CLI) → Benchmarks → Diffusion → NN → Tensor → Kernels → CKernels
//                         ↘ SafeTensors
// See docs/ARCHITECTURE.md for why the innermost kernels live in C.
import PackageDescription

let package = Package(
    name: "score",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "score", targets: ["score"]),
        .library(name: "Tensor", targets: ["Tensor"]),
        .library(name: "NN", targets: ["NN"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Innermost SIMD kernels. Per-function `target` attributes pick AVX-512 / AVX2+FMA /
        // portable code at run time, so no ISA build flag (and no unsafeFlags) is needed.
        .target(name: "CKernels", path: "Sources/CKernels"),
        .target(name: "Kernels", dependencies: ["CKernels"]),
        .target(name: "SafeTensors"),
        .target(name: "Tensor", dependencies: ["Kernels", "SafeTensors"]),
        .target(name: "NN", dependencies: ["Tensor"]),
        // Stable Diffusion family in diffusers layout: UNet, VAE, text encoders + tokenizers,
        // schedulers, pipelines, loading and saving.
        .target(name: "Diffusion", dependencies: ["NN", "Tensor", "SafeTensors"]),
        // Speed and memory measurements behind `score bench`.
        .target(name: "Benchmarks", dependencies: ["Diffusion", "NN", "Tensor", "Kernels"]),
        .executableTarget(
            name: "score",
            dependencies: [
                "Benchmarks", "Diffusion", "NN", "Tensor", "Kernels",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors"], exclude: ["Fixtures"]),
        .testTarget(name: "TensorTests", dependencies: ["Tensor"], resources: [.copy("Fixtures")]),
        .testTarget(name: "NNTests", dependencies: ["NN"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DiffusionTests", dependencies: ["Diffusion"], resources: [.copy("Fixtures")]),
    ],
    swiftLanguageModes: [.v5]
)
