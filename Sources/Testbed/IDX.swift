import Diffusion
import Foundation

/// Errors reading IDX files (the MNIST family's format), each naming the file.
public enum IDXError: Error, CustomStringConvertible, Equatable {
    case badMagic(file: String, magic: UInt32)
    case truncated(file: String, expected: Int, actual: Int)
    case countMismatch(images: String, labels: String, imageCount: Int, labelCount: Int)
    case corrupt(file: String, reason: String)

    public var description: String {
        switch self {
        case let .badMagic(file, magic):
            return "\(file): not an unsigned-byte IDX file (magic 0x\(String(magic, radix: 16)), expected 0x801 or 0x803)"
        case let .truncated(file, expected, actual):
            return "\(file): truncated IDX data (\(actual) bytes, the header promises \(expected))"
        case let .corrupt(file, reason):
            return "\(file): \(reason)"
        case let .countMismatch(images, labels, imageCount, labelCount):
            return "\(images) has \(imageCount) images but \(labels) has \(labelCount) labels"
        }
    }
}

/// An IDX array of unsigned bytes: its dimensions and raw values.
public struct IDXArray {
    public let dimensions: [Int]
    public let bytes: [UInt8]

    /// Parses an (already decompressed) IDX file.
    public init(_ data: Data, file: String) throws {
        guard data.count >= 4 else { throw IDXError.truncated(file: file, expected: 4, actual: data.count) }
        let b = [UInt8](data)
        let magic = UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
        // 0x08 = unsigned byte; the last byte is the number of dimensions (1 labels, 3 images).
        guard b[0] == 0, b[1] == 0, b[2] == 0x08, b[3] == 1 || b[3] == 3 else { throw IDXError.badMagic(file: file, magic: magic) }
        let rank = Int(b[3])
        let headerSize = 4 + 4 * rank
        guard b.count >= headerSize else { throw IDXError.truncated(file: file, expected: headerSize, actual: b.count) }
        dimensions = (0..<rank).map { d in
            (0..<4).reduce(0) { $0 << 8 | Int(b[4 + 4 * d + $1]) }
        }
        // Four-byte dimensions multiply past Int in a corrupt header; such a file is truncated anyway.
        var count = 1
        for size in dimensions {
            let (product, overflow) = count.multipliedReportingOverflow(by: size)
            guard !overflow, product <= Int(UInt32.max) else {
                throw IDXError.corrupt(file: file, reason: "dimensions \(dimensions) describe more than 4 GB of data")
            }
            count = product
        }
        let expected = headerSize + count
        guard b.count >= expected else { throw IDXError.truncated(file: file, expected: expected, actual: b.count) }
        bytes = Array(b[headerSize..<expected])
    }

    /// Reads a `.gz` (or plain) IDX file.
    public init(contentsOf url: URL) throws {
        let raw = try Data(contentsOf: url)
        let data: Data
        do { data = url.pathExtension == "gz" ? Data(try Zlib.gunzip([UInt8](raw))) : raw } catch {
            throw IDXError.corrupt(file: url.path, reason: "\(error)")
        }
        try self.init(data, file: url.path)
    }
}

/// Labelled grey images, pixels scaled to [-1, 1] as diffusion models expect.
public struct LabelledImages {
    public let images: [UInt8]
    public let labels: [Int]
    public let height: Int, width: Int
    public var count: Int { labels.count }

    public init(images: IDXArray, labels: IDXArray, imagesFile: String, labelsFile: String) throws {
        guard images.dimensions.count == 3 else { throw IDXError.badMagic(file: imagesFile, magic: 0x801) }
        guard labels.dimensions.count == 1 else { throw IDXError.badMagic(file: labelsFile, magic: 0x803) }
        guard images.dimensions[0] == labels.dimensions[0] else {
            throw IDXError.countMismatch(images: imagesFile, labels: labelsFile,
                                         imageCount: images.dimensions[0], labelCount: labels.dimensions[0])
        }
        self.images = images.bytes
        self.labels = labels.bytes.map(Int.init)
        (height, width) = (images.dimensions[1], images.dimensions[2])
    }

    /// Images from raw bytes (row-major, `height`×`width` each) and their labels.
    public init(images: [UInt8], labels: [Int], height: Int, width: Int) {
        precondition(images.count == labels.count * height * width, "\(images.count) pixels for \(labels.count) images")
        self.images = images
        self.labels = labels
        (self.height, self.width) = (height, width)
    }

    public init(imagesURL: URL, labelsURL: URL) throws {
        try self.init(images: IDXArray(contentsOf: imagesURL), labels: IDXArray(contentsOf: labelsURL),
                      imagesFile: imagesURL.path, labelsFile: labelsURL.path)
    }
}
