#!/usr/bin/env python3
"""Parity fixtures for the Swift UNet2DConditionModel and AutoencoderKL (Diffusion target).

Builds RANDOM TINY diffusers models from configs (no hub access), with a fixed seed, and writes
for each one a folder under Tests/DiffusionTests/Fixtures/<name>/ laid out like a diffusers
`unet/` or `vae/` folder plus the reference inputs and outputs:

    config.json                              written by diffusers' save_config
    diffusion_pytorch_model.safetensors      the weights, diffusers key names
    io.safetensors                           inputs, outputs, upstream gradients, input gradients
    legacy.safetensors                       (VAE only) the same weights with the old attention
                                             key names query/key/value/proj_attn, 1x1-conv shaped

Fixtures:
  unet_sd1   SD1-style: conv proj_in/proj_out, `attention_head_dim` a scalar that diffusers reads
             as the number of HEADS, CrossAttnDownBlock2D + DownBlock2D / UpBlock2D +
             CrossAttnUpBlock2D, flip_sin_to_cos=True, freq_shift=0 (as SD), sample 6x10.
             Weights stored as F16 (to keep the folder small; also exercises F16 loading).
  unet_sd2   SD2-style: use_linear_projection, per-block attention_head_dim (heads 4, 2, 8 on
             16, 24, 32 channels), transformer_layers_per_block [1, 2, 1], three blocks,
             flip_sin_to_cos=False and freq_shift=1 (the other branch of the time embedding),
             an encoder attention mask, sample 8x12. Weights stored as F16.
  vae        AutoencoderKL with two DownEncoderBlock2D / UpDecoderBlock2D, image 12x16,
             latent 6x8. Weights stored as F32.

real_configs/<name>.json (no weights): the configs of the real SD 1.5 UNet, SD 2.1 UNet and SD
VAE as diffusers writes them, with every parameter's name and shape ({"config": ..., "parameters":
{name: shape}}), from models built on the meta device. The Swift tests check that the same
configs build models with exactly these names and shapes.

Every parameter is randomised (norm weights around 1, norm biases around 0, so that a swapped
or missing affine parameter shows). The reference is computed in float64 (model.double()) from
exactly the stored weights (the F16 ones rounded first) and the stored float32 inputs; everything
is saved as F32.

io.safetensors keys:
  UNet: sample [B,4,H,W], timestep [B], encoder_hidden_states [B,S,D],
        encoder_attention_mask [B,S] (unet_sd2 only), t_emb [B,C0] (time_proj output),
        out, gout, grad.sample, grad.encoder_hidden_states (of sum(out*gout)),
        param_grad.<name> for a few parameters (cross-attention K/V, conv_in, time_embedding).
  VAE:  image [B,3,H,W], moments (quant_conv output), mean, logvar, gmean,
        grad.image (of sum(mean*gmean)), latent [B,4,h,w], decoded, gdecoded,
        grad.latent (of sum(decoded*gdecoded)).

Run:  .venv-tools/bin/python tools/make_diffusion_model_fixtures.py [--out-dir DIR]
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL, UNet2DConditionModel

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures")

UNET_SD1 = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[16, 32], layers_per_block=1,
    cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8,
    flip_sin_to_cos=True, freq_shift=0,
)

UNET_SD2 = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[16, 24, 32], layers_per_block=1,
    cross_attention_dim=24, attention_head_dim=[4, 2, 8], norm_num_groups=8,
    use_linear_projection=True, transformer_layers_per_block=[1, 2, 1],
    flip_sin_to_cos=False, freq_shift=1,
)

VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, sample_size=16,
)

# Parameters whose gradients are also checked (cross-attention K/V are what erasure trains).
UNET_PARAM_GRADS = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
]


def randomize(model, gen):
    """Every parameter random; norm affine parameters around (1, 0) so that each one matters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.copy_(1 + 0.25 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def save_weights(model, folder, dtype):
    """Writes config.json and the weights in diffusers layout; returns the stored state dict."""
    model.save_config(folder)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    # Load back exactly what was stored (F16 rounding included) for the float64 reference.
    with torch.no_grad():
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return state


def make_unet(name, config, out_dir, sample_hw, seq, timesteps, mask=None, seed=0):
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**config)
    randomize(model, gen)
    save_weights(model, folder, torch.float16)
    model = model.double().eval()

    batch = len(timesteps)
    sample = torch.randn((batch, config["in_channels"], *sample_hw), generator=gen).float()
    context = torch.randn((batch, seq, config["cross_attention_dim"]), generator=gen).float()
    t = torch.tensor(timesteps, dtype=torch.float32)

    sample64 = sample.double().requires_grad_(True)
    context64 = context.double().requires_grad_(True)
    kwargs = {}
    if mask is not None:
        kwargs["encoder_attention_mask"] = torch.tensor(mask, dtype=torch.float64)
    out = model(sample64, t, encoder_hidden_states=context64, **kwargs).sample
    gout = torch.randn(out.shape, generator=gen, dtype=torch.float64).float().double()
    (out * gout).sum().backward()
    t_emb = model.time_proj(t)

    io = {
        "sample": sample, "timestep": t, "encoder_hidden_states": context,
        "t_emb": f32(t_emb), "out": f32(out), "gout": f32(gout),
        "grad.sample": f32(sample64.grad), "grad.encoder_hidden_states": f32(context64.grad),
    }
    if mask is not None:
        io["encoder_attention_mask"] = torch.tensor(mask, dtype=torch.float32)
    params = dict(model.named_parameters())
    for p in UNET_PARAM_GRADS:
        io["param_grad." + p] = f32(params[p].grad)
    save_file(io, os.path.join(folder, "io.safetensors"))
    return folder


LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def make_vae(name, config, out_dir, image_hw, seed=0):
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = AutoencoderKL(**config)
    randomize(model, gen)
    state = save_weights(model, folder, torch.float32)

    # The pre-0.14 attention names, with the 1x1-conv shaped projection weights of old checkpoints.
    legacy = {}
    for key, value in state.items():
        new = key
        if ".mid_block.attentions." in key:
            for current, old in LEGACY_NAMES.items():
                marker = "." + current + "."
                if marker in key:
                    new = key.replace(marker, "." + old + ".")
                    if key.endswith(".weight"):
                        value = value[:, :, None, None]
        legacy[new] = value.contiguous()
    save_file(legacy, os.path.join(folder, "legacy.safetensors"))

    model = model.double().eval()
    batch = 2
    image = (torch.rand((batch, config["in_channels"], *image_hw), generator=gen) * 2 - 1).float()
    image64 = image.double().requires_grad_(True)
    posterior = model.encode(image64).latent_dist
    moments = posterior.parameters
    gmean = torch.randn(posterior.mean.shape, generator=gen).float()
    (posterior.mean * gmean.double()).sum().backward()

    factor = 2 ** (len(config["block_out_channels"]) - 1)
    latent = torch.randn((batch, config["latent_channels"], image_hw[0] // factor, image_hw[1] // factor),
                         generator=gen).float()
    latent64 = latent.double().requires_grad_(True)
    decoded = model.decode(latent64).sample
    gdecoded = torch.randn(decoded.shape, generator=gen).float()
    (decoded * gdecoded.double()).sum().backward()

    io = {
        "image": image, "moments": f32(moments), "mean": f32(posterior.mean), "logvar": f32(posterior.logvar),
        "gmean": gmean, "grad.image": f32(image64.grad),
        "latent": latent, "decoded": f32(decoded), "gdecoded": gdecoded, "grad.latent": f32(latent64.grad),
    }
    save_file(io, os.path.join(folder, "io.safetensors"))
    return folder


# The published configs (stable-diffusion-v1-5 unet, stable-diffusion-2-1 unet, the SD VAE).
REAL_UNET_SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    flip_sin_to_cos=True, freq_shift=0, act_fn="silu", downsample_padding=1, mid_block_scale_factor=1,
)
REAL_UNET_SD21 = dict(REAL_UNET_SD15, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                      use_linear_projection=True, upcast_attention=True)
REAL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    norm_num_groups=32, sample_size=512, act_fn="silu",
)


def write_real_config(name, cls, config, out_dir):
    with torch.device("meta"):
        model = cls(**config)
    folder = os.path.join(out_dir, "real_configs")
    os.makedirs(folder, exist_ok=True)
    record = {"config": json.loads(model.to_json_string()),
              "parameters": {k: list(v.shape) for k, v in model.state_dict().items()}}
    path = os.path.join(folder, name + ".json")
    with open(path, "w") as f:
        json.dump(record, f, indent=None, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    return path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=DEFAULT_OUT)
    args = parser.parse_args()
    folders = [
        make_unet("unet_sd1", UNET_SD1, args.out_dir, sample_hw=(6, 10), seq=5, timesteps=[999.0, 37.0], seed=1),
        make_unet("unet_sd2", UNET_SD2, args.out_dir, sample_hw=(8, 12), seq=7, timesteps=[500.5, 3.0],
                  mask=[[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]], seed=2),
        make_vae("vae", VAE, args.out_dir, image_hw=(12, 16), seed=3),
    ]
    for name, cls, config in [("sd15_unet", UNet2DConditionModel, REAL_UNET_SD15),
                              ("sd21_unet", UNet2DConditionModel, REAL_UNET_SD21),
                              ("sd_vae", AutoencoderKL, REAL_VAE)]:
        write_real_config(name, cls, config, args.out_dir)
    folders.append(os.path.join(args.out_dir, "real_configs"))
    total = 0
    for folder in folders:
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        total += size
        print(f"{os.path.relpath(folder, ROOT)}: {size / 1024:.0f} KiB")
    print(f"total: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
