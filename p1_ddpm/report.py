"""P1 report figures and section.

    python -m p1_ddpm.report --out outputs/p1          # figures from the shipped checkpoint
    python -m bench.p1_ddpm --work outputs/p1 --guidance 0 1 2 3 5 --per-digit 10   # CFG sweep numbers

Figures: per domain a 10x10 grid (rows = digits 0-9, columns = 10 noises) and the reverse
process of the first "0" at t = 1000, 800, ..., 0 (1000-step ancestral sampling).
`section(runs_dir)` reads RUNS_DIR/p1/ and never invents a number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hw2_utils import (
    markdown_table,
    missing,
    progress,
    read_record,
    record_errors,
    resolve_device,
    run_cli,
    save_grid,
)
from p1_ddpm import infer
from p1_ddpm.pipeline import SHIPPED_CHECKPOINT, generate, load_model

REVERSE_FRAMES = (1000, 800, 600, 400, 200, 0)
# The steps sweep and the speed bench take an hour of CPU, so their records are shipped beside
# the checkpoint; RUNS_DIR/p1 overrides them when it holds a newer run.
SHIPPED_RECORDS = SHIPPED_CHECKPOINT.parent


def _record_path(d: Path, name: str) -> Path:
    """RUNS_DIR/p1/NAME, else the copy shipped beside the checkpoint (which may not exist either)."""
    return d / name if (d / name).is_file() else SHIPPED_RECORDS / name


def make_figures(
    checkpoint: str, out: Path, device: torch.device, seed: int = infer.SEED
) -> list[Path]:
    model, domains = load_model(checkpoint, device)
    written = []
    for index, domain in enumerate(domains):
        digits = torch.arange(10).repeat_interleave(10)
        images, _ = generate(
            model,
            digits,
            torch.full_like(digits, index),
            seed=seed,
            guidance=infer.GUIDANCE,
            sampler=infer.SAMPLER,
            steps=infer.STEPS,
            device=device,
            progress=progress,
        )
        save_grid(images, out / f"grid_{domain}.png", nrow=10)
        _, frames = generate(
            model,
            torch.tensor([0]),
            torch.tensor([index]),
            seed=seed,
            guidance=infer.GUIDANCE,
            sampler="ddpm",
            steps=None,
            device=device,
            record_at=REVERSE_FRAMES,
        )
        save_grid(
            torch.cat([frames[t].clamp(-1, 1) for t in REVERSE_FRAMES]),
            out / f"reverse_{domain}.png",
            nrow=len(REVERSE_FRAMES),
        )
        written += [out / f"grid_{domain}.png", out / f"reverse_{domain}.png"]
    return written


def _accuracy(d: Path) -> list[str]:
    record = read_record(d / "p1_bench.json")
    if record is None:
        return [missing("Accuracy", f"python -m bench.p1_ddpm --work {d}"), ""]
    lines = [
        f"Digit accuracy ({record['per_digit']} images per digit and domain, checkpoint step "
        f"{record['checkpoint_step']}, on {record['hardware']}; USPS grader val acc "
        f"{record['usps_grader_val_acc']:.4f}). Command: `{record.get('command', 'python -m bench.p1_ddpm')}`",
        "",
    ]
    lines += markdown_table(
        ["sampler", "steps", "guidance w", "MNIST-M acc", "USPS acc", "seconds"],
        [
            [
                r.get("sampler", record.get("sampler")),
                r.get("steps", record.get("steps")),
                f"{r['guidance']:g}",
                f"{r['mnistm_acc']:.4f}",
                f"{r['second_domain_acc']:.4f}",
                f"{r['seconds']:.0f}",
            ]
            for r in record["results"]
        ],
    )
    return lines + [""]


def _sweep(d: Path) -> list[str]:
    record = read_record(d / "p1_cfg_sweep.json")
    if record is None:
        return [
            missing(
                "CFG sweep",
                f"python -m bench.p1_ddpm --work {d} --guidance 0 1 2 3 5 --per-digit 10",
            ),
            "",
        ]
    lines = [
        f"CFG sweep ({record['per_digit']} images per digit and domain; `{record['command']}`):",
        "",
    ]
    lines += markdown_table(
        ["guidance w", "MNIST-M acc", "USPS acc"],
        [
            [f"{r['guidance']:g}", f"{r['mnistm_acc']:.4f}", f"{r['second_domain_acc']:.4f}"]
            for r in record["results"]
        ],
    )
    return lines + [
        "",
        "Rows: each w (MNIST-M, then USPS), digits 0-9, the same noise:",
        "",
        f"![CFG sweep]({(d / 'cfg_sweep.png').resolve()})",
        "",
    ]


def _steps(d: Path) -> list[str]:
    record = read_record(_record_path(d, "p1_steps.json"))
    if record is None:
        return [
            missing(
                "Accuracy against steps",
                f"python -m bench.p1_ddpm --work {d} --samplers ddim dpm++ --steps 10 15 20 25 50",
            ),
            "",
        ]
    best = record.get("fewest_steps_at_target")
    lines = [
        f"Accuracy and time against steps (1000 images, {record['precision']}, on {record['hardware']}; "
        f"`{record['command']}`):",
        "",
    ]
    lines += markdown_table(
        ["sampler", "steps", "MNIST-M acc", "USPS acc", "seconds"],
        [
            [
                r["sampler"],
                r["steps"],
                f"{r['mnistm_acc']:.4f}",
                f"{r['second_domain_acc']:.4f}",
                f"{r['seconds']:.0f}",
            ]
            for r in record["results"]
        ],
    )
    lines += [
        "",
        f"Fewest steps with both accuracies >= 0.99: {best['sampler']} with {best['steps']} steps."
        if best
        else "No setting reached 0.99 on both graders.",
        "",
    ]
    return lines


def _speed(d: Path) -> list[str]:
    record = read_record(_record_path(d, "p1_speed.json"))
    if record is None:
        return [missing("Sampling speed", f"python -m bench.p1_ddpm --work {d} --speed"), ""]
    lines = [
        f"Seconds per sampling step, {record['batch']} images with CFG (the UNet sees {2 * record['batch']}), on "
        f"{record['hardware']} (`{record['command']}`): our loop against diffusers' scheduler loop on the same UNet "
        "and batch, then the UNet call under each throughput knob.",
        "",
    ]
    lines += markdown_table(
        ["sampler", "ours, s/step", "diffusers, s/step", "ours / diffusers"],
        [
            [
                name,
                f"{r['ours_s_per_step']:.3f}",
                f"{r['diffusers_s_per_step']:.3f}",
                f"{r['ratio']:.3f}",
            ]
            for name, r in record["loops"].items()
        ],
    )
    lines += [""] + markdown_table(
        ["precision", "memory format", "mode", "s per UNet call", "first call (compiles), s"],
        [
            [
                k["dtype"],
                "channels_last" if k["channels_last"] else "NCHW",
                k["mode"],
                f"{k['s_per_unet_call']:.3f}",
                k["first_call_s"] if "first_call_s" in k else "-",
            ]
            for k in record["unet_calls"]
        ],
    )
    return lines + [""]


def section(runs_dir: str | Path) -> str:
    d = Path(runs_dir) / "p1"
    lines = [
        "## P1: conditional DDPM with classifier-free guidance",
        "",
        "Our UNet (p1_ddpm/model.py) predicts eps from (x_t, t, digit, domain); labels have a null index and are "
        "dropped together with p = 0.1 in training, so one network gives both branches of CFG: "
        "eps = eps_uncond + w (eps_cond - eps_uncond). Linear betas 1e-4..0.02, T = 1000 (p1_ddpm/diffusion.py, "
        "checked against diffusers' schedulers in tests/test_p1_diffusion.py). The second domain is USPS: no "
        "SVHN exists on the machines that trained the shipped checkpoint.",
        "",
    ]
    grids = sorted(d.glob("grid_*.png"))
    if grids:
        for g in grids:
            domain = g.stem.removeprefix("grid_")
            lines += [
                f"**{domain}**: rows are digits 0-9, columns 10 noises.",
                "",
                f"![{domain} grid]({g.resolve()})",
                "",
                f"Reverse process of the first '0' at t = {', '.join(map(str, REVERSE_FRAMES))}:",
                "",
                f"![{domain} reverse]({(d / f'reverse_{domain}.png').resolve()})",
                "",
            ]
    else:
        lines += [missing("Figures", f"python -m p1_ddpm.report --out {d}"), ""]
    for name, render in (
        ("p1_bench.json", _accuracy),
        ("p1_steps.json", _steps),
        ("p1_speed.json", _speed),
        ("p1_cfg_sweep.json", _sweep),
    ):
        with record_errors(_record_path(d, name)):
            lines += render(d)
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--out", default="outputs/p1", help="RUNS_DIR/p1 for report/build.py")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    for path in make_figures(args.checkpoint, Path(args.out), resolve_device(args.device)):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
