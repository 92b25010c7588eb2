"""File handling the graders share: which files count as images, and opening them the
way the course scripts do (PIL, converted to RGB), with a one-line error when one is bad."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from hw2_utils import CLIError, require_dir

# The extensions the course's CLIP scripts accept (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def list_images(folder: str | os.PathLike, what: str, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; a CLIError if there are none."""
    root = require_dir(folder, what)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise CLIError(f"{what} {root} holds no images ({', '.join(extensions)})")
    return files


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at `path` decoded and converted to RGB, or a CLIError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CLIError(f"cannot read image {path}: {e}") from None


def check_same_names(left: Iterable[str], right: Iterable[str], left_what: str, right_what: str) -> None:
    """A CLIError naming (up to three of) the entries found on one side only."""
    left, right = set(left), set(right)
    for only, here, there in ((sorted(left - right), left_what, right_what),
                              (sorted(right - left), right_what, left_what)):
        if only:
            more = f" and {len(only) - 3} more" if len(only) > 3 else ""
            raise CLIError(f"{', '.join(only[:3])}{more}: in {here} but not in {there}")
