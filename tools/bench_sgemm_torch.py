"""torch.mm GFLOP/s at the shapes Tests/KernelsTests/ThroughputReport.swift measures.

Run beside the Swift report (same machine, same minutes):
  OMP_WAIT_POLICY=PASSIVE python3 tools/bench_sgemm_torch.py
Prints the best wall-clock rate and the rate by process CPU time per thread (see
Tests/KernelsTests/ThroughputReport.swift). A reference number only; torch is never a
dependency of the package.
"""
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

REPS = int(os.environ.get("SCORE_BENCH_REPS", "10"))
SHAPES = [(1024, 1024, 1024, False), (256, 4096, 512, False), (256, 4096, 512, True)]

for threads in (1, 2):
    torch.set_num_threads(threads)
    for m, n, k, trans_b in SHAPES:
        a = torch.rand(m, k) - 0.5
        b = torch.rand(n, k) - 0.5 if trans_b else torch.rand(k, n) - 0.5
        out = torch.empty(m, n)
        best_wall = best_cpu = float("inf")
        for rep in range(REPS + 1):
            t, c = time.perf_counter(), time.process_time()
            torch.mm(a, b.t() if trans_b else b, out=out)
            wall, cpu = time.perf_counter() - t, (time.process_time() - c) / threads
            if rep:
                best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        flops = 2 * m * n * k
        print(f"torch {m:4d}×{n:4d}×{k:4d} {'NT' if trans_b else 'NN'} threads={threads}  "
              f"wall {flops / best_wall / 1e9:7.1f}  cpu {flops / best_cpu / 1e9:7.1f} GFLOP/s")
