#!/usr/bin/env python3
"""Load the committed fixtures back and check them against their JSON.

For ops: every key follows the convention, shapes match, and torch in float32
on the stored inputs agrees with the float64 reference (prints the relative
error per case: a guide for the Swift tests' tolerances).
Run:  .venv-tools/bin/python tools/check_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_op_fixtures as m  # noqa: E402

ROOT = m.ROOT


def check_ops():
    d = os.path.join(ROOT, "Tests", "TensorTests", "Fixtures")
    T = load_file(os.path.join(d, "ops.safetensors"))
    J = json.load(open(os.path.join(d, "ops.json")))
    fns = {c[0]: c[4] for c in m.CASES}
    used, worst = set(), 0.0
    for name, spec in J.items():
        ins = []
        for n in spec["inputs"]:
            a = T[f"{name}.in.{n}"]
            used.add(f"{name}.in.{n}")
            assert a.dtype in (np.float32, np.int64)
            t = torch.from_numpy(a.copy())
            ins.append(t.requires_grad_(True) if a.dtype == np.float32 else t)
        out = fns[name](*ins)
        ref, gout = T[f"{name}.out"], T[f"{name}.gout"]
        used |= {f"{name}.out", f"{name}.gout"}
        assert tuple(out.shape) == ref.shape == gout.shape, name
        fl = [(n, t) for n, t in zip(spec["inputs"], ins) if t.is_floating_point()]
        gs = torch.autograd.grad((out * torch.from_numpy(gout)).sum(), [t for _, t in fl])
        err = np.abs(out.detach().numpy() - ref).max() / (np.abs(ref).max() + 1e-12)
        for (n, t), g in zip(fl, gs):
            r = T[f"{name}.grad.{n}"]
            used.add(f"{name}.grad.{n}")
            assert r.shape == tuple(t.shape) and r.dtype == np.float32, (name, n)
            err = max(err, np.abs(g.numpy() - r).max() / (np.abs(r).max() + 1e-12))
        print(f"  {name:20s} {spec['op']:18s} out {str(list(ref.shape)):15s} f32 rel err {err:.1e}")
        worst = max(worst, err)
    assert used == set(T), f"unexpected keys: {sorted(set(T) - used)}"
    print(f"ops: {len(J)} cases, {len(T)} tensors OK; worst f32-vs-f64 rel err {worst:.1e}")


def check_optim():
    d = os.path.join(ROOT, "Tests", "NNTests", "Fixtures")
    T = load_file(os.path.join(d, "optim.safetensors"))
    J = json.load(open(os.path.join(d, "optim.json")))
    want = set()
    for name, e in J.items():
        if e["kind"] == "optimizer":
            want |= {f"{name}.p0"} | {f"{name}.g{i}" for i in range(e["steps"])}
            want |= {f"{name}.p{i + 1}" for i in range(e["steps"])}
        elif e["kind"] == "clip_grad_norm":
            want |= {f"{name}.{io}.{i}" for io in ("in", "out") for i in range(e["count"])}
            want.add(f"{name}.total_norm")
        else:
            want.add(name)
            assert T[name].shape == (e["count"],)
    assert want == set(T), sorted(want ^ set(T))
    assert all(v.dtype == np.float32 for v in T.values())
    print(f"optim: {len(J)} entries, {len(T)} tensors OK")


if __name__ == "__main__":
    check_ops()
    check_optim()
