#!/usr/bin/env python3
"""Parity fixtures for the Swift FluxTransformer2DModel and FlowMatchEulerDiscreteScheduler.

Builds RANDOM TINY diffusers FLUX transformers from configs (no hub access), with a fixed seed,
and writes under Tests/DiffusionTests/Fixtures/flux/:

  <model>/config.json                          written by diffusers' save_config
  <model>/diffusion_pytorch_model.safetensors  the weights (F16), diffusers key names
  <model>/io.safetensors                       inputs, outputs, upstream gradient, gradients
  scheduler.json                               FlowMatchEulerDiscreteScheduler tables
  scheduler.safetensors                        scale_noise cases and a whole sampling loop

Models (both: several double and single blocks, odd head counts, non-square token grids):
  flux_plain    3 heads x 8 (axes_dims_rope [2, 2, 4]), 2 double + 3 single blocks, no guidance
                embedding, in_channels 16 (4 latent channels packed 2x2), out_channels 20 (so
                proj_out differs from x_embedder), latent 6x10 -> 3x5
                tokens, 5 text tokens with FLUX's zero text ids, batch 2 with two timesteps.
  flux_guided   5 heads x 6 (axes [2, 2, 2]), 2 double + 2 single blocks, guidance_embeds,
                in_channels 8, latent 8x4 -> 4x2 tokens, 7 text tokens with nonzero text ids (exercises their
                rotary angles), batch 2 with two guidance scales.

Every parameter is random (RMSNorm scales around 1). The reference is computed in float64
(model.double()) from exactly the stored F16 weights and the stored float32 inputs; everything
is saved as F32.

io.safetensors keys: hidden_states [B,N,C] (packed with diffusers' _pack_latents from `latents`),
latents [B,c,H,W], encoder_hidden_states [B,M,D], pooled_projections [B,P], timestep [B] (sigma
in [0,1] as the FLUX pipeline passes it), guidance [B] (flux_guided), img_ids [N,3] (diffusers'
_prepare_latent_image_ids), txt_ids [M,3], rope_cos / rope_sin [M+N, head_dim] (FluxPosEmbed),
temb [B, inner] (time_text_embed output), out, gout, unpacked [B,c',H,W] (_unpack_latents of
out), grad.hidden_states, grad.encoder_hidden_states, grad.pooled_projections (of
sum(out*gout)), param_grad.<name> for a few parameters.

scheduler.json: configs (scheduler_config.json dictionaries), and cases: per config and step
count the timesteps and sigmas of set_timesteps(n) (plain, for static shifting) and of the FLUX
pipeline's call set_timesteps(sigmas=linspace(1, 1/n, n), mu=calculate_shift(seq_len, ...)) for
several image sequence lengths; calculate_shift values. Sigmas and timesteps are float32 values
written as exact decimals.

scheduler.safetensors: scale_noise.{sample,noise,out} (per-sample timesteps listed in the JSON)
and loop.* : a whole FLUX sampling loop in float32 with flux_guided as the fixed model (6 steps,
guidance 3.5, FLUX scheduler config, mu from the token count): loop.latents (initial packed),
loop.step<i> (latents after each step), loop.final.

pipeline.safetensors / pipeline.json: diffusers' FluxPipeline itself (vae and text encoders
None; prompt_embeds, pooled_prompt_embeds and their negatives passed in; output_type="latent")
over flux_guided in float32, from fixed latents, for each case of PIPELINE_CASES: <case>.latents
[B,c,h,w] (packed with _pack_latents and passed as `latents`), <case>.prompt_embeds,
<case>.pooled_prompt_embeds, <case>.negative_prompt_embeds, <case>.negative_pooled_prompt_embeds
(row 0, used for every image), <case>.final (the packed output) and <case>.unpacked [B,c,h,w].
pipeline.json lists per case steps, true_cfg_scale, guidance_scale, batch and the timesteps.

Run:  .venv-tools/bin/python tools/make_flux_fixtures.py [--out-dir DIR] [--pipeline-only]
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save_file
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures", "flux")

MODELS = {
    "flux_plain": dict(
        config=dict(patch_size=1, in_channels=16, out_channels=20, num_layers=2, num_single_layers=3, attention_head_dim=8,
                    num_attention_heads=3, joint_attention_dim=12, pooled_projection_dim=10,
                    guidance_embeds=False, axes_dims_rope=[2, 2, 4]),
        latent=(4, 6, 10), text=5, timesteps=[0.93, 0.27], guidance=None, text_ids="zeros",
        param_grads=["x_embedder.weight", "transformer_blocks.0.attn.norm_added_q.weight",
                     "transformer_blocks.1.attn.to_k.weight", "transformer_blocks.1.ff_context.net.0.proj.weight",
                     "single_transformer_blocks.2.proj_out.weight", "single_transformer_blocks.0.attn.norm_k.weight",
                     "time_text_embed.timestep_embedder.linear_1.weight", "norm_out.linear.weight"],
    ),
    "flux_guided": dict(
        config=dict(patch_size=1, in_channels=8, num_layers=2, num_single_layers=2,
                    attention_head_dim=6, num_attention_heads=5, joint_attention_dim=9, pooled_projection_dim=7,
                    guidance_embeds=True, axes_dims_rope=[2, 2, 2]),
        latent=(2, 8, 4), text=7, timesteps=[0.5, 0.5], guidance=[3.5, 1.0], text_ids="random",
        param_grads=["context_embedder.weight", "time_text_embed.guidance_embedder.linear_1.weight",
                     "time_text_embed.text_embedder.linear_2.weight", "transformer_blocks.0.norm1_context.linear.weight",
                     "single_transformer_blocks.1.attn.to_v.bias", "proj_out.weight"],
    ),
}

SCHEDULER_CONFIGS = {
    # FLUX.1-dev's scheduler/scheduler_config.json
    "flux": {"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
             "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": True},
    # SD3's
    "sd3": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
    "defaults": {},
    "linear_terminal": {"use_dynamic_shifting": True, "time_shift_type": "linear", "shift_terminal": 0.1,
                        "base_shift": 0.3, "max_shift": 1.5, "num_train_timesteps": 500},
}
STEPS = [1, 4, 7, 28, 50]
SEQ_LENS = [15, 256, 1024, 4096, 6000]


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm_added" in name:
                p.copy_(1 + 0.25 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def make_model(name, spec, out_dir, seed):
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = spec["config"]
    model = FluxTransformer2DModel(**config)
    randomize(model, gen)
    model.save_config(folder)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    with torch.no_grad():
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    model = model.double().eval()

    c, h, w = spec["latent"]
    batch = len(spec["timesteps"])
    latents = torch.randn((batch, c, h, w), generator=gen).float()
    hidden = FluxPipeline._pack_latents(latents, batch, c, h, w)
    text = torch.randn((batch, spec["text"], config["joint_attention_dim"]), generator=gen).float()
    pooled = torch.randn((batch, config["pooled_projection_dim"]), generator=gen).float()
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, "cpu", torch.float32)
    if spec["text_ids"] == "zeros":
        txt_ids = torch.zeros(spec["text"], 3)
    else:
        txt_ids = torch.randint(0, 9, (spec["text"], 3), generator=gen).float()
    t = torch.tensor(spec["timesteps"], dtype=torch.float32)
    guidance = None if spec["guidance"] is None else torch.tensor(spec["guidance"], dtype=torch.float32)

    h64, text64, pooled64 = (x.double().requires_grad_(True) for x in (hidden, text, pooled))
    out = model(hidden_states=h64, encoder_hidden_states=text64, pooled_projections=pooled64, timestep=t,
                img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
    gout = torch.randn(out.shape, generator=gen, dtype=torch.float64).float().double()
    (out * gout).sum().backward()

    with torch.no_grad():
        cos, sin = model.pos_embed(torch.cat([txt_ids, img_ids], dim=0))
        if guidance is None:
            temb = model.time_text_embed(t.double() * 1000, pooled.double())
        else:
            temb = model.time_text_embed(t.double() * 1000, guidance.double() * 1000, pooled.double())
    vae_scale = 8  # _unpack_latents takes image pixels: latent size times the VAE factor
    unpacked = FluxPipeline._unpack_latents(out.detach(), h * vae_scale, w * vae_scale, vae_scale)

    io = {
        "latents": latents, "hidden_states": hidden.contiguous(), "encoder_hidden_states": text,
        "pooled_projections": pooled, "timestep": t, "img_ids": img_ids.contiguous(), "txt_ids": txt_ids,
        "rope_cos": f32(cos), "rope_sin": f32(sin), "temb": f32(temb), "out": f32(out), "gout": f32(gout),
        "unpacked": f32(unpacked),
        "grad.hidden_states": f32(h64.grad), "grad.encoder_hidden_states": f32(text64.grad),
        "grad.pooled_projections": f32(pooled64.grad),
    }
    if guidance is not None:
        io["guidance"] = guidance
    params = dict(model.named_parameters())
    for p in spec["param_grads"]:
        io["param_grad." + p] = f32(params[p].grad)
    save_file(io, os.path.join(folder, "io.safetensors"))


def floats(t):
    return [float(x) for x in np.asarray(t, dtype=np.float32)]


def make_scheduler(out_dir, seed):
    cases = []
    for name, cfg in SCHEDULER_CONFIGS.items():
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        for n in STEPS:
            if n == 1 and cfg.get("shift_terminal"):
                continue  # diffusers divides 0 by 0 here (the only sigma is 1); Swift refuses it
            if not sched.config.use_dynamic_shifting:
                sched.set_timesteps(n)
                cases.append({"config": name, "steps": n, "kind": "plain",
                              "timesteps": floats(sched.timesteps), "sigmas": floats(sched.sigmas)})
            for seq in SEQ_LENS:
                mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256),
                                     sched.config.get("max_image_seq_len", 4096),
                                     sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.15))
                sigmas = np.linspace(1.0, 1 / n, n)
                sched.set_timesteps(sigmas=sigmas, mu=mu)
                cases.append({"config": name, "steps": n, "kind": "flux", "image_seq_len": seq, "mu": mu,
                              "timesteps": floats(sched.timesteps), "sigmas": floats(sched.sigmas)})
    shifts = [{"image_seq_len": s, "mu": calculate_shift(s)} for s in SEQ_LENS]

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    # scale_noise at per-sample timesteps of a FLUX schedule
    sched = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIGS["flux"])
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 7, 7), mu=calculate_shift(15))
    picks = [0, 3, 6]
    ts = sched.timesteps[picks]
    sample = torch.randn((3, 4, 2, 2), generator=gen)
    noise = torch.randn((3, 4, 2, 2), generator=gen)
    tensors["scale_noise.sample"], tensors["scale_noise.noise"] = sample, noise
    tensors["scale_noise.out"] = sched.scale_noise(sample, ts, noise)
    scale_noise_case = {"steps": 7, "image_seq_len": 15, "timesteps": floats(ts), "indices": picks}

    # a whole FLUX sampling loop in float32 with the guided tiny model as the fixed model
    folder = os.path.join(out_dir, "flux_guided")
    model = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    spec = MODELS["flux_guided"]
    c, h, w = spec["latent"]
    io_text = torch.randn((1, spec["text"], model.config.joint_attention_dim), generator=gen)
    io_pooled = torch.randn((1, model.config.pooled_projection_dim), generator=gen)
    latents = FluxPipeline._pack_latents(torch.randn((1, c, h, w), generator=gen), 1, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(spec["text"], 3)
    steps, guidance_scale = 6, 3.5
    seq = latents.shape[1]
    mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256), sched.config.get("max_image_seq_len", 4096),
                         sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.15))
    sched = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIGS["flux"])
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    tensors["loop.encoder_hidden_states"], tensors["loop.pooled_projections"] = io_text, io_pooled
    tensors["loop.latents"] = latents.contiguous()
    guidance = torch.full([1], guidance_scale, dtype=torch.float32)
    x = latents
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            timestep = t.expand(x.shape[0]).to(x.dtype)
            v = model(hidden_states=x, timestep=timestep / 1000, guidance=guidance, pooled_projections=io_pooled,
                      encoder_hidden_states=io_text, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
            x = sched.step(v, t, x, return_dict=False)[0]
            tensors[f"loop.step{i}"] = x.contiguous()
    tensors["loop.final"] = x.clone().contiguous()
    loop_case = {"steps": steps, "guidance": guidance_scale, "image_seq_len": seq, "mu": mu,
                 "timesteps": floats(sched.timesteps), "sigmas": floats(sched.sigmas)}

    save_file({k: f32(v) for k, v in tensors.items()}, os.path.join(out_dir, "scheduler.safetensors"))
    with open(os.path.join(out_dir, "scheduler.json"), "w") as f:
        json.dump({"configs": SCHEDULER_CONFIGS, "cases": cases, "calculate_shift": shifts,
                   "scale_noise": scale_noise_case, "loop": loop_case}, f, indent=1, sort_keys=True)
        f.write("\n")


# true CFG with a negative prompt (two passes per step) and embedded guidance, and neither
PIPELINE_CASES = {
    "cfg": dict(steps=4, true_cfg_scale=2.5, guidance_scale=3.5, batch=2),
    "plain": dict(steps=3, true_cfg_scale=1.0, guidance_scale=2.0, batch=1),
}


def make_pipeline(out_dir, seed):
    folder = os.path.join(out_dir, "flux_guided")
    transformer = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIGS["flux"])
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    spec = MODELS["flux_guided"]
    c, h, w = spec["latent"]
    gen = torch.Generator().manual_seed(seed)
    tensors, cases = {}, {}
    for name, case in PIPELINE_CASES.items():
        b = case["batch"]
        latents = torch.randn((b, c, h, w), generator=gen)
        embeds = torch.randn((b, spec["text"], transformer.config.joint_attention_dim), generator=gen)
        pooled = torch.randn((b, transformer.config.pooled_projection_dim), generator=gen)
        negative = torch.randn((1, spec["text"], transformer.config.joint_attention_dim), generator=gen)
        negative_pooled = torch.randn((1, transformer.config.pooled_projection_dim), generator=gen)
        with torch.no_grad():
            final = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                         negative_prompt_embeds=negative.expand(b, -1, -1), negative_pooled_prompt_embeds=negative_pooled.expand(b, -1),
                         true_cfg_scale=case["true_cfg_scale"], guidance_scale=case["guidance_scale"],
                         num_inference_steps=case["steps"], height=h * pipe.vae_scale_factor, width=w * pipe.vae_scale_factor,
                         latents=FluxPipeline._pack_latents(latents, b, c, h, w), output_type="latent", return_dict=False)[0]
        unpacked = FluxPipeline._unpack_latents(final, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)
        for key, value in [("latents", latents), ("prompt_embeds", embeds), ("pooled_prompt_embeds", pooled),
                           ("negative_prompt_embeds", negative), ("negative_pooled_prompt_embeds", negative_pooled),
                           ("final", final), ("unpacked", unpacked)]:
            tensors[f"{name}.{key}"] = f32(value)
        cases[name] = dict(case, timesteps=floats(pipe.scheduler.timesteps))
    save_file(tensors, os.path.join(out_dir, "pipeline.safetensors"))
    with open(os.path.join(out_dir, "pipeline.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=DEFAULT_OUT)
    parser.add_argument("--pipeline-only", action="store_true",
                        help="only (re)write pipeline.*, from the flux_guided model already in --out-dir")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.pipeline_only:
        for i, (name, spec) in enumerate(MODELS.items()):
            make_model(name, spec, args.out_dir, seed=100 + i)
        make_scheduler(args.out_dir, seed=7)
    make_pipeline(args.out_dir, seed=11)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out_dir) for f in fs)
    print(f"wrote {args.out_dir} ({total / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
