import CKernels
import Foundation
import Kernels
import XCTest
import TestSupport

/// Prints SGEMM GFLOP/s per variant and thread count. Not a timed assertion: it runs only with
/// SCORE_BENCH=1 (e.g. `SCORE_BENCH=1 swift test -c release --filter ThroughputReport`), and
/// compares with tools/bench_sgemm_interleaved.py (ours and torch alternating call by call in
/// one process), which prints the same two figures:
///   wall  best wall-clock time of SCORE_BENCH_REPS runs;
///   cpu   best process CPU time divided by the thread count, i.e. what the wall time would be
///         if no other process took the cores. On a shared 2-core machine the wall figure
///         swings with other people's builds; the cpu figure stays within a few percent.
final class ThroughputReport: XCTestCase {
    func testPrintSgemmThroughput() throws {
        guard ProcessInfo.processInfo.environment["SCORE_BENCH"] == "1" else {
            throw XCTSkip("set SCORE_BENCH=1 to print GEMM throughput")
        }
        let reps = Int(ProcessInfo.processInfo.environment["SCORE_BENCH_REPS"] ?? "") ?? 10
        let shapes: [(m: Int, n: Int, k: Int, transB: Bool)] = [
            (1024, 1024, 1024, false), (256, 4096, 512, false), (256, 4096, 512, true),
        ]
        // Optional comma-separated filter, e.g. SCORE_BENCH_VARIANTS=avx2.
        let only = ProcessInfo.processInfo.environment["SCORE_BENCH_VARIANTS"]?
            .split(separator: ",").map(String.init)
        let savedThreads = Kernels.threadCount
        defer { Kernels.threadCount = savedThreads }
        forEachVariant { variant in
            if let only, !only.contains(variant) { return }
            for s in shapes {
                var rng = TestRandom(seed: 1)
                let a = rng.floats(s.m * s.k), b = rng.floats(s.k * s.n)
                var c = [Float](repeating: 0, count: s.m * s.n)
                for threads in [1, 2] {
                    Kernels.threadCount = threads
                    var bestWall = Double.infinity, bestCPU = Double.infinity
                    c.withUnsafeMutableBufferPointer { pc in
                        for rep in 0...reps {  // rep 0 warms caches and packing buffers
                            let cpu0 = processCPUSeconds()
                            let start = DispatchTime.now().uptimeNanoseconds
                            Kernels.sgemm(transA: false, transB: s.transB, m: s.m, n: s.n, k: s.k,
                                          a: a, lda: s.k, b: b, ldb: s.transB ? s.k : s.n,
                                          c: pc.baseAddress!, ldc: s.n)
                            let wall = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
                            let cpu = (processCPUSeconds() - cpu0) / Double(threads)
                            if rep > 0 { bestWall = min(bestWall, wall); bestCPU = min(bestCPU, cpu) }
                        }
                    }
                    let flops = 2.0 * Double(s.m * s.n * s.k)
                    print(String(format: "sgemm %-22@ %4d×%4d×%4d %@ threads=%d  wall %7.1f  cpu %7.1f GFLOP/s",
                                 variant as NSString, s.m, s.n, s.k, (s.transB ? "NT" : "NN") as NSString,
                                 threads, flops / bestWall / 1e9, flops / bestCPU / 1e9))
                }
            }
        }
    }
}

/// User + system CPU time of the whole process, in seconds.
func processCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
