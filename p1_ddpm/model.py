"""The network only: a small UNet for 28x28 RGB digits conditioned on (timestep, digit,
domain). Both labels have an extra "null" index so classifier-free guidance can drop them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class UNetConfig:
    num_digits: int = 10
    num_domains: int = 2
    # Sized for CPU training: 2.67 M parameters (python -m bench.p1_ddpm --speed times a step).
    # Width grows where the maps are small, so extra capacity costs little:
    # 28x28x32 -> 14x14x64 -> 7x7x128.
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (2,)  # self-attention only at 7x7, where it is cheap
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of integer timesteps, (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(32, cin // 4), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale and shift (FiLM)
        self.norm2 = nn.GroupNorm(min(32, cout // 4), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(32, channels // 4), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        a = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.out(a.transpose(-1, -2).reshape(n, c, h, w))


class ConditionalUNet(nn.Module):
    """eps_theta(x_t, t, digit, domain). Index `num_digits` / `num_domains` means "no label"."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or UNetConfig()
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.null_digit, self.null_domain = cfg.num_digits, cfg.num_domains
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.digit_emb = nn.Embedding(cfg.num_digits + 1, emb_dim)
        self.domain_emb = nn.Embedding(cfg.num_domains + 1, emb_dim)
        self.stem = nn.Conv2d(3, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.blocks_per_level):
                self.down.append(self._block(cur, ch * mult, emb_dim, level))
                cur = ch * mult
                skips.append(cur)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)

        self.mid = nn.ModuleList(
            [
                ResBlock(cur, cur, emb_dim, cfg.dropout),
                SelfAttention(cur),
                ResBlock(cur, cur, emb_dim, cfg.dropout),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(self._block(cur + skips.pop(), ch * mult, emb_dim, level))
                cur = ch * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(
            nn.GroupNorm(min(32, cur // 4), cur), nn.SiLU(), nn.Conv2d(cur, 3, 3, padding=1)
        )

    def _block(self, cin: int, cout: int, emb_dim: int, level: int) -> nn.Module:
        res = ResBlock(cin, cout, emb_dim, self.config.dropout)
        if level in self.config.attention_levels:
            return nn.ModuleList([res, SelfAttention(cout)])
        return nn.ModuleList([res])

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, digit: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        emb = emb + self.digit_emb(digit) + self.domain_emb(domain)

        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.Upsample):
                h = layer(h)
            else:
                h = self._run(layer, torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)

    @staticmethod
    def _run(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.Conv2d):  # downsampling
            return layer(h)
        h = layer[0](h, emb)
        return layer[1](h) if len(layer) > 1 else h
