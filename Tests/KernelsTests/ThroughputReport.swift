import CKernels
import Foundation
import Kernels
import XCTest

/// Prints SGEMM GFLOP/s per variant and thread count. Not a timed assertion: it runs only with
/// SCORE_BENCH=1 (e.g. `SCORE_BENCH=1 swift test -c release --filter ThroughputReport`), and
/// compares side by side with tools/bench_sgemm_torch.py.
final class ThroughputReport: XCTestCase {
    func testPrintSgemmThroughput() throws {
        guard ProcessInfo.processInfo.environment["SCORE_BENCH"] == "1" else {
            throw XCTSkip("set SCORE_BENCH=1 to print GEMM throughput")
        }
        let reps = Int(ProcessInfo.processInfo.environment["SCORE_BENCH_REPS"] ?? "") ?? 10
        let shapes: [(m: Int, n: Int, k: Int, transB: Bool)] = [
            (1024, 1024, 1024, false), (256, 4096, 512, false), (256, 4096, 512, true),
        ]
        let savedThreads = Kernels.threadCount
        defer { Kernels.threadCount = savedThreads }
        forEachVariant { variant in
            for s in shapes {
                var rng = TestRandom(seed: 1)
                let a = rng.floats(s.m * s.k), b = rng.floats(s.k * s.n)
                var c = [Float](repeating: 0, count: s.m * s.n)
                for threads in [1, 2] {
                    Kernels.threadCount = threads
                    var best = Double.infinity
                    c.withUnsafeMutableBufferPointer { pc in
                        for rep in 0...reps {  // rep 0 warms caches and packing buffers
                            let start = DispatchTime.now().uptimeNanoseconds
                            Kernels.sgemm(transA: false, transB: s.transB, m: s.m, n: s.n, k: s.k,
                                          a: a, lda: s.k, b: b, ldb: s.transB ? s.k : s.n,
                                          c: pc.baseAddress!, ldc: s.n)
                            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
                            if rep > 0 { best = min(best, seconds) }
                        }
                    }
                    let gflops = 2.0 * Double(s.m * s.n * s.k) / best / 1e9
                    print(String(format: "sgemm %-22@ %4d×%4d×%4d %@ threads=%d  %7.1f GFLOP/s",
                                 variant as NSString, s.m, s.n, s.k, (s.transB ? "NT" : "NN") as NSString,
                                 threads, gflops))
                }
            }
        }
    }
}
