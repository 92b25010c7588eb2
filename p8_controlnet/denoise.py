"""Our own text-to-image denoising loop over a diffusers scheduler, for the experiments that act
inside it: attribute editing (the text conditioning changes at a chosen step, or the loop starts part
way from re-noised latents: edit.py) and CLIP refinement (it needs the final latents: refine.py).

It makes the UNet calls, the classifier-free guidance and the random draws of diffusers'
StableDiffusionPipeline (one CPU generator per image: the initial noise first, then an ancestral
sampler's step noise), so one prompt throughout gives the pipeline's image for the same seed
(tests/test_p8_edit_refine.py checks this for every scheduler).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from hw2_utils import CLIError


@torch.no_grad()
def embed(pipe, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional, unconditional) text embeddings of one prompt, each (1, 77, D)."""
    return pipe.encode_prompt(prompt, pipe._execution_device, 1, True, negative_prompt)


def timesteps(pipe, steps: int) -> torch.Tensor:
    """Set the pipeline's scheduler to `steps` steps (which also clears its state) and return its
    timesteps: `steps` of them, or one more for PLMS, which repeats one."""
    pipe.scheduler.set_timesteps(steps, device=pipe._execution_device)
    return pipe.scheduler.timesteps


def guided_eps(
    unet, x: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor, guidance: float
) -> torch.Tensor:
    if guidance <= 1:  # the pipeline skips the unconditional pass then; so do we, to give its image
        return unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]
    eps_uncond, eps_cond = unet(
        torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False
    )[0].chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


@torch.no_grad()
def sample(
    pipe,
    seed: int,
    steps: int,
    cond_at: Callable[[int], torch.Tensor],
    uncond: torch.Tensor,
    guidance: float,
    side: int,
    renoise: torch.Tensor | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Final latents (1, C, h, w) of one image; cond_at(i) is the text embedding of step i (0-based,
    over timesteps(pipe, steps)).

    Without `renoise` the loop starts from the seed's noise at step 0. With it (SDEdit), those
    latents are re-noised to the timestep of step `start` with the same seed's noise, and the loop
    runs from there; start == len(timesteps) returns them unchanged."""
    scheduler, device, dtype = pipe.scheduler, pipe._execution_device, uncond.dtype
    ts = timesteps(pipe, steps)
    generator = torch.Generator().manual_seed(seed)
    shape = (
        1,
        pipe.unet.config.in_channels,
        side // pipe.vae_scale_factor,
        side // pipe.vae_scale_factor,
    )
    # as diffusers' randn_tensor draws it
    noise = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    if renoise is None:
        latents, start = noise * scheduler.init_noise_sigma, 0
    elif start == len(ts):
        return renoise
    else:
        # the Karras-style samplers index their sigmas from here
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        latents = scheduler.add_noise(renoise, noise, ts[start : start + 1])
    extra = (
        {"generator": generator}
        if "generator" in inspect.signature(scheduler.step).parameters
        else {}
    )
    for i in range(start, len(ts)):
        x = scheduler.scale_model_input(latents, ts[i])
        eps = guided_eps(pipe.unet, x, ts[i], cond_at(i), uncond, guidance)
        latents = scheduler.step(eps, ts[i], latents, **extra, return_dict=False)[0]
    return latents


def to_pixels(sd, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> float32 images in [0, 1], differentiable (refinement backpropagates through it)."""
    images = ((sd.decode(latents) + 1) / 2).clamp(0, 1)
    if not torch.isfinite(images).all():
        raise CLIError(f"non-finite pixels in {sd.dtype} (overflow): rerun with --precision fp32")
    return images
