"""The report's P8 section, built only from what the P8 scripts write under RUNS_DIR/p8:
p8_bench.json (bench/p8_controlnet.py) and the figures of infer.py's study, edit, refine,
gallery, controlnet and multi commands. A missing input is named with the command that produces it;
no number appears unless a file holds it."""

from __future__ import annotations

import json
from pathlib import Path

from hw2_utils import markdown_table, missing, read_record, record_errors

# (sub-folder, figure, caption, the command that writes it)
FIGURES = [
    (
        "sampling_study",
        "by_scheduler.png",
        "CLIP score and seconds per image by scheduler",
        "study",
    ),
    ("sampling_study", "by_steps.png", "... by number of steps", "study"),
    ("sampling_study", "by_guidance.png", "... by guidance scale (the guidance sweep)", "study"),
    (
        "sampling_study",
        "schedule_curves.png",
        "custom beta schedules: linear, inverse-square, log-decay",
        "study",
    ),
    ("sampling_study", "schedules.png", "the same prompt and seed under each schedule", "study"),
    ("sampling_study", "intermediates.png", "intermediate latents decoded by the VAE", "study"),
    (
        "sampling_study",
        "interpolation.png",
        "slerp vs lerp between two prompts' text embeddings",
        "study",
    ),
    (
        "edit",
        "edit.png",
        "attribute editing: prompt switch and SDEdit over the edit strength (on the tiny models "
        "the images are stand-ins)",
        "edit",
    ),
    (
        "edit",
        "edit_scores.png",
        "... CLIP score gap (to edit - to source) and similarity to the source image",
        "edit",
    ),
    (
        "refine",
        "refine_curve.png",
        "CLIP-guided latent refinement: CLIP score per iteration (on the tiny models the "
        "images are stand-ins)",
        "refine",
    ),
    ("refine", "refine_images.png", "... the images at chosen iterations", "refine"),
    (
        "gallery",
        "gallery.png",
        "gallery: green = ok, red = blank or off-prompt (CLIP score)",
        "txt2img --gallery",
    ),
    ("controlnet", "grid.png", "ControlNet (Canny) across conditioning scales", "controlnet"),
    ("multi_controlnet", "grid.png", "multi-ControlNet across scale combinations", "multi"),
]
COMMANDS = {
    "study": "python -m p8_controlnet.infer study --pretrained SD --clip CLIP_DIR --out {d}/sampling_study",
    "edit": "python -m p8_controlnet.infer edit --pretrained SD --clip CLIP_DIR --n 2 --out {d}/edit",
    "refine": "python -m p8_controlnet.infer refine --pretrained SD --clip CLIP_DIR --n 2 --penalty 0.1 "
    "--out {d}/refine",
    "txt2img --gallery": "python -m p8_controlnet.infer txt2img --pretrained SD "
    "--gallery p8_controlnet/gallery_prompts.txt --clip CLIP_DIR --out {d}/gallery",
    "controlnet": "python -m p8_controlnet.infer controlnet --pretrained SD --controlnet CN_DIR --image IMG --prompt P "
    "--out {d}/controlnet",
    "multi": "python -m p8_controlnet.infer multi --pretrained SD --prompt P --control canny IMG 1.0 ... "
    "--out {d}/multi_controlnet",
}


def _speed(d: Path) -> list[str]:
    record = read_record(d / "p8_bench.json")
    if record is None:
        return [missing("Speed", f"python -m bench.p8_controlnet --json {d}/p8_bench.json"), ""]
    cpu = record["tiny_cpu"]
    lines = [
        f"Tiny model, {cpu['size']} px, {cpu['steps']} steps, CPU seconds per step on {cpu['threads']} thread(s) "
        f"(`{record['command']}`, {record['environment']['hardware']}):",
        "",
    ]
    rows = {**cpu["per_scheduler"], "ddim + ControlNet": cpu["ddim_with_controlnet"]}
    lines += markdown_table(
        ["scheduler", "CPU s/step", "wall s/step"],
        [
            [name, f"{r['cpu_s_per_step']:.3f}", f"{r['wall_s_per_step']:.3f}"]
            for name, r in rows.items()
        ],
    )
    gpu = record.get("gpu_512")
    lines += [
        "",
        "GPU at 512²: "
        + (json.dumps(gpu) if gpu else "not measured (no GPU on the machine that ran the bench)."),
        "",
    ]
    return lines


def _sidecar_command(folder: Path) -> str | None:
    """The command recorded in the folder's JSON sidecar (study.json, run.json, edit.json, ...)."""
    for path in sorted(folder.glob("*.json")):
        record = read_record(path)
        if record is not None and isinstance(record.get("command"), str):
            return record["command"]
    return None


def section(runs_dir: str | Path) -> str:
    d = Path(runs_dir) / "p8"
    lines = [
        "## P8: Stable Diffusion samplers, ControlNet and multi-ControlNet",
        "",
        "diffusers pipelines on the components stable-diffusion/ loads offline; eight schedulers by name; "
        "Canny/depth/HED controls; multi-ControlNet; attribute editing (prompt switch, SDEdit) and CLIP-guided "
        "latent refinement in our own denoising loop; a JSON sidecar per run. Where the runs below used the "
        "tiny random-weight models (`python -m p8_controlnet.tiny`), the images and CLIP scores only show that "
        "every script runs end to end.",
        "",
    ]
    with record_errors(d / "p8_bench.json"):
        lines += _speed(d)
    quoted, named = set(), set()  # each run's command once; each missing command once
    for folder, name, caption, command in FIGURES:
        figure = d / folder / name
        if figure.is_file():
            ran = _sidecar_command(d / folder)
            if ran and folder not in quoted:
                lines += [f"`{ran}`:", ""]
                quoted.add(folder)
            lines += [f"{caption}:", "", f"![{caption}]({figure.as_posix()})", ""]
        elif command not in named:
            named.add(command)
            captions = "; ".join(
                c for f, n, c, k in FIGURES if k == command and not (d / f / n).is_file()
            )
            lines += [missing(captions, COMMANDS[command].format(d=d)), ""]
    return "\n".join(lines)
