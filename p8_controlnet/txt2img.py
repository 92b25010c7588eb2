"""(a) Text to image with Stable Diffusion through diffusers, any of eight schedulers by name.

    python -m p8_controlnet.txt2img --pretrained sd-v1-5/ --prompt "a red bus in the snow" --n 4 \\
        --out outputs/p8/txt2img
    python -m p8_controlnet.txt2img --pretrained sd-v1-4.ckpt --gallery prompts.txt --clip clip-vit-base-patch32/ \\
        --out outputs/p8/gallery
    python -m p8_controlnet.txt2img --replay outputs/p8/txt2img/run.json --out outputs/p8/replay   # same bytes

Image i of every prompt starts from the noise of seed + i (one CPU torch.Generator per image),
so prompts are compared on the same noise and a batch size never changes a picture.
OUT holds pPP_III.png (prompt PP, image III) and run.json: every setting (replayable with
--replay), each image's file, prompt and seed, the dtype actually used, the command and versions.

Gallery mode (--gallery FILE, one prompt per line) also marks each image: "blank" (a flat image:
pixel std below 0.02), "off-prompt" (CLIP score below --min-clip, with --clip) or "ok", and draws
gallery.png with green (ok) and red (failed) frames; run.json records both kinds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from hw2_utils import (
    HelpFormatter,
    add_overwrite_option,
    CLIError,
    clip_score,
    command_line,
    output_dir,
    positive_int,
    require_file,
    resolve_device,
    run_cli,
    save_images,
    save_json,
)
from p8_controlnet.pipelines import add_pipeline_args, call_size, generate, pipeline_from_args
from p8_controlnet.records import environment, image_grid, read_json

# What run.json must hold to redo a run exactly (device and output folder may change).
SETTINGS = (
    "pretrained",
    "sd_config",
    "prompt",
    "negative_prompt",
    "n",
    "scheduler",
    "steps",
    "guidance",
    "size",
    "batch_size",
    "seed",
    "precision",
    "attention_slicing",
    "vae_tiling",
    "cpu_offload",
)
BLANK_STD = 0.02  # pixel std (0..1 scale) of a flat image; real photos and drawings are far above


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--gallery", help="text file of prompts, one per line: gallery mode")
    p.add_argument("--replay", help="run.json of an earlier run: redo it with its settings")
    p.add_argument(
        "--n", type=positive_int, default=4, help="images per prompt (default: %(default)s)"
    )
    p.add_argument("--clip", help="CLIP folder (model + processor) to score gallery images")
    p.add_argument(
        "--min-clip",
        type=clip_score,
        default=20.0,
        help="gallery: CLIP score (100 x cosine) below which an image is off-prompt (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="output folder")
    add_pipeline_args(p, pretrained_required=False)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    if args.replay:
        settings = read_json(args.replay).get("settings")
        if not isinstance(settings, dict) or set(SETTINGS) - settings.keys():
            raise CLIError(
                f"{args.replay} has no complete 'settings' (needs {', '.join(SETTINGS)})"
            )
        # --out and --device stay
        vars(args).update({k: settings[k] for k in SETTINGS}, gallery=None)
    elif not args.pretrained:
        p.error("--pretrained is required (or --replay run.json)")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.gallery:
        lines = require_file(args.gallery, "gallery prompt file").read_text().splitlines()
        prompts = [
            line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
        ]
        if not prompts:
            raise CLIError(f"{args.gallery} holds no prompt (one per line; # starts a comment)")
        return prompts
    if not args.prompt:
        raise CLIError("give --prompt (repeatable), --gallery FILE or --replay run.json")
    return args.prompt


def verdicts(images, clip_scores: np.ndarray | None, min_clip: float) -> list[str]:
    """'blank', 'off-prompt' or 'ok' per image ((N,3,H,W) in [0,1])."""
    flat = images.flatten(1).std(dim=1) < BLANK_STD
    return [
        "blank"
        if flat[i]
        else "off-prompt"
        if clip_scores is not None and clip_scores[i] < min_clip
        else "ok"
        for i in range(len(images))
    ]


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.prompt = read_prompts(args)
    pipe, sd, device = pipeline_from_args(args)
    prompts = [prompt for prompt in args.prompt for _ in range(args.n)]
    seeds = [args.seed + i for _ in args.prompt for i in range(args.n)]

    start = time.perf_counter()
    images = generate(
        pipe,
        seeds,
        {"prompt": prompts, "negative_prompt": [args.negative_prompt] * len(prompts)},
        args.batch_size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        **call_size(args, sd),
    )
    wall_s = time.perf_counter() - start
    files = [f"p{p:02d}_i{i:03d}.png" for p in range(len(args.prompt)) for i in range(args.n)]
    records = [{"file": f, "prompt": pr, "seed": s} for f, pr, s in zip(files, prompts, seeds)]
    if args.gallery:
        from p8_controlnet.clip_score import ClipScorer

        scores = (
            ClipScorer(args.clip, resolve_device(args.device))(images, prompts)
            if args.clip
            else None
        )
        for i, (r, verdict) in enumerate(zip(records, verdicts(images, scores, args.min_clip))):
            r.update(verdict=verdict, clip=None if scores is None else round(float(scores[i]), 3))

    record = {
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "images": records,
        "dtype": str(pipe.unet.dtype),
        "wall_s": round(wall_s, 3),
        "command": command_line("p8_controlnet.txt2img", argv),
        "environment": environment(device),
    }
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_images(images, [tmp / f for f in files], value_range=(0.0, 1.0))
        save_json(tmp / "run.json", record)
        if args.gallery:
            draw_gallery(tmp / "gallery.png", images, records, args.prompt, args.n)
    print(f"{len(images)} images in {wall_s:.1f} s -> {Path(args.out) / 'run.json'}")
    return record


def draw_gallery(path: Path, images, records: list[dict], prompts: list[str], n: int) -> None:
    rows = [list(images[p * n : (p + 1) * n]) for p in range(len(prompts))]
    marks = [
        ["green" if r["verdict"] == "ok" else "red" for r in records[p * n : (p + 1) * n]]
        for p in range(len(prompts))
    ]
    labels = [f"{prompt} ({row.count('green')}/{n} ok)" for prompt, row in zip(prompts, marks)]
    failed = sum(r["verdict"] != "ok" for r in records)
    image_grid(
        path,
        rows,
        labels,
        title=f"gallery: {len(records) - failed} ok (green), {failed} failed (red)",
        frame_colors=marks,
    )


if __name__ == "__main__":
    run_cli(main)
