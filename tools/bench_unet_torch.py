#!/usr/bin/env python3
"""torch + diffusers on the workload of `score bench unet`: a UNet2DConditionModel with random
weights from a published config, batch B, latent L×L, T text tokens at timestep 500.

Prints one JSON object with the same keys as `score bench unet --json`: forward_s (median
seconds of a forward pass under no_grad), forward_backward_s (forward + backward of
sum(out), gradients for every parameter and the sample), peak_rss_mb (the process's peak
resident memory, resource.getrusage ru_maxrss), forward_peak_rss_mb (the same after the
forward passes) and forward_backward_user_s / _sys_s / _minor_faults (getrusage over the timed
forward + backward runs).

Run on the same machine as the Swift benchmark, with the cores shared as they are:

    OMP_WAIT_POLICY=PASSIVE .venv-tools/bin/python tools/bench_unet_torch.py --config sd15 --latent 64

(OMP_WAIT_POLICY=PASSIVE is set here too, before torch loads: OpenMP's busy-waiting made
steps ~10x slower on the shared cores.)
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {
    "sd15": os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures", "real_configs", "sd15_unet.json"),
    "sd21": os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures", "real_configs", "sd21_unet.json"),
}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def median_seconds(runs, warmup, body):
    for _ in range(warmup):
        body()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        body()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="sd15", help="sd15, sd21 or a UNet config.json")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with open(PRESETS.get(args.config, args.config)) as f:
        config = json.load(f)
    config = config.get("config", config)  # real_configs records wrap it
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    print(f"building {args.config} with random weights", file=sys.stderr)
    unet = UNet2DConditionModel(**config).eval()
    sample = torch.randn(args.batch, unet.config.in_channels, args.latent, args.latent)
    cross = unet.config.cross_attention_dim
    context = torch.randn(args.batch, args.tokens, cross if isinstance(cross, int) else cross[0])
    timestep = torch.tensor([500.0])
    warmup = 1 if args.runs > 1 else 0

    def forward():
        with torch.no_grad():
            unet(sample, timestep, encoder_hidden_states=context)

    print("forward", file=sys.stderr)
    forward_s = median_seconds(args.runs, warmup, forward)
    forward_peak = peak_rss_mb()

    forward_backward_s = None
    usage = {}
    if not args.forward_only:
        sample.requires_grad_(True)

        def forward_backward():
            out = unet(sample, timestep, encoder_hidden_states=context).sample
            out.sum().backward()
            unet.zero_grad(set_to_none=True)
            sample.grad = None

        print("forward + backward", file=sys.stderr)
        for _ in range(warmup):
            forward_backward()
        before = resource.getrusage(resource.RUSAGE_SELF)
        forward_backward_s = median_seconds(args.runs, 0, forward_backward)
        after = resource.getrusage(resource.RUSAGE_SELF)
        usage = {"forward_backward_user_s": after.ru_utime - before.ru_utime,
                 "forward_backward_sys_s": after.ru_stime - before.ru_stime,
                 "forward_backward_minor_faults": after.ru_minflt - before.ru_minflt}

    print(json.dumps({
        "config": args.config, "parameters": sum(p.numel() for p in unet.parameters()), "batch": args.batch,
        "latent": args.latent, "tokens": args.tokens, "forward_s": forward_s, "forward_backward_s": forward_backward_s,
        "forward_peak_rss_mb": forward_peak, "peak_rss_mb": peak_rss_mb(), "runs": args.runs,
        "threads": torch.get_num_threads(), "torch": torch.__version__, **usage,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
