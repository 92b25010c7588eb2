"""(b) Sampling study: scheduler x steps x guidance with wall time and CLIP score, custom beta
schedules, decoded intermediate latents, and slerp/lerp between two prompts' text embeddings.

    python -m p8_controlnet.sampling_study --pretrained sd-v1-5/ --clip clip-vit-base-patch32/ --out outputs/p8/study \\
        --prompt "a red bus in the snow" --prompt "a bowl of ramen" --seeds 0 1 \\
        --schedulers ddim euler-a dpm++2m unipc --steps-list 10 20 50 --guidances 1 3 7.5 12

Experiments (--experiments, default all), each on fixed seeds so only the studied setting changes:
  grid           every scheduler x steps x guidance for every prompt and seed: grid.csv (wall time and
                 CLIP score per image), by_scheduler.png, by_steps.png, by_guidance.png (mean and spread
                 over the other axes; by_guidance is the guidance sweep scored with CLIP), grid_images.png
  schedules      the model's training schedule and the custom linear / inverse-square / log-decay betas
                 (p8_controlnet/schedules.py) in --scheduler: schedules.csv, schedules.png (images),
                 schedule_curves.png (beta_t and alpha-bar_t)
  intermediates  the latents after chosen steps, decoded by the VAE: intermediates.png
  interpolation  slerp and lerp from prompt A's to prompt B's embedding, one seed, CLIP score to each
                 prompt: interpolation.csv, interpolation.png
The single-valued --scheduler/--steps/--guidance/--seed set the last three. Wall time per image is
one pipeline call (text encoding, denoising, VAE decoding) divided by the images it made.
Without --clip the CLIP columns are empty. study.json holds the settings, command and versions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hw2_utils import (
    HelpFormatter,
    add_overwrite_option,
    CLIError,
    command_line,
    non_negative_float,
    output_dir,
    positive_int,
    probability,
    progress,
    pyplot,
    run_cli,
    save_figure,
    save_json,
    seed_int,
)
from p8_controlnet.pipelines import (
    SCHEDULERS,
    add_pipeline_args,
    call_size,
    generate,
    make_scheduler,
    pipeline_from_args,
    scheduler_config,
)
from p8_controlnet.records import environment, image_grid, save_csv
from p8_controlnet.schedules import SCHEDULES, custom_betas, lerp, slerp

EXPERIMENTS = ("grid", "schedules", "intermediates", "interpolation")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument(
        "--prompt", action="append", help="prompt(s) of the grid and schedule experiments (repeat)"
    )
    p.add_argument(
        "--seeds",
        type=seed_int,
        nargs="+",
        default=[0, 1],
        help="fixed seeds of the grid (default: 0 1)",
    )
    p.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=list(SCHEDULERS))
    p.add_argument("--steps-list", type=positive_int, nargs="+", default=[10, 20, 50])
    p.add_argument("--guidances", type=non_negative_float, nargs="+", default=[1.0, 3.0, 7.5, 12.0])
    p.add_argument("--clip", help="CLIP folder (model + processor) for CLIP scores")
    p.add_argument(
        "--intermediate-steps",
        type=positive_int,
        nargs="+",
        help="steps (1-based) whose latents are decoded "
        "(default: 5 evenly spaced, ending with the last)",
    )
    p.add_argument(
        "--interp-prompts",
        nargs=2,
        metavar=("A", "B"),
        default=["a photograph of a red sports car", "a watercolour painting of a lighthouse"],
    )
    p.add_argument(
        "--alphas",
        type=probability,
        nargs="+",
        default=[0, 0.25, 0.5, 0.75, 1],
        help="interpolation weights of B",
    )
    add_pipeline_args(p, steps=20)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    args.prompt = args.prompt or ["a photograph of an astronaut riding a horse"]
    args.intermediate_steps = args.intermediate_steps or sorted(
        {round(args.steps * k / 5) or 1 for k in range(1, 6)}
    )
    if not all(1 <= s <= args.steps for s in args.intermediate_steps):
        raise CLIError(f"--intermediate-steps must lie in 1..--steps ({args.steps})")
    return args


class Study:
    """The pipeline, its scheduler config and the optional CLIP scorer, shared by the experiments."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pipe, self.sd, self.device = pipeline_from_args(args)
        self.config = scheduler_config(args.pretrained, args.sd_config)
        self.size = call_size(args, self.sd)
        if args.clip:
            from p8_controlnet.clip_score import ClipScorer

            self.scorer = ClipScorer(args.clip, self.device)
        else:
            self.scorer = None

    def clip(self, images: torch.Tensor, texts: list[str]) -> list[float | None]:
        return (
            [round(float(s), 3) for s in self.scorer(images, texts)]
            if self.scorer
            else [None] * len(texts)
        )

    def texts(self, prompts: list[str]) -> dict:
        return {"prompt": prompts, "negative_prompt": [self.args.negative_prompt] * len(prompts)}

    def sample(
        self,
        scheduler: str,
        steps: int,
        guidance: float,
        seeds: list[int],
        per_image: dict,
        betas: torch.Tensor | None = None,
        **extra,
    ) -> tuple[torch.Tensor, float]:
        """Images and wall seconds per image."""
        self.pipe.scheduler = make_scheduler(scheduler, self.config, betas)
        sync()
        start = time.perf_counter()
        images = generate(
            self.pipe,
            seeds,
            per_image,
            self.args.batch_size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            **self.size,
            **extra,
        )
        sync()
        return images, (time.perf_counter() - start) / len(images)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- grid


def run_grid(study: Study, out: Path) -> list[dict]:
    a = study.args
    prompts = [p for p in a.prompt for _ in a.seeds]
    seeds = [s for _ in a.prompt for s in a.seeds]
    rows, sheet = [], {}
    cells = [(sch, st, g) for sch in a.schedulers for st in a.steps_list for g in a.guidances]
    for sch, steps, guidance in progress(cells, desc="grid"):
        images, per_image_s = study.sample(sch, steps, guidance, seeds, study.texts(prompts))
        scores = study.clip(images, prompts)
        rows += [
            {
                "scheduler": sch,
                "steps": steps,
                "guidance": guidance,
                "prompt": p,
                "seed": s,
                "wall_s_per_image": round(per_image_s, 4),
                "clip_score": c,
            }
            for p, s, c in zip(prompts, seeds, scores)
        ]
        if guidance == a.guidances[len(a.guidances) // 2]:
            sheet[sch, steps] = images[0]
    save_csv(out / "grid.csv", rows)
    for axis in ("scheduler", "steps", "guidance"):
        plot_axis(out / f"by_{axis}.png", rows, axis)
    g = a.guidances[len(a.guidances) // 2]
    image_grid(
        out / "grid_images.png",
        [[sheet[sch, st] for st in a.steps_list] for sch in a.schedulers],
        a.schedulers,
        [f"{st} steps" for st in a.steps_list],
        title=f"{a.prompt[0][:40]!r}, seed {a.seeds[0]}, guidance {g:g}",
    )
    return rows


def summarize(rows: list[dict], axis: str, column: str) -> tuple[list, np.ndarray, np.ndarray]:
    """Per value of `axis` (in first-seen order): mean and std of `column` over all other settings."""
    values = list(dict.fromkeys(r[axis] for r in rows))
    groups = [
        np.array([r[column] for r in rows if r[axis] == v and r[column] is not None], dtype=float)
        for v in values
    ]
    return (
        values,
        np.array([g.mean() if len(g) else np.nan for g in groups]),
        np.array([g.std() if len(g) else np.nan for g in groups]),
    )


def plot_axis(path: Path, rows: list[dict], axis: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, column, label in zip(
        axes, ("clip_score", "wall_s_per_image"), ("CLIP score (100 x cosine)", "seconds per image")
    ):
        values, mean, std = summarize(rows, axis, column)
        x = np.arange(len(values)) if axis == "scheduler" else np.array(values, dtype=float)
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3)
        if axis == "scheduler":
            ax.set_xticks(x, values, rotation=30)
        if np.isnan(mean).all():
            ax.text(0.5, 0.5, "no --clip given", transform=ax.transAxes, ha="center")
        ax.set_xlabel(axis), ax.set_ylabel(label), ax.grid(alpha=0.3)
    fig.suptitle(f"mean +- std over the other axes, by {axis}")
    save_figure(fig, path, tight=True)


# --------------------------------------------------------------------------- custom schedules


def run_schedules(study: Study, out: Path) -> list[dict]:
    a, cfg = study.args, study.config
    betas = {f"trained ({cfg['beta_schedule']})": None}
    betas.update(
        {
            kind: custom_betas(kind, cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"])
            for kind in SCHEDULES
        }
    )
    prompts, seeds = [a.prompt[0]] * len(a.seeds), a.seeds
    rows, images = [], {}
    for name, b in progress(betas.items(), desc="schedules"):
        images[name], per_image_s = study.sample(
            a.scheduler, a.steps, a.guidance, seeds, study.texts(prompts), betas=b
        )
        rows += [
            {
                "schedule": name,
                "seed": s,
                "wall_s_per_image": round(per_image_s, 4),
                "clip_score": c,
            }
            for s, c in zip(seeds, study.clip(images[name], prompts))
        ]
    save_csv(out / "schedules.csv", rows)
    trained = make_scheduler(a.scheduler, cfg).betas
    plot_schedules(
        out / "schedule_curves.png",
        {name: trained if b is None else b for name, b in betas.items()},
    )
    image_grid(
        out / "schedules.png",
        [list(v) for v in images.values()],
        list(images),
        [f"seed {s}" for s in seeds],
        title=f"{a.scheduler}, {a.steps} steps: {a.prompt[0][:40]}",
    )
    return rows


def plot_schedules(path: Path, betas: dict) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, b in betas.items():
        ax1.plot(b.double().numpy(), label=name)
        ax2.plot(torch.cumprod(1 - b.double(), 0).numpy(), label=name)
    (
        ax1.set_xlabel("t"),
        ax1.set_ylabel("beta_t"),
        ax2.set_xlabel("t"),
        ax2.set_ylabel("alpha-bar_t"),
    )
    ax2.set_yscale("log"), ax1.legend(fontsize=8), ax1.grid(alpha=0.3), ax2.grid(alpha=0.3)
    save_figure(fig, path, tight=True)


# --------------------------------------------------------------------------- intermediates


def decoded_intermediates(study: Study, steps: list[int]) -> tuple[dict, torch.Tensor]:
    """{step k (1-based): (its timestep, the latents after it decoded to (N,3,H,W) in [0,1])} for the
    base setting's seeds, and the pipeline's final images."""
    a, wanted, latents = study.args, set(steps), {}

    # diffusers calls this after every step with the new latents
    def keep(pipe, index, timestep, kwargs):
        if index + 1 in wanted:
            latents[index + 1] = (int(timestep), kwargs["latents"].detach().clone())
        return kwargs

    final, _ = study.sample(
        a.scheduler,
        a.steps,
        a.guidance,
        a.seeds,
        study.texts([a.prompt[0]] * len(a.seeds)),
        callback_on_step_end=keep,
    )
    with torch.no_grad():
        return {
            k: (t, ((study.sd.decode(x.to(study.sd.device)).cpu() + 1) / 2).clamp(0, 1))
            for k, (t, x) in sorted(latents.items())
        }, final


def run_intermediates(study: Study, out: Path) -> None:
    a = study.args
    decoded, _ = decoded_intermediates(study, a.intermediate_steps)
    rows = [[images[i] for _, images in decoded.values()] for i in range(len(a.seeds))]
    image_grid(
        out / "intermediates.png",
        rows,
        [f"seed {s}" for s in a.seeds],
        [f"step {k} (at t={t})" for k, (t, _) in decoded.items()],
        title=f"{a.scheduler}, {a.steps} steps: latents decoded by the VAE",
    )


# --------------------------------------------------------------------------- interpolation


def run_interpolation(study: Study, out: Path) -> list[dict]:
    a, pipe = study.args, study.pipe
    with torch.no_grad():
        (cond_a, neg), (cond_b, _) = (
            pipe.encode_prompt(p, pipe._execution_device, 1, True, a.negative_prompt)
            for p in a.interp_prompts
        )
    rows, images = [], {}
    for name, fn in (("slerp", slerp), ("lerp", lerp)):
        embeds = torch.cat([fn(cond_a, cond_b, t) for t in a.alphas])
        per_image = {"prompt_embeds": embeds, "negative_prompt_embeds": neg.expand_as(embeds)}
        images[name], _ = study.sample(
            a.scheduler, a.steps, a.guidance, [a.seed] * len(a.alphas), per_image
        )
        to_a, to_b = (study.clip(images[name], [p] * len(a.alphas)) for p in a.interp_prompts)
        rows += [
            {
                "method": name,
                "alpha": t,
                "embedding_norm": round(float(e.norm()), 3),
                "clip_to_a": ca,
                "clip_to_b": cb,
            }
            for t, e, ca, cb in zip(a.alphas, embeds, to_a, to_b)
        ]
    save_csv(out / "interpolation.csv", rows)
    image_grid(
        out / "interpolation.png",
        [list(v) for v in images.values()],
        list(images),
        [f"alpha {t:g}" for t in a.alphas],
        title=f"A={a.interp_prompts[0][:30]!r} -> B={a.interp_prompts[1][:30]!r}",
    )
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    study = Study(args)
    runners = {
        "grid": run_grid,
        "schedules": run_schedules,
        "intermediates": run_intermediates,
        "interpolation": run_interpolation,
    }
    start = time.perf_counter()
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        for name in args.experiments:
            runners[name](study, tmp)
        record = {
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "dtype": str(study.pipe.unet.dtype),
            "wall_s": round(time.perf_counter() - start, 1),
            "command": command_line("p8_controlnet.sampling_study", argv),
            "environment": environment(study.device),
        }
        save_json(tmp / "study.json", record)
    print(f"{', '.join(args.experiments)} in {record['wall_s']} s -> {args.out}")
    return record


if __name__ == "__main__":
    run_cli(main)
