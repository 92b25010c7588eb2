"""The network only: the course's face UNet (the classic DDPM UNet for 256x256 faces),
written from ../shared/specs/face_unet.md so that the course's `UNet.pt` state dict loads
into it with strict=True. Module names (down1..down18, mid1, mid2, up1..up23, out, time)
are the state dict's, which is why the layers are numbered flat instead of nested.

`base_channels` (128 in the real model) scales every width, so tests can run a narrow
copy of the same layout; GroupNorm always has 32 groups, hence it must be a multiple of 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Per resolution level: channel multiple of base_channels and whether its ResBlocks carry
# self-attention (only at H/16: 16x16 for 256x256 inputs).
LEVEL_MULTS = (1, 1, 2, 2, 4, 4)
ATTENTION_LEVELS = (4,)
DOWN_BLOCKS, UP_BLOCKS = 2, 3  # ResBlocks per level on each path
GROUPS = 32
DOWNSAMPLE_FACTOR = 2 ** (len(LEVEL_MULTS) - 1)  # 32: H and W must be divisible by it


class SinusoidalEmbedding(nn.Module):
    """cat(sin(t * f), cos(t * f)), f = exp(-ln(10000) * 2i / dim); `inv_freq` is a
    buffer because the real state dict stores it (time.0.inv_freq)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer(
            "inv_freq",
            torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim)),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.inv_freq.float()[None]  # float32 even in a half model
        return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, cout))
        self.norm2 = nn.GroupNorm(GROUPS, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        # the spec's order: norm2 after the time shift
        h = self.norm2(h + self.time(temb)[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head attention over all H*W positions, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, HW, C) each
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return self.out(o.transpose(1, 2).reshape(b, c, h, w)) + x


class Block(nn.Module):
    """A ResBlock, optionally followed by attention: keys `<name>.resblocks.*`, `<name>.attention.*`."""

    def __init__(self, cin: int, cout: int, time_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.resblocks = ResBlock(cin, cout, time_dim, dropout)
        self.attention = SelfAttention(cout) if attention else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.resblocks(x, temb)
        return self.attention(h) if self.attention is not None else h


def downsample(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1))


def upsample(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1)
    )


class FaceUNet(nn.Module):
    """eps_theta(x, t): x (B, 3, H, W) with H, W divisible by 32, t (B,) long in [0, 999]."""

    def __init__(self, base_channels: int = 128, dropout: float = 0.1):
        super().__init__()
        if base_channels <= 0 or base_channels % GROUPS:
            raise ValueError(
                f"base_channels must be a positive multiple of {GROUPS}, got {base_channels}"
            )
        self.base_channels = ch = base_channels
        time_dim = 4 * ch
        self.time = nn.Sequential(
            SinusoidalEmbedding(ch),
            nn.Linear(ch, time_dim),
            nn.SiLU(),
            nn.Linear(time_dim, time_dim),
        )

        def block(cin: int, cout: int, level: int) -> Block:
            return Block(cin, cout, time_dim, dropout, attention=level in ATTENTION_LEVELS)

        # Down path; every module's output is a skip, so record their widths in push order.
        downs: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        skips, width = [ch], ch
        for level, mult in enumerate(LEVEL_MULTS):
            for _ in range(DOWN_BLOCKS):
                downs.append(block(width, mult * ch, level))
                width = mult * ch
                skips.append(width)
            if level < len(LEVEL_MULTS) - 1:
                downs.append(downsample(width))
                skips.append(width)
        for i, module in enumerate(downs, 1):
            self.add_module(f"down{i}", module)
        self.n_down = len(downs)
        self.mid1 = block(width, width, ATTENTION_LEVELS[0])
        self.mid2 = Block(width, width, time_dim, dropout, attention=False)

        # Up path: each Block consumes the latest skip ([h, skip] along channels).
        ups: list[nn.Module] = []
        for level in reversed(range(len(LEVEL_MULTS))):
            mult = LEVEL_MULTS[level]
            for _ in range(UP_BLOCKS):
                ups.append(block(width + skips.pop(), mult * ch, level))
                width = mult * ch
            if level > 0:
                ups.append(upsample(width))
        for i, module in enumerate(ups, 1):
            self.add_module(f"up{i}", module)
        self.n_up = len(ups)
        self.out = nn.Sequential(
            nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % DOWNSAMPLE_FACTOR or x.shape[-1] % DOWNSAMPLE_FACTOR:
            raise ValueError(
                f"H and W must be divisible by {DOWNSAMPLE_FACTOR}, got {tuple(x.shape[-2:])}"
            )
        temb = self.time(t)
        h, stack = x, []
        for i in range(1, self.n_down + 1):
            module = getattr(self, f"down{i}")
            h = module(h, temb) if isinstance(module, Block) else module(h)
            stack.append(h)
        h = self.mid2(self.mid1(h, temb), temb)
        for i in range(1, self.n_up + 1):
            module = getattr(self, f"up{i}")
            h = (
                module(torch.cat([h, stack.pop()], dim=1), temb)
                if isinstance(module, Block)
                else module(h)
            )
        return self.out(h)
