"""The report's P2 section, built only from files under RUNS_DIR/p2: figures and JSON that
p2_ddim/analysis.py and bench/p2_ddim.py write. A missing input is named together with
the command that produces it; no number appears unless a file holds it."""

from __future__ import annotations

from pathlib import Path

from hw2_utils import markdown_table, missing, read_record, record_errors

# the GPU session's record holds the speed run of the TA's command on one H200
GPU_SESSION = (
    Path(__file__).resolve().parents[1] / "bench" / "records" / "gpu_session_2026-12-04.json"
)
NOISE, UNET, GT = "hw2_data/face/noise", "UNet.pt", "hw2_data/face/GT"  # the course's layout


def _missing(what: str, command: str) -> str:
    return missing(what, command) + "\n"


def _provenance(info: dict) -> str:
    return f"_Measured with `{info.get('command', '?')}` on {info.get('hardware', 'unrecorded hardware')}._\n"


def _figures(d: Path) -> str:
    command = f"python -m p2_ddim.analysis {NOISE} {UNET} {d}"
    info = read_record(d / "analysis.json")
    names = ("eta_grid.png", "interp_slerp.png", "interp_lerp.png")
    if info is None or not all((d / n).is_file() for n in names):
        return _missing("η grid and interpolation figures", command)
    size = "×".join(str(s) for s in info.get("image_size", []))
    narrow = info.get("unet_base_channels") != 128
    return "\n".join(
        [
            *(
                ["**These figures come from a narrow test UNet, not the course's UNet.pt.**", ""]
                if narrow
                else []
            ),
            f"Generated with `{info.get('command', command)}` ({info.get('steps')} DDIM steps, "
            f"seed {info.get('seed')}, {info.get('dtype')}, {info.get('hardware')}, {size} images, "
            f"UNet width {info.get('unet_base_channels')}).",
            "",
            f"![eta grid: rows η = 0, 0.25, 0.5, 0.75, 1; columns noises 00-03]({(d / names[0]).as_posix()})",
            "",
            "η scales the fresh noise added at every step: η = 0 is deterministic DDIM (the image is a fixed "
            "function of the initial noise), η = 1 gives DDPM's posterior variance. Reading down a column shows "
            "how far the extra noise moves the result away from the η = 0 image of the same starting noise.",
            "",
            f"![slerp interpolation between noises 00 and 01, α = 0.0 ... 1.0]({(d / names[1]).as_posix()})",
            "",
            f"![linear interpolation between noises 00 and 01, α = 0.0 ... 1.0]({(d / names[2]).as_posix()})",
            "",
            "Why the two rows differ: a d-dimensional standard normal has norm close to √d, so the model only "
            "sees noises near that sphere. Slerp stays on it (equal-norm endpoints keep their norm); linear "
            "interpolation of two independent noises shrinks the norm by a factor √(α² + (1-α)²), down to "
            "1/√2 at α = 0.5, which is off the training distribution. Compare the middle columns.",
            "",
        ]
    )


def _mse(d: Path) -> str:
    command = f"python -m bench.p2_ddim gt {NOISE} {UNET} {GT} --out {d}/gt --json {d}/mse.json"
    info = read_record(d / "mse.json")
    if info is None or "maps" not in info:
        return _missing("MSE against GT", command)
    maps = info["maps"]
    names = sorted(next(iter(maps.values()))["per_image"])
    lines = markdown_table(
        ["pixel map", *(n.rsplit(".", 1)[0] for n in names), "mean"],
        [
            [
                pixel_map,
                *(f"{result['per_image'][n]:.2f}" for n in names),
                f"**{result['mse']:.2f}**",
            ]
            for pixel_map, result in maps.items()
        ],
    )
    return (
        "\n".join(lines)
        + "\n\n"
        + _provenance(info)
        + (
            f"Sampling took {info['sampling_seconds']:.1f} s in that run.\n"
            if "sampling_seconds" in info
            else ""
        )
    )


def _speed(d: Path) -> str:
    speed, weights = read_record(d / "speed.json"), ""
    if speed is None:
        session = read_record(GPU_SESSION)
        speed = session and session["timing_records"].get("p2_speed")
        weights = (
            " (random weights of the real size: the course's UNet.pt is not on these machines)"
        )
    if speed is None:
        return _missing(
            "Sampling time",
            f"python -m bench.p2_ddim speed --n 10 --size 256 --device cuda --json {d}/speed.json",
        )
    times = ", ".join(f"{s:.1f}" for s in speed["sampling_seconds"])
    peak = (
        f", peak CUDA memory {speed['peak_cuda_gib']:.2f} GiB" if "peak_cuda_gib" in speed else ""
    )
    return (
        f"{speed['n']} images at {speed['size']}², {speed['steps']} steps: {times} s per run "
        f"(first run cold){peak}, after {speed['load_seconds']:.1f} s loading the UNet{weights}.\n\n"
        + _provenance(speed)
    )


def _cost(d: Path) -> str:
    cost = read_record(d / "cost.json")
    if cost is None:
        return _missing(
            "FLOPs and memory estimate",
            f"python -m bench.p2_ddim cost --n 10 --size 256 --json {d}/cost.json",
        )
    return (
        f"{cost['parameters'] / 1e6:.1f} M parameters; {cost['gflop_per_image_forward']:.0f} GFLOP per image "
        f"and forward at {cost['size']}²; {cost['tflop_per_run']:.0f} TFLOP for {cost['n']} images × "
        f"{cost['steps']} steps. Estimated peak memory for {cost['n']} images in fp32: "
        f"{cost['estimate_gib']:.2f} GiB (weights {cost['weights_gib']:.2f} + live activations "
        f"{cost['peak_activations_gib']:.2f}), before the CUDA context and cuDNN workspaces.\n\n"
        + _provenance(cost)
    )


def section(runs_dir: str | Path) -> str:
    """Markdown for P2, from RUNS_DIR/p2 (figures, mse.json, speed.json, cost.json)."""
    d = Path(runs_dir) / "p2"
    parts = {}
    for name, render in (("analysis", _figures), ("mse", _mse), ("speed", _speed), ("cost", _cost)):
        with record_errors(d / f"{name}.json"):
            parts[name] = render(d)
    return "\n".join(
        [
            "## P2: DDIM with the pretrained face UNet",
            "",
            "Our UNet (`p2_ddim/unet.py`) is written from the course's spec and loads `UNet.pt` with "
            "`strict=True`; our DDIM (`p2_ddim/ddim.py`) uses betas `linspace(1e-4, 0.02, 1000)` in float64, "
            "timesteps 981, 961, ..., 1 with the last step landing on ᾱ₀, and clips the predicted x₀ to [-1, 1]. "
            "Tests match diffusers' DDIMScheduler step for step at η = 0 and η = 0.5.",
            "",
            "### η and interpolation",
            "",
            parts["analysis"],
            "### MSE against the course's GT (0-255 pixels)",
            "",
            parts["mse"],
            "### Cost",
            "",
            parts["speed"] + "\n" + parts["cost"],
        ]
    )
