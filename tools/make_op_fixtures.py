#!/usr/bin/env python3
"""Generate op parity fixtures (forward + backward) with PyTorch.

Writes Tests/TensorTests/Fixtures/ops.safetensors and ops.json.

Conventions (read by the Swift tests):
  * Every case has a seeded generator of its own (seed = crc32 of the case
    name), so adding or editing a case never changes the others.
  * Float inputs are drawn in float64, rounded to float32 (the stored values),
    and the reference is computed in float64 from exactly those rounded values;
    all float tensors are then stored as F32. Integer inputs are stored as I64.
  * Keys:  <case>.in.<input>    every input, in the order listed in ops.json
           <case>.out           the op's output
           <case>.gout          random upstream gradient, shape of <case>.out
           <case>.grad.<input>  d sum(out * gout) / d input, float inputs only
    Scalar outputs (sum_all, mse_loss, cross_entropy) have shape [].
  * ops.json: {"<case>": {"op": ..., "inputs": [...], "attrs": {...}}}, inputs
    in call order, attrs spelling out the semantics (dims, keepdim, ...).

Run:  .venv-tools/bin/python tools/make_op_fixtures.py [--out-dir DIR]
"""
import argparse
import json
import math
import os
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "TensorTests", "Fixtures")


class Case:
    """Collects one case's inputs from its own seeded generator."""

    def __init__(self, name):
        self.name = name
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.inputs = []  # (name, np array as stored)

    def _add(self, name, arr):
        self.inputs.append((name, arr))
        return arr

    def normal(self, name, shape, scale=1.0):
        return self._add(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def uniform(self, name, shape, lo, hi):
        return self._add(name, self.rng.uniform(lo, hi, shape).astype(np.float32))

    def away_from_zero(self, name, shape, gap=0.1):
        x = self.rng.standard_normal(shape)
        x = np.sign(x) * (np.abs(x) + gap)
        return self._add(name, x.astype(np.float32))

    def ints(self, name, arr):
        return self._add(name, np.asarray(arr, dtype=np.int64, order="C"))


CASES = []  # (name, op, attrs, build(case) -> None, fn(*torch_inputs) -> out)


def case(name, op, attrs, build, fn):
    CASES.append((name, op, attrs, build, fn))


def run_case(name, op, attrs, build, fn, tensors, meta):
    c = Case(name)
    build(c)
    t_inputs = []
    for _, arr in c.inputs:
        if arr.dtype == np.int64:
            t_inputs.append(torch.from_numpy(arr.copy()))
        else:
            t_inputs.append(torch.from_numpy(arr.astype(np.float64)).requires_grad_(True))
    out = fn(*t_inputs)
    gout = torch.from_numpy(c.rng.standard_normal(tuple(out.shape)).astype(np.float32).astype(np.float64))
    float_inputs = [(n, t) for (n, _), t in zip(c.inputs, t_inputs) if t.is_floating_point()]
    grads = torch.autograd.grad((out * gout).sum(), [t for _, t in float_inputs], allow_unused=True)

    for n, arr in c.inputs:
        tensors[f"{name}.in.{n}"] = arr
    tensors[f"{name}.out"] = out.detach().numpy().astype(np.float32)
    tensors[f"{name}.gout"] = gout.numpy().astype(np.float32)
    for (n, t), g in zip(float_inputs, grads):
        if g is None:
            g = torch.zeros_like(t)
        tensors[f"{name}.grad.{n}"] = g.numpy().astype(np.float32)
    meta[name] = {"op": op, "inputs": [n for n, _ in c.inputs], "attrs": attrs}


# --- elementwise binary with numpy/torch broadcasting -------------------------
for nm, op, f in [("add_bcast", "add", torch.add), ("sub_bcast", "sub", torch.sub)]:
    case(nm, op, {"broadcast": True},
         lambda c: (c.normal("a", (2, 3, 4)), c.normal("b", (3, 1))), f)
case("mul_bcast", "mul", {"broadcast": True},
     lambda c: (c.normal("a", (2, 3, 4)), c.normal("b", (4,))), torch.mul)
case("div_bcast", "div", {"broadcast": True},
     lambda c: (c.normal("a", (2, 3, 4)), c.uniform("b", (1, 3, 1), 0.5, 2.0)), torch.div)

# --- matmul (torch.matmul semantics, batch dims broadcast) --------------------
case("matmul", "matmul", {},
     lambda c: (c.normal("a", (5, 7)), c.normal("b", (7, 3))), torch.matmul)
case("bmm", "matmul", {},
     lambda c: (c.normal("a", (2, 3, 5, 7)), c.normal("b", (2, 3, 7, 4))), torch.matmul)
case("bmm_bcast", "matmul", {},
     lambda c: (c.normal("a", (2, 3, 5, 7)), c.normal("b", (7, 4))), torch.matmul)

# --- linear: y = x @ w^T + b ---------------------------------------------------
case("linear", "linear", {"weight_layout": "out_in"},
     lambda c: (c.normal("x", (4, 6)), c.normal("w", (5, 6)), c.normal("b", (5,))), F.linear)
case("linear_3d", "linear", {"weight_layout": "out_in"},
     lambda c: (c.normal("x", (2, 3, 6)), c.normal("w", (5, 6)), c.normal("b", (5,))), F.linear)


# --- conv2d (NCHW input, OIHW weight) -----------------------------------------
def conv_case(name, xs, ws, bias, stride, padding):
    attrs = {"stride": [stride, stride], "padding": [padding, padding],
             "dilation": [1, 1], "groups": 1, "bias": bias}

    def build(c):
        c.normal("x", xs)
        c.normal("w", ws, scale=1.0 / math.sqrt(ws[1] * ws[2] * ws[3]))
        if bias:
            c.normal("b", (ws[0],))

    def fn(x, w, b=None):
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    case(name, "conv2d", attrs, build, fn)


conv_case("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), True, 1, 1)
conv_case("conv2d_s2", (2, 3, 9, 9), (5, 3, 3, 3), True, 2, 1)
conv_case("conv2d_1x1", (2, 6, 5, 5), (4, 6, 1, 1), True, 1, 0)
conv_case("conv2d_nobias", (1, 2, 6, 6), (3, 2, 3, 3), False, 1, 0)

case("upsample_nearest2x", "upsample_nearest2d", {"scale_factor": [2, 2]},
     lambda c: c.normal("x", (2, 3, 4, 5)),
     lambda x: F.interpolate(x, scale_factor=2, mode="nearest"))
case("avg_pool2d", "avg_pool2d", {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0]},
     lambda c: c.normal("x", (2, 3, 6, 6)),
     lambda x: F.avg_pool2d(x, kernel_size=2, stride=2))


# --- normalization -------------------------------------------------------------
def gn_case(name, xs, groups, eps):
    C = xs[1]
    case(name, "group_norm", {"groups": groups, "eps": eps},
         lambda c: (c.normal("x", xs, scale=2.0), c.normal("w", (C,)), c.normal("b", (C,))),
         lambda x, w, b: F.group_norm(x, groups, w, b, eps))


gn_case("group_norm", (2, 8, 4, 4), 4, 1e-5)
gn_case("group_norm_eps6", (2, 6, 3, 3), 3, 1e-6)
case("layer_norm", "layer_norm", {"normalized_shape": [16], "eps": 1e-5},
     lambda c: (c.normal("x", (3, 5, 16), scale=2.0), c.normal("w", (16,)), c.normal("b", (16,))),
     lambda x, w, b: F.layer_norm(x, (16,), w, b, 1e-5))

# --- softmax -------------------------------------------------------------------
case("softmax", "softmax", {"dim": -1},
     lambda c: c.normal("x", (3, 4, 7), scale=2.0), lambda x: F.softmax(x, dim=-1))
case("log_softmax", "log_softmax", {"dim": -1},
     lambda c: c.normal("x", (3, 4, 7), scale=2.0), lambda x: F.log_softmax(x, dim=-1))
case("softmax_dim1", "softmax", {"dim": 1},
     lambda c: c.normal("x", (3, 4, 7), scale=2.0), lambda x: F.softmax(x, dim=1))

# --- unary -----------------------------------------------------------------------
U = (3, 5, 4)
normal_x = lambda c: c.normal("x", U, scale=1.5)
for nm, op, attrs, build, f in [
    ("silu", "silu", {}, normal_x, F.silu),
    ("gelu_tanh", "gelu", {"approximate": "tanh"}, normal_x, lambda x: F.gelu(x, approximate="tanh")),
    ("gelu_erf", "gelu", {"approximate": "none"}, normal_x, lambda x: F.gelu(x, approximate="none")),
    ("quick_gelu", "quick_gelu", {"alpha": 1.702}, normal_x, lambda x: x * torch.sigmoid(1.702 * x)),
    ("sigmoid", "sigmoid", {}, normal_x, torch.sigmoid),
    ("tanh", "tanh", {}, normal_x, torch.tanh),
    ("exp", "exp", {}, lambda c: c.uniform("x", U, -3.0, 3.0), torch.exp),
    ("log", "log", {}, lambda c: c.uniform("x", U, 0.5, 3.0), torch.log),
    ("sqrt", "sqrt", {}, lambda c: c.uniform("x", U, 0.5, 3.0), torch.sqrt),
    ("pow3", "pow", {"exponent": 3.0}, normal_x, lambda x: x ** 3),
    ("pow_frac", "pow", {"exponent": 2.5}, lambda c: c.uniform("x", U, 0.5, 3.0), lambda x: x ** 2.5),
    ("relu", "relu", {}, lambda c: c.away_from_zero("x", U, 0.1), F.relu),
    ("neg", "neg", {}, normal_x, torch.neg),
]:
    case(nm, op, attrs, build, f)

# --- reductions ----------------------------------------------------------------
case("sum_axis1", "sum", {"dims": [1], "keepdim": False},
     lambda c: c.normal("x", (2, 3, 4)), lambda x: x.sum(dim=1, keepdim=False))
case("sum_keep", "sum", {"dims": [0, 2], "keepdim": True},
     lambda c: c.normal("x", (2, 3, 4)), lambda x: x.sum(dim=(0, 2), keepdim=True))
case("mean_axes", "mean", {"dims": [2, 3], "keepdim": True},
     lambda c: c.normal("x", (2, 3, 4, 5)), lambda x: x.mean(dim=(2, 3), keepdim=True))
case("var_unbiased", "var", {"dims": [-1], "correction": 1, "keepdim": False},
     lambda c: c.normal("x", (4, 9), scale=2.0), lambda x: torch.var(x, dim=-1, correction=1, keepdim=False))
case("var_biased", "var", {"dims": [-1], "correction": 0, "keepdim": True},
     lambda c: c.normal("x", (4, 9), scale=2.0), lambda x: torch.var(x, dim=-1, correction=0, keepdim=True))
case("sum_all", "sum", {"dims": [0, 1], "keepdim": False},
     lambda c: c.normal("x", (3, 4)), lambda x: x.sum())

# --- attention -----------------------------------------------------------------
def sdpa_build(shape_q, shape_kv, mask=False):
    def build(c):
        c.normal("q", shape_q)
        c.normal("k", shape_kv)
        c.normal("v", shape_kv)
        if mask:
            m = np.ones((shape_q[0], 1, 1, shape_kv[2]), dtype=np.int64)
            m[1, ..., -3:] = 0  # second batch element: last 3 keys masked out
            c.ints("mask", m)
    return build


SDPA_ATTRS = {"scale": 1.0 / math.sqrt(8), "is_causal": False}
case("sdpa", "sdpa", dict(SDPA_ATTRS),
     sdpa_build((2, 4, 6, 8), (2, 4, 10, 8)), F.scaled_dot_product_attention)
case("sdpa_mask", "sdpa",
     dict(SDPA_ATTRS, mask="attend_if_nonzero"),  # I64 0/1, broadcasts to [B,H,Lq,Lk]
     sdpa_build((2, 4, 6, 8), (2, 4, 10, 8), mask=True),
     lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m.bool()))
case("sdpa_long", "sdpa", {"scale": 1.0 / math.sqrt(16), "is_causal": False},
     sdpa_build((1, 2, 70, 16), (1, 2, 70, 16)), F.scaled_dot_product_attention)

# --- embedding / losses ----------------------------------------------------------
case("embedding", "embedding", {},
     lambda c: (c.normal("weight", (10, 6)), c.ints("ids", c.rng.integers(0, 10, (2, 5)))),
     lambda w, ids: F.embedding(ids, w))
case("mse_loss", "mse_loss", {"reduction": "mean"},
     lambda c: (c.normal("a", (4, 5)), c.normal("b", (4, 5))),
     lambda a, b: F.mse_loss(a, b, reduction="mean"))
case("cross_entropy", "cross_entropy", {"reduction": "mean", "class_dim": 1},
     lambda c: (c.normal("logits", (6, 5), scale=2.0), c.ints("target", c.rng.integers(0, 5, (6,)))),
     lambda logits, t: F.cross_entropy(logits, t, reduction="mean"))

# --- shape ops -------------------------------------------------------------------
case("permute", "permute", {"dims": [2, 0, 1]},
     lambda c: c.normal("x", (2, 3, 4)), lambda x: x.permute(2, 0, 1))
case("transpose", "transpose", {"dim0": 1, "dim1": 2},
     lambda c: c.normal("x", (2, 3, 4)), lambda x: x.transpose(1, 2))
case("slice", "slice", {"ranges": [[1, 3], [2, 5]]},
     lambda c: c.normal("x", (4, 6)), lambda x: x[1:3, 2:5])
case("concat", "concat", {"dim": 1},
     lambda c: (c.normal("a", (2, 3)), c.normal("b", (2, 5))), lambda a, b: torch.cat([a, b], dim=1))
case("expand", "expand", {"shape": [2, 3, 4]},
     lambda c: c.normal("x", (3, 1)), lambda x: x.expand(2, 3, 4))
case("reshape", "reshape", {"shape": [6, 4]},
     lambda c: c.normal("x", (2, 3, 4)), lambda x: x.reshape(6, 4))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=DEFAULT_OUT)
    args = ap.parse_args()
    tensors, meta = {}, {}
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)), "duplicate case name"
    for name, op, attrs, build, fn in CASES:
        run_case(name, op, attrs, build, fn, tensors, meta)
    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "ops.safetensors")
    js_path = os.path.join(args.out_dir, "ops.json")
    save_file({k: np.asarray(v, order="C") for k, v in tensors.items()}, st_path,
              # a single metadata entry: safetensors writes a map in no fixed order
              metadata={"generator": f"tools/make_op_fixtures.py, torch {torch.__version__}, float64 reference"})
    with open(js_path, "w") as f:  # one line per case: easy to read and diff
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()) + "\n}\n")
    print(f"{len(meta)} cases, {len(tensors)} tensors")
    print(f"{st_path}: {os.path.getsize(st_path)} bytes")
    print(f"{js_path}: {os.path.getsize(js_path)} bytes")


if __name__ == "__main__":
    main()
