"""CIFAR-10 in memory as uint8 tensors (N,3,32,32), read by hw2_utils.load_cifar10 (torchvision's
`cifar-10-batches-py`, the shared official-pixel slice, or the shared whole-CIFAR-10 JPEG copy),
plus the honest train/val split, the matching of official-pixel images to their JPEG copies and
a plain folder of images for inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hw2_utils import CIFAR10_CLASSES, CLIError, load_cifar10, open_rgb

CLASSES = CIFAR10_CLASSES
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# 5,000 of CIFAR-10's 50,000 training images are held out for validation; a smaller set
# (the shared slice) keeps the same proportion.
VAL_FRACTION = 0.1
# The split is fixed across runs (independent of --seed) so every run is tuned on the same images.
SPLIT_SEED = 2024
# An official-pixel image and its JPEG copy differ by 3-8 of 255 on average (the data README, on
# the test slice; up to ~12 on the training slice): a "copy" further off than this is no copy.
MAX_COPY_MAD = 16.0
# Candidates per image ranked by squared distance (one matrix product) before the exact MAD.
MATCH_CANDIDATES = 8


@dataclass
class Cifar:
    train_images: torch.Tensor  # uint8 (N,3,32,32)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str


def _chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def load_cifar(path: str | Path, download: bool = False) -> Cifar:
    """Both splits of the CIFAR-10 at `path` (see hw2_utils.load_cifar10); `download` first
    fetches the official archive into `path` with torchvision when it is missing (online only)."""
    path = Path(path)
    if download and not path.suffix:
        from torchvision.datasets import CIFAR10

        root = path.parent if path.name == "cifar-10-batches-py" else path
        try:
            CIFAR10(str(root), train=True, download=True)
        except (RuntimeError, OSError) as e:
            raise CLIError(f"cannot download CIFAR-10 into {root} ({e})") from None
    (train_x, train_y), (test_x, test_y) = (
        load_cifar10(path, split) for split in ("train", "test")
    )
    return Cifar(
        _chw(train_x), torch.from_numpy(train_y), _chw(test_x), torch.from_numpy(test_y), str(path)
    )


def load_train_split(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (uint8 N,3,32,32) and labels of the CIFAR-10 at `path` alone (an
    .npz of official pixels needs no test split)."""
    images, labels = load_cifar10(path, "train")
    return _chw(images), torch.from_numpy(labels)


def split_train_val(images: torch.Tensor, labels: torch.Tensor, fraction: float = VAL_FRACTION):
    """(train_images, train_labels, val_images, val_labels): a fixed random `fraction` held out."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = round(len(labels) * fraction)
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]


class PixelMatch(NamedTuple):
    """For each official-pixel image: the index of its nearest JPEG copy among `images` (of its
    own class), the mean absolute difference to it and to the runner-up (0-255 scale)."""

    index: torch.Tensor  # int64 (N,)
    mad: torch.Tensor  # float32 (N,)
    runner_up_mad: torch.Tensor  # float32 (N,)


def match_copies(
    official: torch.Tensor,
    official_labels: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    candidates: int = MATCH_CANDIDATES,
) -> PixelMatch:
    """Match each official-pixel image (uint8 N,3,32,32) to its copy in `images` (uint8), among
    the images of the same label, by mean absolute difference. Per class, the `candidates`
    nearest by squared distance (a matrix product, seconds for all 50,000) are re-ranked by the
    exact MAD: JPEG noise of a few levels keeps the true copy far ahead of any other image."""
    index = torch.empty(len(official), dtype=torch.long)
    mad = torch.empty(len(official))
    runner_up = torch.empty(len(official))
    for label in official_labels.unique().tolist():
        rows = (official_labels == label).nonzero().squeeze(1)
        pool = (labels == label).nonzero().squeeze(1)
        if len(pool) < 2:
            raise ValueError(f"class {label}: fewer than two images to match against")
        a = official[rows].flatten(1).float()
        b = images[pool].flatten(1).float()
        squared = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)
        top = squared.topk(min(candidates, len(pool)), dim=1, largest=False).indices
        exact, order = (a[:, None] - b[top]).abs().mean(-1).sort(dim=1)
        index[rows] = pool[top.gather(1, order[:, :1]).squeeze(1)]
        mad[rows], runner_up[rows] = exact[:, 0], exact[:, 1]
    return PixelMatch(index, mad, runner_up)


def replace_with_official(
    images: torch.Tensor, labels: torch.Tensor, official: torch.Tensor, official_labels
) -> tuple[torch.Tensor, PixelMatch]:
    """A copy of `images` whose JPEG copies of the `official` images hold the official pixels
    instead, and the match; a CLIError unless every official image has a copy within
    MAX_COPY_MAD and no two share one."""
    match = match_copies(official, official_labels, images, labels)
    far = int((match.mad > MAX_COPY_MAD).sum())
    if far:
        raise CLIError(
            f"{far} of {len(official)} official-pixel images have no copy within MAD "
            f"{MAX_COPY_MAD:g} in the training set (max {match.mad.max():.1f}): not its source"
        )
    if len(match.index.unique()) != len(official):
        raise CLIError("official-pixel images share a copy: the match is not one-to-one")
    replaced = images.clone()
    replaced[match.index] = official
    return replaced, match


class ImageTensors(Dataset):
    """uint8 images with a torchvision v2 transform applied per image on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def load_images(files: list[Path], size: int = 32) -> torch.Tensor:
    """RGB images resized to size x size (CIFAR's input size), as uint8 (N,3,size,size)."""
    arrays = []
    for path in files:
        img = open_rgb(path)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(img))
    return _chw(np.stack(arrays))
