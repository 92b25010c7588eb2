"""The face folder (`hw2_data/face/train`: 38,464 CelebA crops in the course data) held in
memory as uint8: 64x64x3 bytes each, 0.47 GB for the course set, so batches are plain
indexing (on the GPU when training there) with no loader workers."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from hw2_utils import list_images, open_rgb, progress
from p4_gan.models import IMAGE_SIZE


def load_faces(folder: str | os.PathLike) -> torch.Tensor:
    """(N, 3, 64, 64) uint8 of every image in `folder`, sorted by name; other sizes are
    resized (bicubic) to 64x64."""
    files = list_images(folder, "face folder")
    arrays = []
    for path in progress(files, desc="loading faces", leave=False):
        image = open_rgb(path)
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def batch(faces: torch.Tensor, indices: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """uint8 faces[indices] -> float in [-1, 1], mirrored left-right where `flips` is True."""
    x = faces[indices.to(faces.device)].float().div(127.5).sub(1.0)
    return torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch `epoch`, a pure function of (seed, epoch), so a run resumed at
    any step reads exactly the batches an uninterrupted run would have."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
