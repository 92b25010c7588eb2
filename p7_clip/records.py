"""What every P7 script writes next to its figures: a JSON record holding the numbers, the
exact command and the hardware (p7_clip/report.py quotes them), and Markdown tables."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

import hw2_utils
from hw2_utils import atomic_path


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)"


def save_json(path: str | Path, record: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def save_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_figure(fig, path: str | Path) -> None:
    """Every figure of this problem: 110 dpi, cropped to its content."""
    hw2_utils.save_figure(fig, path, dpi=110, tight=True)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on a grading machine)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
