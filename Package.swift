// swift-tools-version:6.1
// Layers, bottom to top (arrows point down only):
//   score → ScoreCLI → Evaluation → Erasure, Testbed → Diffusion → NN → Tensor → Kernels → CKernels
//                    → Benchmarks → Erasure                                ↘ SafeTensors
// See docs/ARCHITECTURE.md for why the innermost kernels live in C.
import PackageDescription

let package = Package(
    name: "score",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "score", targets: ["score"]),
        .library(name: "Tensor", targets: ["Tensor"]),
        .library(name: "NN", targets: ["NN"]),
        // The library API (README "Use as a library"; Examples/ builds against it): the diffusers
        // stack, the erasure methods, and the testbed's measurements with what they need.
        .library(name: "SafeTensors", targets: ["SafeTensors"]),
        .library(name: "Diffusion", targets: ["Diffusion"]),
        .library(name: "Erasure", targets: ["Erasure"]),
        .library(name: "Testbed", targets: ["Testbed"]),
        .library(name: "Evaluation", targets: ["Evaluation"]),
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
        // The system zlib (Debian zlib1g-dev): gzip'd datasets and PNG compression.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"]), .brew(["zlib"])]),
        // The system FreeType and libpng (Debian libfreetype-dev, libpng-dev): the emoji testbed's
        // fonts (colour bitmaps, COLR layers, outlines) and Twemoji's PNGs.
        .systemLibrary(name: "CFreeType", path: "Sources/CFreeType", pkgConfig: "freetype2",
                       providers: [.apt(["libfreetype-dev"]), .brew(["freetype"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"]), .brew(["libpng"])]),
        .target(name: "Tensor", dependencies: ["Kernels", "SafeTensors"]),
        .target(name: "NN", dependencies: ["Tensor"]),
        // Stable Diffusion family in diffusers layout: UNet, VAE, text encoders + tokenizers,
        // schedulers, pipelines, loading and saving.
        .target(name: "Diffusion", dependencies: ["NN", "Tensor", "SafeTensors", "CZlib"]),
        // The CPU testbed: Fashion-MNIST + all-MiniLM-L6-v2 assets, datasets, prompts, training
        // of the embedded mini-SD and its judges; the emoji dataset (four styles, rendered here).
        .target(name: "Testbed", dependencies: ["Diffusion", "NN", "Tensor", "Kernels", "SafeTensors", "CFreeType", "CPNG"],
                resources: [.copy("Resources")]),
        // Erasure methods (SCORE and the baselines), one file each behind one protocol; they use
        // the pipeline's public pieces only.
        .target(name: "Erasure", dependencies: ["Diffusion", "NN", "Tensor", "Kernels"]),
        // Measuring erasures on the testbed: Acc_e/Acc_s/Acc_g, KID, leakage, attacks, reports.
        .target(name: "Evaluation", dependencies: ["Erasure", "Testbed", "Diffusion", "NN", "Tensor", "Kernels"]),
        // Speed and memory measurements behind `score bench`.
        .target(name: "Benchmarks", dependencies: ["Erasure", "Diffusion", "NN", "Tensor", "Kernels"]),
        // The command line: flags parsed into the library's run types; no logic of its own.
        .target(
            name: "ScoreCLI",
            dependencies: [
                "Benchmarks", "Evaluation", "Erasure", "Testbed", "Diffusion", "Kernels",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(name: "score", dependencies: ["ScoreCLI"]),
        // The tests' seedable generator, for test targets below Tensor's RandomGenerator.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "TestSupport"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "TensorTests", dependencies: ["Tensor"], resources: [.copy("Fixtures")]),
        .testTarget(name: "NNTests", dependencies: ["NN"], resources: [.copy("Fixtures")]),
        .testTarget(name: "TestbedTests", dependencies: ["Testbed"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ErasureTests", dependencies: ["Erasure", "Evaluation"]),
        .testTarget(name: "DiffusionTests", dependencies: ["Diffusion"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ScoreCLITests", dependencies: ["ScoreCLI", "Evaluation", "Erasure", "Testbed", "Benchmarks"]),
        .testTarget(name: "BenchmarksTests", dependencies: ["Benchmarks"]),
        // The fuzzing of every parser and the table of bad inputs (reads DiffusionTests' fixtures in place).
        .testTarget(name: "RobustnessTests", dependencies: ["Diffusion", "Erasure", "Evaluation", "Testbed", "SafeTensors", "TestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
