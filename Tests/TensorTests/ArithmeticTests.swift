import XCTest
import Tensor

/// `+ − × ÷` against their per-element definition on every broadcasting path: equal shapes, a
/// one-element operand of higher rank (the result takes the broadcast shape), rows against a
/// column, and strided broadcasts in the inner axis.
final class ArithmeticTests: XCTestCase {
    func testBroadcastArithmeticMatchesItsDefinition() {
        var g = RandomGenerator(seed: 9)
        let cases: [([Int], [Int], [Int])] = [
            ([2, 3], [2, 3], [2, 3]), ([3], [1, 1], [1, 3]), ([1, 1], [2, 3], [2, 3]),
            ([2, 3], [2, 1], [2, 3]), ([2, 1], [1, 3], [2, 3]), ([4, 2, 3], [3], [4, 2, 3]),
        ]
        for (sa, sb, expected) in cases {
            let a = g.normal(sa), b = g.normal(sb) + 3   // keep divisors away from 0
            func element(_ t: Tensor, _ index: [Int]) -> Float {
                let shape = t.shape, offset = index.count - shape.count
                var flat = 0
                for d in 0..<shape.count { flat = flat * shape[d] + (shape[d] == 1 ? 0 : index[d + offset]) }
                return t.scalars[flat]
            }
            let ops: [(String, (Tensor, Tensor) -> Tensor, (Float, Float) -> Float)] = [
                ("+", { $0 + $1 }, { $0 + $1 }), ("-", { $0 - $1 }, { $0 - $1 }),
                ("*", { $0 * $1 }, { $0 * $1 }), ("/", { $0 / $1 }, { $0 / $1 }),
            ]
            for (name, op, definition) in ops {
                let y = op(a, b)
                XCTAssertEqual(y.shape, expected, "\(sa) \(name) \(sb)")
                var index = [Int](repeating: 0, count: expected.count)
                for i in 0..<y.count {
                    var rem = i
                    for d in stride(from: expected.count - 1, through: 0, by: -1) { index[d] = rem % expected[d]; rem /= expected[d] }
                    XCTAssertEqual(y.scalars[i], definition(element(a, index), element(b, index)), "\(sa) \(name) \(sb) at \(index)")
                }
            }
        }
        let x = g.normal([2, 5])
        XCTAssertEqual((x * 2.5).scalars, x.scalars.map { $0 * 2.5 })
        XCTAssertEqual((x + 1.5).scalars, x.scalars.map { $0 + 1.5 })
    }
}
