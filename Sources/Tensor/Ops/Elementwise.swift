import Foundation
import Kernels

// Element-wise ops. Each op's forward and backward sit side by side; backward closures use
// tensor ops themselves (run under noGrad by `backward()`).

/// Splits 0..<count into chunks worth threading and runs them in parallel.
@inline(__always)
func parallelChunks(_ count: Int, grain: Int = 1 << 15, _ body: (Range<Int>) -> Void) {
    let chunks = min(Kernels.threadCount * 4, (count + grain - 1) / grain)
    if chunks <= 1 { body(0..<count); return }
    let size = (count + chunks - 1) / chunks
    Kernels.parallelFor(chunks) { c in
        // Rounding `size` up can leave the last chunks empty (count 18 in 8 chunks of 3): skip them.
        let start = c * size
        guard start < count else { return }
        body(start..<min(count, start + size))
    }
}

extension Tensor {
    /// Applies `f` to every element into a new, untracked tensor.
    @inline(__always)
    func map(_ f: (Float) -> Float) -> Tensor {
        let x = pointer
        return Tensor(shape: shape) { y in
            parallelChunks(count) { r in for i in r { y[i] = f(x[i]) } }
        }
    }

    /// Combines self and an equally shaped tensor element by element into a new tensor.
    @inline(__always)
    func zipMap(_ other: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
        precondition(shape == other.shape, "zipMap: \(shape) vs \(other.shape)")
        let a = pointer, b = other.pointer
        return Tensor(shape: shape) { y in
            parallelChunks(count) { r in for i in r { y[i] = f(a[i], b[i]) } }
        }
    }

    /// Sums a broadcast gradient back down to `target` shape (the adjoint of broadcasting).
    public func sum(toShape target: [Int]) -> Tensor {
        if shape == target { return self }
        let offset = rank - target.count
        precondition(offset >= 0, "sum(toShape:) \(shape) → \(target)")
        var axes: [Int] = Array(0..<offset)
        for i in 0..<target.count where target[i] == 1 && shape[i + offset] != 1 { axes.append(i + offset) }
        return sum(axes: axes, keepDims: true).reshaped(target)
    }
}

// MARK: Binary ops with broadcasting

/// Float arithmetic as types. A loop generic over one of these specialises into a plain,
/// vectorised loop; a closure captured by the parallel loop (`zipMap`) is called once per
/// element, which made `+` of two tensors cost several times its memory traffic.
protocol ArithmeticOperator { static func apply(_ a: Float, _ b: Float) -> Float }
enum AddOperator: ArithmeticOperator { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a + b } }
enum SubtractOperator: ArithmeticOperator { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a - b } }
enum MultiplyOperator: ArithmeticOperator { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a * b } }
enum DivideOperator: ArithmeticOperator { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a / b } }

/// out[i] = Op(a[bcast i], b[bcast i]) for broadcast-compatible shapes.
func broadcastCombine<Op: ArithmeticOperator>(_ a: Tensor, _ b: Tensor, _: Op.Type) -> Tensor {
    let shape = a.shape == b.shape ? a.shape : Shape.broadcast(a.shape, b.shape)
    let pa = a.pointer, pb = b.pointer
    if a.shape == b.shape { return Tensor(shape: shape) { y in
        parallelChunks(a.count) { r in for i in r { y[i] = Op.apply(pa[i], pb[i]) } } } }
    if b.count == 1 { return combine(a, scalar: pb[0], Op.self).reshaped(shape) }
    if a.count == 1 { let s = pa[0]; return Tensor(shape: shape) { y in
        parallelChunks(b.count) { r in for i in r { y[i] = Op.apply(s, pb[i]) } } } }
    let sa = Shape.broadcastStrides(a.shape, to: shape)
    let sb = Shape.broadcastStrides(b.shape, to: shape)
    let rank = shape.count
    let inner = shape[rank - 1]
    let ia = sa[rank - 1], ib = sb[rank - 1]
    let rows = Shape.count(shape) / max(inner, 1)
    let outerShape = Array(shape.dropLast())
    return Tensor(shape: shape) { y in
        parallelChunks(rows, grain: max(1, (1 << 14) / max(inner, 1))) { r in
            var index = [Int](repeating: 0, count: rank - 1)
            // Decompose the first row index of this chunk into coordinates.
            var rem = r.lowerBound
            for d in stride(from: rank - 2, through: 0, by: -1) {
                index[d] = rem % outerShape[d]; rem /= outerShape[d]
            }
            for row in r {
                var oa = 0, ob = 0
                for d in 0..<(rank - 1) { oa += index[d] * sa[d]; ob += index[d] * sb[d] }
                let out = y + row * inner, rowA = pa + oa, rowB = pb + ob
                // The common cases (a row of each, or a row and one value) as their own loops.
                if ia == 1 && ib == 1 {
                    for j in 0..<inner { out[j] = Op.apply(rowA[j], rowB[j]) }
                } else if ia == 1 && ib == 0 {
                    let v = rowB[0]
                    for j in 0..<inner { out[j] = Op.apply(rowA[j], v) }
                } else {
                    for j in 0..<inner { out[j] = Op.apply(rowA[j * ia], rowB[j * ib]) }
                }
                var d = rank - 2
                while d >= 0 {
                    index[d] += 1
                    if index[d] < outerShape[d] { break }
                    index[d] = 0; d -= 1
                }
            }
        }
    }
}

/// out[i] = Op(a[i], s).
func combine<Op: ArithmeticOperator>(_ a: Tensor, scalar s: Float, _: Op.Type) -> Tensor {
    let pa = a.pointer
    return Tensor(shape: a.shape) { y in parallelChunks(a.count) { r in for i in r { y[i] = Op.apply(pa[i], s) } } }
}

public func + (a: Tensor, b: Tensor) -> Tensor {
    broadcastCombine(a, b, AddOperator.self).recording([a, b]) { g in
        [g.sum(toShape: a.shape), g.sum(toShape: b.shape)]
    }
}

public func - (a: Tensor, b: Tensor) -> Tensor {
    broadcastCombine(a, b, SubtractOperator.self).recording([a, b]) { g in
        [g.sum(toShape: a.shape), (-g).sum(toShape: b.shape)]
    }
}

public func * (a: Tensor, b: Tensor) -> Tensor {
    broadcastCombine(a, b, MultiplyOperator.self).recording([a, b]) { g in
        [a.isTracked ? (g * b).sum(toShape: a.shape) : nil,
         b.isTracked ? (g * a).sum(toShape: b.shape) : nil]
    }
}

public func / (a: Tensor, b: Tensor) -> Tensor {
    broadcastCombine(a, b, DivideOperator.self).recording([a, b]) { g in
        [a.isTracked ? (g / b).sum(toShape: a.shape) : nil,
         b.isTracked ? (-(g * a) / (b * b)).sum(toShape: b.shape) : nil]
    }
}

public prefix func - (x: Tensor) -> Tensor {
    x.map { -$0 }.recording([x]) { g in [-g] }
}

public func + (a: Tensor, s: Float) -> Tensor { combine(a, scalar: s, AddOperator.self).recording([a]) { g in [g] } }
public func + (s: Float, a: Tensor) -> Tensor { a + s }
public func - (a: Tensor, s: Float) -> Tensor { a + (-s) }
public func - (s: Float, a: Tensor) -> Tensor { a.map { s - $0 }.recording([a]) { g in [-g] } }
public func * (a: Tensor, s: Float) -> Tensor { combine(a, scalar: s, MultiplyOperator.self).recording([a]) { g in [g * s] } }
public func * (s: Float, a: Tensor) -> Tensor { a * s }
public func / (a: Tensor, s: Float) -> Tensor { a * (1 / s) }

// MARK: Unary ops

extension Tensor {
    /// Applies a vectorised C kernel chunk by chunk into a new, untracked tensor.
    func mapKernel(_ kernel: (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void) -> Tensor {
        let x = pointer
        return Tensor(shape: shape) { y in
            parallelChunks(count) { r in kernel(x + r.lowerBound, y + r.lowerBound, r.count) }
        }
    }

    /// kernel(self, other, out, count) over equally shaped tensors, in parallel chunks.
    func zipKernel(_ other: Tensor, _ kernel: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void) -> Tensor {
        precondition(shape == other.shape, "zipKernel: \(shape) vs \(other.shape)")
        let x = pointer, o = other.pointer
        return Tensor(shape: shape) { y in
            parallelChunks(count) { r in kernel(x + r.lowerBound, o + r.lowerBound, y + r.lowerBound, r.count) }
        }
    }

    public func exp() -> Tensor {
        let y = mapKernel { Kernels.expSerial($0, $1, count: $2) }
        return y.recording([self]) { g in [g * y] }
    }

    public func log() -> Tensor {
        map { Foundation.log($0) }.recording([self]) { g in [g / self] }
    }

    public func sqrt() -> Tensor {
        let y = map { Foundation.sqrt($0) }
        return y.recording([self]) { g in [g / (y * 2)] }
    }

    public func pow(_ exponent: Float) -> Tensor {
        map { Foundation.pow($0, exponent) }.recording([self]) { g in
            [g * (self.pow(exponent - 1) * exponent)]
        }
    }

    public func square() -> Tensor {
        map { $0 * $0 }.recording([self]) { g in [g * self * 2] }
    }

    public func abs() -> Tensor {
        map { Swift.abs($0) }.recording([self]) { g in [g * self.map { $0 > 0 ? 1 : ($0 < 0 ? -1 : 0) }] }
    }

    public func sigmoid() -> Tensor {
        let y = map { 1 / (1 + Foundation.exp(-$0)) }
        return y.recording([self]) { g in [g.zipMap(y) { g, s in g * s * (1 - s) }] }
    }

    public func tanh() -> Tensor {
        let y = map { Foundation.tanh($0) }
        return y.recording([self]) { g in [g.zipMap(y) { g, t in g * (1 - t * t) }] }
    }

    public func relu() -> Tensor {
        map { max($0, 0) }.recording([self]) { g in [g.zipMap(self) { g, x in x > 0 ? g : 0 }] }
    }

    /// x · σ(x), the SiLU / swish activation used throughout the UNet.
    public func silu() -> Tensor {
        mapKernel { Kernels.siluSerial($0, $1, count: $2) }.recording([self]) { g in
            [self.zipKernel(g) { Kernels.siluGradSerial($0, $1, $2, count: $3) }]
        }
    }

    /// x · σ(1.702 x), CLIP's activation.
    public func quickGELU() -> Tensor {
        map { $0 / (1 + Foundation.exp(-1.702 * $0)) }.recording([self]) { g in
            [g.zipMap(self) { g, x in
                let s = 1 / (1 + Foundation.exp(-1.702 * x))
                return g * s * (1 + 1.702 * x * (1 - s))
            }]
        }
    }

    public enum GELUApproximation: Sendable { case none, tanh }

    /// GELU, exact (erf) or with the tanh approximation.
    public func gelu(approximation: GELUApproximation = .none) -> Tensor {
        switch approximation {
        case .none:
            return mapKernel { Kernels.geluSerial($0, $1, count: $2) }.recording([self]) { g in
                [self.zipKernel(g) { Kernels.geluGradSerial($0, $1, $2, count: $3) }]
            }
        case .tanh:
            let c: Float = 0.7978845608028654  // √(2/π)
            return map { x in 0.5 * x * (1 + Foundation.tanh(c * (x + 0.044715 * x * x * x))) }
                .recording([self]) { g in
                    [g.zipMap(self) { g, x in
                        let inner = c * (x + 0.044715 * x * x * x)
                        let t = Foundation.tanh(inner)
                        let dInner = c * (1 + 3 * 0.044715 * x * x)
                        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dInner)
                    }]
                }
        }
    }

    /// Clamps values to [lo, hi]; gradient passes where the value was inside.
    public func clamped(_ lo: Float, _ hi: Float) -> Tensor {
        map { min(max($0, lo), hi) }.recording([self]) { g in
            [g.zipMap(self) { g, x in x >= lo && x <= hi ? g : 0 }]
        }
    }
}

