"""P2 DDIM against diffusers' DDIMScheduler (same alphas, same timesteps, same eps model,
same injected noise), the course's schedule, determinism, and slerp/lerp."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from p2_ddim.analysis import lerp, slerp
from p2_ddim.ddim import ddim_sample, ddim_step, linear_alphas_cumprod, uniform_timesteps


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A cheap eps model that depends on both x (spatially mixed) and t, so a wrong
    timestep or a wrong x at any step changes the result."""
    mixed = 0.6 * x + 0.3 * x.roll(1, dims=-1) - 0.2 * x.roll(1, dims=-2)
    return torch.tanh(mixed) + 0.3 * torch.sin(t.float() / 97.0)[:, None, None, None]


def diffusers_ddim(x_T, eta, clip, clipped_eps=False, noise_seed=0):
    """diffusers' DDIM configured like the course: linear betas 1e-4..0.02, leading spacing
    with steps_offset=1 (981..1), set_alpha_to_one=False (last step lands on alpha_bar[0])."""
    s = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=clip,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    # diffusers builds its schedule in float32; give it the same float64 alphas as ours
    # (test_schedule_matches_diffusers checks the two agree to float32 precision).
    s.alphas_cumprod = linear_alphas_cumprod()
    s.final_alpha_cumprod = s.alphas_cumprod[0]
    s.set_timesteps(50)
    generator, x = torch.Generator().manual_seed(noise_seed), x_T
    for t in s.timesteps:
        eps = toy_eps(x, torch.full((x.shape[0],), int(t)))
        # drawn exactly like ours
        noise = torch.randn(x.shape, generator=generator) if eta > 0 else None
        x = s.step(
            eps, t, x, eta=eta, variance_noise=noise, use_clipped_model_output=clipped_eps
        ).prev_sample
    return x


@pytest.fixture(scope="module")
def x_T() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_schedule_matches_diffusers():
    ours = uniform_timesteps(50)
    assert ours[:3] == [981, 961, 941] and ours[-2:] == [21, 1] and len(ours) == 50
    s = DDIMScheduler(
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        steps_offset=1,
        set_alpha_to_one=False,
    )
    s.set_timesteps(50)
    assert s.timesteps.tolist() == ours
    alphas = linear_alphas_cumprod()
    assert alphas.dtype == torch.float64 and alphas.shape == (1000,)
    assert alphas[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    assert torch.allclose(alphas.float(), s.alphas_cumprod, rtol=1e-5, atol=0)


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("clipped_eps", [False, True])
def test_eta0_equals_diffusers(x_T, clip, clipped_eps):
    ours = ddim_sample(toy_eps, x_T, eta=0.0, clip_x0=clip, use_clipped_model_output=clipped_eps)
    ref = diffusers_ddim(x_T, eta=0.0, clip=clip, clipped_eps=clipped_eps)
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("clipped_eps", [False, True])
def test_eta_half_equals_diffusers_given_the_same_noise(x_T, clip, clipped_eps):
    ours = ddim_sample(
        toy_eps,
        x_T,
        eta=0.5,
        clip_x0=clip,
        use_clipped_model_output=clipped_eps,
        generator=torch.Generator().manual_seed(7),
    )
    ref = diffusers_ddim(x_T, eta=0.5, clip=clip, clipped_eps=clipped_eps, noise_seed=7)
    assert (ours - ref).abs().max().item() <= 1e-5
    # the noise mattered
    assert (ours - ddim_sample(toy_eps, x_T, eta=0.0, clip_x0=clip)).abs().max() > 1e-2


def test_default_keeps_the_models_eps_as_the_course_does(x_T):
    """P2's outputs (the course-exact MSE) use the default, use_clipped_model_output=False; the
    option must make a difference where x0 is clipped, or the default would not matter."""
    assert torch.equal(
        ddim_sample(toy_eps, x_T), ddim_sample(toy_eps, x_T, use_clipped_model_output=False)
    )
    assert (
        ddim_sample(toy_eps, x_T) - ddim_sample(toy_eps, x_T, use_clipped_model_output=True)
    ).abs().max() > 1e-3


def test_determinism_and_seeds(x_T):
    a = ddim_sample(toy_eps, x_T)
    # eta 0 draws nothing
    assert torch.equal(a, ddim_sample(toy_eps, x_T, generator=torch.Generator().manual_seed(123)))
    b = ddim_sample(toy_eps, x_T, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        b, ddim_sample(toy_eps, x_T, eta=1.0, generator=torch.Generator().manual_seed(1))
    )
    assert not torch.allclose(
        b, ddim_sample(toy_eps, x_T, eta=1.0, generator=torch.Generator().manual_seed(2))
    )
    with pytest.raises(ValueError, match="seeded generator"):
        ddim_sample(toy_eps, x_T, eta=0.5)


def test_explicit_timesteps_chain_steps_and_end_on_alpha_bar_0(x_T):
    ab = linear_alphas_cumprod()
    x = x_T
    for t, prev in ((900, 400), (400, 3), (3, 0)):  # the last step goes to alpha_bar[0]
        x = ddim_step(toy_eps(x, torch.full((2,), t)), x, ab[t], ab[prev])
    assert torch.equal(ddim_sample(toy_eps, x_T, timesteps=[900, 400, 3]), x)
    for bad in ([1, 500], [1000, 1], [], [500, 500]):
        with pytest.raises(ValueError):
            ddim_sample(toy_eps, x_T, timesteps=bad)


def test_slerp_endpoints_norm_and_lerp_shrinks():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 32, 32, generator=g), torch.randn(3, 32, 32, generator=g)
    x1 = x1 * x0.norm() / x1.norm()  # equal norms
    assert torch.allclose(slerp(x0, x1, 0.0), x0, atol=1e-6)
    assert torch.allclose(slerp(x0, x1, 1.0), x1, atol=1e-6)
    assert slerp(x0, x1, 0.5).norm().item() == pytest.approx(x0.norm().item(), rel=1e-5)
    # the midpoint is symmetric
    assert torch.allclose(slerp(x0, x1, 0.5), slerp(x1, x0, 0.5), atol=1e-5)
    assert lerp(x0, x1, 0.5).norm() < 0.8 * x0.norm()  # about 1/sqrt(2) for independent noises
    # parallel: falls back to lerp
    assert torch.equal(slerp(x0, 2 * x0, 0.25), lerp(x0, 2 * x0, 0.25))
