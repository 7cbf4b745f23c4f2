#!/usr/bin/env python3
"""SGEMM GFLOP/s of the C kernels and torch.mm, interleaved call by call in one process.

On a shared machine, load from other processes comes and goes within seconds; timing ours and
torch in separate runs compares different loads. This script compiles Sources/CKernels with
clang -O2 (what SwiftPM uses in release) into a temporary shared library with a small pthread
driver that splits C along N exactly as Kernels.sgemm does for these shapes, loads it with
ctypes beside torch, and alternates: every round runs each of our ISA variants, then torch, on
the same shape and thread count. It prints the best time of all rounds per entry, as wall-clock
GFLOP/s and by CPU time per thread (flops / (process CPU time / threads)), which stays stable
when other processes take the cores.

Run:  OMP_WAIT_POLICY=PASSIVE .venv-tools/bin/python tools/bench_sgemm_interleaved.py \
          [--rounds 100] [--threads 1,2]
Needs clang (the Swift toolchain's) and torch; a reference number only, never run by CI.
"""
import argparse
import ctypes
import os
import subprocess
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = r"""
#include "CKernels.h"
#include <pthread.h>
typedef struct { int tb; long M, N, K, lo, hi; const float *A, *B; float *C; } job;
static void run(job *j) {
    if (j->hi <= j->lo) return;
    const float *b = j->tb ? j->B + j->lo * j->K : j->B + j->lo;
    score_sgemm(0, j->tb, j->M, j->hi - j->lo, j->K, 1, j->A, j->K, b, j->tb ? j->K : j->N,
                0, j->C + j->lo, j->N);
}
static void *thread_main(void *p) { run(p); return 0; }
// C = A·op(B) on `threads` pthreads, N cut into equal NR-aligned blocks.
void bench_sgemm(int threads, int tb, long M, long N, long K, const float *A, const float *B, float *C) {
    long nr = score_sgemm_nr(), step = ((N + threads - 1) / threads + nr - 1) / nr * nr;
    job jobs[64]; pthread_t tids[64];
    if (threads > 64) threads = 64;
    for (int i = 0; i < threads; i++) {
        long lo = i * step, hi = lo + step > N ? N : lo + step;
        jobs[i] = (job){tb, M, N, K, lo, hi, A, B, C};
        if (i) pthread_create(&tids[i], 0, thread_main, &jobs[i]);
    }
    run(&jobs[0]);
    for (int i = 1; i < threads; i++) pthread_join(tids[i], 0);
}
"""
SHAPES = [(1024, 1024, 1024, False), (256, 4096, 512, False), (256, 4096, 512, True)]


def build_library(tmp):
    driver = os.path.join(tmp, "driver.c")
    with open(driver, "w") as f:
        f.write(DRIVER)
    lib = os.path.join(tmp, "libsgemm.so")
    subprocess.run(["clang", "-O2", "-shared", "-fPIC", "-I", os.path.join(ROOT, "Sources/CKernels/include"),
                    driver, os.path.join(ROOT, "Sources/CKernels/kernels.c"), "-o", lib, "-lpthread"],
                   check=True)
    return ctypes.CDLL(lib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_library(tmp)  # stays mapped after the file is removed
    lib.score_set_isa.argtypes = [ctypes.c_int]
    lib.score_active_isa_name.restype = ctypes.c_char_p
    variants = {}  # the distinct variants this CPU runs: name -> score_isa value
    for value in (0, 1, 2):
        lib.score_set_isa(value)
        variants.setdefault(lib.score_active_isa_name().decode(), value)
    widest = list(variants)[-1]
    ptr = ctypes.c_void_p
    names = [*variants, "torch"]
    print("| shape | threads | " + " | ".join(f"{name} wall / cpu" for name in names)
          + f" | {widest}/torch (wall) |")
    print("|---|---:|" + "---:|" * (len(names) + 1))
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for m, n, k, trans_b in SHAPES:
            a = torch.rand(m, k) - 0.5
            b = (torch.rand(n, k) if trans_b else torch.rand(k, n)) - 0.5
            ours, theirs = torch.empty(m, n), torch.empty(m, n)
            best = {name: [float("inf"), float("inf")] for name in names}

            def record(name, start_wall, start_cpu, rnd):
                wall = time.perf_counter() - start_wall
                cpu = (time.process_time() - start_cpu) / threads
                if rnd:  # round 0 warms caches and packing buffers
                    best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]

            for rnd in range(args.rounds + 1):
                for name, value in variants.items():
                    if name == "portable" and rnd > max(3, args.rounds // 6):
                        continue  # slow; a few rounds suffice
                    lib.score_set_isa(value)
                    w, c = time.perf_counter(), time.process_time()
                    lib.bench_sgemm(threads, int(trans_b), m, n, k, ptr(a.data_ptr()), ptr(b.data_ptr()),
                                    ptr(ours.data_ptr()))
                    record(name, w, c, rnd)
                w, c = time.perf_counter(), time.process_time()
                torch.mm(a, b.t() if trans_b else b, out=theirs)
                record("torch", w, c, rnd)
            assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-3)
            flops = 2 * m * n * k
            rate = {name: (flops / wall / 1e9, flops / cpu / 1e9) for name, (wall, cpu) in best.items()}
            print(f"| {m}×{n}×{k} {'NT' if trans_b else 'NN'} | {threads} | "
                  + " | ".join(f"{w:.1f} / {c:.1f}" for w, c in rate.values())
                  + f" | {rate[widest][0] / rate['torch'][0]:.2f} |", flush=True)
    print(f"\nBest of {args.rounds} interleaved rounds (portable: fewer), GFLOP/s: wall-clock / by CPU "
          f"time per thread. torch {torch.__version__}.")


if __name__ == "__main__":
    main()
