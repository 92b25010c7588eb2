"""Textual Inversion (Gal et al. 2022): learn one new token's embedding for a concept.

    python -m p3_textual_inversion.train --images hw2_data/textual_inversion/0 --placeholder "<new1>" \\
        --initializer dog --templates object --model sd-v1-4.ckpt --out runs/p3/new1
    python -m p3_textual_inversion.train --images hw2_data/textual_inversion/1 --placeholder "<new2>" \\
        --initializer painting --templates style --model sd-v1-4.ckpt --out runs/p3/new2
    torchrun --nproc_per_node=2 -m p3_textual_inversion.train ...      # data-parallel

Everything in Stable Diffusion stays frozen; only the placeholder's 768-float vector is
optimised, with SD's own objective: the eps-MSE of the UNet on VAE latents noised at a random
t, conditioned on a template caption ("a photo of a <new1>"). Re-running the same command
resumes from OUT/last.pt. OUT/learned_embeds.safetensors is the result; OUT/samples/ holds
validation images every --validation-every steps.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hw2_utils import (CLIError, atomic_path, autocast, cleanup_distributed, command_line, init_distributed, log_main,
                       progress, resolve_device, resolve_dtype, run_cli, save_grid, seed_everything)
from p3_textual_inversion.data import TEMPLATES, load_concept_images
from p3_textual_inversion.embeddings import add_tokens, initializer_vector, learned_rows, save_embeds
from stable_diffusion.loader import V1_CONFIG_DIR, load_stable_diffusion
from stable_diffusion.pipeline import text_to_image

# The reference recipe (the TI paper's LDM setup as in diffusers' textual_inversion example):
# about 1 h on a V100 at 512 px with fp16 (an estimate, not measured here).
DEFAULTS = dict(
    steps=3000,         # optimizer steps; the concept is usually recognisable from ~1000
    batch_size=1,       # images per micro-batch: at 512 px a larger batch mostly costs memory
    grad_accum=4,       # effective batch 4
    lr=5e-4,            # per image; --scale-lr multiplies by batch x accum x GPUs (-> 2e-3)
    weight_decay=1e-2,  # on the new vector only: keeps its norm near real token embeddings
    flip_p=0.5,         # horizontal flips double the 3-5 images; off for text/asymmetric concepts
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder with the concept's images")
    p.add_argument("--placeholder", required=True, help="the new token, e.g. '<new1>'")
    p.add_argument("--initializer", required=True, help="one-token word the vector starts from, e.g. dog")
    p.add_argument("--templates", choices=sorted(TEMPLATES), default="object", help="caption set: object or style")
    p.add_argument("--model", required=True, help="SD v1.x: CompVis single file (sd-v1-4.ckpt) or diffusers folder")
    p.add_argument("--sd-config", default=str(V1_CONFIG_DIR), help="configs for a single-file --model")
    p.add_argument("--out", required=True, help="run folder: learned_embeds.safetensors, last.pt, log.csv, samples/")
    for name, value in DEFAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="multiply --lr by batch-size x grad-accum x number of GPUs")
    p.add_argument("--resolution", type=int, default=None, help="training size (default: the model's, 512 for SD v1)")
    p.add_argument("--precision", default="fp16", help="fp32 | bf16 | fp16: frozen weights and autocast (fp32 on CPU)")
    p.add_argument("--validation-every", type=int, default=500, help="steps between sample grids (0 = never)")
    p.add_argument("--validation-steps", type=int, default=25, help="DDIM steps for the sample grids")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    return p.parse_args(argv)


def main(argv=None) -> None:
    train(parse_args(argv))


def train(args: argparse.Namespace):
    """Run (or resume) training; returns the model with the learned token installed."""
    info, device = init_distributed(resolve_device(args.device))
    dtype = resolve_dtype(args.precision, device)
    seed_everything(args.seed, info.rank)
    out = Path(args.out)
    templates = TEMPLATES[args.templates]

    sd = load_stable_diffusion(args.model, args.sd_config, device=device)
    # Frozen UNet and VAE in half precision halve memory; the text encoder stays fp32 because
    # the gradient to the new vector flows through it.
    sd.to(dtype=dtype, parts=("unet", "vae"))
    size = args.resolution or sd.resolution
    token_id = add_tokens(sd, {args.placeholder: initializer_vector(sd, args.initializer)})[args.placeholder]
    rows = learned_rows(sd)
    init = rows.new.detach().clone()

    # The VAE posterior of every image and its mirror, computed once: encoding is the costliest
    # part of a step at 512 px and the images never change. Latents are sampled from it per step.
    images = load_concept_images(args.images, size)
    images = torch.cat([images, images.flip(-1)])
    with torch.no_grad():
        posteriors = [sd.encode_images(chunk) for chunk in images.split(4)]
        mean = torch.cat([p.mean.float() for p in posteriors])
        std = torch.cat([p.std.float() for p in posteriors])
    n_images = len(images) // 2
    log_main(f"{n_images} images of {args.placeholder} (id {token_id}) from {args.images} at {size} px; "
             f"{args.templates} templates; {device} {dtype}")

    lr = args.lr * (args.batch_size * args.grad_accum * info.world_size if args.scale_lr else 1)
    opt = torch.optim.AdamW([rows.new], lr=lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    gen = torch.Generator().manual_seed(args.seed * 1000 + info.rank)
    step = 0

    last = out / "last.pt"
    if last.is_file() and not args.no_resume:
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state["placeholder"] != args.placeholder:
            raise CLIError(f"{last} trains {state['placeholder']}, not {args.placeholder}; use another --out or --no-resume")
        with torch.no_grad():
            rows.new.copy_(state["rows"])
        opt.load_state_dict(state["opt"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["gen"])
        step = state["step"]
        log_main(f"resumed from {last} at step {step}")

    def save(final: bool = False) -> None:
        if not info.is_main:
            return
        with atomic_path(last) as tmp:
            torch.save({"rows": rows.new.detach().cpu(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
                        "gen": gen.get_state(), "step": step, "placeholder": args.placeholder}, tmp)
        with atomic_path(out / "learned_embeds.safetensors") as tmp:
            save_embeds(tmp, {args.placeholder: rows.new[0]},
                        {"initializer": args.initializer, "templates": args.templates, "step": step, "final": final,
                         "recipe": command_line("p3_textual_inversion.train")})

    def validate() -> None:
        if not info.is_main:
            return
        prompt = templates[0].format(args.placeholder)
        grid = text_to_image(sd, prompt, 4, seed=args.seed, steps=args.validation_steps, size=size, batch_size=4)
        save_grid(grid, out / "samples" / f"step{step:06d}.png", nrow=4)

    def micro_batch_loss() -> torch.Tensor:
        idx = torch.randint(0, n_images, (args.batch_size,), generator=gen)
        idx = idx + n_images * (torch.rand(args.batch_size, generator=gen) < args.flip_p).long()
        noise_z = torch.randn(mean[idx].shape, generator=gen).to(device)
        latents = (mean[idx] + std[idx] * noise_z) * sd.latent_scale
        t = torch.randint(0, sd.schedule.T, (args.batch_size,), generator=gen).to(device)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        captions = [templates[i] for i in torch.randint(0, len(templates), (args.batch_size,), generator=gen)]
        with autocast(device, dtype):
            context = sd.encode_text([c.format(args.placeholder) for c in captions])
            pred = sd.unet(sd.schedule.q_sample(latents, t, noise).to(dtype), t, encoder_hidden_states=context).sample
        return F.mse_loss(pred.float(), noise)

    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "log.csv", "a", newline="")
    log = csv.writer(log_file)
    bar = progress(total=args.steps, initial=step, desc=f"train {args.placeholder}")
    t0 = time.time()
    while step < args.steps:
        loss_sum = 0.0
        for _ in range(args.grad_accum):
            loss = micro_batch_loss() / args.grad_accum
            scaler.scale(loss).backward()
            loss_sum += loss.item()
        if info.enabled:  # one vector: averaging its gradient by hand is all DDP would do
            torch.distributed.all_reduce(rows.new.grad)
            rows.new.grad /= info.world_size
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}")
        if info.is_main:
            log.writerow([step, f"{loss_sum:.5f}", f"{(rows.new.detach() - init).norm().item():.4f}", f"{time.time() - t0:.1f}"])
        if step % args.ckpt_every == 0 or step == args.steps:
            log_file.flush()
            save(final=step == args.steps)
        if args.validation_every and (step % args.validation_every == 0 or step == args.steps):
            validate()
    bar.close()
    log_file.close()
    log_main(f"done: {out / 'learned_embeds.safetensors'} (step {step}, {time.time() - t0:.0f} s this run)")
    cleanup_distributed()
    return sd


if __name__ == "__main__":
    run_cli(main)
