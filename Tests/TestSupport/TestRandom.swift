/// SplitMix64: a tiny, seedable generator for tests and the fuzzer, so that failures reproduce
/// (no cryptographic quality needed). Shared by test targets that sit below `Tensor`'s generator.
public struct TestRandom: RandomNumberGenerator {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in 0..<bound (bound > 0).
    public mutating func next(_ bound: Int) -> Int { Int(next() % UInt64(max(bound, 1))) }

    /// Uniform in [-1, 1).
    public mutating func float() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }

    public mutating func floats(_ count: Int) -> [Float] { (0..<count).map { _ in float() } }
}
