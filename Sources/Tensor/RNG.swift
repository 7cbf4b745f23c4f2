import Foundation

/// A seeded, counter-based random generator (Philox 4×32-10, as used by PyTorch and JAX).
///
/// Element i of a draw depends only on (seed, offset + i), never on which thread computes it,
/// so the same seed gives the same bits on any thread count. Each draw advances the offset.
public struct RandomGenerator: Sendable {
    public let seed: UInt64
    /// Number of 32-bit values consumed so far (rounded up to blocks of four).
    public private(set) var offset: UInt64

    public init(seed: UInt64, offset: UInt64 = 0) {
        self.seed = seed
        self.offset = offset
    }

    /// Four 32-bit values for counter block `block`.
    @inline(__always)
    static func philox(seed: UInt64, block: UInt64) -> (UInt32, UInt32, UInt32, UInt32) {
        var c0 = UInt32(truncatingIfNeeded: block), c1 = UInt32(truncatingIfNeeded: block >> 32)
        var c2: UInt32 = 0, c3: UInt32 = 0
        var k0 = UInt32(truncatingIfNeeded: seed), k1 = UInt32(truncatingIfNeeded: seed >> 32)
        for _ in 0..<10 {
            let p0 = UInt64(0xD251_1F53) * UInt64(c0)
            let p1 = UInt64(0xCD9E_8D57) * UInt64(c2)
            (c0, c1, c2, c3) = (UInt32(truncatingIfNeeded: p1 >> 32) ^ c1 ^ k0, UInt32(truncatingIfNeeded: p1),
                                UInt32(truncatingIfNeeded: p0 >> 32) ^ c3 ^ k1, UInt32(truncatingIfNeeded: p0))
            k0 = k0 &+ 0x9E37_79B9
            k1 = k1 &+ 0xBB67_AE85
        }
        return (c0, c1, c2, c3)
    }

    /// Fills `count` raw 32-bit values starting at this generator's offset.
    private mutating func next(_ count: Int, _ body: (Int, UInt32) -> Void) {
        let firstBlock = offset / 4
        let blocks = (count + 3) / 4
        let seed = self.seed
        parallelChunks(blocks, grain: 4096) { r in
            for b in r {
                let (x0, x1, x2, x3) = RandomGenerator.philox(seed: seed, block: firstBlock + UInt64(b))
                let base = b * 4
                if base < count { body(base, x0) }
                if base + 1 < count { body(base + 1, x1) }
                if base + 2 < count { body(base + 2, x2) }
                if base + 3 < count { body(base + 3, x3) }
            }
        }
        offset = (firstBlock + UInt64(blocks)) * 4
    }

    @inline(__always)
    static func unitFloat(_ bits: UInt32) -> Float {
        // 24 random bits → [0, 1).
        Float(bits >> 8) * (1.0 / 16_777_216.0)
    }

    /// Uniform samples in [low, high).
    public mutating func uniform(_ shape: [Int], low: Float = 0, high: Float = 1) -> Tensor {
        let n = Shape.count(shape)
        let storage = TensorStorage(uninitializedCount: n)
        let p = storage.pointer
        next(n) { i, bits in p[i] = low + (high - low) * RandomGenerator.unitFloat(bits) }
        return Tensor(storage: storage, shape: shape)
    }

    /// Normal samples by Box–Muller over pairs of uniforms.
    public mutating func normal(_ shape: [Int], mean: Float = 0, std: Float = 1) -> Tensor {
        let n = Shape.count(shape)
        let pairs = (n + 1) / 2
        let uniforms = UnsafeMutablePointer<UInt32>.allocate(capacity: pairs * 2)
        defer { uniforms.deallocate() }
        next(pairs * 2) { i, bits in uniforms[i] = bits }
        let storage = TensorStorage(uninitializedCount: n)
        let p = storage.pointer
        parallelChunks(pairs, grain: 4096) { r in
            for i in r {
                let u1 = (Float(uniforms[2 * i] >> 8) + 1) * (1.0 / 16_777_216.0)  // (0, 1]
                let u2 = RandomGenerator.unitFloat(uniforms[2 * i + 1])
                let radius = (-2 * Foundation.log(u1)).squareRoot()
                let angle = 2 * Float.pi * u2
                p[2 * i] = mean + std * radius * Foundation.cos(angle)
                if 2 * i + 1 < n { p[2 * i + 1] = mean + std * radius * Foundation.sin(angle) }
            }
        }
        return Tensor(storage: storage, shape: shape)
    }

    /// A permutation of 0..<n (Fisher–Yates on the generator's stream).
    public mutating func permutation(_ n: Int) -> [Int] {
        var values = [Int](0..<n)
        guard n > 1 else { return values }
        let u = uniform([n - 1]).scalars
        for i in stride(from: n - 1, to: 0, by: -1) {
            let j = min(i, Int(u[n - 1 - i] * Float(i + 1)))
            values.swapAt(i, j)
        }
        return values
    }

    /// An independent generator derived from this one (for a sub-task with its own stream).
    public func fork(_ salt: UInt64) -> RandomGenerator {
        let (a, b, _, _) = RandomGenerator.philox(seed: seed ^ 0x5DEE_CE66_D1CE_4E5B, block: salt)
        return RandomGenerator(seed: UInt64(a) | (UInt64(b) << 32))
    }
}

extension Tensor {
    public static func randn(_ shape: [Int], generator: inout RandomGenerator, requiresGrad: Bool = false) -> Tensor {
        let t = generator.normal(shape)
        t.requiresGrad = requiresGrad
        return t
    }

    public static func rand(_ shape: [Int], generator: inout RandomGenerator, requiresGrad: Bool = false) -> Tensor {
        let t = generator.uniform(shape)
        t.requiresGrad = requiresGrad
        return t
    }
}
