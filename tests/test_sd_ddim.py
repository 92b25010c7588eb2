"""Our DDIM + CFG loop against diffusers' DDIMScheduler with SD v1's settings, and the
text-to-image contract: seeded bytes, batch-size independence, the fp32 fallback on NaN."""

from __future__ import annotations

import pytest
import torch

from hw2_utils import CLIError
from stable_diffusion.ddim import NoiseSchedule, guided_eps
from stable_diffusion.loader import V1_CONFIG_DIR
from stable_diffusion.pipeline import text_to_image
from stable_diffusion.tiny import build_tiny_sd

SCHEDULER_CONFIG = V1_CONFIG_DIR / "scheduler" / "scheduler_config.json"


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sd(seed=0)


def _reference():
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_pretrained(SCHEDULER_CONFIG.parent, local_files_only=True)


def test_schedule_and_q_sample_match_diffusers():
    ours, ref = NoiseSchedule.from_config(SCHEDULER_CONFIG), _reference()
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=0, atol=1e-6)
    x0, noise = (
        torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.randn(4, 4, 8, 8),
    )
    t = torch.tensor([0, 1, 500, 999])
    torch.testing.assert_close(
        ours.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5
    )


def _eps(x, t):  # any smooth function of (x, t) exercises the same step math
    return 0.3 * x + torch.sin(torch.tensor(t / 100.0))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_trajectory_matches_diffusers(eta):
    ours, ref = NoiseSchedule.from_config(SCHEDULER_CONFIG), _reference()
    ref.set_timesteps(50)
    assert ours.ddim_timesteps(50) == ref.timesteps.tolist()  # 981, 961, ..., 1
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours_x = ours.ddim_sample(
        _eps, x_T.clone(), 50, eta=eta, generator=torch.Generator().manual_seed(2)
    )
    x, gen = x_T.clone(), torch.Generator().manual_seed(2)
    for t in ref.timesteps:
        x = ref.step(_eps(x, int(t)), t, x, eta=eta, generator=gen).prev_sample
    torch.testing.assert_close(ours_x, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("clipped_eps", [False, True])
def test_ddim_step_matches_diffusers_with_use_clipped_model_output_either_way(clipped_eps):
    """Each step of the schedule from fresh inputs whose x0 leaves [-1, 1], eta = 0.5 with the same
    noise: SD never clips latents, so either value gives diffusers' step (which does not clip either)."""
    ours, ref = NoiseSchedule.from_config(SCHEDULER_CONFIG), _reference()
    assert not ref.config.clip_sample
    ref.set_timesteps(10)
    ts = ours.ddim_timesteps(10)
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        g = torch.Generator().manual_seed(t)
        x_t, eps = 3 * torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        expected = ref.step(
            eps,
            t,
            x_t,
            eta=0.5,
            use_clipped_model_output=clipped_eps,
            generator=torch.Generator().manual_seed(9),
        ).prev_sample
        # as diffusers draws it
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(9))
        got = ours.ddim_step(eps, x_t, t, t_prev, 0.5, noise, use_clipped_model_output=clipped_eps)
        # diffusers: a float32 schedule
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_guidance_combines_conditional_and_unconditional(tiny):
    cond, uncond = tiny.encode_text(["a red car"]), tiny.encode_text([""])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    e_c = tiny.unet(x, 500, encoder_hidden_states=cond).sample
    e_u = tiny.unet(x, 500, encoder_hidden_states=uncond).sample
    torch.testing.assert_close(
        guided_eps(tiny.unet, cond, uncond, 7.5)(x, 500),
        e_u + 7.5 * (e_c - e_u),
        rtol=1e-4,
        atol=1e-4,
    )
    torch.testing.assert_close(guided_eps(tiny.unet, cond, uncond, 1.0)(x, 500), e_c)


def test_images_are_seeded_and_independent_of_batch_size(tiny):
    a = text_to_image(tiny, "a dog", 3, seed=7, steps=3, batch_size=3)
    b = text_to_image(tiny, "a dog", 3, seed=7, steps=3, batch_size=1)
    c = text_to_image(tiny, "a dog", 3, seed=8, steps=3, batch_size=3)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    # batched vs single UNet calls differ by fp rounding only
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - c).abs().mean() > 1e-3


def test_nan_in_half_precision_reruns_the_batch_in_fp32(tiny, monkeypatch):
    sd = build_tiny_sd(seed=0).to(dtype=torch.bfloat16)
    decode = type(sd).decode

    def overflowing_decode(self, latents):
        images = decode(self, latents)
        return images * float("nan") if self.dtype != torch.float32 else images

    monkeypatch.setattr(type(sd), "decode", overflowing_decode)
    images = text_to_image(sd, "a dog", 2, seed=7, steps=2, batch_size=2)
    assert sd.dtype == torch.float32 and torch.isfinite(images).all()
    monkeypatch.setattr(
        type(sd),
        "decode",
        lambda self, latents: torch.full((len(latents), 3, 32, 32), float("nan")),
    )
    with pytest.raises(CLIError, match="float32"):
        text_to_image(sd, "a dog", 2, seed=7, steps=2, batch_size=2)
