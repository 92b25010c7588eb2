"""(f) CLIP-guided latent refinement: gradient ascent on the CLIP image-text similarity in the
sampler's final latents, through the VAE decoder, with every model frozen:

    python -m p8_controlnet.refine --pretrained sd-v1-5/ --clip clip-vit-base-patch32/ --out outputs/p8/refine \\
        --prompt "a photograph of an astronaut riding a horse" --n 2 \\
        --optimizer adam --lr 0.05 --iterations 50 --penalty 0.1 --show-iterations 0 10 25 50

The latents z start at the output z0 of our denoising loop (p8_controlnet/denoise.py) and minimise
    -cos(CLIP_image(decode(z)), CLIP_text(prompt)) + penalty * mean((z - z0)^2)
with --optimizer (adam | sgd); the penalty keeps z near what the sampler made. Only the final
latents move: ascending through the whole sampler would keep every UNet step's activations for
the backward pass. CLIP sees the decoded image through a differentiable copy of its preprocessing
(clip_score.py). Per iteration OUT/refine.csv holds that objective's score ("clip_objective") and
the usual 8-bit CLIP score of the same image ("clip_score": a gain that does not survive the
rounding to a PNG is an adversarial one), and the latents' RMS distance from z0;
refine_curve.png draws them, refine_images.png shows the images at --show-iterations,
refine.json holds the settings, command and versions. Image i of every prompt uses seed + i.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from textwrap import shorten
from typing import Iterator

import torch

from hw2_utils import (
    HelpFormatter,
    add_overwrite_option,
    CLIError,
    command_line,
    non_negative_float,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
    pyplot,
    run_cli,
    save_figure,
    save_json,
)
from p8_controlnet.clip_score import ClipScorer
from p8_controlnet.denoise import embed, sample, to_pixels
from p8_controlnet.pipelines import add_pipeline_args, call_size, pipeline_from_args
from p8_controlnet.records import environment, image_grid, save_csv

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
OUTPUTS = ("refine.csv", "refine_curve.png", "refine_images.png", "refine.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--prompt", action="append", help="prompt to refine towards (repeat for several)"
    )
    p.add_argument(
        "--n", type=positive_int, default=1, help="images per prompt (default: %(default)s)"
    )
    p.add_argument("--optimizer", default="adam", choices=list(OPTIMIZERS))
    p.add_argument(
        "--lr", type=positive_float, default=0.05, help="learning rate (default: %(default)s)"
    )
    p.add_argument(
        "--iterations", type=positive_int, default=50, help="optimiser steps (default: %(default)s)"
    )
    p.add_argument(
        "--penalty",
        type=non_negative_float,
        default=0.0,
        help="weight of mean((z - z0)^2), 0 for none (default: %(default)s)",
    )
    p.add_argument(
        "--show-iterations",
        type=non_negative_int,
        nargs="+",
        help="iterations whose images refine_images.png shows (default: 5 evenly spaced, from 0)",
    )
    p.add_argument(
        "--clip",
        required=True,
        help="CLIP folder (model + processor): the objective and the scores",
    )
    p.add_argument("--out", required=True, help="output folder")
    add_pipeline_args(p)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    args.prompt = args.prompt or ["a photograph of an astronaut riding a horse"]
    args.show_iterations = args.show_iterations or sorted(
        {round(args.iterations * k / 4) for k in range(5)}
    )
    if not all(0 <= i <= args.iterations for i in args.show_iterations):
        raise CLIError(f"--show-iterations must lie in 0..--iterations ({args.iterations})")
    return args


def sampler_output(
    pipe, prompt: str, seed: int, args: argparse.Namespace, side: int
) -> torch.Tensor:
    """z0: the final latents of our loop, the pipeline's image for this prompt and seed."""
    cond, uncond = embed(pipe, prompt, args.negative_prompt)
    return sample(pipe, seed, args.steps, lambda i: cond, uncond, args.guidance, side)


def ascend(
    scorer: ClipScorer,
    sd,
    z0: torch.Tensor,
    text_features: torch.Tensor,
    optimizer: str,
    lr: float,
    iterations: int,
    penalty: float,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(iteration, images in [0,1], CLIP cosine to the text, RMS distance of z from z0) for
    iterations 0 (z0 itself) .. `iterations`. Each image's loss depends only on its own latents,
    so a batch gives each the gradient it would get alone."""
    z0 = z0.detach().float()
    z = z0.clone().requires_grad_(True)
    opt = OPTIMIZERS[optimizer]([z], lr=lr)
    for i in range(iterations + 1):
        images = to_pixels(sd, z)
        cosine = scorer.similarity(images, text_features)
        drift = (z - z0).pow(2).flatten(1).mean(1)
        yield i, images.detach(), cosine.detach(), drift.detach().sqrt()
        if i < iterations:
            opt.zero_grad()
            (penalty * drift - cosine).sum().backward()
            opt.step()


def plot_curves(path: Path, rows: list[dict], title: str) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    images = list(dict.fromkeys((r["prompt"], r["seed"]) for r in rows))
    for k, (prompt, seed) in enumerate(images):
        own = [r for r in rows if (r["prompt"], r["seed"]) == (prompt, seed)]
        it = [r["iteration"] for r in own]
        label = f"{shorten(prompt, 30)}, seed {seed}"
        ax1.plot(it, [r["clip_objective"] for r in own], color=f"C{k}", label=f"{label}: objective")
        ax1.plot(
            it,
            [r["clip_score"] for r in own],
            color=f"C{k}",
            linestyle="--",
            label=f"{label}: 8-bit image",
        )
        ax2.plot(it, [r["latent_rms_change"] for r in own], color=f"C{k}", label=label)
    ax1.set_ylabel("CLIP score (100 x cosine)"), ax2.set_ylabel("RMS(z - z0)")
    for ax in (ax1, ax2):
        ax.set_xlabel("iteration"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, tight=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    pipe, sd, device = pipeline_from_args(args)
    sd.eval_frozen()  # no weight may move: only the latents are optimised
    scorer = ClipScorer(args.clip, device)
    side = call_size(args, sd)["height"]
    prompts = [p for p in args.prompt for _ in range(args.n)]
    seeds = [args.seed + i for _ in args.prompt for i in range(args.n)]
    start = time.perf_counter()
    z0 = torch.cat([sampler_output(pipe, p, s, args, side) for p, s in zip(prompts, seeds)])
    rows, shown = [], {}
    for i, images, cosine, rms in ascend(
        scorer,
        sd,
        z0,
        scorer.text_features(prompts),
        args.optimizer,
        args.lr,
        args.iterations,
        args.penalty,
    ):
        rows += [
            {
                "prompt": p,
                "seed": s,
                "iteration": i,
                "clip_objective": round(100 * float(c), 4),
                "clip_score": round(float(score), 4),
                "latent_rms_change": round(float(r), 5),
            }
            for p, s, c, score, r in zip(prompts, seeds, cosine, scorer(images, prompts), rms)
        ]
        if i in args.show_iterations:
            shown[i] = images.cpu()
    wall_s = time.perf_counter() - start
    title = (
        f"{args.optimizer}, lr {args.lr:g}, penalty {args.penalty:g}: CLIP-guided latent refinement"
    )
    record = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "dtype": str(pipe.unet.dtype),
        "wall_s": round(wall_s, 1),
        "command": command_line("p8_controlnet.refine", argv),
        "environment": environment(device),
    }
    with output_dir(args.out, OUTPUTS, overwrite=args.overwrite) as tmp:
        save_csv(tmp / "refine.csv", rows)
        plot_curves(tmp / "refine_curve.png", rows, title)
        image_grid(
            tmp / "refine_images.png",
            [[shown[i][j] for i in sorted(shown)] for j in range(len(prompts))],
            [f"{p}, seed {s}" for p, s in zip(prompts, seeds)],
            [f"iteration {i}" for i in sorted(shown)],
            title=title,
        )
        save_json(tmp / "refine.json", record)
    print(f"{len(prompts)} image(s), {args.iterations} iterations in {wall_s:.1f} s -> {args.out}")
    return record


if __name__ == "__main__":
    run_cli(main)
