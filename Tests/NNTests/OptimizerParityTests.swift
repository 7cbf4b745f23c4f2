import Foundation
import XCTest
import NN
import Tensor

/// Optimizer steps, gradient clipping and LR schedules against torch
/// (fixtures from tools/make_optim_fixtures.py).
final class OptimizerParityTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    lazy var archive = try! TensorArchive(contentsOf: Self.fixtures.appendingPathComponent("optim.safetensors"))
    lazy var config = try! JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("optim.json"))) as! [String: [String: Any]]

    func t(_ key: String) -> Tensor { try! archive.tensor(key) }

    func makeOptimizer(_ kind: String, _ h: [String: Any], _ params: [(name: String, tensor: Tensor)]) -> Optimizer {
        func f(_ k: String) -> Float { Float((h[k] as? Double) ?? Double(h[k] as? Int ?? 0)) }
        switch kind {
        case "SGD":
            return SGD(params, learningRate: f("lr"), momentum: f("momentum"), dampening: f("dampening"),
                       weightDecay: f("weight_decay"), nesterov: h["nesterov"] as? Bool ?? false)
        case "Adam", "AdamW":
            let betas = (h["betas"] as! [Double]).map(Float.init)
            let wd = f("weight_decay")
            return Adam(params, learningRate: f("lr"), betas: (betas[0], betas[1]), eps: f("eps"),
                        weightDecay: kind == "AdamW" ? .decoupled(wd) : (wd == 0 ? .none : .l2(wd)))
        default: fatalError("unknown optimizer \(kind)")
        }
    }

    func testOptimizersMatchTorchOverFiveSteps() {
        let cases = config.filter { ($0.value["kind"] as? String) == "optimizer" }
        XCTAssertGreaterThanOrEqual(cases.count, 6)
        for (name, c) in cases {
            let p = t("\(name).p0")
            p.requiresGrad = true
            let opt = makeOptimizer(c["optimizer"] as! String, c["hparams"] as! [String: Any], [("p", p)])
            for i in 0..<(c["steps"] as! Int) {
                p.grad = t("\(name).g\(i)")
                opt.step()
                assertClose(p, t("\(name).p\(i + 1)"), 1e-5, "\(name) step \(i + 1)")
            }
        }
    }

    func testGradientClippingMatchesTorch() {
        for name in ["clip_grad_norm", "clip_grad_norm_noclip"] {
            let c = config[name]!
            let params = (0..<2).map { i -> Tensor in
                let p = Tensor.zeros(t("\(name).in.\(i)").shape)
                p.grad = t("\(name).in.\(i)")
                return p
            }
            let norm = clipGradNorm(params, maxNorm: Float(c["max_norm"] as! Double))
            XCTAssertEqual(norm, t("\(name).total_norm").item, accuracy: 1e-5)
            for i in 0..<2 { assertClose(params[i].grad!, t("\(name).out.\(i)"), 1e-6, "\(name) grad \(i)") }
        }
    }

    func testSchedulesMatchTorch() {
        let cosine = CosineAnnealingLR(base: 1e-2, period: 10, minimum: 1e-4)
        let expectedCosine = t("sched.cosine").scalars
        for (step, lr) in expectedCosine.enumerated() { XCTAssertEqual(cosine.learningRate(at: step), lr, accuracy: 1e-7, "cosine step \(step)") }
        let warmup = LinearWarmup(warmupSteps: 5, after: ConstantLR(1e-2))
        for (step, lr) in t("sched.warmup").scalars.enumerated() { XCTAssertEqual(warmup.learningRate(at: step), lr, accuracy: 1e-7, "warmup step \(step)") }
    }

    func testMaskedUpdateMovesOnlyMaskedEntries() {
        let p = Tensor(shape: [4], scalars: [1, 2, 3, 4], requiresGrad: true)
        let mask = Tensor(shape: [4], scalars: [1, 0, 1, 0])
        let opt = Adam.adamW([("w", p)], learningRate: 0.1, masks: ["w": mask])
        p.grad = Tensor(shape: [4], scalars: [1, 1, 1, 1])
        opt.step()
        XCTAssertEqual(p.scalars[1], 2)
        XCTAssertEqual(p.scalars[3], 4)
        XCTAssertNotEqual(p.scalars[0], 1)
        XCTAssertNotEqual(p.scalars[2], 3)
    }

    func testOptimizerStateRoundTripContinuesIdentically() throws {
        func run(split: Bool) throws -> [Float] {
            let p = Tensor(shape: [3], scalars: [0.5, -1, 2], requiresGrad: true)
            var opt = Adam([("w", p)], learningRate: 0.05)
            for step in 0..<6 {
                if split && step == 3 {
                    let saved = opt.state().mapValues { $0.copy() }
                    opt = Adam([("w", p)], learningRate: 0.05)
                    try opt.loadState(saved)
                }
                p.grad = Tensor(shape: [3], scalars: [Float(step), 1, -0.5])
                opt.step()
            }
            return p.scalars
        }
        XCTAssertEqual(try run(split: false), try run(split: true))
        let opt = Adam([("w", Tensor.zeros([3]))])
        XCTAssertThrowsError(try opt.loadState(["w.exp_avg": Tensor.zeros([4])])) { error in
            XCTAssert("\(error)".contains("w.exp_avg"))
        }
    }
}

func assertClose(_ a: Tensor, _ b: Tensor, _ tolerance: Float, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, message, file: file, line: line)
    for i in 0..<min(a.count, b.count) where abs(a.pointer[i] - b.pointer[i]) > tolerance * max(1, abs(b.pointer[i])) {
        XCTFail("\(message): element \(i) is \(a.pointer[i]), expected \(b.pointer[i])", file: file, line: line)
        return
    }
}
