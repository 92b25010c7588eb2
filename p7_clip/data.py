"""Readers for the P7 inputs: CIFAR-10 test images, COCO val images with their captions,
(image, text) pair lists and image folders. Every bad input is a one-line CLIError."""
from __future__ import annotations

import csv
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hw2_utils import CLIError, require_dir, require_file

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_cifar10_test(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 RGB and (N,) int64 labels, in file order, from either an .npz with
    `test_images`/`test_labels` (the shared slice) or the official `cifar-10-batches-py/` folder."""
    return _load_cifar10(path, "test", limit)


def load_cifar10_train(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training split, as load_cifar10_test: `train_images`/`train_labels` of an .npz or
    data_batch_1..5 of the official folder."""
    return _load_cifar10(path, "train", limit)


def _load_cifar10(path: str | Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if limit is not None and limit < 1:
        raise CLIError(f"--limit {limit}: need at least one image")
    path = Path(path)
    if path.is_dir():
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        batches = []
        for name in names:
            with open(require_file(path / name, f"CIFAR-10 {split} batch", "download cifar-10-python.tar.gz and unpack it"), "rb") as f:
                batches.append(pickle.load(f, encoding="bytes"))
        images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([np.asarray(b[b"labels"]) for b in batches])
    else:
        with np.load(require_file(path, "CIFAR-10 npz")) as z:
            if f"{split}_images" not in z or f"{split}_labels" not in z:
                raise CLIError(f"{path} must hold {split}_images and {split}_labels arrays")
            images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise CLIError(f"{path}: expected (N, 32, 32, 3) {split} images and N labels, got {images.shape} and {labels.shape}")
    return images[:limit].astype(np.uint8), labels[:limit].astype(np.int64)


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: Path
    captions: tuple[str, ...]


def load_coco(root: str | Path, limit: int | None = 100, split: str = "val2017") -> list[CocoImage]:
    """The first `limit` images of `annotations/captions_{split}.json` (json order) with all
    their captions; every listed image file must exist under `{split}/`."""
    root = require_dir(root, "COCO root")
    ann = require_file(root / "annotations" / f"captions_{split}.json", "COCO captions json",
                       "from annotations_trainval2017.zip on cocodataset.org")
    try:
        data = json.loads(ann.read_text())
        captions: dict[int, list[str]] = {}
        for a in data["annotations"]:
            captions.setdefault(int(a["image_id"]), []).append(" ".join(a["caption"].split()))
        images = data["images"][:limit]
    except (ValueError, KeyError, TypeError) as e:
        raise CLIError(f"{ann} is not a COCO captions json ({e})") from None
    out = []
    for im in images:
        path = require_file(root / split / im["file_name"], "COCO image")
        if im["id"] not in captions:
            raise CLIError(f"{ann}: image {im['id']} has no caption")
        out.append(CocoImage(int(im["id"]), path, tuple(captions[im["id"]])))
    if not out:
        raise CLIError(f"{ann} lists no images")
    return out


def read_pairs(path: str | Path) -> list[tuple[Path, str]]:
    """(image path, text) rows of a CSV with header `image,text`; image paths relative to the CSV."""
    path = require_file(path, "pairs CSV")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "text"} <= set(rows[0]):
        raise CLIError(f"{path} must be a CSV with header image,text and at least one row")
    return [(require_file(path.parent / r["image"], "image in pairs CSV"), r["text"]) for r in rows]


