"""SD v1's noise schedule, q(x_t | x_0), and our DDIM sampling loop with classifier-free guidance.

The step math follows DDIM (Song et al. 2021, eq. 12) with SD v1's inference settings:
"leading" timesteps offset by one (981, 961, ..., 1 for 50 steps) and, after the last step,
alpha-bar of t=0 rather than 1 (diffusers' `set_alpha_to_one=False`, CompVis' DDIMSampler).
tests/test_sd_ddim.py checks it against diffusers' DDIMScheduler step by step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, t) -> guided eps


class NoiseSchedule:
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        steps_offset: int = 1,
    ):
        # LDM's "linear" schedule is linear in sqrt(beta) (diffusers calls it scaled_linear).
        # float64 as in the reference code: a float32 cumprod drifts over 1000 steps.
        if beta_schedule == "scaled_linear":
            betas = (
                torch.linspace(
                    beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64
                )
                ** 2
            )
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")
        self.T = num_train_timesteps
        self.steps_offset = steps_offset
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def from_config(cls, path: str | Path) -> "NoiseSchedule":
        """Read a diffusers scheduler_config.json (any scheduler class: only the betas matter)."""
        cfg = json.loads(Path(path).read_text())
        return cls(
            cfg["num_train_timesteps"],
            cfg["beta_start"],
            cfg["beta_end"],
            cfg["beta_schedule"],
            cfg.get("steps_offset", 0),
        )

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def ddim_timesteps(self, steps: int) -> list[int]:
        if not 1 <= steps <= self.T:
            raise ValueError(f"DDIM steps must be in 1..{self.T}, got {steps}")
        ratio = self.T // steps
        return [i * ratio + self.steps_offset for i in range(steps)][::-1]

    def ddim_step(
        self,
        eps: torch.Tensor,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        use_clipped_model_output: bool = False,
    ) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12) from timestep t to t_prev; t_prev < 0 means the final
        step, to alpha-bar(0) (SD's set_alpha_to_one false). Latents are not images in [-1, 1], so
        x0 is never clipped (SD's clip_sample false), and `use_clipped_model_output` (diffusers'
        option) changes nothing but rounding. `noise` is needed when eta > 0."""
        ab = self.alphas_cumprod[t].item()
        # t_prev < 0: the final step, alpha-bar(0)
        ab_prev = self.alphas_cumprod[max(t_prev, 0)].item()
        x0 = (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5
        if use_clipped_model_output:
            eps = (x_t - ab**0.5 * x0) / (1 - ab) ** 0.5
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        x_prev = ab_prev**0.5 * x0 + (1 - ab_prev - sigma**2) ** 0.5 * eps
        if sigma > 0:
            x_prev = x_prev + sigma * noise
        return x_prev

    def ddim_sample(
        self,
        eps_fn: EpsFn,
        x_T: torch.Tensor,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: Callable = lambda it, **kw: it,
    ) -> torch.Tensor:
        """Run DDIM from x_T (float32) to x_0; `generator` feeds the eta > 0 noise."""
        x = x_T
        ts = self.ddim_timesteps(steps)
        ratio = self.T // steps
        for t in progress(ts, desc="ddim", leave=False):
            noise = (
                torch.randn(x.shape, generator=generator).to(x.device, x.dtype) if eta > 0 else None
            )
            x = self.ddim_step(eps_fn(x, t), x, t, t - ratio, eta, noise)
        return x


def guided_eps(
    unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor, guidance: float
) -> EpsFn:
    """Classifier-free guidance: eps_u + w (eps_c - eps_u), both halves in one UNet call.
    The UNet runs in its own dtype; the returned eps is float32 for the step math."""
    dtype = next(unet.parameters()).dtype

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        if guidance == 1.0:
            return unet(x.to(dtype), t, encoder_hidden_states=cond).sample.float()
        out = unet(
            torch.cat([x, x]).to(dtype), t, encoder_hidden_states=torch.cat([uncond, cond])
        ).sample.float()
        eps_u, eps_c = out.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    return eps_fn
