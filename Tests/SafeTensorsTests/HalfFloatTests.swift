import XCTest
import SafeTensors
import TestSupport

final class HalfFloatTests: XCTestCase {
    // MARK: Float16

    func testEveryFloat16BitPatternRoundTripsExactly() {
        for bits in UInt16.min...UInt16.max {
            XCTAssertEqual(float16Bits(from: floatFromFloat16Bits(bits)), bits, "0x\(String(bits, radix: 16))")
        }
    }

    func testFloat16SpecialValuesDecode() {
        XCTAssertEqual(floatFromFloat16Bits(0x0000).bitPattern, Float(0).bitPattern)
        XCTAssertEqual(floatFromFloat16Bits(0x8000).bitPattern, Float(-0.0).bitPattern)
        XCTAssertEqual(floatFromFloat16Bits(0x7C00), .infinity)
        XCTAssertEqual(floatFromFloat16Bits(0xFC00), -.infinity)
        XCTAssertTrue(floatFromFloat16Bits(0x7E00).isNaN)
        XCTAssertTrue(floatFromFloat16Bits(0x7C01).isNaN)  // signaling NaN stays NaN
        XCTAssertEqual(floatFromFloat16Bits(0x0001), 0x1p-24)  // smallest subnormal
        XCTAssertEqual(floatFromFloat16Bits(0x03FF), 1023 * 0x1p-24)  // largest subnormal
        XCTAssertEqual(floatFromFloat16Bits(0x0400), 0x1p-14)  // smallest normal
        XCTAssertEqual(floatFromFloat16Bits(0x7BFF), 65504)  // largest finite
        XCTAssertEqual(floatFromFloat16Bits(0x3C00), 1)
        XCTAssertEqual(floatFromFloat16Bits(0xC000), -2)
    }

    func testFloat16SpecialValuesEncode() {
        XCTAssertEqual(float16Bits(from: 0), 0x0000)
        XCTAssertEqual(float16Bits(from: -0.0), 0x8000)
        XCTAssertEqual(float16Bits(from: .infinity), 0x7C00)
        XCTAssertEqual(float16Bits(from: -.infinity), 0xFC00)
        XCTAssertEqual(float16Bits(from: .nan) & 0x7C00, 0x7C00)
        XCTAssertNotEqual(float16Bits(from: .nan) & 0x03FF, 0)
        XCTAssertEqual(float16Bits(from: Float(bitPattern: 0x7F80_0001)) & 0x03FF, 0x0200, "NaN payload lost below half precision stays NaN")
        XCTAssertEqual(float16Bits(from: 1e10), 0x7C00, "overflow becomes infinity")
        XCTAssertEqual(float16Bits(from: -1e10), 0xFC00)
        XCTAssertEqual(float16Bits(from: 1e-10), 0x0000, "underflow becomes zero")
        XCTAssertEqual(float16Bits(from: -1e-10), 0x8000, "and keeps its sign")
        XCTAssertEqual(float16Bits(from: .leastNonzeroMagnitude), 0x0000)
    }

    func testFloat16RoundsToNearestTiesToEven() {
        // Normal range: 1 + 2^-11 lies halfway between 1 (even) and 1 + 2^-10 (odd).
        XCTAssertEqual(float16Bits(from: 1 + 0x1p-11), 0x3C00)
        XCTAssertEqual(float16Bits(from: 1 + 3 * 0x1p-11), 0x3C02, "tie rounds up to the even neighbour")
        XCTAssertEqual(float16Bits(from: (1 + 0x1p-11).nextUp), 0x3C01, "just above a tie rounds up")
        XCTAssertEqual(float16Bits(from: (1 + 0x1p-11).nextDown), 0x3C00)
        // Overflow boundary: 65520 is halfway between 65504 and 65536 (= infinity, even).
        XCTAssertEqual(float16Bits(from: 65520), 0x7C00)
        XCTAssertEqual(float16Bits(from: Float(65520).nextDown), 0x7BFF)
        // Subnormals: multiples of 2^-24.
        XCTAssertEqual(float16Bits(from: 0x1p-25), 0x0000, "half the smallest subnormal ties to zero")
        XCTAssertEqual(float16Bits(from: Float(0x1p-25).nextUp), 0x0001)
        XCTAssertEqual(float16Bits(from: 3 * 0x1p-25), 0x0002, "1.5 × 2^-24 ties to 2 × 2^-24")
        XCTAssertEqual(float16Bits(from: 5 * 0x1p-25), 0x0002, "2.5 × 2^-24 ties to 2 × 2^-24")
        XCTAssertEqual(float16Bits(from: 1023.5 * 0x1p-24), 0x0400, "largest subnormal + half rounds to the smallest normal")
        XCTAssertEqual(float16Bits(from: -3 * 0x1p-25), 0x8002)
    }

    /// Swift's own Float16 (a hardware / compiler-rt conversion) must agree bit for bit.
    func testFloat16AgreesWithSwiftFloat16() throws {
        #if os(macOS) && arch(x86_64)
        throw XCTSkip("Float16 is unavailable on macOS/x86_64")
        #else
        var generator = TestRandom(seed: 1)
        var samples: [Float] = []
        for _ in 0..<200_000 { samples.append(Float(bitPattern: UInt32(truncatingIfNeeded: generator.next()))) }
        // Every halfway point between adjacent halves, and its neighbours.
        for bits in UInt16(0)..<0x7C00 {
            let midpoint = (floatFromFloat16Bits(bits) + floatFromFloat16Bits(bits + 1)) / 2
            samples += [midpoint, midpoint.nextUp, midpoint.nextDown, -midpoint]
        }
        for value in samples where !value.isNaN {
            XCTAssertEqual(float16Bits(from: value), Float16(value).bitPattern, "\(value)")
            let bits = float16Bits(from: value)
            XCTAssertEqual(floatFromFloat16Bits(bits).bitPattern, Float(Float16(bitPattern: bits)).bitPattern)
        }
        #endif
    }

    // MARK: BFloat16

    func testEveryBFloat16BitPatternRoundTripsExactly() {
        for bits in UInt16.min...UInt16.max {
            XCTAssertEqual(bfloat16Bits(from: floatFromBFloat16Bits(bits)), bits, "0x\(String(bits, radix: 16))")
        }
    }

    func testBFloat16SpecialValues() {
        XCTAssertEqual(bfloat16Bits(from: 0), 0x0000)
        XCTAssertEqual(bfloat16Bits(from: -0.0), 0x8000)
        XCTAssertEqual(bfloat16Bits(from: .infinity), 0x7F80)
        XCTAssertEqual(bfloat16Bits(from: -.infinity), 0xFF80)
        XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(from: .nan)).isNaN)
        XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(from: Float(bitPattern: 0x7F80_0001))).isNaN, "low-payload NaN stays NaN")
        XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(from: Float(bitPattern: 0xFFFF_FFFF))).isNaN, "no carry into the sign")
        XCTAssertEqual(bfloat16Bits(from: .greatestFiniteMagnitude), 0x7F80, "rounds up to infinity, like PyTorch")
        XCTAssertEqual(floatFromBFloat16Bits(0x0001), Float(bitPattern: 0x0001_0000), "subnormals decode exactly")
        XCTAssertEqual(bfloat16Bits(from: Float(bitPattern: 0x0000_7FFF)), 0x0000)
        XCTAssertEqual(bfloat16Bits(from: Float(bitPattern: 0x0000_8001)), 0x0001)
    }

    func testBFloat16RoundsToNearestTiesToEven() {
        // bfloat16 has 7 mantissa bits: neighbours of 1 are 1 ± 2^-7.
        XCTAssertEqual(bfloat16Bits(from: 1 + 0x1p-8), 0x3F80, "tie rounds down to even")
        XCTAssertEqual(bfloat16Bits(from: 1 + 3 * 0x1p-8), 0x3F82, "tie rounds up to even")
        XCTAssertEqual(bfloat16Bits(from: (1 + 0x1p-8).nextUp), 0x3F81)
        XCTAssertEqual(bfloat16Bits(from: -(1 + 3 * 0x1p-8)), 0xBF82)
        XCTAssertEqual(bfloat16Bits(from: Float(bitPattern: 0x0000_8000)), 0x0000, "subnormal tie to even")
        XCTAssertEqual(bfloat16Bits(from: Float(bitPattern: 0x0001_8000)), 0x0002)
    }
}
