"""Differentiable augmentation (Zhao et al. 2020, "DiffAugment"): the same random,
differentiable transforms are applied to every image D sees, real or fake, in both the D
and the G step, so D cannot overfit the finite training set while G still gets gradients
through the transforms. Written from the paper's description; every random draw comes from
the `generator` passed in, on the generator's device: a CPU generator (train.py's default) draws
the same numbers whatever device trains, and only the small draws travel (hw2_utils.to_device,
which does not stall the host on a GPU); a generator on the GPU (--fast-step) keeps every draw
there, so a captured step replays them. The grids and masks they parametrise are built on the
images' device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hw2_utils import to_device

TRANSLATION_RATIO = 1 / 8  # shift by up to 1/8 of the side: +-8 px at 64x64
CUTOUT_RATIO = 1 / 2  # erase a square of half the side


def _uniform(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, 1, 1) uniforms in [0, 1) on `like`'s device and dtype."""
    draw = torch.rand(n, 1, 1, 1, generator=generator, device=generator.device)
    return to_device(draw.to(like.dtype), like.device)


def color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per image."""
    n = len(x)
    x = x + (_uniform(n, generator, x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, generator, x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, generator, x) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a whole number of pixels in each axis, filling with zeros."""
    n, _, h, w = x.shape
    limit = round(min(h, w) * TRANSLATION_RATIO)
    on = generator.device
    shift = torch.randint(-limit, limit + 1, (n, 2), generator=generator, device=on).float()
    theta = torch.zeros(n, 2, 3, device=on)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    # affine_grid works in [-1, 1] coordinates: one pixel is 2/size; sampling at p - s moves content by +s.
    theta[:, 0, 2] = -2 * shift[:, 0] / w
    theta[:, 1, 2] = -2 * shift[:, 1] / h
    grid = F.affine_grid(to_device(theta, x.device), list(x.shape), align_corners=False).to(x.dtype)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero one square of side CUTOUT_RATIO * size per image, centred anywhere in it
    (so it may be clipped at the border)."""
    n, _, h, w = x.shape
    size_y, size_x = round(h * CUTOUT_RATIO), round(w * CUTOUT_RATIO)
    on = generator.device
    top = torch.randint(0, h, (n, 1, 1), generator=generator, device=on) - size_y // 2
    left = torch.randint(0, w, (n, 1, 1), generator=generator, device=on) - size_x // 2
    top, left = to_device(top, x.device), to_device(left, x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size_y) & (xs >= left) & (xs < left + size_x)
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTS = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(spec: str) -> tuple[str, ...]:
    """ "color,translation,cutout" -> a tuple of names; "" or "none" -> ()."""
    names = tuple(s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none")
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment op(s) {unknown}: use a comma-separated subset of {list(AUGMENTS)} or none"
        )
    return names


def diff_augment(
    x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator
) -> torch.Tensor:
    for name in policy:
        x = AUGMENTS[name](x, generator)
    return x
