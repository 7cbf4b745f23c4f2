#!/usr/bin/env python3
"""Checks the files Swift's Saving.swift writes with diffusers, transformers and PEFT.

First let the Swift test write them (an edited tiny UNet from Fixtures/unet_sd1, a LoRA for the
UNet and the tiny CLIP text encoder, and Swift's outputs on fixed inputs):

    SCORE_EXPORT_DIR=/tmp/score-export swift test -c release --filter SavingTests.testExportForDiffusers

then run (the venv needs `python -m pip install peft`):

    .venv-tools/bin/python tools/verify_saving.py /tmp/score-export

Checks, each printed with its error:
  1. unet_f32/, unet_f16/: UNet2DConditionModel.from_pretrained loads them with no missing or
     unexpected keys, and its output equals Swift's output of the edited UNet (out_edited);
     text_encoder/: transformers' CLIPTextModel.from_pretrained loads it, same hidden states.
  2. unet_changed.safetensors: loaded over the base UNet with load_state_dict(strict=False)
     (no unexpected keys), the output equals out_edited.
  3. pytorch_lora_weights.safetensors:
     a. StableDiffusionPipeline.load_lora_weights accepts it (UNet and text encoder), with the
        ranks / scales of the metadata; the UNet's output with the adapter equals Swift's
        LoRA.merge output (out_merged), and again after pipe.fuse_lora();
     b. PEFT: LoraConfig from the metadata, inject_adapter_in_model, set_peft_model_state_dict
        with no unexpected keys; same output;
     c. the text encoder's LoRA: the adapter sits on the module named in the file, with scale alpha/r.
Exits non-zero on any failure.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
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


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def run(unet, io):
    with torch.no_grad():
        return unet(io["sample"], io["timestep"], encoder_hidden_states=io["encoder_hidden_states"]).sample


def main(export):
    io = load_file(os.path.join(export, "swift_outputs.safetensors"))

    # 1. Full folders.
    for name, tol in [("unet_f32", 1e-5), ("unet_f16", 5e-3)]:
        unet, info = UNet2DConditionModel.from_pretrained(os.path.join(export, name), output_loading_info=True)
        unet = unet.float().eval()
        keys_ok = not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        check(f"{name}: from_pretrained keys", keys_ok, str({k: v for k, v in info.items() if v}))
        err = rel(run(unet, io), io["out_edited"])
        check(f"{name}: output vs Swift", err < tol, f"rel err {err:.2e}")

    # 1b. The CLIP text-encoder folder (transformers).
    clip, info = CLIPTextModel.from_pretrained(os.path.join(export, "text_encoder"), output_loading_info=True)
    keys_ok = not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    check("text_encoder: CLIPTextModel.from_pretrained keys", keys_ok, str({k: v for k, v in info.items() if v}))
    with torch.no_grad():
        states = clip.eval()(io["clip_input_ids"].long()).last_hidden_state
    err = rel(states, io["clip_out"])
    check("text_encoder: hidden states vs Swift", err < 1e-5, f"rel err {err:.2e}")

    # 2. Changed tensors over the base model.
    base = UNet2DConditionModel.from_pretrained(os.path.join(FIXTURES, "unet_sd1")).float().eval()
    changed = load_file(os.path.join(export, "unet_changed.safetensors"))
    result = base.load_state_dict(changed, strict=False)
    check("unet_changed: keys", not result.unexpected_keys, f"{len(changed)} tensors: {sorted(changed)}")
    err = rel(run(base, io), io["out_edited"])
    check("unet_changed: output vs Swift", err < 1e-5, f"rel err {err:.2e}")

    # 3. LoRA.
    lora_file = os.path.join(export, "pytorch_lora_weights.safetensors")
    with safe_open(lora_file, "pt") as f:
        metadata = f.metadata()
    adapter = json.loads(metadata["lora_adapter_metadata"])
    print("     lora_adapter_metadata:", json.dumps(adapter, sort_keys=True))

    def pipeline():
        clip = os.path.join(FIXTURES, "text", "clip_sd1")
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL.from_pretrained(os.path.join(FIXTURES, "vae")),
            text_encoder=CLIPTextModel.from_pretrained(os.path.join(clip, "text_encoder")),
            tokenizer=CLIPTokenizer.from_pretrained(os.path.join(clip, "tokenizer")),
            unet=UNet2DConditionModel.from_pretrained(os.path.join(FIXTURES, "unet_sd1")).float(),
            scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # a. diffusers' loader.
    pipe = pipeline()
    pipe.load_lora_weights(export, weight_name="pytorch_lora_weights.safetensors", adapter_name="swift")
    unet = pipe.unet.eval()
    lora_layers = {n: m for n, m in unet.named_modules() if hasattr(m, "lora_A") and "swift" in m.lora_A}
    expected_unet = sorted(adapter["unet.target_modules"])
    check("load_lora_weights: UNet modules", sorted(lora_layers) == expected_unet, str(sorted(lora_layers)))
    scales = {n: (m.r["swift"], m.scaling["swift"]) for n, m in lora_layers.items()}
    print("     UNet (rank, scale):", scales)
    ranks_ok = all(r == adapter["unet.rank_pattern"].get(n, adapter["unet.r"]) and
                   abs(s - adapter["unet.alpha_pattern"].get(n, adapter["unet.lora_alpha"]) / r) < 1e-6
                   for n, (r, s) in scales.items())
    check("load_lora_weights: UNet ranks and scales", ranks_ok)
    err = rel(run(unet, io), io["out_merged"])
    check("load_lora_weights: UNet output vs Swift LoRA.merge", err < 1e-5, f"rel err {err:.2e}")
    te_layers = {n: (m.r["swift"], m.scaling["swift"]) for n, m in pipe.text_encoder.named_modules()
                 if hasattr(m, "lora_A") and "swift" in m.lora_A}
    check("load_lora_weights: text encoder modules",
          sorted(te_layers) == sorted(adapter["text_encoder.target_modules"]), str(te_layers))
    check("load_lora_weights: text encoder scale alpha/r",
          all(abs(s - adapter["text_encoder.lora_alpha"] / r) < 1e-6 for r, s in te_layers.values()))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    err = rel(run(pipe.unet.eval(), io), io["out_merged"])
    check("fuse_lora: UNet output vs Swift LoRA.merge", err < 1e-5, f"rel err {err:.2e}")

    # b. PEFT directly.
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    config = LoraConfig(**{k[len("unet."):]: v for k, v in adapter.items() if k.startswith("unet.")})
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIXTURES, "unet_sd1")).float().eval()
    unet = inject_adapter_in_model(config, unet, adapter_name="default")
    state = {k[len("unet."):]: v for k, v in load_file(lora_file).items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", [])
    check("PEFT set_peft_model_state_dict: keys", not unexpected, str(unexpected))
    err = rel(run(unet, io), io["out_merged"])
    check("PEFT: UNet output vs Swift LoRA.merge", err < 1e-5, f"rel err {err:.2e}")

    print("all checks passed" if not failures else f"{len(failures)} FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/score-export"))
