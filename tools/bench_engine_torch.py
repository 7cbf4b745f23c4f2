#!/usr/bin/env python3
"""Time the engine's reference workloads in PyTorch (CPU, float32).

Prints one JSON object: gemm_1024_gflops, gemm_256x4096x512_gflops,
conv_fwd_bwd_ms, attention_fwd_bwd_ms, groupnorm_fwd_bwd_ms, threads,
torch_version. Each number is the median over --runs timed runs after
--warmup untimed ones.

Run:  .venv-tools/bin/python tools/bench_engine_torch.py [--threads 2]
"""
import argparse
import json
import os
import statistics
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--runs", type=int, default=11)
args = ap.parse_args()

# Must be in the environment before torch (and its OpenMP runtime) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["OMP_NUM_THREADS"] = str(args.threads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)


def median_seconds(fn):
    for _ in range(args.warmup):
        fn()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_gflops(m, n, k):
    a = torch.randn(m, k)
    b = torch.randn(k, n)
    c = torch.empty(m, n)
    t = median_seconds(lambda: torch.mm(a, b, out=c))
    return 2.0 * m * n * k / t / 1e9


def fwd_bwd_ms(forward, leaves):
    """forward() -> output; times forward + backward (grads w.r.t. leaves)."""
    gout = torch.randn_like(forward().detach())

    def step():
        out = forward()
        torch.autograd.grad(out, leaves, gout)

    return median_seconds(step) * 1e3


def conv_ms():
    # batch 8, 64 -> 64 channels, 32x32, 3x3, padding 1, bias; grads for x, w, b
    x = torch.randn(8, 64, 32, 32, requires_grad=True)
    w = (torch.randn(64, 64, 3, 3) / 24.0).requires_grad_(True)
    b = torch.randn(64, requires_grad=True)
    return fwd_bwd_ms(lambda: F.conv2d(x, w, b, padding=1), [x, w, b])


def attention_ms():
    # batch 2, 8 heads, 1024 tokens, head dim 64; grads for q, k, v
    q, k, v = (torch.randn(2, 8, 1024, 64, requires_grad=True) for _ in range(3))
    return fwd_bwd_ms(lambda: F.scaled_dot_product_attention(q, k, v), [q, k, v])


def groupnorm_ms():
    # batch 8, 64 channels, 32x32, 32 groups, affine; grads for x, weight, bias
    x = torch.randn(8, 64, 32, 32, requires_grad=True)
    w = torch.randn(64, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    return fwd_bwd_ms(lambda: F.group_norm(x, 32, w, b, 1e-5), [x, w, b])


result = {
    "gemm_1024_gflops": round(gemm_gflops(1024, 1024, 1024), 2),
    "gemm_256x4096x512_gflops": round(gemm_gflops(256, 4096, 512), 2),
    "conv_fwd_bwd_ms": round(conv_ms(), 3),
    "attention_fwd_bwd_ms": round(attention_ms(), 3),
    "groupnorm_fwd_bwd_ms": round(groupnorm_ms(), 3),
    "threads": torch.get_num_threads(),
    "torch_version": torch.__version__,
}
print(json.dumps(result))
