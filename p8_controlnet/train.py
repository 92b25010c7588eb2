"""Fine-tune a Canny ControlNet on (Canny(image), caption) pairs from COCO (Zhang et al. 2023).

    python -m p8_controlnet.train --pretrained sd-v1-5/ --data ../shared/data/coco/val2017 \\
        --captions ../shared/data/coco/annotations/captions_val2017.json --out runs/p8/controlnet-canny
    python -m p8_controlnet.train ... --controlnet sd-controlnet-canny/    # start from a trained one

Stable Diffusion stays frozen. The ControlNet starts from --controlnet, or as the paper does: a
copy of the UNet's encoder whose zero convolutions make it a no-op at step 0. Loss: SD's eps-MSE
on VAE latents noised at a uniform random t, with the ControlNet's residuals added to the UNet.
Captions are replaced by "" with probability 0.5 (the paper's choice) so the ControlNet learns to
read the content from the edges alone. Re-running the same command resumes from OUT/last.pt
(--no-resume starts over, --max-seconds ends a session early); every batch and random draw is a
function of the seed and the step, so a resumed run ends where an uninterrupted one would. OUT
holds model.pt (the ControlNet's config and fp32 weights, written at every checkpoint, which
--controlnet and the pipelines read as they read a diffusers folder), log.csv (step, loss) and
result.json (the recipe, steps, sessions; its metrics the loss of a fixed held-in batch before
and after training). No ControlNet trained here ships: --preset shipped is the defaults.
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
    autocast,
    atomic_path,
    command_line,
    derived_seed,
    parse_with_presets,
    positive_float,
    positive_int,
    probability,
    progress,
    resolve_device,
    resolve_dtype,
    run_cli,
    seed_everything,
)
from p8_controlnet.data import CannyCaptions, read_captions, step_batch
from p8_controlnet.pipelines import check_controlnet_fits, load_controlnet
from stable_diffusion.loader import V1_CONFIG_DIR, load_stable_diffusion
from stable_diffusion.model import StableDiffusion

# fmt: off
DEFAULTS = dict(
    steps=5000,            # the paper's Canny model saw far more; edges start to steer at a few thousand steps
    batch_size=4,          # at 512 px on a 24 GB card with fp16 weights
    lr=1e-5,               # the paper's: larger rates destroy the copied encoder's features
    drop_caption=0.5,      # the paper's prompt dropout
)
# fmt: on
TYPES = dict(lr=positive_float, drop_caption=probability)  # the rest are counts
LOG_FIELDS = ["step", "loss", "seconds"]
PRESETS = {"shipped": {}}  # nothing trained here ships: the defaults above


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(
        p,
        data=(REQUIRED, "COCO image folder, e.g. ../shared/data/coco/val2017"),
        out=(REQUIRED, "run folder: model.pt, last.pt, log.csv, result.json"),
        presets=PRESETS,
        precision="fp16",
        ckpt_every=1000,
        grad_clip=1.0,
        image_size=(None, "training size (default: the model's, 512 for SD v1)"),
        limit="use only the first N images (sorted by name)",
    )
    p.add_argument(
        "--pretrained",
        required=True,
        help="SD v1.x weights: diffusers folder or CompVis single file",
    )
    p.add_argument(
        "--sd-config", default=str(V1_CONFIG_DIR), help="configs for a single-file --pretrained"
    )
    p.add_argument(
        "--controlnet",
        help="ControlNet to start from, a diffusers folder or a train.py model.pt (default: a copy "
        "of the UNet encoder)",
    )
    p.add_argument("--captions", required=True, help="COCO captions json")
    for name, value in DEFAULTS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", type=TYPES.get(name, positive_int), default=value
        )
    return parse_with_presets(p, argv, PRESETS)


def controlnet_loss(
    sd: StableDiffusion, controlnet, batch: dict, captions: list[str], generator: torch.Generator
) -> torch.Tensor:
    """eps-MSE of the frozen UNet plus ControlNet residuals; all noise from `generator` (CPU)."""
    device = sd.device
    with torch.no_grad():
        # the mean: less noise in the loss
        latents = sd.encode_images(batch["pixels"]).mean.float() * sd.latent_scale
        context = sd.encode_text(captions)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    t = torch.randint(0, sd.schedule.T, (len(latents),), generator=generator).to(device)
    noisy = sd.schedule.q_sample(latents, t, noise)
    down, mid = controlnet(
        noisy,
        t,
        encoder_hidden_states=context,
        controlnet_cond=batch["control"].to(device),
        return_dict=False,
    )
    eps = sd.unet(
        noisy,
        t,
        encoder_hidden_states=context,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    return F.mse_loss(eps.float(), noise)


def drop_captions(captions: list[str], p: float, generator: torch.Generator) -> list[str]:
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep)]


def fixed_batch_loss(sd, controlnet, batch: dict, seed: int, dtype: torch.dtype) -> float:
    """The loss on one batch with fixed noise, t and captions: comparable before and after training."""
    with torch.no_grad(), autocast(sd.device, dtype):
        return controlnet_loss(
            sd, controlnet, batch, batch["caption"], torch.Generator().manual_seed(seed)
        ).item()


def train_step(
    sd,
    controlnet,
    optimizer,
    scaler,
    batch: dict,
    args,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> float:
    """One AdamW step on the ControlNet only (captions dropped with p = args.drop_caption); the loss."""
    batch = {k: v.to(sd.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with autocast(sd.device, dtype):
        loss = controlnet_loss(
            sd,
            controlnet,
            batch,
            drop_captions(batch["caption"], args.drop_caption, generator),
            generator,
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    torch.nn.utils.clip_grad_norm_(controlnet.parameters(), args.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def main(argv=None) -> dict:
    args = parse_args(argv)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    run = RunFolder.from_args(args)
    pairs = read_captions(args.captions, args.data)[: args.limit]
    # Everything that defines the run but its length (--steps may grow) and where it runs.
    identity = {
        "pretrained": str(Path(args.pretrained).resolve()),
        "data": str(Path(args.data).resolve()),
        "captions": str(Path(args.captions).resolve()),
        "limit": args.limit,
        "image_size": args.image_size,
        "controlnet": args.controlnet and str(Path(args.controlnet).resolve()),
        "grad_clip": args.grad_clip,
        "seed": args.seed,
        **{k: getattr(args, k) for k in DEFAULTS if k != "steps"},
    }

    controlnet = load_controlnet(args.controlnet) if args.controlnet else None
    sd = load_stable_diffusion(args.pretrained, args.sd_config, device=device, dtype=dtype)
    if controlnet is not None:
        check_controlnet_fits(controlnet, sd.unet, args.controlnet)
    else:
        from diffusers import ControlNetModel

        # Copied from the fp32 UNet (fp32 master weights), which then goes back to `dtype`. The control
        # embedding downsamples by the VAE's factor: SD v1's (16, 32, 96, 256) for 8x, its prefix for less.
        channels = (16, 32, 96, 256)[: sd.vae_scale_factor.bit_length()]
        controlnet = ControlNetModel.from_unet(
            sd.to(dtype=torch.float32).unet, conditioning_embedding_out_channels=channels
        )
        sd.to(dtype=dtype)
    # nn's .to: diffusers' warns about keep-in-fp32 modules
    torch.nn.Module.to(controlnet, device, torch.float32)

    dataset = CannyCaptions(pairs, args.image_size or sd.resolution, args.seed)
    batch_size = min(args.batch_size, len(dataset))
    probe = step_batch(dataset, 1, batch_size, args.seed)  # held in: the first step's images
    probe = {k: v.to(device) if torch.is_tensor(v) else v for k, v in probe.items()}
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=args.lr)
    # fp16 gradients flowing back through the frozen fp16 UNet underflow without loss scaling.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    generator = torch.Generator().manual_seed(derived_seed(args.seed, "draws"))
    state = run.load(
        identity, controlnet=controlnet, optimizer=optimizer, scaler=scaler, generator=generator
    )
    if state is not None:
        done, before = state["step"], state["fixed_batch_loss_before"]
        print(f"resumed from {run.checkpoint} at step {done}")
    else:
        done, before = 0, fixed_batch_loss(sd, controlnet, probe, args.seed, dtype)
    log = run.start(done, args.steps, LOG_FIELDS, command_line("p8_controlnet.train", argv), device)

    controlnet.train().requires_grad_(True)
    t0, step = time.time(), done
    for step in progress(range(done + 1, args.steps + 1), desc="train"):
        loss = train_step(
            sd,
            controlnet,
            optimizer,
            scaler,
            step_batch(dataset, step, batch_size, args.seed),
            args,
            generator,
            dtype,
        )
        log.writerow([step, f"{loss:.6f}", f"{time.time() - t0:.1f}"])
        if run.checkpoint_due(step, args.steps):
            run.save(
                {"step": step, "fixed_batch_loss_before": before},
                controlnet=controlnet,
                optimizer=optimizer,
                scaler=scaler,
                generator=generator,
            )
            with atomic_path(run.model) as tmp:
                torch.save(
                    # the config as a diffusers folder's config.json holds it
                    {"config": controlnet.to_json_string(), "state_dict": controlnet.state_dict()},
                    tmp,
                )
            if run.stopping:
                break

    controlnet.eval()
    after = fixed_batch_loss(sd, controlnet, probe, args.seed, dtype)
    summary = {
        "fixed_batch_loss_before": before,
        "fixed_batch_loss_after": after,
        "images": len(dataset),
        "steps": step,
    }
    run.finish(step, summary)
    print(f"fixed-batch loss {before:.4f} -> {after:.4f} at step {step}; ControlNet in {run.model}")
    return summary


if __name__ == "__main__":
    run_cli(main)
