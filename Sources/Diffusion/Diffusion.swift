// The Stable Diffusion model family; see the per-family files.
