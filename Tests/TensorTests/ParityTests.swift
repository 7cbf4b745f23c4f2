import Foundation
import XCTest
import Tensor

/// Forward outputs and gradients against PyTorch, from fixtures made by
/// tools/make_op_fixtures.py (torch in float64, stored as float32).
final class ParityTests: XCTestCase {
    struct Case: Decodable {
        let op: String
        let inputs: [String]
        let attrs: [String: JSONValue]
    }

    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    lazy var archive = try! TensorArchive(contentsOf: Self.fixtures.appendingPathComponent("ops.safetensors"))
    lazy var cases = try! JSONDecoder().decode([String: Case].self,
                                               from: Data(contentsOf: Self.fixtures.appendingPathComponent("ops.json")))

    func tensor(_ key: String) -> Tensor { try! archive.tensor(key) }
    func ints(_ key: String) -> [Int] { try! archive.integers(key) }

    /// Runs the op of a fixture case on the given inputs.
    func run(_ c: Case, _ name: String, _ x: [String: Tensor]) -> Tensor {
        func int(_ k: String) -> Int { c.attrs[k]!.int }
        func ints(_ k: String) -> [Int] { c.attrs[k]!.ints }
        let a = x[c.inputs[0]]!
        switch c.op {
        case "add": return a + x["b"]!
        case "sub": return a - x["b"]!
        case "mul": return a * x["b"]!
        case "div": return a / x["b"]!
        case "matmul": return matmul(a, x["b"]!)
        case "linear": return linear(a, weight: x["w"]!, bias: x["b"])
        case "conv2d": return conv2d(a, weight: x["w"]!, bias: x["b"], stride: ints("stride")[0], padding: ints("padding")[0])
        case "upsample_nearest2d": return a.upsampleNearest2x()
        case "avg_pool2d": return a.avgPool2d(kernel: ints("kernel_size")[0], stride: ints("stride")[0])
        case "group_norm": return a.groupNorm(groups: int("groups"), weight: x["w"], bias: x["b"], eps: c.attrs["eps"]!.float)
        case "layer_norm": return a.layerNorm(weight: x["w"], bias: x["b"], eps: c.attrs["eps"]!.float)
        case "softmax": return a.softmax(axis: int("dim"))
        case "log_softmax": return a.logSoftmax(axis: int("dim"))
        case "silu": return a.silu()
        case "sigmoid": return a.sigmoid()
        case "tanh": return a.tanh()
        case "exp": return a.exp()
        case "log": return a.log()
        case "sqrt": return a.sqrt()
        case "relu": return a.relu()
        case "neg": return -a
        case "gelu": return a.gelu(approximation: c.attrs["approximate"]!.string == "tanh" ? .tanh : .none)
        case "quick_gelu": return a.quickGELU()
        case "pow": return a.pow(c.attrs["exponent"]!.float)
        case "sum": return a.sum(axes: ints("dims"), keepDims: c.attrs["keepdim"]!.bool)
        case "mean": return a.mean(axes: ints("dims"), keepDims: c.attrs["keepdim"]!.bool)
        case "var": return a.variance(axes: ints("dims"), correction: int("correction"), keepDims: c.attrs["keepdim"]!.bool)
        case "sdpa":
            let mask = c.inputs.contains("mask") ? Tensor(shape: archiveShape("\(name).in.mask"), scalars: self.ints("\(name).in.mask").map(Float.init)) : nil
            return scaledDotProductAttention(a, x["k"]!, x["v"]!, mask: mask, scale: c.attrs["scale"]!.float, queryChunk: 16)
        case "embedding":
            let ids = self.ints("\(name).in.ids")
            return embedding(a, indices: ids, shape: archiveShape("\(name).in.ids"))
        case "mse_loss": return mseLoss(a, x["b"]!)
        case "cross_entropy": return crossEntropy(a, targets: self.ints("\(name).in.target"))
        case "permute": return a.permuted(ints("dims"))
        case "transpose": return a.transposed(int("dim0"), int("dim1"))
        case "slice": return a.sliced(c.attrs["ranges"]!.array.map { $0.ints[0]..<$0.ints[1] })
        case "concat": return Tensor.concat([a, x["b"]!], axis: int("dim"))
        case "expand": return a.expanded(to: ints("shape"))
        case "reshape": return a.reshaped(ints("shape"))
        default: XCTFail("fixture op \(c.op) has no mapping"); return a
        }
    }

    func archiveShape(_ key: String) -> [Int] { try! archive.shape(key) }

    func testEveryOpMatchesTorch() throws {
        XCTAssertGreaterThanOrEqual(cases.count, 50)
        let integerInputs: Set<String> = ["ids", "target", "mask"]
        for (name, c) in cases.sorted(by: { $0.key < $1.key }) {
            var inputs: [String: Tensor] = [:]
            for input in c.inputs where !integerInputs.contains(input) {
                let t = tensor("\(name).in.\(input)")
                t.requiresGrad = true
                inputs[input] = t
            }
            let out = run(c, name, inputs)
            let expected = tensor("\(name).out")
            XCTAssertEqual(out.shape, expected.shape, "\(name): output shape")
            assertClose(out, expected, relative: 1e-4, "\(name) forward")
            (out * tensor("\(name).gout")).sum().backward()
            for (input, t) in inputs {
                guard let grad = t.grad else { XCTFail("\(name): no gradient for \(input)"); continue }
                assertClose(grad, tensor("\(name).grad.\(input)"), relative: 1e-3, "\(name) gradient of \(input)")
            }
        }
    }
}

/// |a − b| ≤ relative · max(|b|, scale of b) element-wise, reporting the worst element.
func assertClose(_ a: Tensor, _ b: Tensor, relative: Float, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
    guard a.shape == b.shape else { XCTFail("\(message): shape \(a.shape) vs \(b.shape)", file: file, line: line); return }
    let scale = max(b.scalars.map(abs).max() ?? 0, 1e-6)
    var worst: Float = 0, worstIndex = 0
    for i in 0..<a.count {
        let err = abs(a.pointer[i] - b.pointer[i]) / max(abs(b.pointer[i]), 0.1 * scale)
        if !(err <= worst) { worst = err; worstIndex = i }
    }
    XCTAssert(worst <= relative, "\(message): relative error \(worst) at \(worstIndex) (\(a.pointer[worstIndex]) vs \(b.pointer[worstIndex]))", file: file, line: line)
}

/// A JSON value of a fixture's attributes.
enum JSONValue: Decodable {
    case number(Double), bool(Bool), string(String), array([JSONValue]), object([String: JSONValue]), null

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    var float: Float { if case .number(let n) = self { return Float(n) }; fatalError("not a number: \(self)") }
    var int: Int { Int(float) }
    var bool: Bool { if case .bool(let b) = self { return b }; fatalError("not a bool: \(self)") }
    var string: String { if case .string(let s) = self { return s }; fatalError("not a string: \(self)") }
    var array: [JSONValue] { if case .array(let a) = self { return a }; fatalError("not an array: \(self)") }
    var ints: [Int] { array.map(\.int) }
}
