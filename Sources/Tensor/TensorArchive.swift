import Foundation
import SafeTensors

/// Tensors stored in a safetensors file or a sharded `*.safetensors.index.json`, read lazily
/// (the file is memory-mapped; a tensor is converted to Float32 when asked for).
public final class TensorArchive {
    public let source: SafeTensorsArchive

    public init(contentsOf url: URL) throws { source = try SafeTensorsArchive(url: url) }

    public var names: [String] { source.names }
    public var metadata: [String: String] { source.metadata }
    public func contains(_ name: String) -> Bool { source.contains(name) }

    public func shape(_ name: String) throws -> [Int] { try source.info(name).shape }

    /// The tensor stored under `name` (F32, F16, BF16 or F64), as Float32.
    public func tensor(_ name: String) throws -> Tensor {
        Tensor(shape: try shape(name), scalars: try source.floats(name))
    }

    /// The integer tensor stored under `name` (I64, I32, …), flattened.
    public func integers(_ name: String) throws -> [Int] { try source.int64s(name).map { Int($0) } }

    /// Every tensor, by name.
    public func allTensors() throws -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for name in names { result[name] = try tensor(name) }
        return result
    }
}

extension Tensor {
    /// Writes tensors to a safetensors file atomically (temp file + rename), keys sorted.
    /// `dtype` is F32, F16 or BF16.
    public static func save(_ tensors: [String: Tensor], to url: URL, dtype: DType = .f32,
                            metadata: [String: String] = [:]) throws {
        let entries = tensors.map { TensorToWrite(name: $0.key, shape: $0.value.shape,
                                                  data: .floats($0.value.scalars, storedAs: dtype)) }
        try writeSafeTensors(entries, metadata: metadata, to: url)
    }
}
