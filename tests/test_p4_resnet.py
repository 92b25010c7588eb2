"""P4's ResNet option (SNGAN's 64x64 networks): shapes and sizes, spectral norm on every
layer of the critic, the configurations it refuses, export with standing BN statistics,
training steps, and train.py's per-epoch generator snapshots."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import require_shared
from hw2_utils import CLIError
from p4_gan import train
from p4_gan.diffaugment import parse_policy
from p4_gan.gan import GANTrainer, Recipe
from p4_gan.models import Discriminator, GANConfig, Generator, Residual
from p4_gan.pipeline import load_generator, save_generator, with_standing_stats

TINY = GANConfig(g_channels=4, d_channels=4, d_norm="spectral", arch="resnet")
IMPROVED = Recipe(loss="hinge", diffaug=parse_policy("color,translation,cutout"), ema_decay=0.999)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _z(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 100, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d_norm", ["spectral", "none"])
def test_shapes_and_ranges(d_norm):
    config = GANConfig(g_channels=4, d_channels=4, d_norm=d_norm, arch="resnet")
    g, d = Generator(config), Discriminator(config)
    images = g(_z(5))
    assert images.shape == (5, 3, 64, 64)
    assert images.abs().max() <= 1.0 and images.std() > 0.05  # tanh output, not constant
    logits = d(images)
    assert logits.shape == (5,) and torch.isfinite(logits).all()


def test_sizes_at_32_and_64_channels():
    # 4 residual up-blocks in G (4 -> 64), the optimised first block and 4 down-blocks in D (64 -> 2).
    small = GANConfig(g_channels=32, d_channels=32, d_norm="spectral", arch="resnet")
    g, d = Generator(small), Discriminator(small)
    # train.py's --help says ~3.4 M and 2.5 M
    assert 3.2e6 < _count(g) < 3.5e6 and 2.4e6 < _count(d) < 2.7e6
    assert sum(isinstance(m, Residual) for m in g.modules()) == 4
    assert sum(isinstance(m, Residual) for m in d.modules()) == 5
    assert [
        m.out_channels for m in g.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ] == [256, 128, 64, 32]
    assert [
        m.out_channels for m in d.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ] == [32, 64, 128, 256, 512]
    with torch.device("meta"):  # the full size without allocating it
        default = GANConfig(d_norm="spectral", arch="resnet")
        assert (
            11.5e6 < _count(Generator(default)) < 12.1e6
            and 9.9e6 < _count(Discriminator(default)) < 10.4e6
        )


def test_critic_is_spectrally_normalised_everywhere_or_nowhere():
    layers = [m for m in Discriminator(TINY).modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5 * 3 + 1  # three convs per block, one linear
    assert all(hasattr(m, "parametrizations") for m in layers)
    plain = Discriminator(GANConfig(g_channels=4, d_channels=4, d_norm="none", arch="resnet"))
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_batch_norm_critic_and_unknown_arch_are_refused(tmp_path):
    with pytest.raises(ValueError, match="d_norm 'batch' is not offered for arch 'resnet'"):
        GANConfig(arch="resnet")
    with pytest.raises(ValueError, match="arch must be one of"):
        GANConfig(arch="stylegan")
    # --preset dcgan's critic has batch norm
    with pytest.raises(CLIError, match="d_norm 'batch' is not offered"):
        train.main(
            [
                "--preset",
                "dcgan",
                "--model",
                "resnet",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "run"),
                "--device",
                "cpu",
            ]
        )


def test_configs_saved_before_arch_existed_load_as_dcgan(tmp_path):
    old = GANConfig(g_channels=4, d_channels=4).to_dict()
    del old["arch"]
    assert GANConfig(**old).arch == "dcgan"
    path = tmp_path / "old.pt"
    save_generator(path, with_standing_stats(Generator(GANConfig(**old))), {"model": "dcgan"})
    state = torch.load(path, weights_only=False)
    del state["config"]["arch"]
    torch.save(state, path)
    generator, _ = load_generator(path)
    assert generator.config.arch == "dcgan"


def test_export_round_trip_with_standing_stats(tmp_path):
    g = Generator(TINY).train()
    frozen = with_standing_stats(g)
    z = _z(2, seed=1)
    with torch.no_grad():
        # Training-mode BN mixes the batch: an image changes with its neighbours...
        assert not torch.allclose(g(z)[:1], g(z[:1]), atol=1e-3)
        # ...the frozen statistics make it a function of its own z only (up to the last bits,
        # which a matrix product's blocking may change with the batch size).
        pair = frozen(z)
        assert torch.allclose(pair[:1], frozen(z[:1]), atol=1e-5) and torch.allclose(
            pair[1:], frozen(z[1:]), atol=1e-5
        )
    save_generator(tmp_path / "g.pt", frozen, {"model": "improved", "step": 0})
    loaded, _ = load_generator(tmp_path / "g.pt")
    assert loaded.config == TINY and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(z), pair)


def _stepped(seed: int) -> tuple[GANTrainer, dict[str, torch.Tensor]]:
    """A trainer after one D step on a fixed batch and one G step, and the steps' statistics."""
    trainer = GANTrainer(TINY, IMPROVED, seed=seed)
    real = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 2 - 1
    stats = {**trainer.d_step(real), **trainer.g_step(4)}
    return trainer, stats


def test_training_steps_move_both_networks_reproducibly():
    fresh = GANTrainer(TINY, IMPROVED, seed=0)
    trainer, stats = _stepped(seed=0)
    assert all(torch.isfinite(v) for v in stats.values())
    # weight tensors (biases may get no gradient)
    for new, old in ((trainer.G, fresh.G), (trainer.D, fresh.D)):
        assert all(
            not torch.equal(p, q) for p, q in zip(new.parameters(), old.parameters()) if p.ndim > 1
        )
    (again, _), (other, _) = _stepped(seed=0), _stepped(seed=1)
    for net in ("G", "D", "ema"):
        assert all(
            torch.equal(p, q)
            for p, q in zip(
                getattr(trainer, net).state_dict().values(),
                getattr(again, net).state_dict().values(),
            )
        ), net
    assert not torch.equal(next(trainer.G.parameters()), next(other.G.parameters()))


def test_train_py_writes_a_loadable_snapshot_every_epoch(tmp_path):
    train.main(
        [
            "--preset",
            "improved",
            "--model",
            "resnet",
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
            "--snapshot-every",
            "1",
            "--sample-every",
            "0",
            "--fid-every",
            "0",
            "--device",
            "cpu",
        ]
    )
    names = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    # nothing half-written left beside them
    assert names == ["generator_epoch0001.pt", "generator_epoch0002.pt"]
    first, meta1 = load_generator(tmp_path / "snapshots" / names[0])
    last, meta2 = load_generator(tmp_path / "snapshots" / names[1])
    final, _ = load_generator(tmp_path / "model.pt")
    assert last.config.arch == "resnet" and (
        meta1["epoch"],
        meta1["step"],
        meta2["epoch"],
        meta2["step"],
    ) == (1, 3, 2, 6)
    z = _z(3)
    with torch.no_grad():
        assert torch.equal(last(z), final(z))  # the last snapshot is the exported model.pt
        assert not torch.equal(first(z), last(z))  # the first was taken an epoch earlier
