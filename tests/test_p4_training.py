"""P4 training mechanics on tiny models: which weights each step may touch, the WGAN-GP
penalty, DiffAugment, standing BN statistics, D learning on real faces, and train.py
resuming to exactly the run it interrupted (and, marked slow, under torchrun)."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn as nn

from conftest import require_shared, run_torchrun
from hw2_utils import CLIError
from p4_gan import train
from p4_gan.data import batch, load_faces
from p4_gan.diffaugment import diff_augment, parse_policy, translation
from p4_gan.gan import GANTrainer, Recipe, discriminator_loss, generator_loss, gradient_penalty
from p4_gan.models import GANConfig, Generator
from p4_gan.pipeline import load_generator, with_standing_stats

TINY = dict(g_channels=4, d_channels=4)
SETUPS = {  # name: (config, recipe)
    "dcgan": (GANConfig(**TINY), Recipe()),
    "improved": (
        GANConfig(d_norm="spectral", **TINY),
        Recipe(loss="hinge", diffaug=parse_policy("color,translation,cutout"), ema_decay=0.999),
    ),
    "wgan-gp": (GANConfig(d_norm="none", **TINY), Recipe(loss="wgan-gp")),
}


@pytest.fixture(scope="module")
def real_faces():
    return load_faces(require_shared("hw2_data", "face", "train"))


def _snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(module: nn.Module, before: list[torch.Tensor]) -> list[bool]:
    """Per weight tensor (biases left out: D's last bias cancels in the hinge and Wasserstein
    losses, so its gradient can be exactly 0)."""
    return [not torch.equal(p, q) for p, q in zip(module.parameters(), before) if p.ndim > 1]


@pytest.mark.parametrize("name", SETUPS)
def test_d_step_changes_only_d_and_g_step_only_g(name):
    trainer = GANTrainer(*SETUPS[name], seed=0)
    real = torch.rand(6, 3, 64, 64) * 2 - 1
    g0, d0 = _snapshot(trainer.G), _snapshot(trainer.D)
    stats = trainer.d_step(real)
    assert all(_changed(trainer.D, d0)) and not any(_changed(trainer.G, g0))
    assert ("gp" in stats) == (name == "wgan-gp")

    g0, d0 = _snapshot(trainer.G), _snapshot(trainer.D)
    trainer.g_step(6)
    assert all(_changed(trainer.G, g0)) and not any(_changed(trainer.D, d0))
    # unfrozen again for the next D step
    assert all(p.requires_grad for p in trainer.D.parameters())
    if trainer.ema is not None:  # the EMA moved towards G but is not G
        assert any(
            not torch.equal(e, p) for e, p in zip(trainer.ema.parameters(), trainer.G.parameters())
        )


class LinearCritic(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return (x * self.weight).flatten(1).sum(1)


def test_gradient_penalty_is_zero_for_unit_norm_gradients_and_grows_with_the_norm():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 4, 4, generator=g)
    w = torch.randn(3, 4, 4, generator=g)
    unit = LinearCritic(w / w.norm())
    assert gradient_penalty(unit, real, fake, g).item() == pytest.approx(0.0, abs=1e-10)
    double = LinearCritic(2 * w / w.norm())  # gradient norm 2 everywhere: (2 - 1)^2 = 1
    penalty = gradient_penalty(double, real, fake, g)
    assert penalty.item() == pytest.approx(1.0, rel=1e-5)
    # the penalty trains the critic (double backward): d/dw of (||w|| - 1)^2 = 2 (||w|| - 1) w/||w||
    penalty.backward()
    expected = 2 * (2 - 1) * w / w.norm()
    assert torch.allclose(double.weight.grad, expected, atol=1e-5)


def test_losses_match_their_definitions():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    bce = nn.functional.binary_cross_entropy_with_logits
    assert discriminator_loss("dcgan", real, fake).item() == pytest.approx(
        (bce(real, torch.ones(2)) + bce(fake, torch.zeros(2))).item()
    )
    assert generator_loss("dcgan", fake).item() == pytest.approx(bce(fake, torch.ones(2)).item())
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx(
        (0 + 2) / 2 + (1.5 + 0) / 2
    )
    assert discriminator_loss("wgan-gp", real, fake).item() == pytest.approx(-1.25 - 0.5)


def test_wgan_gp_with_batch_norm_critic_is_refused():
    with pytest.raises(ValueError, match="batch norm"):
        GANTrainer(GANConfig(**TINY), Recipe(loss="wgan-gp"))


def test_translation_shifts_by_whole_pixels_with_zero_fill():
    x = torch.rand(4, 3, 64, 64) + 1  # strictly positive, so fill is recognisable
    y = translation(x, torch.Generator().manual_seed(3))
    shifts = set()
    for xi, yi in zip(x, y):
        matches = [
            (dy, dx)
            for dy in range(-8, 9)
            for dx in range(-8, 9)
            if torch.equal(yi, _shifted(xi, dy, dx))
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 1  # each image draws its own shift


def _shifted(x, dy, dx):
    out = torch.zeros_like(x)
    h, w = x.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_diffaugment_is_seeded_and_differentiable():
    policy = parse_policy("color,translation,cutout")
    x = torch.rand(4, 3, 64, 64, requires_grad=True)
    a = diff_augment(x, policy, torch.Generator().manual_seed(1))
    assert torch.equal(a, diff_augment(x, policy, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, diff_augment(x, policy, torch.Generator().manual_seed(2)))
    erased = (
        (diff_augment(x, ("cutout",), torch.Generator().manual_seed(1)) == 0)
        .all(1)
        .float()
        .mean((1, 2))
    )
    # a 32x32 square, clipped by the border to at least 16x16
    assert ((erased > 0.06) & (erased <= 0.25)).all()
    a.sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        parse_policy("color,flip")


def test_standing_stats_make_eval_outputs_match_training_mode_batches():
    g = Generator(GANConfig(**TINY)).train()
    z = torch.randn(256, 100, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        batch_mode = g(z)  # also one momentum step of the running stats from (mean 0, var 1)
    scale = batch_mode.abs().mean()
    frozen = with_standing_stats(g)
    assert not frozen.training and g.training  # a copy: the training G is untouched
    with torch.no_grad():
        assert (frozen(z) - batch_mode).abs().mean() < 0.05 * scale
        # what eval() gives without them
        assert (g.eval()(z) - batch_mode).abs().mean() > 0.5 * scale
        assert torch.equal(frozen(z[:3]), frozen(z)[:3])  # an image depends on its own z only


def test_discriminator_learns_to_separate_real_faces(real_faces):
    trainer = GANTrainer(GANConfig(**TINY), Recipe(lr=1e-3), seed=0)
    real = batch(
        real_faces, torch.arange(len(real_faces)), torch.zeros(len(real_faces), dtype=torch.bool)
    )
    losses = [trainer.d_step(real)["d_loss"].item() for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def _train(out, *extra):
    train.main(
        [
            "--preset",
            "improved",
            "--data",
            str(require_shared("hw2_data", "face")),
            "--out",
            str(out),
            "--g-channels",
            "4",
            "--d-channels",
            "4",
            "--batch-size",
            "8",
            "--fid-every",
            "0",
            "--log-every",
            "1",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    _train(tmp_path / "straight", "--epochs", "2")
    _train(tmp_path / "resumed", "--epochs", "1", "--ckpt-every", "2")
    _train(tmp_path / "resumed", "--epochs", "2")
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["trainer"]
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["trainer"]
    for part in ("G", "D", "ema"):
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key}"
    rows = list(csv.DictReader((tmp_path / "resumed" / "log.csv").open()))
    # 24 faces / 8 = 3 steps per epoch, no duplicates
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert sorted(p.name for p in (tmp_path / "resumed" / "samples").iterdir()) == [
        "epoch0001.png",
        "epoch0002.png",
    ]
    generator, meta = load_generator(tmp_path / "resumed" / "model.pt")
    assert meta["step"] == 6 and meta["preset"] == "improved" and not generator.training


def test_resume_refuses_a_different_model(tmp_path):
    _train(tmp_path / "run", "--epochs", "1")
    with pytest.raises(CLIError, match="belongs to another run"):
        train.main(
            [
                "--preset",
                "dcgan",
                "--data",
                str(require_shared("hw2_data", "face")),
                "--out",
                str(tmp_path / "run"),
                "--g-channels",
                "4",
                "--d-channels",
                "4",
                "--batch-size",
                "8",
                "--fid-every",
                "0",
                "--device",
                "cpu",
            ]
        )


@pytest.mark.slow  # ~25 s of process start-up on a 2-core CPU
def test_torchrun_two_ranks_train_in_sync(tmp_path):
    # train.py checks at every checkpoint that all ranks hold identical G and D weights and
    # raises otherwise; the penalty's double backward and the frozen-D G step both take part.
    run_torchrun(
        [
            "-m",
            "p4_gan.train",
            "--preset",
            "improved",
            "--loss",
            "wgan-gp",
            "--d-norm",
            "none",
            "--d-steps",
            "2",
            "--data",
            str(require_shared("hw2_data", "face")),
            "--out",
            str(tmp_path),
            "--g-channels",
            "4",
            "--d-channels",
            "4",
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--ckpt-every",
            "1",
            "--fid-every",
            "0",
            "--log-every",
            "1",
            "--device",
            "cpu",
        ],
        timeout=300,
    )
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [bool(r["g_loss"]) for r in rows] == [False, True] * 3  # one G step per two D steps
