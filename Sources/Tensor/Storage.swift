import Kernels

/// A contiguous, 64-byte aligned buffer of Float32 owned by one or more tensors. Its memory
/// comes from `BufferCache`, which hands the buffers of freed tensors to the next tensors of
/// the same size.
///
/// Tensors are always contiguous and row-major; views that need a different layout
/// (permute, slice, expand) copy. Reshape shares storage. This keeps every kernel a simple
/// loop over memory, and the copies are cheap next to the GEMMs that dominate the engine.
public final class TensorStorage: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>

    /// Uninitialised storage: the caller must write every element.
    public init(uninitializedCount count: Int) {
        self.count = count
        pointer = BufferCache.allocate(floats: count)
    }

    public convenience init(repeating value: Float, count: Int) {
        self.init(uninitializedCount: count)
        pointer.initialize(repeating: value, count: count)
    }

    public convenience init<C: Collection>(copying values: C) where C.Element == Float {
        self.init(uninitializedCount: values.count)
        var p = pointer
        for v in values { p.pointee = v; p += 1 }
    }

    deinit { BufferCache.free(pointer) }

    public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: pointer, count: count)
    }
}
