import Diffusion
@testable import Erasure
import Foundation
import NN
import Tensor
import XCTest

/// The SVD behind LoRA export (Float64 Jacobi eigen-solver, Eckart–Young truncation) and the
/// export itself: a changed UNet written as LoRA in both layouts, read back and merged into its
/// base, gives the changed weights back within the reported error.
final class LoRAExtractionTests: XCTestCase {
    func randomMatrix(_ rows: Int, _ columns: Int, seed: UInt64) -> Matrix64 {
        var g = RandomGenerator(seed: seed)
        return Matrix64(rows: rows, columns: columns, values: g.normal([rows * columns]).scalars.map(Double.init))
    }

    func transposed(_ m: Matrix64) -> Matrix64 {
        var t = Matrix64.zeros(m.columns, m.rows)
        for i in 0..<m.rows { for j in 0..<m.columns { t[j, i] = m[i, j] } }
        return t
    }

    func maxDifference(_ a: Matrix64, _ b: Matrix64) -> Double {
        zip(a.values, b.values).map { abs($0 - $1) }.max() ?? 0
    }

    func testSymmetricEigenReconstructsTheMatrix() throws {
        let x = randomMatrix(12, 12, seed: 1)
        let a = x.multiplied(by: transposed(x))  // symmetric, positive semi-definite
        let eigen = try SymmetricEigen(a)
        XCTAssertEqual(eigen.values, eigen.values.sorted(by: >))
        var lambda = Matrix64.zeros(12, 12)
        for i in 0..<12 { lambda[i, i] = eigen.values[i] }
        let v = eigen.vectors
        XCTAssertLessThan(maxDifference(v.multiplied(by: lambda).multiplied(by: transposed(v)), a), 1e-10)
        XCTAssertLessThan(maxDifference(transposed(v).multiplied(by: v), .identity(12)), 1e-12)
        // Trace = Σλ.
        XCTAssertEqual(eigen.values.reduce(0, +), (0..<12).map { a[$0, $0] }.reduce(0, +), accuracy: 1e-9)
        XCTAssertThrowsError(try SymmetricEigen(randomMatrix(3, 4, seed: 2)))
        XCTAssertThrowsError(try SymmetricEigen(randomMatrix(3, 3, seed: 2)))  // not symmetric
    }

    func testLowRankFactorizationIsExactAtFullRankAndOptimalBelow() throws {
        for (rows, columns) in [(7, 19), (19, 7)] {
            let m = randomMatrix(rows, columns, seed: UInt64(rows))
            let f = try LowRankFactorization(m)
            let full = f.factors(rank: 7)
            XCTAssertEqual(full.b.rows, rows)
            XCTAssertEqual(full.a.columns, columns)
            XCTAssertLessThan(maxDifference(full.b.multiplied(by: full.a), m), 1e-12, "\(rows)×\(columns)")
            // Eckart–Young: the rank-3 error is the dropped singular values.
            let (b, a) = f.factors(rank: 3)
            let approx = b.multiplied(by: a)
            let error = zip(m.values, approx.values).map { ($0 - $1) * ($0 - $1) }.reduce(0, +)
            XCTAssertEqual(error, f.squaredSingularValues.dropFirst(3).reduce(0, +), accuracy: 1e-9 * error)
        }
        // A rank-2 matrix: energy 1 (to rounding) needs rank 2, a little energy rank 1.
        let u = randomMatrix(9, 2, seed: 3), v = randomMatrix(2, 11, seed: 4)
        let low = try LowRankFactorization(u.multiplied(by: v))
        XCTAssertEqual(low.rank(keeping: 1 - 1e-12), 2)
        XCTAssertEqual(low.rank(keeping: 0.01), 1)
        // The Gram matrix squares σ: a zero σ comes out at ε·σ₁ (σ² at ε·σ₁², rounding), no more.
        XCTAssertLessThan(low.squaredSingularValues[2] / low.squaredSingularValues[0], 1e-14)
        XCTAssertEqual(try LowRankFactorization(.zeros(3, 4)).rank(keeping: 0.5), 0)
    }

    let toK = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    let conv = "down_blocks.0.resnets.0.conv1"

    /// The tiny UNet with a rank-2 change to a cross-attention K (as UCE makes), a full-rank one to
    /// a 3×3 convolution (as fine-tuning makes) and a changed bias.
    func erasedPair() throws -> (erased: UNet2DConditionModel, base: UNet2DConditionModel) {
        let erased = try Tiny.pipeline(seed: 0).unet, base = try Tiny.pipeline(seed: 0).unet
        var g = RandomGenerator(seed: 11)
        let parameters = erased.stateDict()
        noGrad {
            let k = parameters[toK + ".weight"]!
            k.assign(k + matmul(g.normal([k.shape[0], 2]), g.normal([2, k.shape[1]])) * 0.1)
            let c = parameters[conv + ".weight"]!
            c.assign(c + g.normal(c.shape, std: 0.02))
            let bias = parameters["conv_in.bias"]!
            bias.assign(bias + 0.01)
        }
        return (erased, base)
    }

    func testExportRoundTripsThroughBothLayouts() throws {
        let (erased, base) = try erasedPair()
        // Energy 1 keeps every non-zero singular value (Float32 rounding of W + ΔW gives a rank-2
        // change a few tiny ones); 1 − 10⁻⁹ finds the rank-2 change's rank.
        let (_, exact) = try LoRAExtraction.extract(erased: erased, base: base, choice: .energy(1))
        XCTAssertLessThan(exact.relative_error, 1e-6)
        let (_, full) = try LoRAExtraction.extract(erased: erased, base: base, choice: .rank(1000))
        XCTAssertEqual(full.tensors.map(\.rank), full.tensors.map(\.full_rank))
        XCTAssertLessThan(full.relative_error, 1e-6)
        let (lora, report) = try LoRAExtraction.extract(erased: erased, base: base, choice: .energy(1 - 1e-9))
        XCTAssertEqual(Set(lora.modules[.unet]!.keys), [toK, conv])
        let byName = Dictionary(uniqueKeysWithValues: report.tensors.map { ($0.name, $0) })
        XCTAssertEqual(byName[toK + ".weight"]?.rank, 2, "a rank-2 change comes out at rank 2")
        XCTAssertEqual(byName[conv + ".weight"]?.rank, byName[conv + ".weight"]?.full_rank)
        XCTAssertLessThan(report.relative_error, 1e-5)
        XCTAssertEqual(report.omitted.map(\.name), ["conv_in.bias"])
        XCTAssertGreaterThan(report.relative_error_with_omitted, report.relative_error)

        let folder = Tiny.temporaryFolder("lora")
        defer { try? FileManager.default.removeItem(at: folder) }
        let expected = erased.stateDict(), original = base.stateDict()
        for layout in LoRALayout.allCases {
            let file = folder.appendingPathComponent("\(layout).safetensors")
            try lora.write(to: file, layout: layout)
            let merged = try Tiny.pipeline(seed: 0).unet
            try LoRA.read(from: file, for: [.unet: merged]).merge(into: [.unet: merged])
            for (name, tensor) in merged.namedParameters() {
                let target = name == "conv_in.bias" ? original[name]! : expected[name]!
                let error = zip(tensor.scalars, target.scalars).map { abs($0 - $1) }.max()!
                XCTAssertLessThan(error, 1e-6, "\(layout): \(name)")
            }
        }
    }

    func testRankAndEnergyChooseTheRankAndReportTheError() throws {
        let (erased, base) = try erasedPair()
        let (lora, report) = try LoRAExtraction.extract(erased: erased, base: base, choice: .rank(1))
        for tensor in report.tensors {
            XCTAssertEqual(tensor.rank, 1, tensor.name)
            XCTAssertEqual(lora.modules[.unet]![String(tensor.name.dropLast(".weight".count))]!.rank, 1)
            // The error of the stored factors matches the dropped energy (Float32 rounding aside).
            XCTAssertEqual(tensor.relative_error, (1 - tensor.energy_kept).squareRoot(), accuracy: 1e-5, tensor.name)
            XCTAssertGreaterThan(tensor.relative_error, 0.01, tensor.name)
        }
        let total = report.tensors.map { pow($0.relative_error * $0.change_norm, 2) }.reduce(0, +)
        let norms = report.tensors.map { $0.change_norm * $0.change_norm }.reduce(0, +)
        XCTAssertEqual(report.relative_error, (total / norms).squareRoot(), accuracy: 1e-9)
        XCTAssertEqual(report.lora_parameters, lora.modules[.unet]!.values.map { $0.up.count + $0.down.count }.reduce(0, +))

        let (_, half) = try LoRAExtraction.extract(erased: erased, base: base, choice: .energy(0.5))
        for tensor in half.tensors { XCTAssertGreaterThanOrEqual(tensor.energy_kept, 0.5, tensor.name) }
        let convRank = { (r: LoRAExtraction.Report) in r.tensors.first { $0.name == self.conv + ".weight" }!.rank }
        let (_, most) = try LoRAExtraction.extract(erased: erased, base: base, choice: .energy(0.9))
        XCTAssertLessThan(convRank(half), convRank(most))

        XCTAssertThrowsError(try LoRAExtraction.extract(erased: erased, base: base, choice: .rank(0)))
        XCTAssertThrowsError(try LoRAExtraction.extract(erased: erased, base: base, choice: .energy(0)))
        XCTAssertThrowsError(try LoRAExtraction.extract(erased: erased, base: base, choice: .energy(1.5)))
    }
}
