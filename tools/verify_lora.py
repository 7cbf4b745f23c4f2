#!/usr/bin/env python3
"""Checks the LoRA files Swift's exporter writes with diffusers, and writes the fixtures that let
CI check the same without torch.

First let Swift write them (the tiny SD1 UNet fixture with one module of every kind fine-tuned,
exported at rank 4, alpha r/2, as peft.safetensors and kohya.safetensors):

    SCORE_LORA_FIXTURES=/tmp/score-lora swift test -c release --filter LoRAFixtureTests.testWriteFixtures

then (the venv needs diffusers, transformers and peft: `.venv-tools/bin/python -m pip install
diffusers transformers peft`):

    .venv-tools/bin/python tools/verify_lora.py /tmp/score-lora [--write-fixtures]

For each layout, a StableDiffusionPipeline over Tests/DiffusionTests/Fixtures (unet_sd1, vae,
text/clip_sd1) runs `load_lora_weights` (the kohya file goes through diffusers' own kohya
converter) and checks:
  1. an adapter sits on exactly the modules the file names, each with scale alpha/r = 0.5 (the
     fixture stores alpha = r/2 with B doubled, to check that each layout's alpha is read);
  2. the UNet's output with the adapter equals its output after `fuse_lora()`.
With --write-fixtures, copies both files into Tests/DiffusionTests/Fixtures/lora/ and writes
diffusers_<layout>.safetensors there: the fused weight of every adapted module and the fused
UNet's output on unet_sd1/io.safetensors. LoRAParityTests compares Swift's merge with them.
Exits non-zero on any failure.
"""
import os
import shutil
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures")
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        failures.append(name)


def pipeline():
    clip = os.path.join(FIXTURES, "text", "clip_sd1")
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(FIXTURES, "vae")),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(clip, "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(clip, "tokenizer")),
        unet=UNet2DConditionModel.from_pretrained(os.path.join(FIXTURES, "unet_sd1")).float(),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(unet, io):
    with torch.no_grad():
        return unet(io["sample"], io["timestep"], encoder_hidden_states=io["encoder_hidden_states"]).sample


def expected_modules(path, layout):
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
    if layout == "peft":
        return sorted(k[len("unet."):-len(".lora_A.weight")] for k in keys if k.endswith(".lora_A.weight"))
    return sorted(k[:-len(".lora_down.weight")] for k in keys if k.endswith(".lora_down.weight"))


def main(export, write):
    io = load_file(os.path.join(FIXTURES, "unet_sd1", "io.safetensors"))
    out_dir = os.path.join(FIXTURES, "lora")
    if write:
        os.makedirs(out_dir, exist_ok=True)
    for layout in ["peft", "kohya"]:
        name = f"{layout}.safetensors"
        path = os.path.join(export, name)
        pipe = pipeline()
        pipe.load_lora_weights(export, weight_name=name, adapter_name="swift")
        unet = pipe.unet.eval()
        adapted = {n: m for n, m in unet.named_modules() if hasattr(m, "lora_A") and "swift" in m.lora_A}
        wanted = expected_modules(path, layout)
        if layout == "peft":
            check(f"{layout}: adapters on the file's modules", sorted(adapted) == wanted,
                  f"{len(adapted)} adapted, {len(wanted)} in the file")
        else:
            # kohya names flatten the module path: compare flattened.
            flat = sorted("lora_unet_" + n.replace(".", "_") for n in adapted)
            check(f"{layout}: adapters on the file's modules (diffusers' kohya converter)", flat == wanted,
                  f"{len(adapted)} adapted, {len(wanted)} in the file; missing {sorted(set(wanted) - set(flat))}")
        scales = {m.scaling["swift"] for m in adapted.values()}
        # The fixture stores alpha = r/2 (with B doubled): the scale must come from the file.
        check(f"{layout}: scale alpha/r = 0.5", scales == {0.5}, str(scales))
        with_adapter = run(unet, io)
        pipe.fuse_lora(adapter_names=["swift"])
        pipe.unload_lora_weights()
        unet = pipe.unet.eval()
        fused = run(unet, io)
        err = ((with_adapter - fused).abs().max() / fused.abs().max()).item()
        check(f"{layout}: output with the adapter equals the fused output", err < 1e-5, f"rel err {err:.2e}")
        base = UNet2DConditionModel.from_pretrained(os.path.join(FIXTURES, "unet_sd1")).float().eval()
        change = ((fused - run(base, io)).abs().max() / fused.abs().max()).item()
        check(f"{layout}: the LoRA changes the output", change > 1e-3, f"rel change {change:.2e}")
        if write:
            state = unet.state_dict()
            tensors = {f"{n}.weight": state[f"{n}.weight"].contiguous() for n in adapted}
            tensors["out"] = fused.contiguous()
            save_file(tensors, os.path.join(out_dir, f"diffusers_{layout}.safetensors"),
                      metadata={"format": "pt", "diffusers": __import__("diffusers").__version__})
            shutil.copyfile(path, os.path.join(out_dir, name))
            print(f"     wrote {out_dir}/diffusers_{layout}.safetensors and {name}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    main(args[0], "--write-fixtures" in sys.argv)
