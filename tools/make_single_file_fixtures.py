#!/usr/bin/env python3
"""Tiny SD 1.x- and 2.x-like single-file checkpoints (the original CompVis/Stability layout), for
the Swift single-file loader and writer.

Two tiny diffusers pipelines:

    sd1   the pipeline fixture of make_pipeline_fixture.py (Fixtures/pipeline + text/clip_sd1 + vae):
          CLIP text model (quick GELU), conv proj_in/out
    sd2   NEW: the unet_sd2 architecture (linear proj_in/out, 1/2/1 transformer layers) with
          cross_attention_dim 32, random weights (stored F16, as the sd1 UNet); text/clip_sd2 (GELU, OpenCLIP in the file);
          the shared vae; a DDIM v-prediction scheduler config

Each pipeline's diffusers weights are written in the original layout by the inverse of diffusers'
conversion (as diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py does: the
VAE's mid-block attention as 1x1 convolutions, OpenCLIP's q/k/v fused into in_proj), to
Tests/DiffusionTests/Fixtures/single_file/<name>.safetensors, dtypes as stored. The script then
loads every file with diffusers' own `StableDiffusionPipeline.from_single_file(file, config=folder)`
and checks that each component's state dict equals the folder's bit for bit, so the files are
what diffusers reads as those models. Only the sd2 parts that are new (unet/, scheduler/,
model_index.json) are written under single_file/sd2/; the Swift tests assemble the folders the
same way as `assemble` here.

Run:  .venv-tools/bin/python tools/make_single_file_fixtures.py
"""
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_diffusion_model_fixtures import UNET_SD2, randomize  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures")
OUT = os.path.join(FIXTURES, "single_file")

SD2_UNET = dict(UNET_SD2, cross_attention_dim=32)
SD2_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")


def assemble(name, folder):
    """The diffusers folder of pipeline `name` (sd1 or sd2) from the committed fixtures."""
    text = "clip_sd1" if name == "sd1" else "clip_sd2"
    new = os.path.join(FIXTURES, "pipeline") if name == "sd1" else os.path.join(OUT, "sd2")
    for part in ["unet", "scheduler"]:
        shutil.copytree(os.path.join(new, part), os.path.join(folder, part))
    shutil.copy(os.path.join(new, "model_index.json"), folder)
    for part in ["text_encoder", "tokenizer"]:
        shutil.copytree(os.path.join(FIXTURES, "text", text, part), os.path.join(folder, part))
    os.makedirs(os.path.join(folder, "vae"))
    for file in ["config.json", "diffusion_pytorch_model.safetensors"]:
        shutil.copy(os.path.join(FIXTURES, "vae", file), os.path.join(folder, "vae"))


def write_sd2_parts():
    folder = os.path.join(OUT, "sd2")
    shutil.rmtree(folder, ignore_errors=True)
    gen = torch.Generator().manual_seed(25)
    unet = UNet2DConditionModel(**SD2_UNET)
    randomize(unet, gen)
    unet.save_config(os.path.join(folder, "unet"))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
    save_file(state, os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    DDIMScheduler(**SD2_SCHEDULER).save_config(os.path.join(folder, "scheduler"))
    index = json.load(open(os.path.join(FIXTURES, "pipeline", "model_index.json")))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


# --- diffusers -> original names (the inverse of diffusers' convert_ldm_* functions) -------------

def unet_key(name, layers, up_types):
    p = name.split(".")
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
              "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}

    def res(i):
        return ".".join([resnet.get(p[i], p[i])] + p[i + 1:])
    if p[0] == "conv_in":
        k = "input_blocks.0.0." + ".".join(p[1:])
    elif p[0] == "time_embedding":
        k = "time_embed.%d." % {"linear_1": 0, "linear_2": 2}[p[1]] + ".".join(p[2:])
    elif p[0] == "conv_norm_out":
        k = "out.0." + ".".join(p[1:])
    elif p[0] == "conv_out":
        k = "out.2." + ".".join(p[1:])
    elif p[0] in ("down_blocks", "up_blocks"):
        b, kind = int(p[1]), p[2]
        down = p[0] == "down_blocks"
        base = 1 + b * (layers + 1) if down else b * (layers + 1)
        side = "input_blocks" if down else "output_blocks"
        if kind == "resnets":
            k = "%s.%d.0.%s" % (side, base + int(p[3]), res(4))
        elif kind == "attentions":
            k = "%s.%d.1.%s" % (side, base + int(p[3]), ".".join(p[4:]))
        elif kind == "downsamplers":
            k = "input_blocks.%d.0.op.%s" % (base + layers, ".".join(p[5:]))
        else:
            index = 2 if "CrossAttn" in up_types[b] else 1
            k = "output_blocks.%d.%d.conv.%s" % (base + layers, index, ".".join(p[5:]))
    elif p[0] == "mid_block":
        if p[1] == "resnets":
            k = "middle_block.%d.%s" % (0 if p[2] == "0" else 2, res(3))
        else:
            k = "middle_block.1." + ".".join(p[3:])
    else:
        raise KeyError(name)
    return "model.diffusion_model." + k


def vae_tensors(state, levels):
    out = {}
    for name, t in state.items():
        p = name.split(".")
        if p[0] in ("quant_conv", "post_quant_conv"):
            out["first_stage_model." + name] = t
            continue
        side = p[0]
        if p[1] in ("conv_in", "conv_out"):
            k = ".".join(p[1:])
        elif p[1] == "conv_norm_out":
            k = "norm_out." + ".".join(p[2:])
        elif p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2])
            level = "down.%d" % i if p[1] == "down_blocks" else "up.%d" % (levels - 1 - i)
            if p[3] == "resnets":
                rest = ["nin_shortcut" if p[5] == "conv_shortcut" else p[5]] + p[6:]
                k = "%s.block.%s.%s" % (level, p[4], ".".join(rest))
            else:
                k = "%s.%s.conv.%s" % (level, "downsample" if p[3] == "downsamplers" else "upsample", ".".join(p[6:]))
        elif p[2] == "resnets":
            k = "mid.block_%d.%s" % (int(p[3]) + 1, ".".join(p[4:]))
        else:
            names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
            tail = p[6:] if p[4] == "to_out" else p[5:]
            k = "mid.attn_1.%s.%s" % (names[p[4]], ".".join(tail))
            if names[p[4]] != "norm" and tail == ["weight"]:
                t = t.reshape(*t.shape, 1, 1)  # the original's 1x1 convolutions
        out["first_stage_model.%s.%s" % (side, k)] = t
    return out


def clip_tensors(state):
    return {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def open_clip_tensors(state, layers):
    prefix = "cond_stage_model.model."
    s = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}
    out = {prefix + "token_embedding.weight": s["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": s["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": s["final_layer_norm.weight"], prefix + "ln_final.bias": s["final_layer_norm.bias"]}
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    for i in range(layers):
        src, dst = "encoder.layers.%d." % i, prefix + "transformer.resblocks.%d." % i
        for old, new in renames.items():
            for kind in ("weight", "bias"):
                out[dst + new + "." + kind] = s[src + old + "." + kind]
        for kind in ("weight", "bias"):
            out[dst + "attn.in_proj_" + kind] = torch.cat([s[src + "self_attn.%s_proj.%s" % (x, kind)] for x in "qkv"])
    return out


def read(folder, component, file):
    return load_file(os.path.join(folder, component, file))


def original_layout(name, folder):
    unet_config = json.load(open(os.path.join(folder, "unet", "config.json")))
    vae_config = json.load(open(os.path.join(folder, "vae", "config.json")))
    text_config = json.load(open(os.path.join(folder, "text_encoder", "config.json")))
    layers = unet_config["layers_per_block"]
    out = {unet_key(k, layers, unet_config["up_block_types"]): v
           for k, v in read(folder, "unet", "diffusion_pytorch_model.safetensors").items()}
    out.update(vae_tensors(read(folder, "vae", "diffusion_pytorch_model.safetensors"), len(vae_config["block_out_channels"])))
    text = read(folder, "text_encoder", "model.safetensors")
    out.update(clip_tensors(text) if name == "sd1" else open_clip_tensors(text, text_config["num_hidden_layers"]))
    return {k: v.contiguous() for k, v in out.items()}


def check_with_diffusers(file, folder):
    """diffusers' from_single_file must give the folder's weights exactly."""
    reference = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                        torch_dtype=torch.float32)
    loaded = StableDiffusionPipeline.from_single_file(file, config=folder, safety_checker=None,
                                                      requires_safety_checker=False, torch_dtype=torch.float32)
    for component in ["unet", "vae", "text_encoder"]:
        a = getattr(reference, component).state_dict()
        b = getattr(loaded, component).state_dict()
        a = {k: v for k, v in a.items() if not k.endswith("position_ids")}
        b = {k: v for k, v in b.items() if not k.endswith("position_ids")}
        assert a.keys() == b.keys(), (component, sorted(set(a) ^ set(b))[:10])
        for k in a:
            assert torch.equal(a[k], b[k]), (component, k)
        print("  %s: %d tensors equal to the folder's" % (component, len(a)))


def main():
    os.makedirs(OUT, exist_ok=True)
    write_sd2_parts()
    for name in ["sd1", "sd2"]:
        with tempfile.TemporaryDirectory() as folder:
            assemble(name, folder)
            tensors = original_layout(name, folder)
            file = os.path.join(OUT, name + ".safetensors")
            save_file(tensors, file, metadata={"format": "pt"})
            print("%s: %d tensors, %d bytes" % (file, len(tensors), os.path.getsize(file)))
            check_with_diffusers(file, folder)


if __name__ == "__main__":
    main()
