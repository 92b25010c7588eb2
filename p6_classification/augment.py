"""The augmentation presets of the study, built from torchvision.transforms.v2.

Each preset maps a uint8 (3,32,32) image to a float32 one; the later presets stack up
(flip_crop -> cutout -> trivialaugment -> mixup_cutmix -> label_smoothing) so each row of
the study adds one idea. Evaluation never augments: it only converts (and normalises when
the preset trains on normalised images).

The presets made of flips, crops and cutout also come as a BatchAugment: the same transform
on a whole uint8 batch at once, on whatever device holds it. train.py uses it so that a GPU
trains from images kept on the GPU, with no loader workers (per-image transforms in worker
processes were the limit there); the per-image `train` stays the reference it is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from hw2_utils import to_device


@dataclass(frozen=True)
class BatchAugment:
    """Random horizontal flip, random crop of the zero- (or reflect-) padded image, scaling to [0, 1],
    normalisation and one cutout square, each optional, in the per-image presets' order;
    `draws` makes every random choice of a batch (from a CPU generator: the same on any
    device), `apply` carries them out."""

    flip: bool = False
    padding: int = 0  # crop offsets 0..2*padding of the padded image
    padding_mode: str = "constant"  # F.pad's: "constant" (zeros) or "reflect"
    mean: tuple[float, ...] | None = None  # normalise when given
    std: tuple[float, ...] | None = None
    cutout: int = 0  # side of the erased square (0 = none)

    def draws(self, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 5) int64: flip (0/1), crop top, crop left, cutout top, cutout left."""
        return torch.stack(
            [
                torch.randint(0, 2, (n,), generator=generator),
                *torch.randint(0, 2 * self.padding + 1, (2, n), generator=generator),
                *torch.randint(0, size - self.cutout + 1, (2, n), generator=generator),
            ],
            dim=1,
        )

    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """uint8 (N,C,H,W) -> float32, with `draws` (on the images' device) from draws()."""
        x = images
        n, _, h, w = x.shape
        if self.flip:
            x = torch.where(draws[:, 0].bool().view(n, 1, 1, 1), x.flip(-1), x)
        if self.padding:
            x = F.pad(x, (self.padding,) * 4, mode=self.padding_mode)
            rows = (
                (draws[:, 1, None] + torch.arange(h, device=x.device))
                .view(n, 1, h, 1)
                .expand(n, x.shape[1], h, x.shape[3])
            )
            x = x.gather(2, rows)
            cols = (
                (draws[:, 2, None] + torch.arange(w, device=x.device))
                .view(n, 1, 1, w)
                .expand(n, x.shape[1], h, w)
            )
            x = x.gather(3, cols)
        x = v2.functional.to_dtype(x, torch.float32, scale=True)
        if self.mean is not None:
            x = v2.functional.normalize(x, list(self.mean), list(self.std))
        if self.cutout:
            ys, xs = (
                torch.arange(h, device=x.device).view(1, h, 1),
                torch.arange(w, device=x.device).view(1, 1, w),
            )
            top, left = draws[:, 3, None, None], draws[:, 4, None, None]
            inside = (
                (ys >= top) & (ys < top + self.cutout) & (xs >= left) & (xs < left + self.cutout)
            )
            x = x.masked_fill(inside.unsqueeze(1), 0.0)
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        draws = self.draws(len(images), images.shape[-1], generator)
        return self.apply(images, to_device(draws, images.device))


@dataclass(frozen=True)
class Preset:
    name: str
    train: Callable  # per image, uint8 -> float32
    eval: Callable
    # per batch (images, int labels) -> (images, soft labels), e.g. MixUp
    batch: Callable | None
    label_smoothing: float
    # `train` on a whole uint8 batch, where the preset allows
    device_train: BatchAugment | None = None


CROP_PADDING = 4  # the standard CIFAR crop: 32x32 out of the image zero-padded by 4
# How the crop pads: zeros (torchvision's default) or the mirrored border (airbench's translate).
PADDING_MODES = ("constant", "reflect")
CUTOUT_SIDE = 16  # DeVries & Taylor's square for CIFAR-10: a quarter of the image

# name -> (one-line description, the per-image uint8 augmentations before conversion)
_GEOMETRY = {
    "none": ("no augmentation, pixels scaled to [0, 1]", []),
    "flip": ("random horizontal flip", [v2.RandomHorizontalFlip()]),
    "crop": (
        "random 32x32 crop of the image zero-padded by 4",
        [v2.RandomCrop(32, padding=CROP_PADDING)],
    ),
    "rotation": ("random rotation within +-15 degrees", [v2.RandomRotation(15)]),
    # A fixed zoom on the training images only: no diversity, and a scale mismatch with the
    # un-cropped test images; the study shows what that costs.
    "center_crop": (
        "centre 28x28 crop resized back to 32 (training only)",
        [v2.CenterCrop(28), v2.Resize(32)],
    ),
}
_FLIP_CROP = [v2.RandomHorizontalFlip(), v2.RandomCrop(32, padding=CROP_PADDING)]
# Cutout (DeVries & Taylor 2017): one 16x16 square per image, filled with the mean (0 after Normalize).
_CUTOUT = v2.RandomErasing(p=1.0, scale=((CUTOUT_SIDE / 32) ** 2,) * 2, ratio=(1.0, 1.0), value=0)
# The presets that BatchAugment can do, as its arguments (mean/std added when normalised).
_BATCHED = {
    "none": {},
    "flip": dict(flip=True),
    "crop": dict(padding=CROP_PADDING),
    "normalize": {},
    "flip_crop": dict(flip=True, padding=CROP_PADDING),
    "flip_crop_ls": dict(flip=True, padding=CROP_PADDING),
    "cutout": dict(flip=True, padding=CROP_PADDING, cutout=CUTOUT_SIDE),
}


DESCRIPTIONS = {
    **{name: text for name, (text, _) in _GEOMETRY.items()},
    "normalize": "per-channel mean/std normalisation only",
    "flip_crop": "flip + crop, normalised (the standard CIFAR recipe)",
    "flip_crop_ls": "flip_crop + label smoothing 0.1 (the earlier CPU model's)",
    "cutout": "flip_crop + cutout 16x16",
    "trivialaugment": "flip_crop + TrivialAugmentWide + cutout",
    "autoaugment": "flip_crop + AutoAugment (CIFAR-10 policy) + cutout",
    "mixup_cutmix": "trivialaugment + MixUp(0.2) or CutMix(1.0) per batch",
    "label_smoothing": "mixup_cutmix + label smoothing 0.1",
}
PRESETS = tuple(DESCRIPTIONS)


def build_preset(
    name: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int = 10,
    padding_mode: str = "constant",
) -> Preset:
    """The preset `name`; `padding_mode` (PADDING_MODES) is how its random crop pads."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}")
    preset = _per_image_preset(name, mean, std, num_classes)
    if padding_mode != "constant":
        preset = replace(preset, train=_with_padding_mode(preset.train, padding_mode))
    if name not in _BATCHED:
        return preset
    normalisation = {} if name in _GEOMETRY else dict(mean=tuple(mean), std=tuple(std))
    batched = {**_BATCHED[name], **normalisation}
    if batched.get("padding"):
        batched["padding_mode"] = padding_mode
    return replace(preset, device_train=BatchAugment(**batched))


def _with_padding_mode(transform: v2.Compose, padding_mode: str) -> v2.Compose:
    """`transform` with each RandomCrop padding by `padding_mode` (the shared ones untouched)."""
    return v2.Compose(
        [
            v2.RandomCrop(t.size, padding=t.padding, padding_mode=padding_mode)
            if isinstance(t, v2.RandomCrop)
            else t
            for t in transform.transforms
        ]
    )


def _per_image_preset(
    name: str, mean: tuple[float, ...], std: tuple[float, ...], num_classes: int
) -> Preset:
    if name not in DESCRIPTIONS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    to_float = v2.ToDtype(torch.float32, scale=True)
    normalize = v2.Normalize(mean, std)
    if name in _GEOMETRY:  # the single-transform rows: no normalisation, as in "none"
        augment = _GEOMETRY[name][1]
        return Preset(name, v2.Compose([*augment, to_float]), to_float, None, 0.0)
    evaluation = v2.Compose([to_float, normalize])
    if name == "normalize":
        return Preset(name, evaluation, evaluation, None, 0.0)
    if name in ("flip_crop", "flip_crop_ls", "cutout"):
        tail = [_CUTOUT] if name == "cutout" else []
        return Preset(
            name,
            v2.Compose([*_FLIP_CROP, to_float, normalize, *tail]),
            evaluation,
            None,
            0.1 if name == "flip_crop_ls" else 0.0,
        )
    policy = (
        v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
        if name == "autoaugment"
        else v2.TrivialAugmentWide()
    )
    train = v2.Compose([*_FLIP_CROP, policy, to_float, normalize, _CUTOUT])
    batch = None
    if name in ("mixup_cutmix", "label_smoothing"):
        batch = v2.RandomChoice(
            [
                v2.MixUp(alpha=0.2, num_classes=num_classes),
                v2.CutMix(alpha=1.0, num_classes=num_classes),
            ]
        )
    return Preset(name, train, evaluation, batch, 0.1 if name == "label_smoothing" else 0.0)
