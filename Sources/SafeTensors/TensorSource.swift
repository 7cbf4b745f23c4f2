import Foundation

/// What both a single file and a sharded checkpoint offer: named tensors and string metadata.
public protocol TensorSource: AnyObject {
    /// The file that was opened.
    var url: URL { get }
    /// All tensor names, sorted.
    var names: [String] { get }
    var metadata: [String: String] { get }
    func info(_ name: String) throws -> TensorInfo
    /// The tensor's values as `Float` (from F32, F16, BF16 or F64), in row-major order.
    func floats(_ name: String) throws -> [Float]
    /// The tensor's values as `Int64` (from I64, I32, I16, I8, U32, U16, U8 or BOOL).
    func int64s(_ name: String) throws -> [Int64]
    /// Calls `body` with the tensor's bytes exactly as stored (little-endian, possibly unaligned).
    /// The pointer is valid only during the call.
    func withRawBytes<Result>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result
}
