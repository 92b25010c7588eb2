"""What P8 scripts write next to their images: JSON sidecars (every setting, the command, the
software and hardware; hw2_utils.save_json), CSV tables, and labelled image-grid figures."""

from __future__ import annotations

import csv
import json
import platform
import textwrap
from pathlib import Path

import torch

from hw2_utils import CLIError, atomic_path, describe_hardware, pyplot, require_file, save_figure


def environment(device: torch.device) -> dict:
    """describe_hardware plus the library versions: a sidecar's --replay gives the same bytes
    only with the same diffusers and transformers."""
    import diffusers
    import transformers

    return {
        "hardware": describe_hardware(device),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def read_json(path: str | Path) -> dict:
    path = require_file(path, "JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"{path} is not valid JSON ({e})") from None


def save_csv(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def image_grid(
    path: str | Path,
    rows: list[list],
    row_labels: list[str],
    col_labels: list[str] | None = None,
    title: str = "",
    frame_colors: list[list[str | None]] | None = None,
) -> None:
    """A figure of images (each (3,H,W) in [0,1], or a PIL image) with row/column labels and an
    optional coloured frame per image (gallery: green success, red failure)."""
    plt = pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.9 * n_cols + 1.2, 1.9 * n_rows + 0.4), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            image = row[j]
            ax.imshow(
                image.permute(1, 2, 0).clamp(0, 1).numpy()
                if isinstance(image, torch.Tensor)
                else image
            )
            color = frame_colors[i][j] if frame_colors else None
            for spine in ax.spines.values():
                spine.set_edgecolor(color or "black")
                spine.set_linewidth(4 if color else 0.5)
            if j == 0:  # wrapped: a long prompt would otherwise run past its row
                ax.set_ylabel("\n".join(textwrap.wrap(row_labels[i], 24)[:3]), fontsize=7)
            if i == 0 and col_labels:
                ax.set_title(col_labels[j], fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if title else 1))
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, tight=True)
