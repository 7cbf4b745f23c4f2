#!/usr/bin/env python3
"""Reference runs of diffusers' StableDiffusionPipeline on tiny models, for the Swift pipeline.

The pipeline is assembled from the existing tiny fixtures plus one new UNet:

    text_encoder/, tokenizer/   Tests/DiffusionTests/Fixtures/text/clip_sd1/  (CLIP, hidden 32)
    vae/                        Tests/DiffusionTests/Fixtures/vae/  (config.json + weights; 4 latent
                                channels, downscale 2)
    unet/                       NEW: the unet_sd1 architecture with cross_attention_dim 32 (the
                                CLIP fixture's width; unet_sd1 itself has 24), random weights, F16
    scheduler/                  NEW: SD's DDIM config (scaled_linear 0.00085-0.012, steps_offset 1,
                                set_alpha_to_one false, clip_sample false)
    model_index.json            NEW: written by diffusers (StableDiffusionPipeline.save_config)

Only the new parts are written to Tests/DiffusionTests/Fixtures/pipeline/ (unet/, scheduler/,
model_index.json) with the references; the Swift tests (and this script) copy the shared parts
next to them in a temporary folder.

    reference.safetensors   per case <case>.noise (the standard-normal initial latents passed in
                            explicitly, as `latents=`), <case>.latents (the final latents,
                            output_type="latent"), <case>.images (vae.decode(latents /
                            scaling_factor) clamped to [-1, 1])
    cases.json              per case: prompts, negative_prompt, guidance, steps, scheduler class

The reference is computed in float64 (the whole pipeline moved to torch.float64) from exactly the
stored weights and noise; everything is saved as F32. Byte-reproducible; no hub access.

Run:  .venv-tools/bin/python tools/make_pipeline_fixture.py
"""
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_diffusion_model_fixtures import UNET_SD1, randomize  # noqa: E402

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures")
OUT = os.path.join(FIXTURES, "pipeline")

UNET = dict(UNET_SD1, cross_attention_dim=32)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1)

CASES = [
    dict(name="ddim_cfg", prompts=["a photo of a cat", "a dog on the grass"], negative_prompt="",
         guidance=7.5, steps=4, scheduler="DDIMScheduler"),
    dict(name="ddim_conditional", prompts=["a red bird"], negative_prompt="", guidance=1.0, steps=3,
         scheduler="DDIMScheduler"),
    dict(name="euler_negative", prompts=["the quick brown fox"], negative_prompt="blurry", guidance=5.0, steps=3,
         scheduler="EulerDiscreteScheduler"),
    # SD 1.x folders ship PNDM with skip_prk_steps; DPM-Solver++ 2M with Karras sigmas.
    dict(name="pndm_plms", prompts=["a photo of a cat", "a red bird"], negative_prompt="", guidance=7.5, steps=5,
         scheduler="PNDMScheduler", scheduler_overrides={"skip_prk_steps": True}),
    dict(name="dpm_karras", prompts=["a dog on the grass"], negative_prompt="blurry", guidance=6.0, steps=5,
         scheduler="DPMSolverMultistepScheduler", scheduler_overrides={"use_karras_sigmas": True}),
]
SCHEDULER_CLASSES = {"DDIMScheduler": DDIMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler,
                     "PNDMScheduler": PNDMScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}


def assemble(folder):
    """The full pipeline folder: the new parts from OUT, the shared ones from the other fixtures."""
    for part in ["unet", "scheduler"]:
        shutil.copytree(os.path.join(OUT, part), os.path.join(folder, part))
    shutil.copy(os.path.join(OUT, "model_index.json"), folder)
    for part in ["text_encoder", "tokenizer"]:
        shutil.copytree(os.path.join(FIXTURES, "text", "clip_sd1", part), os.path.join(folder, part))
    os.makedirs(os.path.join(folder, "vae"))
    for name in ["config.json", "diffusion_pytorch_model.safetensors"]:
        shutil.copy(os.path.join(FIXTURES, "vae", name), os.path.join(folder, "vae"))


def write_new_parts():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    unet = UNet2DConditionModel(**UNET)
    randomize(unet, gen)
    unet_dir = os.path.join(OUT, "unet")
    unet.save_config(unet_dir)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
    save_file(state, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    DDIMScheduler(**SCHEDULER).save_config(os.path.join(OUT, "scheduler"))

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(FIXTURES, "vae")),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(FIXTURES, "text", "clip_sd1", "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(FIXTURES, "text", "clip_sd1", "tokenizer")),
        unet=unet, scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_config(OUT)


def run_cases(folder):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(torch.float64)
    latent_channels = pipe.unet.config.in_channels
    size = pipe.unet.config.sample_size
    reference = {}
    gen = torch.Generator().manual_seed(12)
    for case in CASES:
        name = case["name"]
        config = dict(pipe.scheduler.config, **case.get("scheduler_overrides", {}))
        pipe.scheduler = SCHEDULER_CLASSES[case["scheduler"]].from_config(config)
        noise = torch.randn((len(case["prompts"]), latent_channels, size, size), generator=gen).float()
        with torch.no_grad():
            latents = pipe(case["prompts"], negative_prompt=[case["negative_prompt"]] * len(case["prompts"]),
                           num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                           latents=noise.double(), output_type="latent").images
            images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
        reference[name + ".noise"] = noise
        reference[name + ".latents"] = latents.float().contiguous()
        reference[name + ".images"] = images.float().contiguous()
    return reference


def main():
    write_new_parts()
    with tempfile.TemporaryDirectory() as folder:
        assemble(folder)
        reference = run_cases(folder)
    save_file(reference, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(CASES, f, indent=2, sort_keys=True)
        f.write("\n")
    for key, value in sorted(reference.items()):
        print(f"{key:32s} {tuple(value.shape)} max|x| {value.abs().max().item():.4f}")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
