"""Digit images for DANN: the course layout (`<root>/<set>/{data/, train.csv, val.csv}`)
for training, a bare folder of images for inference. Every image becomes 3x28x28 (grayscale
digits such as USPS are repeated over the channels) normalised to [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import v2

from hw2_utils import (
    CLIError,
    open_rgb,
    progress,
    read_label_csv,
)

TO_TENSOR = v2.Compose(
    [
        v2.Resize((28, 28), antialias=True),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * 3, [0.5] * 3),
    ]
)


def load_image(path: Path) -> torch.Tensor:
    """One digit as 3x28x28 in [-1, 1]; hw2_utils.open_rgb scales 16-bit and float images to
    8 bits (Pillow's own convert("RGB") would clip them to white)."""
    return TO_TENSOR(open_rgb(path))


def domain_folder(spec: str, data_root: str | Path) -> tuple[str, Path]:
    """`name` means `<data_root>/<name>`; `name=PATH` points anywhere, e.g. the whole MNIST-M
    (`mnistm=../shared/data/mnistm_full/digits/mnistm`) beside the course's USPS."""
    name, _, path = spec.partition("=")
    if not name:
        raise CLIError(f"domain {spec!r}: expected NAME or NAME=PATH")
    return name, Path(path) if path else Path(data_root) / name


def load_split(folder: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of `<folder>/<split>.csv` as one tensor (N,3,28,28) plus labels."""
    folder = Path(folder)
    table = folder / f"{split}.csv"
    if not table.is_file():
        raise CLIError(
            f"{table} not found (expected the course layout <set>/{{data/, train.csv, val.csv}}; "
            "see get_dataset.sh)"
        )
    rows = read_label_csv(table, f"{folder.name} {split} table")
    bad = next((name for name, label in rows.items() if not 0 <= label <= 9), None)
    if bad is not None:
        raise CLIError(f"{table}: label {rows[bad]} of {bad} is not a digit 0-9")
    images = torch.stack(
        [
            load_image(folder / "data" / name)
            for name in progress(rows, desc=f"{folder.name} {split}", leave=False)
        ]
    )
    return images, torch.tensor(list(rows.values()))
