#!/usr/bin/env python3
"""Scheduler parity fixtures from diffusers (DDPM, DDIM, Euler discrete, Euler ancestral, PNDM,
DPM-Solver multistep).

Writes Tests/DiffusionTests/Fixtures/schedulers/schedulers.json and schedulers.safetensors.

What is stored (read by Tests/DiffusionTests/SchedulerParityTests.swift):
  * configs: scheduler_config.json dictionaries exactly as they would sit on disk (SD 1.5, SD 2
    v-prediction, the testbed's squaredcos_cap_v2, plus linear/trailing and cosine/linspace
    variants). Each scheduler class is built with `Class.from_config(config)`, so keys the
    config lacks take that class's defaults (as in diffusers).
  * tables: per (config, scheduler class, step count) the timesteps diffusers' `set_timesteps`
    makes; for Euler also its float32 sigmas, a float64 reference of the same sigmas computed
    here with numpy from float64 alphas_cumprod, and init_noise_sigma.
  * alphas_cumprod per config: diffusers' (float32, key `config.<name>.alphas_cumprod`) and a
    float64 reference computed here from the formulas (`config.<name>.alphas_cumprod_f64`, F64).
  * runs: full sampling loops with a fixed deterministic "model" (see `model` below) on a
    [2, 1, 4, 4] sample: `run.<name>.samples` [steps + 1, 2, 1, 4, 4] (the starting sample,
    then the sample after each step), `run.<name>.pred` [steps, ...] (pred_original_sample of
    each step) and, for stochastic steps, `run.<name>.noise` [steps, ...] (the standard-normal
    draw each step used; DDPM's draw is injected by replacing its randn_tensor, DDIM's passed
    as variance_noise; all-zero rows where the step adds no noise). Euler runs on the cosine
    schedule also get `run.<name>.samples_f64` (F64), the same loop in float64 (`euler_run_f64`).
  * multistep_tables: per (config, class in PNDM / DPM-Solver / Euler ancestral, variant of
    options, step count) the timesteps (and sigmas for DPM-Solver and Euler ancestral, plus
    init_noise_sigma for the latter), or `"error"` with diffusers' exception where set_timesteps
    fails (PNDM's Runge-Kutta path below 4 steps).
  * runs of PNDM (PLMS with skip_prk_steps, and the Runge-Kutta start), DPM-Solver (2M, Karras,
    order 1 and 3, heun, dpmsolver, sigma_min, lower_order_final off) and Euler ancestral (its
    noise injected as DDPM's; `run.<name>.samples_f64` in float64 on the cosine schedule) share
    the `runs` list and keys; PNDM and DPM-Solver store no `pred` (their step returns none).
  * helpers: per config, a batch of 4 with per-sample timesteps: original, noise, model_output,
    diffusers' add_noise (DDPM) and get_velocity, Euler's add_noise, x̂₀ from ε and from v
    (diffusers' DDIM pred_original_sample, one sample at a time) and the float64 references of
    the same four quantities computed here (`*_f64`, F64).

The model: eps(x, t)[i] = 0.1 * x[i] + 0.05 * sin(t / 100 + 0.1 * i), i the flat index of the
element in the whole [2, 1, 4, 4] tensor, t the timestep passed to the model (a float for Euler),
sin evaluated in float64 and rounded to float32. The model input is `scale_model_input(x, t)`.

Run:  .venv-tools/bin/python tools/make_scheduler_fixtures.py [--out-dir DIR]
"""
import argparse
import copy
import json
import math
import os

import numpy as np
import torch
import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler)
import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module
from safetensors.numpy import save_file

torch.set_num_threads(1)
diffusers.utils.logging.set_verbosity_error()  # the unknown key in linear_trailing is on purpose
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures", "schedulers")
SHAPE = (2, 1, 4, 4)

CONFIGS = {
    # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
    "sd15": {
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None, "clip_sample": False,
    },
    # stabilityai/stable-diffusion-2 scheduler/scheduler_config.json
    "sd2v": {
        "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    },
    # the testbed's mini-SD (docs/TESTBED.md): DDPM 1000 steps, squaredcos_cap_v2, epsilon
    "testbed": {
        "_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1", "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
    },
    "linear_trailing": {
        "_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
        "beta_end": 0.02, "timestep_spacing": "trailing", "clip_sample": False,
        "an_unknown_key": [1, 2, 3],
    },
    "cos_linspace_sample": {
        "_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2",
        "timestep_spacing": "linspace", "prediction_type": "sample", "clip_sample_range": 2.0,
        "set_alpha_to_one": True, "num_train_timesteps": 1000,
    },
}
CLASSES = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler,
           "EulerDiscreteScheduler": EulerDiscreteScheduler}
MULTISTEP_CLASSES = {"PNDMScheduler": PNDMScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
                     "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler}
ALL_CLASSES = dict(CLASSES, **MULTISTEP_CLASSES)
# Option variants whose tables are stored for every config and step count.
TABLE_VARIANTS = {
    "PNDMScheduler": {"plms": {"skip_prk_steps": True}, "prk": {"skip_prk_steps": False}},
    "DPMSolverMultistepScheduler": {"default": {}, "karras": {"use_karras_sigmas": True},
                                    "sigma_min": {"final_sigmas_type": "sigma_min"},
                                    "clipped": {"lambda_min_clipped": -5.1}},
    "EulerAncestralDiscreteScheduler": {"default": {}},
}
TABLE_STEPS = [1, 3, 7, 10, 25, 50, 61]
HELPER_TIMESTEPS = [0, 1, 500, 999]


def make(cls_name, config, **overrides):
    cfg = dict(config)
    cfg.update(overrides)
    return ALL_CLASSES[cls_name].from_config(cfg)


# --- float64 references, written from the formulas (not from diffusers) ----------------------
def betas_f64(cfg):
    n = cfg.get("num_train_timesteps", 1000)
    sched = cfg.get("beta_schedule", "linear")
    b0, b1 = cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02)
    if sched == "linear":
        return np.array([b0 + (b1 - b0) * i / (n - 1) for i in range(n)])
    if sched == "scaled_linear":
        s0, s1 = math.sqrt(b0), math.sqrt(b1)
        return np.array([(s0 + (s1 - s0) * i / (n - 1)) ** 2 for i in range(n)])
    if sched == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    raise ValueError(sched)


def alphas_cumprod_f64(cfg):
    return np.cumprod(1.0 - betas_f64(cfg))


def karras_f64(cfg, steps):
    """DPM-Solver's Karras table in float64: sigmas from the float64 training range, timesteps by
    diffusers' own _sigma_to_t on float64 log sigmas (rounded, except for the cosine schedule;
    then truncated to integers). diffusers' float32 range endpoints put its sigmas ~1e-4 off."""
    a = alphas_cumprod_f64(cfg)
    train = np.sqrt((1 - a) / a)
    rho = 7.0
    ramp = np.linspace(0, 1, steps)
    lo, hi = train[0] ** (1 / rho), train[-1] ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    log_sigmas = np.log(train)
    t = np.array([DPMSolverMultistepScheduler._sigma_to_t(None, s, log_sigmas) for s in sigmas])
    if cfg.get("beta_schedule", "linear") != "squaredcos_cap_v2":
        t = t.round()
    return t.astype(np.int64).tolist(), sigmas.tolist() + [0.0]


def euler_sigmas_f64(cfg, timesteps_f32, final="zero"):
    a = alphas_cumprod_f64(cfg)
    train = np.sqrt((1 - a) / a)
    s = np.interp(np.asarray(timesteps_f32, dtype=np.float64), np.arange(len(train)), train)
    last = 0.0 if final == "zero" else train[0]
    return np.concatenate([s, [last]])


# --- the deterministic model ---------------------------------------------------------------
def model(x, t):
    n = x.numel()
    phase = np.sin(float(t) / 100.0 + 0.1 * np.arange(n, dtype=np.float64)).astype(np.float32)
    return 0.1 * x + 0.05 * torch.from_numpy(phase).reshape(x.shape)


def start_sample():
    i = np.arange(int(np.prod(SHAPE)), dtype=np.float64)
    return torch.from_numpy((1.1 * np.sin(1.3 * i + 0.5)).astype(np.float32).reshape(SHAPE))


def step_noise(k):
    """Deterministic stand-in for a standard-normal draw at step k."""
    i = np.arange(int(np.prod(SHAPE)), dtype=np.float64)
    return torch.from_numpy(np.cos(0.7 * i + 1.9 * k + 0.3).astype(np.float32).reshape(SHAPE))


def run_loop(s, steps, step_kwargs=None, stochastic=None):
    """One sampling loop as diffusers' pipelines run it. Returns samples, preds, noises."""
    s.set_timesteps(steps)
    x = start_sample() * s.init_noise_sigma
    samples, preds, noises = [x.clone()], [], []
    for k, t in enumerate(s.timesteps):
        inp = s.scale_model_input(x, t)
        out = model(inp, t)
        kwargs = dict(step_kwargs or {})
        noise = step_noise(k)
        used = torch.zeros(SHAPE)
        if stochastic == "ddim":
            kwargs["variance_noise"] = noise
            used = noise
        elif stochastic in ("ddpm", "euler_a"):
            module = ddpm_module if stochastic == "ddpm" else euler_a_module
            drawn = []

            def fake_randn(shape, generator=None, device=None, dtype=None, **kw):
                drawn.append(noise)
                return noise.clone()

            saved = module.randn_tensor
            module.randn_tensor = fake_randn
            try:
                r = s.step(out, t, x, return_dict=False, **kwargs)
            finally:
                module.randn_tensor = saved
            used = noise if drawn else used
        if stochastic not in ("ddpm", "euler_a"):
            r = s.step(out, t, x, return_dict=False, **kwargs)
        x = r[0]
        samples.append(x.clone())
        if len(r) > 1:
            preds.append(r[1].clone())
        noises.append(used.clone())
    return torch.stack(samples), (torch.stack(preds) if preds else None), torch.stack(noises)


def euler_run_f64(cfg, steps, timesteps_f32, noises=None):
    """The same Euler loop in float64 from float64 sigmas (model evaluated in float64): the exact
    trajectory that float32 runs approximate. Euler on the cosine schedule starts at σ ≈ 2e4,
    where float32 keeps ~3 digits of the first step's result, so diffusers' own float32 run is
    1.6e-4 off this one."""
    spacing = cfg.get("timestep_spacing", "linspace")
    sig = euler_sigmas_f64(cfg, timesteps_f32)
    init = sig.max() if spacing in ("linspace", "trailing") else math.sqrt(sig.max() ** 2 + 1)
    x = start_sample().double().numpy() * init
    n = x.size
    out = [x.copy()]
    ptype = cfg.get("prediction_type", "epsilon")
    for k, t in enumerate(timesteps_f32):
        s, nxt = sig[k], sig[k + 1]
        inp = x / math.sqrt(s * s + 1)
        eps = 0.1 * inp + 0.05 * np.sin(float(t) / 100.0 + 0.1 * np.arange(n)).reshape(x.shape)
        if ptype == "epsilon":
            x0 = x - s * eps
        elif ptype == "v_prediction":
            x0 = eps * (-s / math.sqrt(s * s + 1)) + x / (s * s + 1)
        else:
            x0 = eps
        if noises is None:
            x = x + (x - x0) / s * (nxt - s)
        else:  # Euler ancestral: deterministic part down to sigma_down, then sigma_up * z
            up = math.sqrt(nxt ** 2 * (s ** 2 - nxt ** 2) / s ** 2)
            down = math.sqrt(nxt ** 2 - up ** 2)
            x = x + (x - x0) / s * (down - s) + up * noises[k].double().numpy()
        out.append(x.copy())
    return np.stack(out)


def f32(t):
    return np.ascontiguousarray(t.detach().numpy().astype(np.float32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    tensors = {}
    doc = {
        "generator": "tools/make_scheduler_fixtures.py",
        "diffusers": diffusers.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "model": "eps[i] = 0.1*x[i] + 0.05*sin(t/100 + 0.1*i), sin in float64 rounded to float32",
        "shape": list(SHAPE),
        "configs": CONFIGS, "tables": [], "multistep_tables": [], "runs": [], "helpers": [],
    }

    for name, cfg in CONFIGS.items():
        s = make("DDPMScheduler", cfg)
        tensors[f"config.{name}.alphas_cumprod"] = f32(s.alphas_cumprod)
        tensors[f"config.{name}.alphas_cumprod_f64"] = alphas_cumprod_f64(cfg)
        ref32 = s.alphas_cumprod.double().numpy()
        rel = np.abs(ref32 - alphas_cumprod_f64(cfg)) / alphas_cumprod_f64(cfg)
        print(f"{name:22s} alphas_cumprod f32 vs f64 max rel {rel.max():.2e} at t={rel.argmax()}")

        for cls in CLASSES:
            for steps in TABLE_STEPS:
                s = make(cls, cfg)
                s.set_timesteps(steps)
                entry = {"config": name, "scheduler": cls, "steps": steps,
                         "timesteps": [float(v) if cls == "EulerDiscreteScheduler" else int(v)
                                       for v in s.timesteps.tolist()]}
                if cls == "EulerDiscreteScheduler":
                    entry["sigmas"] = [float(v) for v in s.sigmas.tolist()]
                    entry["sigmas_f64"] = euler_sigmas_f64(cfg, s.timesteps.numpy()).tolist()
                    entry["init_noise_sigma"] = float(s.init_noise_sigma)
                doc["tables"].append(entry)

        for cls, variants in TABLE_VARIANTS.items():
            for variant, overrides in variants.items():
                for steps in TABLE_STEPS:
                    s = make(cls, cfg, **overrides)
                    entry = {"config": name, "scheduler": cls, "variant": variant, "overrides": overrides,
                             "steps": steps}
                    try:
                        s.set_timesteps(steps)
                    except Exception as e:  # noqa: BLE001 - the failure is the fixture
                        entry["error"] = f"{type(e).__name__}: {e}"
                        doc["multistep_tables"].append(entry)
                        continue
                    entry["timesteps"] = [float(v) for v in s.timesteps.tolist()]
                    if cls != "PNDMScheduler":
                        entry["sigmas"] = [float(v) for v in s.sigmas.tolist()]
                    if cls == "EulerAncestralDiscreteScheduler":
                        entry["init_noise_sigma"] = float(s.init_noise_sigma)
                    if overrides.get("use_karras_sigmas"):
                        entry["timesteps_f64"], entry["sigmas_f64"] = karras_f64(cfg, steps)
                    doc["multistep_tables"].append(entry)

        # helpers: add_noise / get_velocity / x0 with per-sample timesteps
        hshape = (4, 1, 3, 3)
        n = int(np.prod(hshape))
        i = np.arange(n, dtype=np.float64)
        original = torch.from_numpy((0.8 * np.sin(0.37 * i + 0.2)).astype(np.float32).reshape(hshape))
        noise = torch.from_numpy(np.cos(0.91 * i + 0.4).astype(np.float32).reshape(hshape))
        mout = torch.from_numpy((0.6 * np.sin(1.7 * i + 1.1)).astype(np.float32).reshape(hshape))
        ts = torch.tensor(HELPER_TIMESTEPS, dtype=torch.int64)
        ddpm = make("DDPMScheduler", cfg)
        euler = make("EulerDiscreteScheduler", cfg)
        euler.set_timesteps(cfg.get("num_train_timesteps", 1000))
        key = f"helpers.{name}"
        tensors[f"{key}.original"] = f32(original)
        tensors[f"{key}.noise"] = f32(noise)
        tensors[f"{key}.model_output"] = f32(mout)
        tensors[f"{key}.add_noise"] = f32(ddpm.add_noise(original, noise, ts))
        tensors[f"{key}.velocity"] = f32(ddpm.get_velocity(original, noise, ts))
        tensors[f"{key}.euler_add_noise"] = f32(euler.add_noise(original, noise, ts.float()))
        x0 = {}
        for ptype in ["epsilon", "v_prediction"]:
            d = make("DDIMScheduler", cfg, prediction_type=ptype, clip_sample=False)
            d.set_timesteps(10)
            rows = [d.step(mout[b:b + 1], int(ts[b]), original[b:b + 1], return_dict=False)[1]
                    for b in range(4)]
            x0[ptype] = torch.cat(rows)
        tensors[f"{key}.x0_epsilon"] = f32(x0["epsilon"])
        tensors[f"{key}.x0_v"] = f32(x0["v_prediction"])
        a = alphas_cumprod_f64(cfg)[HELPER_TIMESTEPS].reshape(4, 1, 1, 1)
        o64, n64, m64 = (t.double().numpy() for t in (original, noise, mout))
        tensors[f"{key}.add_noise_f64"] = np.sqrt(a) * o64 + np.sqrt(1 - a) * n64
        tensors[f"{key}.velocity_f64"] = np.sqrt(a) * n64 - np.sqrt(1 - a) * o64
        tensors[f"{key}.x0_epsilon_f64"] = (o64 - np.sqrt(1 - a) * m64) / np.sqrt(a)
        tensors[f"{key}.x0_v_f64"] = np.sqrt(a) * o64 - np.sqrt(1 - a) * m64
        doc["helpers"].append({"config": name, "timesteps": HELPER_TIMESTEPS, "shape": list(hshape)})

    # sampling runs
    def add_run(rname, config, cls, steps, overrides, step_kwargs=None, stochastic=None):
        s = make(cls, CONFIGS[config], **overrides)
        samples, preds, noises = run_loop(s, steps, step_kwargs, stochastic)
        tensors[f"run.{rname}.samples"] = f32(samples)
        if steps <= 10 and preds is not None:  # keeps the file small; the samples of longer runs already check x̂₀
            tensors[f"run.{rname}.pred"] = f32(preds)
        if stochastic:
            tensors[f"run.{rname}.noise"] = f32(noises)
        if cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler") \
                and CONFIGS[config].get("beta_schedule") == "squaredcos_cap_v2":
            cfg = dict(CONFIGS[config], **overrides)
            exact = euler_run_f64(cfg, steps, s.timesteps.numpy(),
                                  noises if cls == "EulerAncestralDiscreteScheduler" else None)
            tensors[f"run.{rname}.samples_f64"] = exact
            gap = np.abs(samples.double().numpy() - exact) / np.maximum(1, np.abs(exact))
            print(f"  run {rname:40s} diffusers float32 vs float64 trajectory: {gap.max():.1e}")
        doc["runs"].append({"name": rname, "config": config, "scheduler": cls, "steps": steps,
                            "overrides": overrides, "step_kwargs": step_kwargs or {},
                            "stochastic": bool(stochastic),
                            "timesteps": [float(v) for v in s.timesteps.tolist()]})
        peak = float(samples.abs().max())
        print(f"  run {rname:40s} |x| max {peak:.3g}")

    for config in ["sd15", "sd2v", "testbed"]:
        for steps in [10, 25]:
            add_run(f"{config}.ddim.noclip.{steps}", config, "DDIMScheduler", steps, {"clip_sample": False})
            add_run(f"{config}.euler.{steps}", config, "EulerDiscreteScheduler", steps, {})
            if steps == 10 or config == "testbed":  # the testbed samples with DDIM 25, clipped
                add_run(f"{config}.ddim.clip.{steps}", config, "DDIMScheduler", steps, {"clip_sample": True})
                add_run(f"{config}.ddim.clip_clippedeps.{steps}", config, "DDIMScheduler", steps,
                        {"clip_sample": True}, {"use_clipped_model_output": True})
        add_run(f"{config}.ddim.eta.10", config, "DDIMScheduler", 10, {}, {"eta": 0.5}, "ddim")
        add_run(f"{config}.ddpm.fixed_small.10", config, "DDPMScheduler", 10,
                {"variance_type": "fixed_small"}, None, "ddpm")
        add_run(f"{config}.ddpm.fixed_small_log.10", config, "DDPMScheduler", 10,
                {"variance_type": "fixed_small_log"}, None, "ddpm")
    # PNDM (SD 1.x folders ship it), DPM-Solver and Euler ancestral.
    for config in ["sd15", "sd2v", "testbed", "linear_trailing"]:
        for steps in [10, 25]:
            add_run(f"{config}.pndm.plms.{steps}", config, "PNDMScheduler", steps, {"skip_prk_steps": True})
            add_run(f"{config}.dpm.2m.{steps}", config, "DPMSolverMultistepScheduler", steps, {})
            if config != "testbed":
                # The cosine schedule's Karras table repeats its first timestep (σ rises steeply
                # near t = 999), and diffusers' index_for_timestep then starts at the second
                # entry and runs off the table's end; its table is stored, its run cannot be.
                add_run(f"{config}.dpm.2m_karras.{steps}", config, "DPMSolverMultistepScheduler", steps,
                        {"use_karras_sigmas": True})
            add_run(f"{config}.euler_a.{steps}", config, "EulerAncestralDiscreteScheduler", steps, {},
                    None, "euler_a")
        add_run(f"{config}.pndm.prk.10", config, "PNDMScheduler", 10, {"skip_prk_steps": False})
        add_run(f"{config}.dpm.3m.20", config, "DPMSolverMultistepScheduler", 20, {"solver_order": 3})
        add_run(f"{config}.dpm.1.10", config, "DPMSolverMultistepScheduler", 10, {"solver_order": 1})
        add_run(f"{config}.dpm.2m_heun_sigma_min.10", config, "DPMSolverMultistepScheduler", 10,
                {"solver_type": "heun", "final_sigmas_type": "sigma_min"})
        add_run(f"{config}.dpm.2m_no_lower_final_sigma_min.10", config, "DPMSolverMultistepScheduler", 10,
                {"lower_order_final": False, "final_sigmas_type": "sigma_min"})
        add_run(f"{config}.dpm.dpmsolver_3m_sigma_min.20", config, "DPMSolverMultistepScheduler", 20,
                {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min",
                 "solver_type": "heun"})
        add_run(f"{config}.dpm.2m_euler_final_sigma_min.20", config, "DPMSolverMultistepScheduler", 20,
                {"euler_at_final": True, "final_sigmas_type": "sigma_min"})
    add_run("sd15.pndm.prk_v.10", "sd15", "PNDMScheduler", 10,
            {"skip_prk_steps": False, "prediction_type": "v_prediction"})
    add_run("cos_linspace_sample.dpm.2m.10", "cos_linspace_sample", "DPMSolverMultistepScheduler", 10, {})
    add_run("cos_linspace_sample.dpm.2m_clipped.10", "cos_linspace_sample", "DPMSolverMultistepScheduler", 10,
            {"lambda_min_clipped": -5.1})
    add_run("linear_trailing.ddim.noclip.10", "linear_trailing", "DDIMScheduler", 10, {})
    add_run("linear_trailing.euler.10", "linear_trailing", "EulerDiscreteScheduler", 10, {})
    add_run("cos_linspace_sample.ddim.clip.10", "cos_linspace_sample", "DDIMScheduler", 10, {})
    add_run("cos_linspace_sample.euler.25", "cos_linspace_sample", "EulerDiscreteScheduler", 25, {})

    st_path = os.path.join(args.out_dir, "schedulers.safetensors")
    save_file({k: tensors[k] for k in sorted(tensors)}, st_path,
              metadata={"generator": "tools/make_scheduler_fixtures.py"})
    js_path = os.path.join(args.out_dir, "schedulers.json")
    with open(js_path, "w") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    for p in (st_path, js_path):
        print(f"wrote {os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
