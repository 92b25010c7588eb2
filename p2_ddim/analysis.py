"""The report's P2 figures: the effect of eta, and interpolating between two noises.

    python -m p2_ddim.analysis NOISE_DIR UNET_PT runs/p2

writes into OUT_DIR:
  eta_grid.png      noises 00-03 (columns) x eta in {0, 0.25, 0.5, 0.75, 1} (rows);
                    every row uses the same --seed for its eta > 0 noise
  interp_slerp.png  DDIM (eta 0) of slerp(00, 01, alpha), alpha = 0.0, 0.1, ..., 1.0
  interp_lerp.png   the same with linear interpolation
  analysis.json     the settings and command, for the report
"""

from __future__ import annotations

import argparse

import torch

import hw2_utils
from hw2_utils import (
    HelpFormatter,
    CLIError,
    check_output_path,
    command_line,
    describe_hardware,
    positive_int,
    progress,
    pyplot,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_json,
    seed_int,
)
from p2_ddim.pipeline import load_noises, load_unet, sample, to_unit_range

ETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
GRID_NOISES = ("00", "01", "02", "03")
INTERP_PAIR = ("00", "01")
ALPHAS = tuple(i / 10 for i in range(11))


def lerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
    return (1 - alpha) * x0 + alpha * x1


def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation: sin((1-a) theta) / sin theta * x0 + sin(a theta) / sin theta * x1,
    theta the angle between x0 and x1 (in float64). Gaussian noise in many dimensions
    lives near a sphere; lerp cuts through its inside, slerp stays on it."""
    a, b = x0.flatten().double(), x1.flatten().double()
    cos = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    theta = torch.arccos(cos)
    if theta.sin() < 1e-6:  # (anti)parallel: the great circle is undefined, lerp is exact enough
        return lerp(x0, x1, alpha)
    w0 = torch.sin((1 - alpha) * theta) / theta.sin()
    w1 = torch.sin(alpha * theta) / theta.sin()
    return (w0 * x0.double() + w1 * x1.double()).to(x0.dtype)


def save_figure(images: torch.Tensor, path, rows: int, row_labels, col_labels) -> None:
    """A rows x cols grid of [0, 1] images with labels, written atomically."""
    plt = pyplot()

    cols = len(images) // rows
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.5 * cols + 0.6, 1.5 * rows + 0.3), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        if i < cols:
            ax.set_title(col_labels[i], fontsize=9)
        if i % cols == 0 and row_labels:
            ax.set_ylabel(row_labels[i // cols], fontsize=9)
    fig.tight_layout()
    hw2_utils.save_figure(fig, path, dpi=100)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("noise_dir", help="folder holding at least 00.pt-03.pt")
    p.add_argument("unet", help="the course's UNet.pt state dict")
    p.add_argument("out_dir", help="where the figures go (e.g. runs/p2)")
    p.add_argument(
        "--steps", type=positive_int, default=50, help="DDIM steps (50 is the graded setting)"
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed of the eta > 0 noise (the same for every eta)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 for the UNet")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not 1 <= args.steps <= 1000:
        raise CLIError(f"--steps must be in 1..1000, got {args.steps}")
    device = resolve_device(args.device)
    names, noises = load_noises(args.noise_dir)
    missing = [n for n in GRID_NOISES if n not in names]
    if missing:
        raise CLIError(
            f"{args.noise_dir} lacks {', '.join(n + '.pt' for n in missing)} (the analysis uses 00-03)"
        )
    pick = {n: noises[names.index(n)] for n in GRID_NOISES}
    unet = load_unet(args.unet, device)
    out = check_output_path(args.out_dir, folder=True)  # created by its first file, after the work
    run = dict(
        steps=args.steps,
        seed=args.seed,
        dtype=resolve_dtype(args.precision, device),
        progress=progress,
    )

    grid = torch.stack([pick[n] for n in GRID_NOISES])
    rows = [
        to_unit_range(sample(unet, grid, eta=eta, **run), "clip")
        for eta in progress(ETAS, desc="eta")
    ]
    save_figure(
        torch.cat(rows),
        out / "eta_grid.png",
        len(ETAS),
        [f"η = {e:g}" for e in ETAS],
        list(GRID_NOISES),
    )

    x0, x1 = (pick[n] for n in INTERP_PAIR)
    for name, fn in (("slerp", slerp), ("lerp", lerp)):
        noises_a = torch.stack([fn(x0, x1, a) for a in ALPHAS])
        images = to_unit_range(sample(unet, noises_a, eta=0.0, **run), "clip")
        save_figure(images, out / f"interp_{name}.png", 1, [name], [f"α = {a:.1f}" for a in ALPHAS])

    info = {
        "command": command_line("p2_ddim.analysis", argv),
        "steps": args.steps,
        "seed": args.seed,
        "dtype": str(run["dtype"]).replace("torch.", ""),
        "hardware": describe_hardware(device),
        "unet_base_channels": unet.base_channels,
        "image_size": list(grid.shape[-2:]),
    }
    save_json(out / "analysis.json", info)
    print(f"wrote eta_grid.png, interp_slerp.png, interp_lerp.png, analysis.json to {out}")


if __name__ == "__main__":
    run_cli(main)
