"""(e) Attribute editing in latent space: change one attribute of a prompt's image ("... at night"
-> "... during daylight") and keep its layout, by acting inside our own denoising loop
(p8_controlnet/denoise.py), over an edit strength s in [0, 1]:

    python -m p8_controlnet.edit --pretrained sd-v1-5/ --clip clip-vit-base-patch32/ --out outputs/p8/edit \\
        --source "a serene landscape with mountains at night" \\
        --edit "a serene landscape with mountains during daylight" --strengths 0 0.2 0.4 0.6 0.8 1

With n the scheduler's timesteps, the first k = n - round(s n) steps belong to the source:
  switch   prompt-to-prompt's step-switch baseline: one trajectory from the seed's noise, conditioned
           on the source prompt for steps < k and on the edited prompt from step k on. The early steps
           fix the layout, the late ones the details, so small s keeps more of the source.
  sdedit   SDEdit: the source's final latents re-noised to the timestep of step k (with the seed's own
           noise), then denoised with the edited prompt, as diffusers' img2img does with strength s.
s = 0 gives the source image for both; s = 1 gives the edited prompt's own image for switch.

Per image: CLIP score to each prompt, and the similarity to the source image as the CLIP
image-image cosine and SSIM (scikit-image; LPIPS needs weights we cannot download).
OUT holds edit.csv (all of these per method, seed and s), edit.png (a row per method and seed, a
column per s), edit_scores.png (over s, mean and spread over seeds: the CLIP score to the edit minus
that to the source, and both similarities) and edit.json (settings, command, versions). Seeds:
--seed, --seed + 1, ... (--n of them).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from textwrap import shorten

import torch

from hw2_utils import (
    HelpFormatter,
    add_overwrite_option,
    command_line,
    output_dir,
    positive_int,
    probability,
    progress,
    pyplot,
    run_cli,
    save_figure,
    save_json,
)
from p8_controlnet.clip_score import ClipScorer
from p8_controlnet.denoise import embed, sample, timesteps, to_pixels
from p8_controlnet.pipelines import add_pipeline_args, call_size, pipeline_from_args
from p8_controlnet.records import environment, image_grid, save_csv
from p8_controlnet.sampling_study import summarize

METHODS = ("switch", "sdedit")
OUTPUTS = ("edit.csv", "edit.png", "edit_scores.png", "edit.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--source", default="a serene landscape with mountains at night", help="the original prompt"
    )
    p.add_argument(
        "--edit",
        default="a serene landscape with mountains during daylight",
        help="the prompt with one attribute changed",
    )
    p.add_argument(
        "--strengths",
        type=probability,
        nargs="+",
        default=[0, 0.2, 0.4, 0.6, 0.8, 1],
        help="edit strengths s in [0, 1]: the share of the steps under the edited prompt",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--n",
        type=positive_int,
        default=1,
        help="seeds (seed, seed + 1, ...) (default: %(default)s)",
    )
    p.add_argument("--clip", required=True, help="CLIP folder (model + processor) for the scores")
    p.add_argument("--out", required=True, help="output folder")
    add_pipeline_args(p)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    return args


def switch_step(strength: float, n_timesteps: int) -> int:
    """k: the steps before it use the source prompt (or, for SDEdit, are replaced by re-noising)."""
    return n_timesteps - round(strength * n_timesteps)


@dataclass
class Editor:
    """One source/edited prompt pair on a pipeline, with the sampler settings bound."""

    pipe: object
    steps: int
    guidance: float
    side: int
    source: torch.Tensor  # text embeddings, (1, 77, D)
    edited: torch.Tensor
    uncond: torch.Tensor

    @classmethod
    def from_args(cls, pipe, args: argparse.Namespace, side: int) -> "Editor":
        (source, uncond), (edited, _) = (
            embed(pipe, p, args.negative_prompt) for p in (args.source, args.edit)
        )
        return cls(pipe, args.steps, args.guidance, side, source, edited, uncond)

    def run(self, seed: int, cond_at, **renoise) -> torch.Tensor:
        return sample(
            self.pipe, seed, self.steps, cond_at, self.uncond, self.guidance, self.side, **renoise
        )

    def source_latents(self, seed: int) -> torch.Tensor:
        return self.run(seed, lambda i: self.source)

    def latents(self, method: str, seed: int, k: int, source_latents: torch.Tensor) -> torch.Tensor:
        if method == "switch":
            return self.run(seed, lambda i: self.source if i < k else self.edited)
        return self.run(seed, lambda i: self.edited, renoise=source_latents, start=k)


def ssim(images: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """SSIM of each (3,H,W) image in [0,1] to one reference, over the colour channels."""
    from skimage.metrics import structural_similarity

    ref = reference.permute(1, 2, 0).double().numpy()
    return [
        float(
            structural_similarity(
                x.permute(1, 2, 0).double().numpy(), ref, channel_axis=-1, data_range=1.0
            )
        )
        for x in images
    ]


def measure(
    scorer: ClipScorer, images: torch.Tensor, source_image: torch.Tensor, source: str, edit: str
) -> dict:
    """Per image: CLIP score to each prompt and their gap, and the similarities to the (1,3,H,W) source image."""
    to_source, to_edit = (
        scorer(images, [source] * len(images)),
        scorer(images, [edit] * len(images)),
    )
    return {
        "clip_to_source": to_source,
        "clip_to_edit": to_edit,
        "clip_edit_minus_source": to_edit - to_source,
        "clip_image_cosine": scorer.image_cosine(images, source_image.expand_as(images)),
        "ssim_to_source": ssim(images, source_image[0]),
    }


def plot_scores(path: Path, rows: list[dict], methods: list[str], title: str) -> None:
    """CLIP(edit) - CLIP(source) (the score gap, so a seed's own offset cancels) and the similarity
    to the source image, each over the strength, mean +- std over seeds."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for m, color in zip(methods, ("C0", "C1")):
        own = [r for r in rows if r["method"] == m]
        for ax, column, label, style in (
            (ax1, "clip_edit_minus_source", m, "-"),
            (ax2, "ssim_to_source", f"{m}: SSIM", "-"),
            (ax2, "clip_image_cosine", f"{m}: CLIP image cosine", "--"),
        ):
            s, mean, std = summarize(own, "strength", column)
            ax.errorbar(
                s, mean, yerr=std, marker="o", capsize=3, color=color, linestyle=style, label=label
            )
    (
        ax1.set_ylabel("CLIP score to edit - to source"),
        ax2.set_ylabel("similarity to the source image"),
    )
    for ax in (ax1, ax2):
        ax.set_xlabel("edit strength s"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, tight=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    pipe, sd, device = pipeline_from_args(args)
    scorer = ClipScorer(args.clip, device)
    editor = Editor.from_args(pipe, args, call_size(args, sd)["height"])
    n = len(timesteps(pipe, args.steps))
    ks = [switch_step(s, n) for s in args.strengths]
    seeds = [args.seed + i for i in range(args.n)]
    rows, grid, labels, start = [], [], [], time.perf_counter()
    with torch.no_grad():
        for seed in progress(seeds, desc="edit"):
            source_latents = editor.source_latents(seed)
            source_image = to_pixels(sd, source_latents)
            for method in args.methods:
                images = torch.cat(
                    [to_pixels(sd, editor.latents(method, seed, k, source_latents)) for k in ks]
                ).cpu()
                scores = measure(scorer, images, source_image.cpu(), args.source, args.edit)
                rows += [
                    {
                        "method": method,
                        "seed": seed,
                        "strength": s,
                        "switch_step": k,
                        **{name: round(float(v[j]), 4) for name, v in scores.items()},
                    }
                    for j, (s, k) in enumerate(zip(args.strengths, ks))
                ]
                grid.append(list(images))
                labels.append(f"{method}, seed {seed}")
    wall_s = time.perf_counter() - start
    record = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "switch_steps": ks,
        "timesteps": n,
        "dtype": str(pipe.unet.dtype),
        "wall_s": round(wall_s, 1),
        "command": command_line("p8_controlnet.edit", argv),
        "environment": environment(device),
    }
    title = f"{shorten(args.source, 60)!r} -> {shorten(args.edit, 60)!r}, {args.scheduler} {args.steps} steps"
    with output_dir(args.out, OUTPUTS, overwrite=args.overwrite) as tmp:
        save_csv(tmp / "edit.csv", rows)
        image_grid(
            tmp / "edit.png",
            grid,
            labels,
            [f"s={s:g} (k={k}/{n})" for s, k in zip(args.strengths, ks)],
            title=title,
        )
        plot_scores(tmp / "edit_scores.png", rows, args.methods, title)
        save_json(tmp / "edit.json", record)
    print(f"{len(rows)} edited images in {wall_s:.1f} s -> {args.out}")
    return record


if __name__ == "__main__":
    run_cli(main)
