"""CIFAR-10 in memory as uint8 tensors (N,3,32,32), read by hw2_utils.load_cifar10 (torchvision's
`cifar-10-batches-py`, the shared official-pixel slice, or the shared whole-CIFAR-10 JPEG copy),
plus the honest train/val split and a plain folder of images for inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def split_train_val(images: torch.Tensor, labels: torch.Tensor, fraction: float = VAL_FRACTION):
    """(train_images, train_labels, val_images, val_labels): a fixed random `fraction` held out."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = round(len(labels) * fraction)
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]


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
