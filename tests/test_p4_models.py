"""P4 networks: output shapes and ranges, the DCGAN paper's layer pattern and parameter
count, and what the improved critic changes (spectral norm instead of batch norm)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from p4_gan.models import Discriminator, GANConfig, Generator

TINY = dict(g_channels=4, d_channels=4)


@pytest.mark.parametrize("d_norm", ["batch", "spectral", "none"])
def test_shapes_and_ranges(d_norm):
    config = GANConfig(d_norm=d_norm, **TINY)
    g, d = Generator(config), Discriminator(config)
    images = g(torch.randn(5, 100))
    assert images.shape == (5, 3, 64, 64)
    assert images.abs().max() <= 1.0 and images.std() > 0  # tanh output, not constant
    assert d(images).shape == (5,)


def test_full_size_dcgan_matches_the_paper_architecture():
    g, d = Generator(), Discriminator()
    # The paper's G for 64x64 (z=100, 1024->512->256->128 scaled to ngf=64: 512->256->128->64) and its D.
    assert sum(p.numel() for p in g.parameters()) == 3_576_704
    assert sum(p.numel() for p in d.parameters()) == 2_765_568
    g_convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in g_convs] == [512, 256, 128, 64, 3]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == 4 and isinstance(
        g.net[-1], nn.Tanh
    )
    d_layers = list(d.net)
    assert not any(
        isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in d.modules()
    )
    assert [m.stride for m in d_layers if isinstance(m, nn.Conv2d)] == [(2, 2)] * 4 + [(1, 1)]
    # no BN on the first layer
    assert isinstance(d_layers[1], nn.LeakyReLU) and d_layers[1].negative_slope == 0.2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3


def test_improved_critic_is_spectrally_normalised_without_batch_norm():
    d = Discriminator(GANConfig(d_norm="spectral", **TINY)).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert all(hasattr(m, "parametrizations") for m in convs)
    x = torch.randn(4, 3, 64, 64)
    for _ in range(200):  # one power iteration per training-mode call: let it converge
        d(x)
    for conv in convs:  # the effective weight's largest singular value is 1
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=1e-3)


def test_config_rejects_unknown_norm():
    with pytest.raises(ValueError, match="d_norm"):
        GANConfig(d_norm="layer")
