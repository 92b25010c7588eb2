"""Face images held in memory as uint8 (N, 3, 64, 64): 12 KB a face, 0.47 GB for the course's
38,464, so batches are plain indexing (on the GPU when training there) with no loader workers.

Two layouts, one per split name (`train`, `val`) under a data root:
  ROOT/train/*.png      the course's hw2_data/face: 64x64 CelebA crops, used as they are
  ROOT/train.npz        the shared celeba10k archives: aligned CelebA JPEGs at half resolution
                        (89x109), back to back (`jpeg`, `offsets`, `names`); each is cut to the
                        course's 64x64 face with the standard CelebA crop (CROP_BOX)
The val faces are the FID reference only: never trained on, never used to choose a checkpoint.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hw2_utils import CLIError, derived_seed, list_images, open_rgb, progress, to_device
from p4_gan.models import IMAGE_SIZE

# The standard CelebA face crop, 140x140 around (89, 121) of the 178x218 aligned image, at the
# archive's half scale (its README); resized to 64x64 it matches the course's faces.
CROP_BOX = (9.5, 25.5, 79.5, 95.5)


def split_source(root: str | os.PathLike, split: str) -> Path:
    """ROOT/split (a folder of images) or ROOT/split.npz (an archive), whichever exists."""
    root = Path(root)
    for candidate in (root / split, root / f"{split}.npz"):
        if candidate.exists():
            return candidate
    raise CLIError(
        f"no {split} faces under {root}: expected the folder {root / split} (course layout) "
        f"or the archive {root / f'{split}.npz'} (celeba10k)"
    )


def load_faces(source: str | os.PathLike, limit: int | None = None) -> torch.Tensor:
    """(N, 3, 64, 64) uint8 faces of a folder (sorted by name; other sizes resized bicubic) or
    of a celeba10k archive (in its order, cropped); `limit` keeps the first N."""
    source = Path(source)
    if source.suffix == ".npz":
        arrays = _archive_faces(source, limit)
    else:
        files = list_images(source, "face folder")[:limit]
        arrays = [
            np.asarray(_to_face(open_rgb(path)))
            for path in progress(files, desc="loading faces", leave=False)
        ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _to_face(image: Image.Image) -> Image.Image:
    if image.size == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)


def _archive_faces(path: Path, limit: int | None) -> list[np.ndarray]:
    if not path.is_file():
        raise CLIError(f"face archive not found: {path}")
    try:
        with np.load(path) as archive:
            jpeg, offsets = archive["jpeg"], archive["offsets"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CLIError(
            f"{path} is not a face archive with jpeg and offsets ({type(e).__name__})"
        ) from None
    count = len(offsets) - 1 if limit is None else min(limit, len(offsets) - 1)
    faces = []
    for i in progress(range(count), desc=f"decoding {path.name}", leave=False):
        with Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())) as image:
            faces.append(
                np.asarray(
                    image.convert("RGB").resize(
                        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC, box=CROP_BOX
                    )
                )
            )
    return faces


def batch(faces: torch.Tensor, indices: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """uint8 faces[indices] -> float in [-1, 1], mirrored left-right where `flips` is True.
    `indices` and `flips` may be on the CPU (drawn there); they are moved without a host sync."""
    x = faces[to_device(indices, faces.device)].float().div(127.5).sub(1.0)
    return torch.where(to_device(flips, x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch `epoch`, a pure function of (seed, epoch), so a run resumed at
    any step reads exactly the batches an uninterrupted run would have."""
    return torch.randperm(
        n, generator=torch.Generator().manual_seed(derived_seed(seed, "order", epoch))
    )
