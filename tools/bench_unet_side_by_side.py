#!/usr/bin/env python3
"""Run `score bench unet --json` and tools/bench_unet_torch.py alternately, one process per
run, several rounds, on the same machine and thread count; print a Markdown table of medians
(time and peak memory) and ratios score/torch.

Alternating rounds expose both to the same background load, so the ratios mean something even
on a shared machine; absolute times do not. Each process builds its model afresh, so each
round's peak memory is that of one forward + backward.

Run:  .venv-tools/bin/python tools/bench_unet_side_by_side.py [--rounds 3] [--config sd15] [--latent 64]
      [--score-binary .build/release/score] [--gradient-checkpointing] [--json runs.json]
(build first: swift build -c release --product score)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--config", default="sd15")
ap.add_argument("--latent", type=int, default=64)
ap.add_argument("--score-binary", default=os.path.join(ROOT, ".build/release/score"))
ap.add_argument("--gradient-checkpointing", action="store_true", help="also for score's runs")
ap.add_argument("--json", help="also write the raw runs here")
args = ap.parse_args()

common = ["--config", args.config, "--latent", str(args.latent), "--threads", str(args.threads)]
ours_cmd = [args.score_binary, "bench", "unet", "--json"] + common
if args.gradient_checkpointing:
    ours_cmd.append("--gradient-checkpointing")
torch_cmd = [sys.executable, os.path.join(ROOT, "tools/bench_unet_torch.py")] + common

runs = {"score": [], "torch": []}
for r in range(args.rounds):
    for name, cmd in (("score", ours_cmd), ("torch", torch_cmd)):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        runs[name].append(json.loads(out.strip().splitlines()[-1]))
        last = runs[name][-1]
        print(f"round {r + 1}/{args.rounds} {name}: forward {last['forward_s']:.1f} s, "
              f"forward+backward {last['forward_backward_s']:.1f} s (sys {last.get('forward_backward_sys_s') or 0:.1f} s), "
              f"peak {last['peak_rss_mb']:.0f} MB",
              file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs, f, indent=1)

metrics = [("forward_s", "forward (s)"), ("forward_backward_s", "forward + backward (s)"),
           ("forward_peak_rss_mb", "peak RSS after the forward passes (MB)"),
           ("peak_rss_mb", "peak RSS after forward + backward (MB)")]
print(f"| {args.config}, {args.latent}² latents | score | torch {runs['torch'][0].get('torch', '')} | score / torch |")
print("|---|---:|---:|---:|")
for key, label in metrics:
    ours = statistics.median(run[key] for run in runs["score"])
    theirs = statistics.median(run[key] for run in runs["torch"])
    print(f"| {label} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}× |")


def kernel_share(run):
    """sys / (user + sys) of the timed forward + backward, in percent (None if not reported)."""
    user, sys_ = run.get("forward_backward_user_s"), run.get("forward_backward_sys_s")
    return None if user is None or sys_ is None or user + sys_ <= 0 else 100 * sys_ / (user + sys_)


for key, label, unit in (("forward_backward_user_s", "user CPU of forward + backward (s)", "{:.1f}"),
                         ("forward_backward_sys_s", "kernel (sys) CPU of forward + backward (s)", "{:.1f}"),
                         ("forward_backward_minor_faults", "minor page faults of forward + backward", "{:,.0f}"),
                         ("kernel_share", "kernel share of forward + backward's CPU time (%)", "{:.1f}")):
    medians = []
    for name in ("score", "torch"):
        values = [kernel_share(run) if key == "kernel_share" else run.get(key) for run in runs[name]]
        medians.append(None if any(v is None for v in values) else statistics.median(values))
    ours, theirs = (unit.format(m) if m is not None else "n/a" for m in medians)
    ratio = f"{medians[0] / medians[1]:.2f}×" if None not in medians and medians[1] else ""
    print(f"| {label} | {ours} | {theirs} | {ratio} |")
print(f"\n{args.rounds} alternating rounds, {args.threads} threads, score ISA {runs['score'][0]['isa']}"
      f"{', gradient checkpointing' if args.gradient_checkpointing else ''}; medians over rounds.")
