"""DDPM (Ho et al. 2020) written out: the linear schedule, q(x_t|x_0), the epsilon loss
(Algorithm 1), ancestral sampling (Algorithm 2), a deterministic DDIM fast path,
DPM-Solver++(2M) (Lu et al. 2022) and classifier-free guidance. tests/test_p1_diffusion.py
checks the step math against diffusers' DDPMScheduler, DDIMScheduler and
DPMSolverMultistepScheduler.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> eps
SAMPLERS = ("ddpm", "ddim", "dpm++")  # dpm++: DPM-Solver++(2M)


class GaussianDiffusion:
    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        # float64 for the schedule, as in the reference code: cumprod over 1000 steps in
        # fp32 drifts enough to be visible in the late-step coefficients.
        self.T = num_timesteps
        self.betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        # Posterior q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7); beta-tilde is "fixed_small".
        self.posterior_variance = (
            self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        )
        self.posterior_mean_coef1 = (
            self.betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)
        )

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] broadcast to `like`'s shape, in its dtype and device."""
        out = values.to(like.device)[t.to(like.device)].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self._at(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) at integer timesteps t."""
        ab = self.alphas_cumprod[t.cpu()]
        return (ab / (1 - ab)).float().to(t.device)

    def training_loss(
        self,
        eps_model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *cond: torch.Tensor,
        generator: torch.Generator | None = None,
        snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """Algorithm 1: t ~ U{0..T-1}, eps ~ N(0, I), MSE(eps, eps_theta(x_t, t, cond)).

        With `snr_gamma`, each sample's MSE is weighted by min(SNR_t, gamma) / SNR_t
        (Min-SNR, Hang et al. 2023): nearly clean timesteps, which only refine texture,
        stop dominating the gradient, so the noisy steps that decide the digit's shape
        train faster."""
        t = torch.randint(0, self.T, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        prediction = eps_model(self.q_sample(x0, t, noise), t, *cond)
        if snr_gamma is None:
            return F.mse_loss(prediction, noise)
        per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(
            dim=tuple(range(1, x0.ndim))
        )
        snr = self.snr(t)
        return (per_sample * snr.clamp(max=snr_gamma) / snr).mean()

    # ------------------------------------------------------------------ reverse process
    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        mean = (
            self._at(self.posterior_mean_coef1, t, x_t) * x0
            + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, self._at(self.posterior_variance, t, x_t)

    def ddpm_step(
        self,
        eps: torch.Tensor,
        x_t: torch.Tensor,
        t: int,
        noise: torch.Tensor,
        clip_x0: bool = True,
    ) -> torch.Tensor:
        """Algorithm 2 with sigma_t^2 = beta-tilde_t. Written through the predicted x_0 so
        it can be clipped to [-1, 1]; without clipping the mean equals
        (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) exactly."""
        tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
        x0 = self.predict_x0(x_t, tt, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        mean, var = self.q_posterior(x0, x_t, tt)
        return mean + var.sqrt() * noise if t > 0 else mean

    def ddim_timesteps(self, steps: int) -> list[int]:
        """Evenly spaced, "leading" like diffusers: T - T/steps, ..., T/steps, 0."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in 1..{self.T}, got {steps}")
        ratio = self.T // steps
        return list(range(0, steps * ratio, ratio))[::-1]

    def ddim_step(
        self,
        eps: torch.Tensor,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        clip_x0: bool = True,
        use_clipped_model_output: bool = False,
    ) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12) from timestep t to t_prev; t_prev < 0 means the final
        step, to x_0 (alpha-bar 1, diffusers' set_alpha_to_one). x0 is clipped to [-1, 1] when
        `clip_x0` (pixels). `use_clipped_model_output` is diffusers' DDIMScheduler.step option:
        True re-derives eps from the clipped x0 for the direction term; P1's `sample` passes True,
        as its graded images were made. `noise` is needed when eta > 0."""
        ab = self.alphas_cumprod[t].item()
        ab_prev = self.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
        x0 = (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        if use_clipped_model_output:
            eps = (x_t - ab**0.5 * x0) / (1 - ab) ** 0.5
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        x_prev = ab_prev**0.5 * x0 + (1 - ab_prev - sigma**2) ** 0.5 * eps
        if eta > 0:
            x_prev = x_prev + sigma * noise
        return x_prev

    def dpm_timesteps(self, steps: int) -> list[int]:
        """diffusers' "linspace" spacing, DPMSolverMultistepScheduler's default: `steps` values
        evenly from T - 1 down to about T / steps (rounded)."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in 1..{self.T}, got {steps}")
        return np.linspace(0, self.T - 1, steps + 1).round()[::-1][:-1].astype(int).tolist()

    def _alpha_sigma(self, t: int) -> tuple[float, float]:
        """(alpha_t, sigma_t) = (sqrt(abar_t), sqrt(1 - abar_t)); t < 0 is the clean end (1, 0)."""
        if t < 0:
            return 1.0, 0.0
        ab = self.alphas_cumprod[t].item()
        return ab**0.5, (1 - ab) ** 0.5

    def dpm_solver_step(
        self,
        x_t: torch.Tensor,
        x0: torch.Tensor,
        t: int,
        t_next: int,
        x0_prev: torch.Tensor | None = None,
        t_prev: int | None = None,
    ) -> torch.Tensor:
        """One step of DPM-Solver++(2M) from t to t_next (< 0: to the clean image), in data
        prediction with log-SNR time lambda_t = log(alpha_t / sigma_t) and h = lambda_next - lambda_t:
          first order (no previous x0, or the last step):
              x_next = sigma_next / sigma_t * x_t - alpha_next * (exp(-h) - 1) * x0
          second order (the previous step's x0 at t_prev, multistep "midpoint" variant):
              D1 = (x0 - x0_prev) / r, r = (lambda_t - lambda_prev) / h,
              x_next = first order - alpha_next / 2 * (exp(-h) - 1) * D1
        At t_next < 0 (sigma = 0, h = inf) the first-order step returns x0 itself."""
        alpha_t, sigma_t = self._alpha_sigma(t)
        alpha_n, sigma_n = self._alpha_sigma(t_next)
        if sigma_n == 0.0:
            return x0
        lam_t, lam_n = math.log(alpha_t / sigma_t), math.log(alpha_n / sigma_n)
        h = lam_n - lam_t
        phi = math.expm1(-h)  # exp(-h) - 1, exact for the small h of many steps
        x_next = (sigma_n / sigma_t) * x_t - (alpha_n * phi) * x0
        if x0_prev is None:
            return x_next
        alpha_p, sigma_p = self._alpha_sigma(t_prev)
        r = (lam_t - math.log(alpha_p / sigma_p)) / h
        return x_next - (0.5 * alpha_n * phi / r) * (x0 - x0_prev)

    @torch.no_grad()
    def sample(
        self,
        eps_fn: EpsFn,
        shape: Sequence[int],
        generator: torch.Generator,
        device: torch.device,
        sampler: str = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        record_at: Sequence[int] = (),
        progress: Callable = lambda it, **kw: it,
    ):
        """Run the reverse process from pure noise. All noise comes from `generator` on
        the CPU, so a seed gives the same images on any device. Returns the final x_0 and
        {t: x_t} for every t in `record_at` (t = 0 is the final output)."""

        def randn() -> torch.Tensor:
            return torch.randn(tuple(shape), generator=generator).to(device)

        x = randn()
        frames = {self.T: x.cpu()} if self.T in record_at else {}
        if sampler == "ddpm":
            schedule = [(t, t - 1) for t in range(self.T - 1, -1, -1)]
        elif sampler in SAMPLERS:
            ts = (self.ddim_timesteps if sampler == "ddim" else self.dpm_timesteps)(
                50 if steps is None else steps
            )
            schedule = list(zip(ts, ts[1:] + [-1]))
        else:
            raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        history = None  # DPM-Solver++: (x0, t) of the previous step
        for t, t_prev in progress(schedule, desc=f"{sampler} sampling", leave=False):
            eps = eps_fn(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
            if sampler == "ddpm":
                x = self.ddpm_step(eps, x, t, randn() if t > 0 else None)
            elif sampler == "ddim":
                x = self.ddim_step(
                    eps,
                    x,
                    t,
                    t_prev,
                    eta,
                    randn() if eta > 0 else None,
                    use_clipped_model_output=True,
                )
            else:
                # The last step is first order (diffusers' lower_order_final): it lands on x0.
                x0 = self.predict_x0(x, torch.full((shape[0],), t, dtype=torch.long), eps).clamp(
                    -1, 1
                )
                x = self.dpm_solver_step(
                    x, x0, t, t_prev, *(history if history and t_prev >= 0 else (None, None))
                )
                history = (x0, t)
            if t_prev + 1 in record_at and t_prev + 1 < self.T:
                frames[t_prev + 1] = x.cpu()
        return x, frames


def guided_eps(
    model: Callable[..., torch.Tensor],
    digit: torch.Tensor,
    domain: torch.Tensor,
    null_digit: int,
    null_domain: int,
    guidance: float,
) -> EpsFn:
    """Classifier-free guidance: eps = eps_uncond + w * (eps_cond - eps_uncond).
    w = 0 is the unconditional model, w = 1 the conditional one; conditional and
    unconditional passes share one batch."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return model(x, t, digit, domain)
        if guidance == 0.0:
            return model(
                x, t, torch.full_like(digit, null_digit), torch.full_like(domain, null_domain)
            )
        eps_c, eps_u = model(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([digit, torch.full_like(digit, null_digit)]),
            torch.cat([domain, torch.full_like(domain, null_domain)]),
        ).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    return eps_fn
