"""The two networks, DCGAN-shaped (Radford et al. 2016) for 64x64 RGB faces.

G: z (z_dim) -> 4x4 -> 8 -> 16 -> 32 -> 64 by stride-2 transposed convolutions, BN + ReLU
between them, tanh at the end. D mirrors it with stride-2 convolutions and LeakyReLU(0.2),
no pooling, and a final 4x4 convolution to one logit. `d_norm` picks D's normalisation:
"batch" is the paper's (none on the first layer), "spectral" wraps every convolution in
spectral normalisation instead (the improved model's hinge-loss critic), "none" is for
WGAN-GP, whose per-sample gradient penalty batch norm would couple across the batch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

IMAGE_SIZE = 64
D_NORMS = ("batch", "spectral", "none")


@dataclass(frozen=True)
class GANConfig:
    z_dim: int = 100        # the paper's z
    g_channels: int = 64    # G's last hidden width (ngf); widths are 8x, 4x, 2x, 1x of it
    d_channels: int = 64    # D's first width (ndf); 1x, 2x, 4x, 8x
    d_norm: str = "batch"

    def __post_init__(self):
        if self.d_norm not in D_NORMS:
            raise ValueError(f"d_norm must be one of {D_NORMS}, got {self.d_norm!r}")
        if min(self.z_dim, self.g_channels, self.d_channels) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


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


class Generator(nn.Module):
    def __init__(self, config: GANConfig = GANConfig()):
        super().__init__()
        self.config = config
        c = config.g_channels
        widths = [c * 8, c * 4, c * 2, c]
        layers = [nn.ConvTranspose2d(config.z_dim, widths[0], 4, 1, 0, bias=False),  # 1x1 -> 4x4
                  nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for w_in, w_out in zip(widths, widths[1:]):  # 4 -> 8 -> 16 -> 32
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]  # 32 -> 64
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, z_dim) -> (N, 3, 64, 64) in [-1, 1]."""
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig = GANConfig()):
        super().__init__()
        self.config = config
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
        self.net = nn.Sequential(*layers)
        dcgan_init(self)
        if config.d_norm == "spectral":  # after the init, so the power iteration starts from the final weights
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) -> (N,) logits (no sigmoid: the losses take logits)."""
        return self.net(x).flatten()
