"""The augmentation study: one training run per preset, same seed, data, split and budget;
val and test accuracy of the final epoch side by side, and the seed-to-seed spread of one
preset run with other seeds, so that differences smaller than chance are marked as such.

    python -m p6_classification.aug_study --data data/cifar10 --out outputs/p6/aug --epochs 30
    python -m p6_classification.aug_study --data ../shared/data/cifar10_full --out outputs/p6/aug \\
        --epochs 3 --width 16 --warmup-epochs 0.5                           # what bench/ runs
    python -m p6_classification.aug_study ... --presets none flip_crop cutout --spread-seeds   # no spread runs
    python -m p6_classification.aug_study ... --jobs 10 --workers 4   # every run at once (one GPU holds them)

Any other option goes to train.py for every run (e.g. --width, --precision, --limit, --workers).
OUT gets runs/<preset>/ and runs/<spread preset>_seed<S>/ (each resumable), aug_study.json
(results, command, hardware), aug_study.md (the table) and aug_study.png (the plot).
With --jobs N, up to N runs train at once as separate train.py processes (logs in
runs/<name>.log); the study then reads each finished run back (a resumed run that has
reached its last epoch only scores its model), exactly as after one-by-one training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    command_line,
    markdown_table,
    positive_int,
    pyplot,
    run_cli,
    save_figure,
    seed_int,
)
from p6_classification import train
from p6_classification.augment import DESCRIPTIONS, PRESETS

SCORES = ("val_acc", "test_acc", "train_seconds")  # what the study keeps of each run's result


def spread(runs: list[dict]) -> dict | None:
    """Seed-to-seed spread (max - min) of val and test accuracy over runs of one preset."""
    if len(runs) < 2:
        return None
    return {
        f"{key}_spread": max(r[key] for r in runs) - min(r[key] for r in runs)
        for key in ("val_acc", "test_acc")
    }


def verdict(row: dict, reference: dict, noise: dict | None) -> str:
    """Whether `row` differs from the spread preset's run by more than the seed-to-seed spread."""
    if noise is None or row is reference:
        return ""
    gap = row["test_acc"] - reference["test_acc"]
    return f"{gap:+.4f}" + ("" if abs(gap) > noise["test_acc_spread"] else " (n.s.)")


def table(rows: list[dict], reference: str | None = None, noise: dict | None = None) -> str:
    ref = next((r for r in rows if r["preset"] == reference), None)
    return "\n".join(
        markdown_table(
            [
                "preset",
                "augmentation",
                "val acc",
                "test acc",
                f"test vs {reference or '-'}",
                "train time",
            ],
            [
                [
                    r["preset"],
                    DESCRIPTIONS[r["preset"]],
                    f"{r['val_acc']:.4f}",
                    f"{r['test_acc']:.4f}",
                    verdict(r, ref, noise) if ref else "",
                    f"{r['train_seconds']:.0f} s",
                ]
                for r in rows
            ],
        )
    )


def plot(rows: list[dict], title: str, path: Path) -> None:
    plt = pyplot()
    import numpy as np

    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    ax.barh(y - 0.2, [r["val_acc"] for r in rows], height=0.4, label="val")
    ax.barh(y + 0.2, [r["test_acc"] for r in rows], height=0.4, label="test")
    ax.set_yticks(y, [r["preset"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (final epoch)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def finished(run_dir: Path, run_argv: list[str]) -> dict | None:
    """The metrics in result.json of a run that reached its last epoch with exactly these
    arguments (as --jobs leaves them), else None: the study reads them instead of resuming the
    run to score it."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        record = json.loads((run_dir / "result.json").read_text())
        result = record["metrics"]
        if record["finished"] and result.get("command") == command_line(
            "p6_classification.train", run_argv
        ):
            return result
    return None


def train_in_parallel(runs: dict[str, list[str]], jobs: int, log_dir: Path) -> None:
    """Train every run as its own `python -m p6_classification.train` process, at most `jobs`
    at a time; a run that fails stops the others and ends the study with the end of its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, active = list(runs.items()), {}
    while pending or active:
        while pending and len(active) < jobs:
            name, run_argv = pending.pop(0)
            with open(log_dir / f"{name}.log", "w") as log:
                active[name] = subprocess.Popen(
                    [sys.executable, "-m", "p6_classification.train", *run_argv],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            print(
                f"== {name}: training in the background (log {log_dir / f'{name}.log'})", flush=True
            )
        time.sleep(1.0)
        for name, proc in [(n, p) for n, p in active.items() if p.poll() is not None]:
            del active[name]
            if proc.returncode != 0:
                for other in active.values():
                    other.terminate()
                last = (log_dir / f"{name}.log").read_text().strip().splitlines()[-1:] or [
                    "(no output)"
                ]
                raise CLIError(f"run {name} failed ({last[0]}); its log: {log_dir / f'{name}.log'}")


def main(argv=None) -> dict:
    # No abbreviations: an unknown option goes to train.py, so --pre must not pass for --presets.
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--data", default="data/cifar10")
    p.add_argument("--out", default="outputs/p6/aug")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument(
        "--presets", nargs="+", default=list(PRESETS), help=f"default: all ({' '.join(PRESETS)})"
    )
    p.add_argument(
        "--spread-preset", default="flip_crop", help="the preset also run with --spread-seeds"
    )
    p.add_argument("--seed", type=seed_int, default=0, help="the seed of every preset's run")
    p.add_argument(
        "--spread-seeds",
        type=seed_int,
        nargs="*",
        default=[1, 2],
        help="extra seeds of --spread-preset (with --seed they measure the seed-to-seed spread)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="runs trained at once, each its own train.py process",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = p.parse_known_args(argv)
    unknown = sorted(set(args.presets) - set(PRESETS))
    if unknown:
        raise CLIError(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    if any(arg == "--aug" or arg.startswith("--aug=") for arg in extra):
        raise CLIError("train.py's --aug is set per run by the study (choose runs with --presets)")
    if len({args.seed, *args.spread_seeds}) != 1 + len(args.spread_seeds):
        raise CLIError(
            f"--spread-seeds must differ from each other and from --seed {args.seed}: "
            "a repeated seed repeats a run and understates the spread"
        )
    if args.spread_seeds and args.spread_preset not in args.presets:
        raise CLIError(f"--spread-preset {args.spread_preset} must be one of the --presets")
    out = Path(args.out)
    # name -> train.py arguments: every preset with --seed, then the spread preset with the other seeds.
    runs = {
        preset: [
            "--data",
            args.data,
            "--epochs",
            str(args.epochs),
            "--aug",
            preset,
            "--seed",
            str(args.seed),
            "--out",
            str(out / "runs" / preset),
            *extra,
        ]
        for preset in args.presets
    }
    runs.update(
        {
            f"{args.spread_preset}_seed{seed}": [
                "--data",
                args.data,
                "--epochs",
                str(args.epochs),
                "--aug",
                args.spread_preset,
                *extra,
                "--seed",
                str(seed),
                "--out",
                str(out / "runs" / f"{args.spread_preset}_seed{seed}"),
            ]
            for seed in args.spread_seeds
        }
    )
    if args.jobs > 1:
        train_in_parallel(runs, args.jobs, out / "runs")
    results = {}
    for name, run_argv in runs.items():
        results[name] = result = finished(out / "runs" / name, run_argv) or train.main(run_argv)
        print(f"== {name}: val {result['val_acc']:.4f}, test {result['test_acc']:.4f}")
    rows = [
        {"preset": preset, **{k: results[preset][k] for k in SCORES}} for preset in args.presets
    ]
    seed_runs = [
        {"seed": seed, **{k: results[name][k] for k in SCORES}}
        for seed, name in (
            [(args.seed, args.spread_preset)]
            + [(s, f"{args.spread_preset}_seed{s}") for s in args.spread_seeds]
        )
        if args.spread_seeds
    ]
    noise = spread(seed_runs)
    record = {
        "command": command_line("p6_classification.aug_study", argv),
        "hardware": result["hardware"],
        "data": result["data"],
        "arch": result["arch"],
        "epochs": args.epochs,
        "batch_size": result["batch_size"],
        "precision": result["precision"],
        "train_images": result["train_images"],
        "val_images": result["val_images"],
        "test_images": result["test_images"],
        "rows": rows,
        "spread_preset": args.spread_preset,
        "seed_runs": seed_runs,
        "spread": noise,
    }
    with atomic_path(out / "aug_study.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    with atomic_path(out / "aug_study.md") as tmp:
        tmp.write_text(
            f"Command: `{record['command']}` on {record['hardware']}\n\n{table(rows, args.spread_preset, noise)}\n"
        )
    plot(
        rows,
        f"{result['arch']['model']} width {result['arch'].get('width', '-')}, {args.epochs} epochs, "
        f"{result['train_images']} training images",
        out / "aug_study.png",
    )
    print(table(rows, args.spread_preset, noise))
    return record


if __name__ == "__main__":
    run_cli(main)
