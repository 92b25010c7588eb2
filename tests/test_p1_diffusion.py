"""P1's own DDPM/DDIM math against diffusers' schedulers on the same eps predictions,
and classifier-free guidance's two limits."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from p1_ddpm.diffusion import GaussianDiffusion, guided_eps
from p1_ddpm.model import ConditionalUNet, UNetConfig

TOL = 1e-5
D = GaussianDiffusion()


def _tensors(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, 8, 8, generator=g).clamp(-1, 1),
        torch.randn(n, 3, 8, 8, generator=g),
        torch.randn(n, 3, 8, 8, generator=g),
    )


def _ddpm(clip: bool) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type="fixed_small",
        clip_sample=clip,
        prediction_type="epsilon",
    )


def test_add_noise_matches_diffusers():
    x0, noise, _ = _tensors()
    t = torch.tensor([0, 10, 500, 999])
    ref = _ddpm(False).add_noise(x0, noise, t)
    assert torch.allclose(D.q_sample(x0, t, noise), ref, atol=TOL)


@pytest.mark.parametrize("t", [999, 500, 37, 1])
def test_posterior_variance_matches_diffusers(t):
    s = _ddpm(False)
    assert abs(D.posterior_variance[t].item() - s._get_variance(t).item()) < TOL


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [999, 600, 20, 0])
def test_ddpm_step_matches_diffusers(t, clip):
    x_t, eps, z = _tensors(t)
    s = _ddpm(clip)
    s.set_timesteps(1000)
    g = torch.Generator().manual_seed(1)
    ref = s.step(eps, t, x_t, generator=g).prev_sample
    # what diffusers drew
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1))
    ours = D.ddpm_step(eps, x_t, t, noise, clip_x0=clip)
    assert torch.allclose(ours, ref, atol=TOL)


def test_ddpm_mean_is_algorithm_2_without_clipping():
    x_t, eps, _ = _tensors(3)
    t = 400
    beta, alpha, ab = D.betas[t].item(), D.alphas[t].item(), D.alphas_cumprod[t].item()
    algo2 = (x_t - beta / (1 - ab) ** 0.5 * eps) / alpha**0.5
    assert torch.allclose(
        D.ddpm_step(eps, x_t, t, torch.zeros_like(x_t), clip_x0=False), algo2, atol=TOL
    )


@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("eta,clip", [(0.0, False), (0.0, True), (0.5, False), (0.5, True)])
@pytest.mark.parametrize("clipped_eps", [False, True])
def test_ddim_steps_match_diffusers(steps, eta, clip, clipped_eps):
    """Every step of the schedule, each from fresh N(0, I) inputs (a chained run with a
    fake model diverges to huge values where only relative error means anything), with
    diffusers' use_clipped_model_output both ways."""
    s = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=clip,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    s.set_timesteps(steps)
    ts = D.ddim_timesteps(steps)
    assert s.timesteps.tolist() == ts
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x_t, eps, noise = _tensors(t)
        ref = s.step(
            eps,
            t,
            x_t,
            eta=eta,
            variance_noise=noise if eta else None,
            use_clipped_model_output=clipped_eps,
        ).prev_sample
        ours = D.ddim_step(
            eps,
            x_t,
            t,
            t_prev,
            eta=eta,
            noise=noise,
            clip_x0=clip,
            use_clipped_model_output=clipped_eps,
        )
        assert torch.allclose(ours, ref, atol=TOL), t


def test_ddim_sampler_rederives_eps_from_the_clipped_x0():
    """P1's graded images come from sample() with use_clipped_model_output=True: the same chain
    of steps, and visibly not the chain that keeps the model's eps."""

    def eps_fn(x, t):  # large enough that x0 leaves [-1, 1], so the option matters
        return 2 * torch.tanh(3 * x) + t.float().view(-1, 1, 1, 1) / 1000

    ts = D.ddim_timesteps(5)
    x_T = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    chains = {}
    for clipped_eps in (False, True):
        x = x_T
        for t, t_prev in zip(ts, ts[1:] + [-1]):
            x = D.ddim_step(
                eps_fn(x, torch.full((2,), t)), x, t, t_prev, use_clipped_model_output=clipped_eps
            )
        chains[clipped_eps] = x
    sampled, _ = D.sample(
        eps_fn, (2, 3, 8, 8), torch.Generator().manual_seed(0), torch.device("cpu"), "ddim", 5
    )
    assert torch.equal(sampled, chains[True])
    assert (chains[True] - chains[False]).abs().max() > 1e-2


def test_cfg_limits_are_the_unconditional_and_conditional_models():
    torch.manual_seed(0)
    model = ConditionalUNet(
        UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(), dropout=0.0)
    ).eval()
    x, t = torch.randn(3, 3, 28, 28), torch.tensor([5, 500, 900])
    digit, domain = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 0])
    with torch.no_grad():
        # Make the label embeddings matter (they start random but the blocks start as identity).
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        cond = model(x, t, digit, domain)
        uncond = model(x, t, torch.full_like(digit, 10), torch.full_like(domain, 2))
        w0 = guided_eps(model, digit, domain, 10, 2, 0.0)(x, t)
        w1 = guided_eps(model, digit, domain, 10, 2, 1.0)(x, t)
        w3 = guided_eps(model, digit, domain, 10, 2, 3.0)(x, t)
    assert not torch.allclose(cond, uncond, atol=1e-4)
    assert torch.allclose(w0, uncond, atol=1e-6) and torch.allclose(w1, cond, atol=1e-6)
    # The batched cond+uncond path must agree with the separate passes.
    assert torch.allclose(w3, uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_min_snr_weighting_matches_diffusers_snr_and_reduces_to_plain_loss():
    from diffusers.training_utils import compute_snr

    t = torch.tensor([0, 1, 37, 500, 999])
    # diffusers keeps abar in fp32; SNR = abar / (1 - abar) amplifies its rounding near t = 0.
    assert torch.allclose(D.snr(t), compute_snr(_ddpm(False), t).float(), rtol=5e-4)

    torch.manual_seed(0)
    model = ConditionalUNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=()))
    x0 = torch.rand(6, 3, 8, 8) * 2 - 1
    digit, domain = torch.arange(6) % 10, torch.zeros(6, dtype=torch.long)

    def loss(gamma, seed=3):
        with torch.no_grad():
            return D.training_loss(
                model,
                x0,
                digit,
                domain,
                generator=torch.Generator().manual_seed(seed),
                snr_gamma=gamma,
            )

    assert torch.allclose(loss(1e12), loss(None), rtol=1e-6)  # weight min(snr, inf) / snr = 1
    # the same draws as training_loss, then the weights by hand
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        per_sample = ((model(D.q_sample(x0, t, noise), t, digit, domain) - noise) ** 2).mean(
            dim=(1, 2, 3)
        )
    snr = D.snr(t)
    assert torch.allclose(
        loss(5.0), (per_sample * torch.clamp(snr, max=5.0) / snr).mean(), rtol=1e-5
    )


def _dpm(clip: bool):
    from diffusers import DPMSolverMultistepScheduler

    # thresholding with sample_max_value 1 clamps x0 to [-1, 1]: the ratio's quantile is then
    # clamped to [1, 1], so it is exactly the static clipping our sampler does.
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="epsilon",
        thresholding=clip,
        sample_max_value=1.0,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
    )


@pytest.mark.parametrize("steps", [50, 20, 10])
@pytest.mark.parametrize("clip", [False, True])
def test_dpm_solver_pp_2m_steps_match_diffusers(steps, clip):
    """Every step of DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler on the same
    timesteps, each from fresh inputs; both keep the previous step's x0 (its multistep state).
    clip=True is static thresholding of x0 to [-1, 1], what the sampler does on images."""
    s = _dpm(clip)
    s.set_timesteps(steps)
    ts = D.dpm_timesteps(steps)
    assert s.timesteps.tolist() == ts
    history = None
    for t, t_next in zip(ts, ts[1:] + [-1]):
        x_t, eps, _ = _tensors(t)
        x_t = x_t * 3  # a noisy sample's scale
        ref = s.step(eps, t, x_t).prev_sample
        x0 = D.predict_x0(x_t, torch.full((len(x_t),), t), eps)
        x0 = x0.clamp(-1, 1) if clip else x0
        ours = D.dpm_solver_step(
            x_t, x0, t, t_next, *(history if history and t_next >= 0 else (None, None))
        )
        history = (x0, t)
        # Relative to the step's scale: diffusers keeps its schedule in float32, ours in float64
        # (measured worst: 5.5e-6 at t = 40 of 50 steps).
        assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max(), t


def test_dpm_solver_sampler_runs_the_schedule_and_lands_on_x0():
    """With a model that predicts the noise of a fixed image exactly, every x0 prediction is that
    image, so the solver must return it (within float error)."""
    target = torch.rand(2, 3, 8, 8) * 2 - 1

    def eps_fn(x, t):
        ab = D.alphas_cumprod[t[0].item()].item()
        return (x - ab**0.5 * target) / (1 - ab) ** 0.5

    out, _ = D.sample(
        eps_fn,
        (2, 3, 8, 8),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        sampler="dpm++",
        steps=7,
    )
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)
