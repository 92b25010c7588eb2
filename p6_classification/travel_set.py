"""Recipe A's data in one folder small enough to go with a GPU call (64 MiB with the code):

    python -m p6_classification.travel_set --out .device/data/cifar10_recipe_a   # the shared data's defaults

OUT/train.npz holds the 50,000 training images as train.py's --official-pixels makes them (the
5,085 of the slice's official pixels in place of their JPEG copies, matched one to one: data.py),
OUT/test.npz the slice's 1,017 official-pixel test images; both in the shared JPEG archive's
layout, the official pixels stored as PNG (lossless). Why not the sources themselves: the JPEG
archive (50 MB), its 10,000-image test set (10 MB) and the slice (17 MB, its pixels already
compressed) do not fit beside the code; this folder is ~55 MB. On the GPU, `train.py --preset
recipe_a --data OUT --official-pixels ""` then trains on the same 50,000 images and its test
accuracy is the official-pixel one; the JPEG test set is scored here afterwards (infer.py).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hw2_utils import (
    CIFAR10_CLASSES,
    HelpFormatter,
    add_overwrite_option,
    check_replaceable,
    output_dir,
    run_cli,
)
from p6_classification.data import load_cifar, load_train_split, replace_with_official


def _jpeg_archive(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["jpeg"], z["offsets"]


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _write(path: Path, encoded: list[bytes], labels: torch.Tensor) -> None:
    offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
    with open(path, "wb") as f:
        np.savez(
            f,
            jpeg=np.frombuffer(b"".join(encoded), np.uint8),
            offsets=offsets,
            labels=labels.numpy().astype(np.int64),
            classes=np.array(CIFAR10_CLASSES),
        )


NAMES = ("train.npz", "test.npz")


def write_travel_set(data: Path, official: Path, out: Path, overwrite: bool = False) -> dict:
    """OUT/train.npz and OUT/test.npz (module docstring), published together; returns their
    image counts and sizes."""
    check_replaceable(out, NAMES, overwrite)  # before the minute of work, not after
    cifar = load_cifar(data)
    official_x, official_y = load_train_split(official)
    replaced, match = replace_with_official(
        cifar.train_images, cifar.train_labels, official_x, official_y
    )
    jpeg, offsets = _jpeg_archive(data / "train.npz")
    encoded = [jpeg[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
    for i in match.index.tolist():  # the JPEG bytes of a replaced image give way to its pixels
        encoded[i] = _png(replaced[i])
    test = load_cifar(official)
    with output_dir(out, NAMES, overwrite=overwrite) as stage:
        _write(stage / "train.npz", encoded, cifar.train_labels)
        _write(stage / "test.npz", [_png(x) for x in test.test_images], test.test_labels)
        sizes = {name: (stage / name).stat().st_size for name in NAMES}
    return {
        "train": len(encoded),
        "official_train": len(match.index),
        "test": len(test.test_labels),
        **sizes,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10_full", help="the JPEG archive folder")
    p.add_argument(
        "--official-pixels",
        default="../shared/data/cifar10/cifar10_slice.npz",
        help="the official-pixel slice",
    )
    p.add_argument(
        "--out", required=True, help="the folder to write (e.g. .device/data/cifar10_recipe_a)"
    )
    add_overwrite_option(p)
    args = p.parse_args(argv)
    out = Path(args.out)
    written = write_travel_set(Path(args.data), Path(args.official_pixels), out, args.overwrite)
    mib = (written["train.npz"] + written["test.npz"]) / 2**20
    print(
        f"{out}: {written['train']} training images ({written['official_train']} official pixels), "
        f"{written['test']} official-pixel test images, {mib:.1f} MiB"
    )
    return written


if __name__ == "__main__":
    run_cli(main)
