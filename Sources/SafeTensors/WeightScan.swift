// Finding weights that would poison every result: NaN, ±Inf, or magnitudes whose square
// overflows Float32 (above 1.8·10¹⁹), which turn the first GroupNorm or softmax into NaN. A trained
// network never holds such values, so loaders refuse them instead of producing black images.
//
// The scan reads the stored bits without converting them, so it costs one pass over the bytes.

/// The largest weight magnitude accepted: √Float.greatestFiniteMagnitude, so x² stays finite.
public let largestUsableWeight: Float = 1.8e19

/// The first element of `raw` (elements of `dtype`) that is NaN, infinite or larger in magnitude
/// than `largestUsableWeight`, with its value; nil when all are usable or the dtype is not a float.
public func firstUnusableWeight(in raw: UnsafeRawBufferPointer, dtype: DType) -> (index: Int, value: Double)? {
    // Loads are unaligned: a hostile file may place a tensor at any byte offset.
    func first<Bits: FixedWidthInteger>(_: Bits.Type, _ unusable: (Bits) -> Bool) -> (Int, Bits)? {
        let size = MemoryLayout<Bits>.size
        for i in 0..<(raw.count / size) {
            let bits = raw.loadUnaligned(fromByteOffset: i * size, as: Bits.self)
            if unusable(bits) { return (i, bits) }
        }
        return nil
    }
    switch dtype {
    case .f32:
        let limit = largestUsableWeight.bitPattern
        return first(UInt32.self) { $0 & 0x7fff_ffff > limit }.map { ($0.0, Double(Float(bitPattern: $0.1))) }
    case .f64:
        let limit = Double(largestUsableWeight).bitPattern
        return first(UInt64.self) { $0 & 0x7fff_ffff_ffff_ffff > limit }.map { ($0.0, Double(bitPattern: $0.1)) }
    case .bf16:
        // Bfloat16 is the upper half of a Float32.
        let limit = UInt16(largestUsableWeight.bitPattern >> 16)
        return first(UInt16.self) { $0 & 0x7fff > limit }.map { ($0.0, Double(Float(bitPattern: UInt32($0.1) << 16))) }
    case .f16:
        // Every finite half is far below the limit; only the all-ones exponent (Inf, NaN) is refused.
        return first(UInt16.self) { $0 & 0x7c00 == 0x7c00 }.map { index, bits in
            (index, bits & 0x3ff != 0 ? .nan : bits & 0x8000 == 0 ? .infinity : -.infinity)
        }
    default:
        return nil
    }
}

/// "holds nan at element 12" (for error messages), or nil when every weight is usable.
public func unusableWeightReason(in raw: UnsafeRawBufferPointer, dtype: DType) -> String? {
    guard let (index, value) = firstUnusableWeight(in: raw, dtype: dtype) else { return nil }
    let shown = value.isFinite ? "\(Float(value))" : "\(value)"
    return "holds \(shown) at element \(index); weights must be finite and at most \(largestUsableWeight) in magnitude"
}
