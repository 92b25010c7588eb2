"""The report's P4 figures, for each run folder RUNS/{dcgan,improved} that exists:
architecture.txt (`print(G)` and `print(D)`), first32.png (images 0000-0031 of what
infer.py writes from the run's chosen generator, generator_best.pt, as a 4x8 grid) and
curves.png (log.csv and fid.csv); with both runs, RUNS/first32_ab.png puts A and B side by side.

    python -m p4_gan.figures runs/p4
    python -m p4_gan.figures runs/p4 --models dcgan --device cpu
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    pyplot,
    require_dir,
    resolve_device,
    run_cli,
    save_figure,
    save_grid,
)
from p4_gan.infer import SEED
from p4_gan.models import Discriminator, GANConfig, Generator
from p4_gan.pipeline import generate, load_generator

MODELS = ("dcgan", "improved")
PRESET_D_NORM = {"dcgan": "batch", "improved": "spectral"}  # as train.py's PRESETS


def write_architecture(run_dir: Path, model: str) -> Path:
    """Both networks as PyTorch prints them, with the trained run's sizes when it exists."""
    generator_file = run_dir / "model.pt"
    config = (
        load_generator(generator_file)[0].config
        if generator_file.is_file()
        else GANConfig(d_norm=PRESET_D_NORM[model])
    )
    g, d = Generator(config), Discriminator(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    text = (
        f"# {model}: {config}\n\n## Generator ({count(g):,} parameters)\n{g}\n\n"
        f"## Discriminator ({count(d):,} parameters)\n{d}\n"
    )
    path = run_dir / "architecture.txt"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def chosen_generator(run_dir: Path) -> Path:
    """generator_best.pt (lowest FID on training faces) when the run measured FID, else model.pt."""
    best = run_dir / "generator_best.pt"
    return best if best.is_file() else run_dir / "model.pt"


def first32(run_dir: Path, device) -> torch.Tensor:
    """The first 32 of infer.py's 1000 images (same seed and batch size, so the same pixels)."""
    generator, _ = load_generator(chosen_generator(run_dir), device)
    return generate(generator, 1000, SEED)[:32]


def write_first32(run_dir: Path, device) -> Path:
    path = run_dir / "first32.png"
    save_grid(first32(run_dir, device), path, nrow=8)
    return path


def side_by_side(runs: Path, device) -> Path:
    """A's and B's first 32 images as two 4x8 grids, next to each other, titled."""
    plt = pyplot()
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, (model, title) in zip(
        axes, (("dcgan", "(A) DCGAN"), ("improved", "(B) improved GAN (EMA)"))
    ):
        grid = make_grid((first32(runs / model, device) + 1) / 2, nrow=8, padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    path = runs / "first32_ab.png"
    save_figure(fig, path, dpi=110)
    return path


def series(path: Path, x: str, y: str) -> tuple[list[float], list[float]]:
    """Columns x and y of a CSV as floats, over the rows where y is filled in."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(y)]
    return [float(r[x]) for r in rows], [float(r[y]) for r in rows]


def plot_curves(run_dir: Path) -> Path:
    """Losses and mean D logits against step from log.csv; FID against epoch from fid.csv."""
    plt = pyplot()

    log, fid_file = run_dir / "log.csv", run_dir / "fid.csv"
    fid = series(fid_file, "epoch", "fid") if fid_file.is_file() else ([], [])
    panels = 3 if fid[1] else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    for key in ("d_loss", "g_loss", "gp"):
        steps, values = series(log, "step", key)
        if values:
            axes[0].plot(steps, values, label=key, lw=1)
    axes[0].set(xlabel="step", title="losses (mean per log row)")
    for key, label in (("d_real", "D(x), x real"), ("d_fake", "D(G(z))")):
        axes[1].plot(*series(log, "step", key), label=label, lw=1)
    axes[1].set(xlabel="step", title="mean D logit")
    if fid[1]:
        axes[2].plot(*fid, marker="o")
        axes[2].set(xlabel="epoch", title=f"FID vs training faces (best {min(fid[1]):.2f})")
    for ax in axes[:2]:
        ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    path = run_dir / "curves.png"
    save_figure(fig, path, dpi=120)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("runs", help="folder holding one train.py run folder per model (e.g. runs/p4)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = require_dir(args.runs, "runs folder")
    device = resolve_device(args.device)
    found = [m for m in args.models if (runs / m).is_dir()]
    if not found:
        raise CLIError(
            f"no run folder {' or '.join(str(runs / m) for m in args.models)}: "
            "train with python -m p4_gan.train --out RUNS/MODEL"
        )
    for model in found:
        run_dir = runs / model
        written = [write_architecture(run_dir, model)]
        if chosen_generator(run_dir).is_file():
            written.append(write_first32(run_dir, device))
        if (run_dir / "log.csv").is_file():
            written.append(plot_curves(run_dir))
        print(f"{model}: wrote {', '.join(p.name for p in written)}")
    if all(chosen_generator(runs / m).is_file() for m in MODELS):
        print(f"wrote {side_by_side(runs, device)}")


if __name__ == "__main__":
    run_cli(main)
