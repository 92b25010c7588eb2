"""Textual Inversion (Gal et al. 2022): learn one new token's embedding for a concept.

    python -m p3_textual_inversion.train --data hw2_data/textual_inversion/0 --placeholder "<new1>" \\
        --initializer dog --templates object --pretrained sd-v1-4.ckpt --out runs/p3/new1
    python -m p3_textual_inversion.train --data hw2_data/textual_inversion/1 --placeholder "<new2>" \\
        --initializer painting --templates style --pretrained sd-v1-4.ckpt --out runs/p3/new2
    torchrun --nproc_per_node=2 -m p3_textual_inversion.train ...      # data-parallel

Everything in Stable Diffusion stays frozen; only the placeholder's 768-float vector is
optimised, with SD's own objective: the eps-MSE of the UNet on VAE latents noised at a random
t, conditioned on a template caption ("a photo of a <new1>"). Re-running the same command
resumes from OUT/last.pt (--no-resume starts over, --max-seconds ends a session early).
OUT/model.pt is the result, a learned_embeds safetensors file (what infer.py --embeds and
hw2_3.sh read, whatever its name); OUT/samples/ holds validation images every --validation-every
steps; OUT/log.csv the loss and the vector's distance from its initializer per step;
OUT/result.json the recipe, the steps reached and the provenance. No embedding ships (README
"P3": they are trained with the commands above), so --preset shipped is the defaults.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hw2_utils import (
    HelpFormatter,
    REQUIRED,
    RunFolder,
    add_common_args,
    atomic_path,
    autocast,
    cleanup_distributed,
    command_line,
    derived_seed,
    init_distributed,
    log_main,
    non_negative_float,
    non_negative_int,
    parse_with_presets,
    positive_float,
    positive_int,
    probability,
    progress,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_grid,
    seed_everything,
)
from p3_textual_inversion.data import TEMPLATES, load_concept_images
from p3_textual_inversion.embeddings import (
    add_tokens,
    initializer_vector,
    learned_rows,
    save_embeds,
)
from stable_diffusion.loader import V1_CONFIG_DIR, load_stable_diffusion
from stable_diffusion.model import StableDiffusion
from stable_diffusion.pipeline import text_to_image

# The reference recipe (the TI paper's LDM setup as in diffusers' textual_inversion example):
# about 1 h on a V100 at 512 px with fp16 (an estimate, not measured here).
# fmt: off
DEFAULTS = dict(
    steps=3000,         # optimizer steps; the concept is usually recognisable from ~1000
    batch_size=1,       # images per micro-batch: at 512 px a larger batch mostly costs memory
    grad_accum=4,       # effective batch 4
    lr=5e-4,            # per image; --scale-lr multiplies by batch x accum x GPUs (-> 2e-3)
    weight_decay=1e-2,  # on the new vector only: keeps its norm near real token embeddings
    flip_p=0.5,         # horizontal flips double the 3-5 images; off for text/asymmetric concepts
)
# fmt: on
# the rest are counts
TYPES = dict(lr=positive_float, weight_decay=non_negative_float, flip_p=probability)
# shift: |v - v0|, the vector's distance from its initializer
LOG_FIELDS = ["step", "loss", "shift", "seconds"]
PRESETS = {"shipped": {}}  # nothing trained here ships: the defaults above


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(
        p,
        data=(REQUIRED, "folder with the concept's images"),
        out=(
            REQUIRED,
            "run folder: model.pt (learned embeds), last.pt, log.csv, result.json, samples/",
        ),
        presets=PRESETS,
        precision="fp16",
        ckpt_every=250,
        image_size=(None, "training size (default: the model's, 512 for SD v1)"),
    )
    p.add_argument("--placeholder", required=True, help="the new token, e.g. '<new1>'")
    p.add_argument(
        "--initializer", required=True, help="one-token word the vector starts from, e.g. dog"
    )
    p.add_argument(
        "--templates",
        choices=sorted(TEMPLATES),
        default="object",
        help="caption set: object or style",
    )
    p.add_argument(
        "--pretrained",
        required=True,
        help="SD v1.x weights: CompVis single file (sd-v1-4.ckpt) or diffusers folder",
    )
    p.add_argument(
        "--sd-config", default=str(V1_CONFIG_DIR), help="configs for a single-file --pretrained"
    )
    for name, value in DEFAULTS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", type=TYPES.get(name, positive_int), default=value
        )
    p.add_argument(
        "--scale-lr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="multiply --lr by batch-size x grad-accum x number of GPUs",
    )
    p.add_argument(
        "--validation-every",
        type=non_negative_int,
        default=500,
        help="steps between sample grids (0 = never)",
    )
    p.add_argument(
        "--validation-steps", type=positive_int, default=25, help="DDIM steps for the sample grids"
    )
    return parse_with_presets(p, argv, PRESETS)


def micro_batch_loss(
    sd: StableDiffusion,
    mean: torch.Tensor,
    std: torch.Tensor,
    captions: list[str],
    args,
    gen: torch.Generator,
    dtype: torch.dtype,
) -> torch.Tensor:
    """SD's eps-MSE on `args.batch_size` latents sampled from the cached VAE posteriors (the
    second half of `mean`/`std` holds the mirrored images), all draws from `gen` on the CPU."""
    n_images = len(mean) // 2
    idx = torch.randint(0, n_images, (args.batch_size,), generator=gen)
    idx = idx + n_images * (torch.rand(args.batch_size, generator=gen) < args.flip_p).long()
    noise_z = torch.randn(mean[idx].shape, generator=gen).to(sd.device)
    latents = (mean[idx] + std[idx] * noise_z) * sd.latent_scale
    t = torch.randint(0, sd.schedule.T, (args.batch_size,), generator=gen).to(sd.device)
    noise = torch.randn(latents.shape, generator=gen).to(sd.device)
    chosen = [
        captions[i] for i in torch.randint(0, len(captions), (args.batch_size,), generator=gen)
    ]
    with autocast(sd.device, dtype):
        context = sd.encode_text([c.format(args.placeholder) for c in chosen])
        pred = sd.unet(
            sd.schedule.q_sample(latents, t, noise).to(dtype), t, encoder_hidden_states=context
        ).sample
    return F.mse_loss(pred.float(), noise)


def main(argv=None) -> None:
    train(parse_args(argv))


def concept_posteriors(
    sd: StableDiffusion, data: str, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std) of every concept image and its mirror, computed once:
    encoding is the costliest part of a step at 512 px and the images never change. Latents
    are sampled from it per step."""
    images = load_concept_images(data, size)
    images = torch.cat([images, images.flip(-1)])
    with torch.no_grad():
        posteriors = [sd.encode_images(chunk) for chunk in images.split(4)]
        return torch.cat([p.mean.float() for p in posteriors]), torch.cat(
            [p.std.float() for p in posteriors]
        )


def optimisation_step(
    sd: StableDiffusion, rows, mean, std, templates, args, gen, dtype, opt, scaler, info
) -> float:
    """--grad-accum micro-batches, then one update of the new embedding row; returns the loss."""
    loss_sum = 0.0
    for _ in range(args.grad_accum):
        loss = micro_batch_loss(sd, mean, std, templates, args, gen, dtype) / args.grad_accum
        scaler.scale(loss).backward()
        loss_sum += loss.item()
    if info.enabled:  # one vector: averaging its gradient by hand is all DDP would do
        torch.distributed.all_reduce(rows.new.grad)
        rows.new.grad /= info.world_size
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return loss_sum


def export(path: Path, vector: torch.Tensor, args, step: int, command: str) -> None:
    """model.pt: the token's vector and how it was made, a learned_embeds safetensors file."""
    with atomic_path(path) as tmp:
        save_embeds(
            tmp,
            {args.placeholder: vector},
            {
                "initializer": args.initializer,
                "templates": args.templates,
                "step": step,
                "final": step == args.steps,
                "recipe": command,
            },
        )


def train(args: argparse.Namespace):
    """Run (or resume) training; returns the model with the learned token installed."""
    info, device = init_distributed(resolve_device(args.device))
    run = RunFolder.from_args(args, main=info.is_main)
    dtype = resolve_dtype(args.precision, device)
    seed_everything(args.seed, info.rank)
    templates = TEMPLATES[args.templates]
    # Everything that defines the run but its length (--steps may grow) and where it runs.
    identity = {
        "data": str(Path(args.data).resolve()),
        "pretrained": str(Path(args.pretrained).resolve()),
        "placeholder": args.placeholder,
        "initializer": args.initializer,
        "templates": args.templates,
        "image_size": args.image_size,
        "scale_lr": args.scale_lr,
        "seed": args.seed,
        **{k: getattr(args, k) for k in DEFAULTS if k != "steps"},
    }

    sd = load_stable_diffusion(args.pretrained, args.sd_config, device=device)
    # Frozen UNet and VAE in half precision halve memory; the text encoder stays fp32 because
    # the gradient to the new vector flows through it.
    sd.to(dtype=dtype, parts=("unet", "vae"))
    size = args.image_size or sd.resolution
    token_id = add_tokens(sd, {args.placeholder: initializer_vector(sd, args.initializer)})[
        args.placeholder
    ]
    rows = learned_rows(sd)
    init = rows.new.detach().clone()

    mean, std = concept_posteriors(sd, args.data, size)
    log_main(
        f"{len(mean) // 2} images of {args.placeholder} (id {token_id}) from {args.data} at {size} px; "
        f"{args.templates} templates; {device} {dtype}"
    )

    lr = args.lr * (args.batch_size * args.grad_accum * info.world_size if args.scale_lr else 1)
    opt = torch.optim.AdamW([rows.new], lr=lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    gen = torch.Generator().manual_seed(derived_seed(args.seed, "draws", info.rank))
    step = 0
    state = run.load(identity, optimizer=opt, scaler=scaler, generator=gen)
    if state is not None:
        with torch.no_grad():
            rows.new.copy_(state["rows"])
        step = state["step"]
        log_main(f"resumed from {run.checkpoint} at step {step}")
    command = command_line("p3_textual_inversion.train")
    log = run.start(step, args.steps, LOG_FIELDS, command, device)

    bar = progress(total=args.steps, initial=step, desc=f"train {args.placeholder}")
    t0, loss_sum = time.time(), None
    while step < args.steps and not run.stopping:
        loss_sum = optimisation_step(
            sd, rows, mean, std, templates, args, gen, dtype, opt, scaler, info
        )
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}")
        if log:
            log.writerow(
                [
                    step,
                    f"{loss_sum:.5f}",
                    f"{(rows.new.detach() - init).norm().item():.4f}",
                    f"{time.time() - t0:.1f}",
                ]
            )
        if run.checkpoint_due(step, args.steps):
            run.save(
                {"rows": rows.new.detach().cpu(), "step": step},
                optimizer=opt,
                scaler=scaler,
                generator=gen,
            )
            if info.is_main:
                export(run.model, rows.new[0], args, step, command)
        if (
            info.is_main
            and args.validation_every
            and (step % args.validation_every == 0 or step == args.steps)
        ):
            grid = text_to_image(
                sd,
                templates[0].format(args.placeholder),
                4,
                seed=args.seed,
                steps=args.validation_steps,
                size=size,
                batch_size=4,
            )
            save_grid(grid, run.out / "samples" / f"step{step:06d}.png", nrow=4)
    bar.close()
    run.finish(step, {} if loss_sum is None else {"loss": loss_sum})
    log_main(f"done: {run.model} (step {step} of {args.steps}, {time.time() - t0:.0f} s this run)")
    cleanup_distributed()
    return sd


if __name__ == "__main__":
    run_cli(main)
