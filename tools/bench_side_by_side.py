#!/usr/bin/env python3
"""Run `score bench engine --json` and tools/bench_engine_torch.py alternately, several rounds,
on the same machine and thread count, and print a Markdown table of medians and ratios.

Alternating rounds expose both to the same background load, so the ratios mean something even
on a noisy shared machine; absolute times do not.

Run:  .venv-tools/bin/python tools/bench_side_by_side.py [--rounds 5] [--threads 2] [--before BIN]
(build first: swift build -c release). --before adds another build of score (a copy of an
older .build/release/score) to every round, so a change is measured against its baseline and
torch in the same window.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--json", help="also write the raw runs here")
ap.add_argument("--before", help="path of another score binary to alternate with (the baseline of a change)")
args = ap.parse_args()

ours_cmd = [os.path.join(ROOT, ".build/release/score"), "bench", "engine", "--json", "--threads", str(args.threads)]
torch_cmd = [sys.executable, os.path.join(ROOT, "tools/bench_engine_torch.py"), "--threads", str(args.threads)]

commands = [("score", ours_cmd), ("torch", torch_cmd)]
if args.before:
    commands.insert(0, ("before", [args.before] + ours_cmd[1:]))
runs = {name: [] for name, _ in commands}
for r in range(args.rounds):
    for name, cmd in commands:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[name].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)

metrics = [  # key, label, higher is better
    ("gemm_1024_gflops", "GEMM 1024³ (GFLOP/s)", True),
    ("gemm_256x4096x512_gflops", "GEMM 256×4096×512 (GFLOP/s)", True),
    ("conv_fwd_bwd_ms", "conv2d fwd+bwd, 8×64×32×32, 3×3 → 64 (ms)", False),
    ("attention_fwd_bwd_ms", "attention fwd+bwd, 2×8 heads × 1024 tokens × 64 (ms)", False),
    ("groupnorm_fwd_bwd_ms", "GroupNorm fwd+bwd, 8×64×32×32, 32 groups (ms)", False),
]
def ratio(ours, theirs, higher):
    return ours / theirs if higher else theirs / ours


torch_label = f"torch {runs['torch'][0].get('torch_version', '')}"
if args.before:
    print(f"| measurement | score before | score | {torch_label} | before/torch | score/torch |")
    print("|---|---:|---:|---:|---:|---:|")
else:
    print(f"| measurement | score | {torch_label} | speed ratio score/torch |")
    print("|---|---:|---:|---:|")
for key, label, higher in metrics:
    ours = statistics.median(run[key] for run in runs["score"])
    theirs = statistics.median(run[key] for run in runs["torch"])
    if args.before:
        before = statistics.median(run[key] for run in runs["before"])
        print(f"| {label} | {before:.2f} | {ours:.2f} | {theirs:.2f} | {ratio(before, theirs, higher):.2f}× "
              f"| {ratio(ours, theirs, higher):.2f}× |")
    else:
        print(f"| {label} | {ours:.2f} | {theirs:.2f} | {ratio(ours, theirs, higher):.2f}× |")
print(f"\n{args.rounds} alternating rounds, {args.threads} threads, score ISA {runs['score'][0]['isa']}; "
      "each figure is the median over rounds of per-round medians.")
if args.json:
    with open(args.json, "w") as f:
        json.dump(runs, f, indent=1)
