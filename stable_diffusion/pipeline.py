"""Text -> images with our DDIM + classifier-free guidance loop, batched and seeded."""

from __future__ import annotations

from typing import Callable

import torch

from hw2_utils import CLIError
from stable_diffusion.ddim import guided_eps
from stable_diffusion.model import StableDiffusion


def initial_latents(
    sd: StableDiffusion, n: int, seed: int, size: int | None = None
) -> torch.Tensor:
    """x_T for n images, drawn on the CPU from one seeded generator: image i's noise depends
    only on (seed, i), not on the batch size or the device."""
    side = (size or sd.resolution) // sd.vae_scale_factor
    channels = sd.unet.config.in_channels
    return torch.randn((n, channels, side, side), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def text_to_image(
    sd: StableDiffusion,
    prompt: str,
    n: int,
    *,
    seed: int,
    steps: int = 50,
    guidance: float = 7.5,
    batch_size: int = 5,
    eta: float = 0.0,
    negative_prompt: str = "",
    size: int | None = None,
    progress: Callable = lambda it, **kw: it,
) -> torch.Tensor:
    """n images of one prompt as float32 (n,3,H,W) in [-1, 1] on the CPU.

    A batch whose decoded images hold NaN/inf (fp16 overflow) is redone after switching the
    model to fp32 for the rest of the run; a NaN in fp32 is a CLIError (broken weights)."""
    x_T = initial_latents(sd, n, seed, size)
    out = []
    for start in progress(range(0, n, batch_size), desc="batches", leave=False):
        x = x_T[start : start + batch_size]
        for attempt in range(2):
            images = _sample_batch(
                sd, prompt, negative_prompt, x, steps, guidance, eta, seed + start, progress
            )
            if torch.isfinite(images).all():
                break
            if sd.dtype == torch.float32 or attempt == 1:
                raise CLIError(
                    f"non-finite pixels from {prompt!r} in float32: the model weights or learned embeddings are broken"
                )
            print(f"warning: {sd.dtype} overflow (NaN in decoded images); switching to float32")
            sd.to(dtype=torch.float32)
        out.append(images.clamp(-1, 1).cpu())
    return torch.cat(out)


def _sample_batch(
    sd: StableDiffusion,
    prompt: str,
    negative_prompt: str,
    x_T: torch.Tensor,
    steps: int,
    guidance: float,
    eta: float,
    seed: int,
    progress: Callable,
) -> torch.Tensor:
    cond = sd.encode_text([prompt] * len(x_T))
    uncond = sd.encode_text([negative_prompt] * len(x_T))
    eps_fn = guided_eps(sd.unet, cond.to(sd.dtype), uncond.to(sd.dtype), guidance)
    latents = sd.schedule.ddim_sample(
        eps_fn,
        x_T.to(sd.device, torch.float32),
        steps,
        eta,
        generator=torch.Generator().manual_seed(seed),
        progress=progress,
    )
    return sd.decode(latents)
