"""The P3 section of the report, built only from files under RUNS/p3 (never from memory):

    RUNS/p3/<run>/log.csv, model.pt (learned embeds), samples/   train.py --out RUNS/p3/<run>
    RUNS/p3/clip_zeroshot.json, clip_zeroshot_ensemble.json        clip_zeroshot.py --json ...
    RUNS/p3/multi_concept/**.png                                   infer.py with a two-token json

What is missing is reported as missing, with the command that would produce it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from hw2_utils import markdown_table, missing, read_record, record_errors


def _training(p3: Path) -> list[str]:
    runs = sorted(log.parent for log in p3.glob("*/log.csv"))
    if not runs:
        return [
            missing(
                "Textual Inversion runs",
                "python -m p3_textual_inversion.train ... --out RUNS/p3/<run>",
            )
        ]
    table, figures = [], []
    for run in runs:
        with open(run / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))  # train.py's LOG_FIELDS: step, loss, shift, seconds
        if not rows:
            continue
        with record_errors(run / "log.csv"):
            losses = [float(r["loss"]) for r in rows]
            last = {k: rows[-1][k] for k in ("step", "shift", "seconds")}
        token = "?"
        embeds = run / "model.pt"
        if embeds.is_file():
            from safetensors import safe_open

            with safe_open(str(embeds), "pt") as f:
                token = ", ".join(f.keys())
        table.append(
            [
                run.name,
                f"`{token}`",
                last["step"],
                f"{sum(losses[:100]) / len(losses[:100]):.4f}",
                f"{sum(losses[-100:]) / len(losses[-100:]):.4f}",
                last["shift"],
                last["seconds"],
            ]
        )
        grids = sorted((run / "samples").glob("*.png"))
        if grids:
            figures += ["", f"![{run.name} validation samples]({grids[-1]})"]
    return (
        markdown_table(
            [
                "run",
                "token",
                "steps",
                "loss, first 100 steps",
                "loss, last 100 steps",
                "‖v − v₀‖",
                "seconds",
            ],
            table,
        )
        + figures
    )


def _zeroshot(p3: Path) -> list[str]:
    lines = []
    for name, label in (
        ("clip_zeroshot.json", '"A photo of {object}."'),
        ("clip_zeroshot_ensemble.json", "prompt ensemble"),
    ):
        path = p3 / name
        r = read_record(path)
        if r is None:
            lines.append(
                "- "
                + missing(label, f"python -m p3_textual_inversion.clip_zeroshot ... --json {path}")
            )
            continue
        with record_errors(path):
            lines.append(
                f"- {label}: accuracy **{r['accuracy']:.4f}** on {r['n']} images (`{path}`)."
            )
            for kind in ("success", "failure"):
                cases = "; ".join(f"{c['file']} {c['true']}→{c['pred']}" for c in r[kind])
                lines.append(f"  - {kind}: {cases or 'none'}")
    return lines


def _multi_concept(p3: Path) -> list[str]:
    images = sorted((p3 / "multi_concept").rglob("*.png"))
    if not images:
        return [
            "Not run with the real model yet: render a json whose prompts hold two learned tokens "
            '("a <new1> in the style of <new2>") into RUNS/p3/multi_concept with infer.py.'
        ]
    return [
        f"{len(images)} images in `{p3 / 'multi_concept'}`:",
        "",
        *[f"![{p.name}]({p})" for p in images[:10]],
    ]


def section(runs_dir: str | Path) -> str:
    p3 = Path(runs_dir) / "p3"
    parts = [
        "## P3: Textual Inversion and CLIP zero-shot",
        "",
        "### Textual Inversion training",
        "",
        *_training(p3),
        "",
        "### CLIP zero-shot",
        "",
        *_zeroshot(p3),
        "",
        "### Two learned tokens in one prompt",
        "",
        *_multi_concept(p3),
        "",
    ]
    return "\n".join(parts)
