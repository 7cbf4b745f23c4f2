/// An n-dimensional Float32 array that can record the operations applied to it, so that
/// `backward()` can compute gradients (see Autograd.swift).
///
/// A tensor is a reference type: the autodiff graph links results to their inputs, and
/// parameters are updated in place by optimizers.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let storage: TensorStorage
    /// When true (and gradient recording is on), operations on this tensor are recorded.
    public var requiresGrad: Bool
    /// The accumulated gradient of a leaf tensor after `backward()`.
    public var grad: Tensor?
    /// How this tensor was computed, if the computation was recorded; nil for leaves.
    var node: AutogradNode?

    public init(storage: TensorStorage, shape: [Int], requiresGrad: Bool = false) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        precondition(Shape.count(shape) == storage.count,
                     "shape \(shape) needs \(Shape.count(shape)) elements, storage has \(storage.count)")
        self.shape = shape
        self.storage = storage
        self.requiresGrad = requiresGrad
    }

    public convenience init(shape: [Int], scalars: [Float], requiresGrad: Bool = false) {
        precondition(Shape.count(shape) == scalars.count,
                     "shape \(shape) needs \(Shape.count(shape)) values, got \(scalars.count)")
        self.init(storage: TensorStorage(copying: scalars), shape: shape, requiresGrad: requiresGrad)
    }

    /// A rank-0 tensor.
    public convenience init(_ scalar: Float, requiresGrad: Bool = false) {
        self.init(shape: [], scalars: [scalar], requiresGrad: requiresGrad)
    }

    /// A tensor whose every element is written by `fill` through a raw pointer.
    public convenience init(shape: [Int], fill: (UnsafeMutablePointer<Float>) -> Void) {
        let storage = TensorStorage(uninitializedCount: Shape.count(shape))
        fill(storage.pointer)
        self.init(storage: storage, shape: shape)
    }

    public static func zeros(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        Tensor(storage: TensorStorage(repeating: 0, count: Shape.count(shape)), shape: shape,
               requiresGrad: requiresGrad)
    }

    public static func ones(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        full(1, shape, requiresGrad: requiresGrad)
    }

    public static func full(_ value: Float, _ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        Tensor(storage: TensorStorage(repeating: value, count: Shape.count(shape)), shape: shape,
               requiresGrad: requiresGrad)
    }

    /// 0, 1, …, n-1 as Float.
    public static func arange(_ n: Int) -> Tensor {
        Tensor(shape: [n]) { p in for i in 0..<n { p[i] = Float(i) } }
    }

    public var count: Int { storage.count }
    public var rank: Int { shape.count }
    public var pointer: UnsafeMutablePointer<Float> { storage.pointer }
    public var scalars: [Float] { Array(storage.buffer) }

    /// The value of a single-element tensor.
    public var item: Float {
        precondition(count == 1, "item needs a single-element tensor, shape is \(shape)")
        return storage.pointer[0]
    }

    /// Whether this tensor is part of a recorded computation (a leaf that wants gradients,
    /// or the result of recorded operations).
    public var isTracked: Bool { requiresGrad || node != nil }

    /// The same values, cut off from the autodiff graph (storage is shared).
    public func detached() -> Tensor { Tensor(storage: storage, shape: shape) }

    /// A deep copy of the values, not tracked.
    public func copy() -> Tensor {
        Tensor(shape: shape) { $0.update(from: storage.pointer, count: count) }
    }

    /// Overwrites the values in place (used by optimizers and weight loading); never recorded.
    public func assign(_ other: Tensor) {
        precondition(other.shape == shape, "assign: shape \(other.shape) into \(shape)")
        storage.pointer.update(from: other.storage.pointer, count: count)
    }

    public func size(_ axis: Int) -> Int { shape[Shape.normalize(axis: axis, rank: rank)] }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let preview = scalars.prefix(8).map { String(format: "%.4g", Double($0)) }
        return "Tensor\(shape)[\(preview.joined(separator: ", "))\(count > 8 ? ", …" : "")]"
    }
}
