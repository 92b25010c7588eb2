"""The augmentation presets of the study, built from torchvision.transforms.v2.

Each preset maps a uint8 (3,32,32) image to a float32 one; the later presets stack up
(flip_crop -> cutout -> trivialaugment -> mixup_cutmix -> label_smoothing) so each row of
the study adds one idea. Evaluation never augments: it only converts (and normalises when
the preset trains on normalised images).
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class Preset:
    name: str
    train: Callable             # per image, uint8 -> float32
    eval: Callable
    batch: Callable | None      # per batch (images, int labels) -> (images, soft labels), e.g. MixUp
    label_smoothing: float


# name -> (one-line description, the per-image uint8 augmentations before conversion)
_GEOMETRY = {
    "none": ("no augmentation, pixels scaled to [0, 1]", []),
    "flip": ("random horizontal flip", [v2.RandomHorizontalFlip()]),
    "crop": ("random 32x32 crop of the image zero-padded by 4", [v2.RandomCrop(32, padding=4)]),
    "rotation": ("random rotation within +-15 degrees", [v2.RandomRotation(15)]),
    # A fixed zoom on the training images only: no diversity, and a scale mismatch with the
    # un-cropped test images; the study shows what that costs.
    "center_crop": ("centre 28x28 crop resized back to 32 (training only)", [v2.CenterCrop(28), v2.Resize(32)]),
}
_FLIP_CROP = [v2.RandomHorizontalFlip(), v2.RandomCrop(32, padding=4)]
# Cutout (DeVries & Taylor 2017): one 16x16 square per image, filled with the mean (0 after Normalize).
_CUTOUT = v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0)


DESCRIPTIONS = {**{name: text for name, (text, _) in _GEOMETRY.items()},
                "normalize": "per-channel mean/std normalisation only",
                "flip_crop": "flip + crop, normalised (the standard CIFAR recipe)",
                "flip_crop_ls": "flip_crop + label smoothing 0.1 (the shipped model's)",
                "cutout": "flip_crop + cutout 16x16",
                "trivialaugment": "flip_crop + TrivialAugmentWide + cutout",
                "autoaugment": "flip_crop + AutoAugment (CIFAR-10 policy) + cutout",
                "mixup_cutmix": "trivialaugment + MixUp(0.2) or CutMix(1.0) per batch",
                "label_smoothing": "mixup_cutmix + label smoothing 0.1"}
PRESETS = tuple(DESCRIPTIONS)


def build_preset(name: str, mean: tuple[float, ...], std: tuple[float, ...], num_classes: int = 10) -> Preset:
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
        return Preset(name, v2.Compose([*_FLIP_CROP, to_float, normalize, *tail]), evaluation, None,
                      0.1 if name == "flip_crop_ls" else 0.0)
    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if name == "autoaugment" else v2.TrivialAugmentWide()
    train = v2.Compose([*_FLIP_CROP, policy, to_float, normalize, _CUTOUT])
    batch = None
    if name in ("mixup_cutmix", "label_smoothing"):
        batch = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=num_classes),
                                 v2.CutMix(alpha=1.0, num_classes=num_classes)])
    return Preset(name, train, evaluation, batch, 0.1 if name == "label_smoothing" else 0.0)
