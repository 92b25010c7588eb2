"""DDIM (Song et al. 2021, eq. 12 and 16) in the course's form: the DDPM schedule in
float64, an explicit timestep list (by default 981, 961, ..., 1), the step after the last
timestep landing on alpha_bar[0], optional clipping of the predicted x0, and eta.
tests/test_p2_ddim.py checks it against diffusers' DDIMScheduler.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> eps

NUM_TRAIN_TIMESTEPS = 1000


def linear_alphas_cumprod(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) for the course's `beta_scheduler`. float64:
    the cumulative product over 1000 steps drifts in float32, and 1/sqrt(alpha_bar) at
    t = 981 (about 150) magnifies that drift in the predicted x0."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def uniform_timesteps(
    steps: int = 50, num_timesteps: int = NUM_TRAIN_TIMESTEPS, offset: int = 1
) -> list[int]:
    """range(0, T, T // steps) + offset, walked backwards: 981, 961, ..., 21, 1 for 50 steps."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
    ratio = num_timesteps // steps
    return [i * ratio + offset for i in range(steps)][::-1]


def ddim_step(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = True,
    use_clipped_model_output: bool = False,
) -> torch.Tensor:
    """One DDIM update x_t -> x_prev (Song et al. 2021, eq. 12), the argument order of the
    project's other two DDIM steps (p1_ddpm.diffusion, stable_diffusion.ddim) and of diffusers'
    step (model output first); this one takes the alpha-bars rather than the timesteps.

    x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), clipped to [-1, 1] when `clip_x0`;
    sigma = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev));
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma * noise.
    `use_clipped_model_output` is diffusers' DDIMScheduler.step option: False (P2's default, the
    course's reference, which P2's outputs reproduce) keeps the model's eps in the direction term
    even when x0 was clipped; True re-derives it from the clipped x0.
    """
    a_t, a_prev = float(alpha_bar_t), float(alpha_bar_prev)
    x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    if use_clipped_model_output:
        eps = (x_t - a_t**0.5 * x0) / (1 - a_t) ** 0.5
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    x_prev = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev


def check_timesteps(timesteps: Sequence[int], num_timesteps: int) -> list[int]:
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps must not be empty")
    if any(not 0 <= t < num_timesteps for t in ts):
        raise ValueError(f"timesteps must lie in [0, {num_timesteps - 1}], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts}")
    return ts


@torch.no_grad()
def ddim_sample(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    *,
    timesteps: Sequence[int] | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    use_clipped_model_output: bool = False,
    generator: torch.Generator | None = None,
    alphas_cumprod: torch.Tensor | None = None,
    progress: Callable = lambda it, **kw: it,
) -> torch.Tensor:
    """Run DDIM from x_T through `timesteps` (default uniform_timesteps(50)).

    Step i goes from timesteps[i] to timesteps[i + 1]; the last goes to alpha_bar[0]
    (the course's choice; diffusers' set_alpha_to_one=False). eta = 0 is deterministic;
    for eta > 0 each step draws one standard normal of x_T's shape from `generator` on
    the CPU, so a seed gives the same images on any device.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and generator is None:
        raise ValueError("eta > 0 needs a seeded generator")
    alphas_cumprod = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    ts = check_timesteps(
        uniform_timesteps() if timesteps is None else timesteps, len(alphas_cumprod)
    )
    x = x_T
    for i, t in enumerate(progress(ts, desc="DDIM", leave=False)):
        a_prev = alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else alphas_cumprod[0]
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype) if eta > 0 else None
        x = ddim_step(
            eps.to(x.dtype),
            x,
            alphas_cumprod[t],
            a_prev,
            eta,
            noise,
            clip_x0,
            use_clipped_model_output,
        )
    return x
