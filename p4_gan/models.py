"""The two networks for 64x64 RGB faces, in one of two architectures (`GANConfig.arch`).

"dcgan" (Radford et al. 2016): G goes z (z_dim) -> 4x4 -> 8 -> 16 -> 32 -> 64 by stride-2
transposed convolutions, BN + ReLU between them, tanh at the end. D mirrors it with stride-2
convolutions and LeakyReLU(0.2), no pooling, and a final 4x4 convolution to one logit.

"resnet" (SNGAN's 64x64 networks, Miyato et al. 2018, as Mimicry builds them): G projects z
to 4x4x16c and doubles the side in four residual up-blocks (16c -> 8c -> 4c -> 2c -> c); D
halves it in five residual down-blocks (3 -> c -> 2c -> 4c -> 8c -> 16c, 64 -> 2) and sums the
last features over space into one linear logit. Residual paths keep gradients flowing through
the deeper nets; G keeps BN (pipeline.with_standing_stats freezes it for export).

`d_norm` picks D's normalisation: "batch" is the DCGAN paper's (none on the first layer; not
offered for resnet), "spectral" wraps every convolution and linear layer in spectral
normalisation (the improved model's hinge-loss critic), "none" is for WGAN-GP, whose
per-sample gradient penalty batch norm would couple across the batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

IMAGE_SIZE = 64
ARCHS = ("dcgan", "resnet")
D_NORMS = ("batch", "spectral", "none")


@dataclass(frozen=True)
class GANConfig:
    z_dim: int = 100  # the paper's z
    g_channels: int = 64  # G's last hidden width c (ngf); dcgan widths 8c..c, resnet 16c..c
    d_channels: int = 64  # D's first width c (ndf); dcgan widths c..8c, resnet c..16c
    d_norm: str = "batch"
    arch: str = "dcgan"  # last, with a default: configs saved before it existed load as dcgan

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.d_norm not in D_NORMS:
            raise ValueError(f"d_norm must be one of {D_NORMS}, got {self.d_norm!r}")
        if self.arch == "resnet" and self.d_norm == "batch":
            raise ValueError(
                "d_norm 'batch' is not offered for arch 'resnet' (its critic is SNGAN's): "
                "use d_norm 'spectral' or 'none' (--d-norm)"
            )
        if min(self.z_dim, self.g_channels, self.d_channels) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- DCGAN


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: conv weights ~ N(0, 0.02), BN scale ~ N(1, 0.02), BN shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def dcgan_generator(config: GANConfig) -> nn.Sequential:
    """Takes z as a (N, z_dim, 1, 1) image."""
    c = config.g_channels
    widths = [c * 8, c * 4, c * 2, c]
    layers = [
        nn.ConvTranspose2d(config.z_dim, widths[0], 4, 1, 0, bias=False),  # 1x1 -> 4x4
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(True),
    ]
    for w_in, w_out in zip(widths, widths[1:]):  # 4 -> 8 -> 16 -> 32
        layers += [
            nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w_out),
            nn.ReLU(True),
        ]
    layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]  # 32 -> 64
    net = nn.Sequential(*layers)
    dcgan_init(net)
    return net


def dcgan_discriminator(config: GANConfig) -> nn.Sequential:
    c = config.d_channels
    widths = [c, c * 2, c * 4, c * 8]
    # Without BN after them, the spectrally normalised and plain critics need the conv bias.
    bias = config.d_norm != "batch"
    layers = [nn.Conv2d(3, widths[0], 4, 2, 1, bias=bias), nn.LeakyReLU(0.2, True)]  # 64 -> 32
    for w_in, w_out in zip(widths, widths[1:]):  # 32 -> 16 -> 8 -> 4
        layers.append(nn.Conv2d(w_in, w_out, 4, 2, 1, bias=bias))
        if config.d_norm == "batch":
            layers.append(nn.BatchNorm2d(w_out))
        layers.append(nn.LeakyReLU(0.2, True))
    layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=bias))  # 4x4 -> one logit
    net = nn.Sequential(*layers)
    dcgan_init(net)
    return net


# --------------------------------------------------------------------------- ResNet (SNGAN)


# the 3x3 convs of the residual paths work on ReLU outputs, half of them zero
RESIDUAL_GAIN = math.sqrt(2)


def initialised(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> nn.Conv2d | nn.Linear:
    """`layer` with SNGAN's initialisation (also Mimicry's): Xavier-uniform weights scaled by
    `gain`, RESIDUAL_GAIN inside the residual paths and 1 elsewhere (shortcuts, linear ends), zero bias."""
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def conv3x3(w_in: int, w_out: int, gain: float = RESIDUAL_GAIN) -> nn.Conv2d:
    return initialised(nn.Conv2d(w_in, w_out, 3, 1, 1), gain)


def conv1x1(w_in: int, w_out: int) -> nn.Conv2d:
    return initialised(nn.Conv2d(w_in, w_out, 1))


class Residual(nn.Module):
    """residual(x) + shortcut(x), the block both ResNets are made of."""

    def __init__(self, residual: nn.Sequential, shortcut: nn.Sequential):
        super().__init__()
        self.residual, self.shortcut = residual, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


def up_block(w_in: int, w_out: int) -> Residual:
    """G's block, doubling the side: BN, ReLU, nearest x2, conv3x3, BN, ReLU, conv3x3; shortcut x2, conv1x1."""
    return Residual(
        nn.Sequential(
            nn.BatchNorm2d(w_in),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            conv3x3(w_in, w_out),
            nn.BatchNorm2d(w_out),
            nn.ReLU(),
            conv3x3(w_out, w_out),
        ),
        nn.Sequential(nn.Upsample(scale_factor=2), conv1x1(w_in, w_out)),
    )


def down_block(w_in: int, w_out: int) -> Residual:
    """D's block, halving the side: ReLU, conv3x3 (w_in wide, as SNGAN), ReLU, conv3x3, avgpool;
    shortcut conv1x1, avgpool."""
    return Residual(
        nn.Sequential(
            nn.ReLU(), conv3x3(w_in, w_in), nn.ReLU(), conv3x3(w_in, w_out), nn.AvgPool2d(2)
        ),
        nn.Sequential(conv1x1(w_in, w_out), nn.AvgPool2d(2)),
    )


def first_down_block(w_in: int, w_out: int) -> Residual:
    """SNGAN's "optimized" first block, on the image itself: no ReLU before the first conv (it
    would clip the image's negative half), and the shortcut pools before its 1x1 conv (the same
    map, both being linear, on a quarter of the pixels)."""
    return Residual(
        nn.Sequential(conv3x3(w_in, w_out), nn.ReLU(), conv3x3(w_out, w_out), nn.AvgPool2d(2)),
        nn.Sequential(nn.AvgPool2d(2), conv1x1(w_in, w_out)),
    )


class SumPool(nn.Module):
    """(N, C, H, W) -> (N, C): SNGAN's critic sums, not averages, its last features over space."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3))


def resnet_generator(config: GANConfig) -> nn.Sequential:
    """Takes z as (N, z_dim)."""
    c = config.g_channels
    widths = [c * 16, c * 8, c * 4, c * 2, c]
    return nn.Sequential(
        initialised(nn.Linear(config.z_dim, 4 * 4 * widths[0])),
        nn.Unflatten(1, (widths[0], 4, 4)),
        # 4 -> 8 -> 16 -> 32 -> 64
        *(up_block(w_in, w_out) for w_in, w_out in zip(widths, widths[1:])),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        conv3x3(c, 3, gain=1.0),
        nn.Tanh(),
    )


def resnet_discriminator(config: GANConfig) -> nn.Sequential:
    c = config.d_channels
    widths = [c, c * 2, c * 4, c * 8, c * 16]
    return nn.Sequential(
        first_down_block(3, c),  # 64 -> 32
        # 32 -> 16 -> 8 -> 4 -> 2
        *(down_block(w_in, w_out) for w_in, w_out in zip(widths, widths[1:])),
        nn.ReLU(),
        SumPool(),
        initialised(nn.Linear(widths[-1], 1)),
    )


# --------------------------------------------------------------------------- the two networks


class Generator(nn.Module):
    def __init__(self, config: GANConfig = GANConfig()):
        super().__init__()
        self.config = config
        self.net = dcgan_generator(config) if config.arch == "dcgan" else resnet_generator(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, z_dim) -> (N, 3, 64, 64) in [-1, 1]."""
        if self.config.arch == "dcgan":
            z = z[:, :, None, None]  # a 1x1 image for DCGAN's first transposed convolution
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig = GANConfig()):
        super().__init__()
        self.config = config
        self.net = (
            dcgan_discriminator(config) if config.arch == "dcgan" else resnet_discriminator(config)
        )
        # after the init, so the power iteration starts from the final weights
        if config.d_norm == "spectral":
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) -> (N,) logits (no sigmoid: the losses take logits)."""
        return self.net(x).flatten()
