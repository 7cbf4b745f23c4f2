// Float16 and bfloat16 conversions done on bit patterns, so they behave the same on every platform
// (Swift's `Float16` type is unavailable on macOS/x86_64, and there is no bfloat16 type at all).
//
// Half → Float is exact. Float → half rounds to nearest, ties to even, like IEEE 754 casts and
// like numpy / PyTorch. NaN payloads are kept where they fit, so half → Float → half reproduces
// every one of the 65 536 bit patterns.

/// Converts IEEE 754 binary16 bits (1 sign, 5 exponent, 10 mantissa bits) to `Float`.
@inline(__always)
public func floatFromFloat16Bits(_ bits: UInt16) -> Float {
    let sign = UInt32(bits & 0x8000) << 16
    let exponent = UInt32(bits >> 10) & 0x1F
    let mantissa = UInt32(bits & 0x03FF)

    if exponent == 0 {
        // Zero or subnormal: value = mantissa × 2^-24, which Float represents exactly.
        let magnitude = Float(mantissa) * 0x1p-24
        return Float(bitPattern: sign | magnitude.bitPattern)
    }
    if exponent == 0x1F {
        // Infinity (mantissa 0) or NaN (payload moved to the top of Float's mantissa).
        return Float(bitPattern: sign | 0x7F80_0000 | mantissa << 13)
    }
    // Normal: rebias the exponent from 15 to 127.
    return Float(bitPattern: sign | (exponent + 112) << 23 | mantissa << 13)
}

/// Converts `Float` to IEEE 754 binary16 bits, rounding to nearest, ties to even.
/// Values too large become ±infinity; values too small become subnormals or ±0.
@inline(__always)
public func float16Bits(from value: Float) -> UInt16 {
    let bits = value.bitPattern
    let sign = UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000)
    let exponent = Int((bits >> 23) & 0xFF)
    let mantissa = bits & 0x7F_FFFF

    if exponent == 0xFF {
        if mantissa == 0 { return sign | 0x7C00 }  // infinity
        // NaN: keep the top payload bits; if they are all zero, set the quiet bit so it stays NaN.
        let payload = UInt16(truncatingIfNeeded: mantissa >> 13)
        return sign | 0x7C00 | (payload != 0 ? payload : 0x0200)
    }

    let halfExponent = exponent - 127 + 15
    if halfExponent >= 0x1F { return sign | 0x7C00 }  // overflow → infinity

    if halfExponent <= 0 {
        // Result is subnormal (or zero): value = k × 2^-24 for an integer k < 1024.
        // Below 2^-25 (half the smallest subnormal) everything rounds to zero, ties included.
        if halfExponent < -10 { return sign }
        let significand = mantissa | 0x80_0000  // make the implicit leading 1 explicit
        let shift = UInt32(14 - halfExponent)    // 14...24
        var k = significand >> shift
        let remainder = significand & ((1 << shift) - 1)
        let halfway = UInt32(1) << (shift - 1)
        if remainder > halfway || (remainder == halfway && k & 1 == 1) { k += 1 }
        // k may reach 0x400, which is exactly the bit pattern of the smallest normal number.
        return sign | UInt16(k)
    }

    var result = UInt32(halfExponent) << 10 | mantissa >> 13
    let remainder = mantissa & 0x1FFF
    if remainder > 0x1000 || (remainder == 0x1000 && result & 1 == 1) {
        result += 1  // a carry into the exponent is correct, up to 0x7C00 = infinity
    }
    return sign | UInt16(result)
}

/// Converts bfloat16 bits (the top 16 bits of a `Float`) to `Float`. Always exact.
@inline(__always)
public func floatFromBFloat16Bits(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

/// Converts `Float` to bfloat16 bits, rounding to nearest, ties to even.
@inline(__always)
public func bfloat16Bits(from value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN {
        // Truncate instead of rounding (rounding could carry into the sign); keep it a NaN.
        let truncated = UInt16(truncatingIfNeeded: bits >> 16)
        return truncated & 0x007F != 0 ? truncated : truncated | 0x0040
    }
    // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry into the
    // exponent is correct, and the largest finite values round up to infinity as they should.
    let roundingBias = 0x7FFF + ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits + roundingBias) >> 16)
}
