"""(image, Canny edges, caption) triples from a COCO-format captions file, for ControlNet training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from hw2_utils import CLIError, derived_seed, error_summary, open_rgb, require_dir, require_file
from p8_controlnet.controls import canny, square


def read_captions(
    captions_json: str | Path, images_dir: str | Path
) -> list[tuple[Path, list[str]]]:
    """(image path, its captions) for every image of the json that exists in images_dir, sorted by file name."""
    images_dir = require_dir(images_dir, "COCO image folder")
    path = require_file(captions_json, "COCO captions json")
    try:
        data = json.loads(path.read_text())
        captions: dict[int, list[str]] = {}
        for a in data.get("annotations", []):
            captions.setdefault(a["image_id"], []).append(a["caption"].strip())
        pairs = sorted(
            (images_dir / im["file_name"], captions[im["id"]])
            for im in data.get("images", [])
            if im["id"] in captions and (images_dir / im["file_name"]).is_file()
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        # not JSON, or not COCO's captions layout
        raise CLIError(f"{path} is not a COCO captions json ({error_summary(e)})") from None
    if not pairs:
        raise CLIError(f"no image of {captions_json} with captions was found in {images_dir}")
    return pairs


class CannyCaptions(Dataset):
    """Item: pixels (3,S,S) in [-1,1], control (3,S,S) in {0,1} (Canny of the same crop) and one
    of the image's captions (COCO has 5), drawn as a function of (seed, epoch, index): each epoch
    sees another one, and a resumed run draws what an uninterrupted one would. Set `epoch` per epoch."""

    def __init__(self, pairs: list[tuple[Path, list[str]]], size: int, seed: int = 0):
        self.pairs, self.size, self.seed, self.epoch = pairs, size, seed, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        path, captions = self.pairs[i]
        image = open_rgb(path)
        pixels = (
            torch.from_numpy(np.array(square(image, self.size))).permute(2, 0, 1).float() / 127.5
            - 1
        )
        control = torch.from_numpy(np.array(canny(image, self.size))).permute(2, 0, 1).float() / 255
        caption = random.Random(derived_seed(self.seed, "caption", self.epoch, i)).choice(captions)
        return {"pixels": pixels, "control": control, "caption": caption}


def step_batch(dataset: CannyCaptions, step: int, batch_size: int, seed: int) -> dict:
    """The batch of 1-based `step`: epoch e visits the images in a permutation seeded by (seed, e),
    batch_size at a time (the remainder dropped), so the batches are a function of the step."""
    epoch, index = divmod(step - 1, len(dataset) // batch_size)
    order = torch.randperm(
        len(dataset), generator=torch.Generator().manual_seed(derived_seed(seed, "order", epoch))
    )
    dataset.epoch = epoch
    return default_collate(
        [dataset[int(i)] for i in order[index * batch_size : (index + 1) * batch_size]]
    )
