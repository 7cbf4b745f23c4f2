import Foundation
import Tensor

/// Fashion-MNIST's train and test splits, found or installed by `Assets`.
public struct FashionMNIST {
    public let train: LabelledImages
    public let test: LabelledImages
    /// SHA-256 of the four source files, for training records.
    public let digests: [String: String]

    public init(train: LabelledImages, test: LabelledImages, digests: [String: String] = [:]) {
        self.train = train
        self.test = test
        self.digests = digests
    }

    public init(assets: Assets) throws {
        let folder = try assets.fashionMNIST()
        func split(_ prefix: String) throws -> LabelledImages {
            try LabelledImages(imagesURL: folder.appendingPathComponent("\(prefix)-images-idx3-ubyte.gz"),
                               labelsURL: folder.appendingPathComponent("\(prefix)-labels-idx1-ubyte.gz"))
        }
        train = try split("train")
        test = try split("t10k")
        digests = Assets.fashionMNISTDigests
    }
}

extension LabelledImages {
    /// The side of the square the models see: 28×28 images padded to 32×32 (UNet-friendly).
    public static let modelSide = 32

    /// Images at `indices` as [n, 1, 32, 32] in [-1, 1], centred on a −1 (black) background.
    public func batch(_ indices: [Int]) -> Tensor {
        let side = Self.modelSide, padTop = (side - height) / 2, padLeft = (side - width) / 2
        return Tensor(shape: [indices.count, 1, side, side]) { out in
            out.update(repeating: -1, count: indices.count * side * side)
            for (n, index) in indices.enumerated() {
                let src = index * height * width
                for y in 0..<height {
                    let row = out + n * side * side + (y + padTop) * side + padLeft
                    for x in 0..<width { row[x] = Float(images[src + y * width + x]) / 127.5 - 1 }
                }
            }
        }
    }

    public func labels(_ indices: [Int]) -> [Int] { indices.map { labels[$0] } }
}
