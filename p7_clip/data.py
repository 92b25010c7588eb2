"""Readers for the P7 inputs: COCO val images with their captions, (image, text) pair lists
and image folders (CIFAR-10 comes from hw2_utils.load_cifar10). Every bad input is a one-line CLIError."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from hw2_utils import CLIError, require_dir, require_file


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: Path
    captions: tuple[str, ...]


def load_coco(root: str | Path, limit: int | None = 100, split: str = "val2017") -> list[CocoImage]:
    """The first `limit` images of `annotations/captions_{split}.json` (json order) with all
    their captions; every listed image file must exist under `{split}/`."""
    root = require_dir(root, "COCO root")
    ann = require_file(
        root / "annotations" / f"captions_{split}.json",
        "COCO captions json",
        "from annotations_trainval2017.zip on cocodataset.org",
    )
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
