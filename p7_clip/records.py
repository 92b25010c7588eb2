"""What P7 scripts write beside their JSON records (hw2_utils.save_json, with the command and
hw2_utils.describe_hardware; p7_clip/report.py quotes them): Markdown tables and text files,
and matplotlib on a file-only backend."""
from __future__ import annotations

from pathlib import Path

from hw2_utils import atomic_path


def save_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on a grading machine)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
