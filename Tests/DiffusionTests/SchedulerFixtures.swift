import Foundation
import XCTest
import SafeTensors
import Tensor
@testable import Diffusion

/// The diffusers fixtures written by tools/make_scheduler_fixtures.py.
enum SchedulerFixtures {
    static let directory = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
        .appendingPathComponent("schedulers")
    static let archive = try! TensorArchive(contentsOf: directory.appendingPathComponent("schedulers.safetensors"))
    static let document = try! JSONSerialization.jsonObject(
        with: Data(contentsOf: directory.appendingPathComponent("schedulers.json"))) as! [String: Any]

    static var configs: [String: [String: Any]] { document["configs"] as! [String: [String: Any]] }
    static var tables: [[String: Any]] { document["tables"] as! [[String: Any]] }
    static var runs: [[String: Any]] { document["runs"] as! [[String: Any]] }
    static var multistepTables: [[String: Any]] { document["multistep_tables"] as! [[String: Any]] }
    static var helpers: [[String: Any]] { document["helpers"] as! [[String: Any]] }

    static func tensor(_ key: String) -> Tensor { try! archive.tensor(key) }
    static func has(_ key: String) -> Bool { archive.contains(key) }

    /// A stored F64 tensor at full precision.
    static func doubles(_ key: String) -> [Double] {
        let info = try! archive.source.info(key)
        precondition(info.dtype == .f64, "\(key) is \(info.dtype), not F64")
        return try! archive.source.withRawBytes(key) { raw in
            (0..<info.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Double.self) }
        }
    }

    /// The config `name`, with `overrides` merged in, parsed as a scheduler config file would be.
    static func config(_ name: String, overrides: [String: Any] = [:]) throws -> SchedulerConfig {
        var dict = configs[name]!
        for (k, v) in overrides { dict[k] = v }
        let data = try JSONSerialization.data(withJSONObject: dict)
        return try SchedulerConfig(json: data, source: "fixture:\(name)")
    }

    static func kind(_ className: String) -> SchedulerKind { SchedulerKind(rawValue: className)! }

    /// The fixtures' deterministic "model": 0.1·x[i] + 0.05·sin(t/100 + 0.1·i).
    static func model(_ x: Tensor, _ t: Float) -> Tensor {
        let phase = Tensor(shape: x.shape, scalars: (0..<x.count).map {
            Float(Foundation.sin(Double(t) / 100 + 0.1 * Double($0)))
        })
        return x * Float(0.1) + phase * Float(0.05)
    }
}

/// Largest (|a − b| − slack)⁺ / max(1, |b|) over all elements (absolute near zero, relative for
/// large values; `slack` is an absolute allowance taken off first).
func maxScaledError(_ a: Tensor, _ b: Tensor, slack: Double = 0) -> Double {
    precondition(a.shape == b.shape, "shapes \(a.shape) vs \(b.shape)")
    var worst = 0.0
    for (x, y) in zip(a.scalars, b.scalars) {
        let e = max(0, Double(Swift.abs(x - y)) - slack) / max(1, Double(Swift.abs(y)))
        if !(e <= worst) { worst = e.isNaN ? .infinity : e }
    }
    return worst
}

/// Largest |a − b| / |b| over paired values (b ≠ 0).
func maxRelativeError(_ a: [Double], _ b: [Double]) -> Double {
    precondition(a.count == b.count, "counts \(a.count) vs \(b.count)")
    return zip(a, b).map { Swift.abs($0 - $1) / Swift.abs($1) }.max() ?? 0
}

/// Tensor [n, …] → its n slices along axis 0.
func unstack(_ t: Tensor) -> [Tensor] {
    (0..<t.shape[0]).map { t.narrowed(axis: 0, start: $0, length: 1).squeezed(0) }
}
