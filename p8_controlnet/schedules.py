"""The sampling study's maths: custom beta schedules and lerp/slerp between prompt embeddings.

Custom schedules keep the model's training endpoints (beta_start, beta_end; SD v1: 0.00085 and
0.012) and change only the shape in between, with s = t / (T - 1) in [0, 1]:
    linear          beta(s) = b0 + (b1 - b0) s                        (DDPM's)
    inverse-square  beta(s) = 1 / (b0^-1/2 + (b1^-1/2 - b0^-1/2) s)^2   (1/sqrt(beta) linear; mirror of
                                                                       SD's scaled_linear, sqrt(beta) linear)
    log-decay       beta(s) = b0 + (b1 - b0) log(1 + k s) / log(1 + k)  (the rate's growth decays like 1/(1 + k s))
A model trained on one schedule sampled with another shows what the sampler's schedule alone does.
"""

from __future__ import annotations

import math

import torch

LOG_DECAY_K = 9.0  # log(1 + 9 s) / log 10 covers half the range by s = 0.24: clearly unlike linear
SCHEDULES = ("linear", "inverse-square", "log-decay")


def custom_betas(
    kind: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """(T,) float64 betas from beta_start to beta_end, increasing."""
    s = torch.linspace(0, 1, num_train_timesteps, dtype=torch.float64)
    if kind == "linear":
        return beta_start + (beta_end - beta_start) * s
    if kind == "inverse-square":
        a, b = beta_start**-0.5, beta_end**-0.5
        return 1.0 / (a + (b - a) * s) ** 2
    if kind == "log-decay":
        return beta_start + (beta_end - beta_start) * torch.log1p(LOG_DECAY_K * s) / math.log1p(
            LOG_DECAY_K
        )
    raise ValueError(f"unknown schedule {kind!r}: use one of {', '.join(SCHEDULES)}")


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return (1 - t) * a + t * b


def slerp(
    a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = 0.9995
) -> torch.Tensor:
    """Spherical interpolation along the last dim (each token's vector on its own great circle):
    sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b, theta the angle between a and b.
    Nearly parallel vectors (|cos| > dot_threshold) fall back to lerp, where slerp's division
    by sin(theta) loses all precision."""
    a64, b64 = a.double(), b.double()
    cos = (a64 * b64).sum(-1, keepdim=True) / (
        a64.norm(dim=-1, keepdim=True) * b64.norm(dim=-1, keepdim=True)
    )
    theta = torch.arccos(cos.clamp(-1, 1))
    parallel = cos.abs() > dot_threshold
    sin = torch.where(parallel, torch.ones_like(theta), theta.sin())
    spherical = (torch.sin((1 - t) * theta) * a64 + torch.sin(t * theta) * b64) / sin
    return torch.where(parallel, lerp(a64, b64, t), spherical).to(a.dtype)
