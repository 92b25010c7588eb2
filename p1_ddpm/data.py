"""Digits in the course layout, `<root>/<domain>/{data/, train.csv}` with header
`image_name,label`, loaded once into memory (15k images of 28x28x3 are ~35 MB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hw2_utils import CLIError, open_rgb, read_label_csv


def parse_domains(specs: list[str], data_root: str | Path) -> list[tuple[str, Path]]:
    """`name` means `<data_root>/name`; `name=PATH` points anywhere. Order = domain index."""
    out = []
    for spec in specs:
        name, _, path = spec.partition("=")
        folder = Path(path) if path else Path(data_root) / name
        if not (folder / "train.csv").is_file():
            raise CLIError(
                f"domain {name!r}: {folder / 'train.csv'} not found "
                "(expected the course layout <domain>/{data/, train.csv}; see get_dataset.sh)"
            )
        out.append((name, folder))
    if len({n for n, _ in out}) != len(out):
        raise CLIError(f"duplicate domain names in {specs}")
    return out


def load_split(folder: Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N,3,28,28) and int64 labels; grayscale domains become 3-channel. A bad
    row, a label outside 0-9 or an unreadable image is a CLIError naming the file."""
    table = read_label_csv(folder / f"{split}.csv", f"{folder.name} {split} table")
    bad = next((name for name, label in table.items() if not 0 <= label <= 9), None)
    if bad is not None:
        raise CLIError(f"{folder / f'{split}.csv'}: label {table[bad]} of {bad} is not a digit 0-9")
    images = np.stack(
        [np.asarray(open_rgb(folder / "data" / name).resize((28, 28))) for name in table]
    )
    labels = torch.tensor(list(table.values()))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def digit_domain_dataset(
    domains: list[tuple[str, Path]], repeats: list[int] | None = None
) -> TensorDataset:
    """(image in [-1,1], digit, domain index) over all domains' train splits; domain i's
    images appear repeats[i] times per epoch (oversampling a harder domain)."""
    repeats = repeats or [1] * len(domains)
    if len(repeats) != len(domains) or min(repeats) < 1:
        raise CLIError(
            f"--repeat needs one positive count per domain ({len(domains)}), got {repeats}"
        )
    images, digits, domain_ids = [], [], []
    for index, ((_, folder), k) in enumerate(zip(domains, repeats)):
        x, y = load_split(folder)
        images.append(x.repeat(k, 1, 1, 1))
        digits.append(y.repeat(k))
        domain_ids.append(torch.full_like(digits[-1], index))
    x = torch.cat(images).float().div(127.5).sub(1.0)
    return TensorDataset(x, torch.cat(digits), torch.cat(domain_ids))
