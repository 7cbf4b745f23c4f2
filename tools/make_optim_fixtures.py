#!/usr/bin/env python3
"""Generate optimizer / grad-clipping / LR-schedule fixtures with PyTorch.

Writes Tests/NNTests/Fixtures/optim.safetensors and optim.json.

Conventions (read by the Swift tests):
  * One parameter p0 [12] and five gradients g0..g4 [12] from a fixed seed,
    shared by every optimizer case (stored again under each case's name).
    The gradients are fed in order, one per step (they do not depend on p).
  * Math is float64 in torch (foreach=False, single param group); everything
    is stored as F32.
  * Optimizer case keys: <case>.p0, <case>.g0..g4, <case>.p1..p5 where
    p<i+1> is the parameter after optimizer step i (step i uses g<i>).
  * clip_grad_norm cases: <case>.in.<i>, <case>.out.<i> (clipped grads, i in
    parameter order) and <case>.total_norm (shape [], norm before clipping).
  * LR schedules: sched.cosine [12] and sched.warmup [8]; element s is the lr
    in force for optimizer step s (s = 0 before any scheduler.step()).
  * optim.json: one entry per key prefix with "kind" ("optimizer",
    "clip_grad_norm", "lr_schedule"); optimizers give "optimizer" (torch class),
    "kwargs" (exactly as passed to torch) and "hparams" (the full resolved set
    from the param group, torch defaults included), and "steps".

Run:  .venv-tools/bin/python tools/make_optim_fixtures.py [--out-dir DIR]
"""
import argparse
import json
import math
import os

import numpy as np
import torch
from safetensors.numpy import save_file

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "NNTests", "Fixtures")
STEPS = 5
SEED = 20240611

OPTIM_CASES = [
    ("sgd", "SGD", {"lr": 0.1}),
    ("sgd_momentum", "SGD", {"lr": 0.1, "momentum": 0.9}),
    ("sgd_momentum_nesterov_wd", "SGD",
     {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", "Adam", {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8}),
    ("adam_wd", "Adam", {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}),
    ("adamw", "AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    ("adamw_default", "AdamW", {}),  # all torch defaults (amsgrad False, wd 0.01, lr 1e-3)
]
HPARAM_KEYS = ["lr", "momentum", "dampening", "nesterov", "weight_decay", "betas", "eps",
               "amsgrad", "maximize"]


def f32(x):
    """Round to float32 (the stored value) and return float64 numpy."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def f32_t(t):
    return np.asarray(t.detach().numpy(), dtype=np.float32, order="C")


def optimizer_cases(tensors, meta):
    rng = np.random.default_rng(SEED)
    p0 = f32(rng.standard_normal(12))
    grads = [f32(rng.standard_normal(12) * s) for s in (1.0, 0.5, 2.0, 0.1, 1.0)]
    for name, cls, kwargs in OPTIM_CASES:
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        torch_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        opt = getattr(torch.optim, cls)([p], foreach=False, **torch_kwargs)
        tensors[f"{name}.p0"] = f32_t(p)
        for i, g in enumerate(grads):
            tensors[f"{name}.g{i}"] = np.asarray(g, dtype=np.float32)
            p.grad = torch.from_numpy(g.copy())
            opt.step()
            tensors[f"{name}.p{i + 1}"] = f32_t(p)
        group = opt.param_groups[0]
        hparams = {k: (list(group[k]) if isinstance(group[k], tuple) else group[k])
                   for k in HPARAM_KEYS if k in group}
        meta[name] = {"kind": "optimizer", "optimizer": cls, "kwargs": kwargs,
                      "hparams": hparams, "steps": STEPS}


def clip_cases(tensors, meta):
    rng = np.random.default_rng(SEED + 1)
    shapes = [(5,), (3, 4)]
    raw = [f32(rng.standard_normal(s)) for s in shapes]
    for name, max_norm in [("clip_grad_norm", 1.0), ("clip_grad_norm_noclip", 100.0)]:
        params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
        for prm, g in zip(params, raw):
            prm.grad = torch.from_numpy(g.copy())
        total = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm, norm_type=2.0,
                                               foreach=False)
        for i, (prm, g) in enumerate(zip(params, raw)):
            tensors[f"{name}.in.{i}"] = np.asarray(g, dtype=np.float32)
            tensors[f"{name}.out.{i}"] = f32_t(prm.grad)
        tensors[f"{name}.total_norm"] = np.asarray(total.item(), dtype=np.float32)
        meta[name] = {"kind": "clip_grad_norm", "max_norm": max_norm, "norm_type": 2.0,
                      "count": len(shapes),
                      "rule": "coef = min(1, max_norm / (total_norm + 1e-6)); g *= coef",
                      "eps": 1e-6}


def schedule_cases(tensors, meta):
    def lrs(make_sched, base_lr, n):
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=base_lr)
        sched = make_sched(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return np.asarray(out, dtype=np.float32)

    tensors["sched.cosine"] = lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-4), 1e-2, 12)
    meta["sched.cosine"] = {
        "kind": "lr_schedule", "scheduler": "CosineAnnealingLR", "base_lr": 1e-2,
        "kwargs": {"T_max": 10, "eta_min": 1e-4}, "count": 12,
        "formula": "eta_min + (base_lr - eta_min) * (1 + cos(pi * s / T_max)) / 2"}
    tensors["sched.warmup"] = lrs(
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / 5)), 1e-2, 8)
    meta["sched.warmup"] = {
        "kind": "lr_schedule", "scheduler": "LambdaLR", "base_lr": 1e-2,
        "lambda": "min(1, (s + 1) / 5)", "count": 8, "formula": "base_lr * min(1, (s + 1) / 5)"}

    # Sanity: the stored values match the closed forms (also past T_max, where
    # torch's cosine schedule keeps following the cosine back up).
    s = np.arange(12)
    closed = 1e-4 + (1e-2 - 1e-4) * (1 + np.cos(np.pi * s / 10)) / 2
    assert np.allclose(tensors["sched.cosine"], closed, rtol=1e-6), (tensors["sched.cosine"], closed)
    s = np.arange(8)
    assert np.allclose(tensors["sched.warmup"], 1e-2 * np.minimum(1, (s + 1) / 5), rtol=1e-6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=DEFAULT_OUT)
    args = ap.parse_args()
    tensors, meta = {}, {}
    optimizer_cases(tensors, meta)
    clip_cases(tensors, meta)
    schedule_cases(tensors, meta)
    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "optim.safetensors")
    js_path = os.path.join(args.out_dir, "optim.json")
    save_file({k: np.asarray(v, order="C") for k, v in tensors.items()}, st_path,
              # a single metadata entry: safetensors writes a map in no fixed order
              metadata={"generator": f"tools/make_optim_fixtures.py, torch {torch.__version__}, float64 reference"})
    with open(js_path, "w") as f:  # one line per entry: easy to read and diff
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()) + "\n}\n")
    print(f"{len(meta)} entries, {len(tensors)} tensors")
    print(f"{st_path}: {os.path.getsize(st_path)} bytes")
    print(f"{js_path}: {os.path.getsize(js_path)} bytes")


if __name__ == "__main__":
    main()
