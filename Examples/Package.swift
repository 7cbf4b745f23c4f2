// swift-tools-version:6.1
// A package that uses score as a library, as another project would: it depends on the
// repository by path and imports its library products.
import PackageDescription

let package = Package(
    name: "score-examples",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "score", path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "EraseConcept",
            dependencies: [
                .product(name: "Diffusion", package: "score"),
                .product(name: "Erasure", package: "score"),
            ]),
    ],
    swiftLanguageModes: [.v5]
)
