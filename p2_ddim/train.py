"""Train the course's face UNet (p2_ddim/unet.py) as a DDPM on a folder of face images.

    python -m p2_ddim.train --data hw2_data/face/train --out runs/p2_train --precision bf16
    torchrun --nproc_per_node=4 -m p2_ddim.train ...          # multi-GPU (DDP); --batch-size stays global
    python -m p2_ddim.infer NOISE_DIR OUT runs/p2_train/model.pt   # sample it (noise of --image-size)

Schedule: ddim.py's (linear betas 1e-4..2e-2, T = 1000, float64). Loss: DDPM's Algorithm 1,
t ~ U{0..999}, eps ~ N(0, I), MSE(eps, eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t)).
Re-running the same command resumes from OUT/last.pt and continues exactly as an
uninterrupted run would (every random draw is a function of seed, rank and step); --no-resume
starts over, --max-seconds ends a session early. Outputs: OUT/model.pt (the EMA weights as a
plain state dict in the course's UNet.pt layout: what infer.py, hw2_2.sh and analysis.py load),
OUT/samples/stepNNNNNN.png (DDIM grids, --sample-steps, of the same noise), OUT/log.csv (step,
epoch, loss, lr, grad_norm, seconds since this process started), OUT/result.json (the recipe,
the steps reached, the command, commit and hardware of every session). No model this script
trains ships (P2 samples the course's UNet.pt), so --preset shipped is the defaults.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP

from hw2_utils import (
    HelpFormatter,
    CLIError,
    RunFolder,
    add_common_args,
    atomic_path,
    autocast,
    cleanup_distributed,
    command_line,
    derived_seed,
    ema_update,
    fraction_below_one,
    init_distributed,
    list_images,
    log_main,
    make_generator,
    make_train_sampler,
    non_negative_float,
    open_rgb,
    parse_with_presets,
    positive_float,
    positive_int,
    progress,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_grid,
    seed_everything,
    unwrap,
    warmup_cosine_lr,
)
from p2_ddim.ddim import NUM_TRAIN_TIMESTEPS, linear_alphas_cumprod
from p2_ddim.pipeline import sample, to_unit_range
from p2_ddim.unet import DOWNSAMPLE_FACTOR, FaceUNet

# DDPM's recipe (Ho et al. 2020, CIFAR-10): the course's 38,464 64x64 faces are a CIFAR-sized set.
# fmt: off
DEFAULTS = dict(
    steps=100_000,       # ~330 epochs of the course faces at batch 128; not run here (needs a GPU)
    batch_size=128,      # global batch, split over DDP ranks
    lr=2e-4,             # DDPM's 32x32 rate (its 2e-5 was for 256x256 models)
    warmup=5000,         # linear warmup, then constant: extending --steps later resumes exactly
    weight_decay=0.0,    # DDPM used none; AdamW's decoupled decay is here to experiment with
    ema_decay=0.9999,    # DDPM's; ramped up as (1+s)/(10+s) so early samples are not the random init
    dropout=0.1,         # DDPM's CIFAR-10 value (0 for its larger sets)
)
# fmt: on
# the rest are counts
TYPES = dict(
    lr=positive_float,
    weight_decay=non_negative_float,
    ema_decay=fraction_below_one,
    dropout=fraction_below_one,
)
GRAD_CLIP = 1.0  # DDPM's global-norm clip
IMAGE_SIZE = 64  # the course's face crops; H and W must be divisible by 32
LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "seconds"]
PRESETS = {"shipped": {}}  # nothing trained here ships: the defaults above


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(
        p,
        data=("hw2_data/face/train", "folder of face images (other sizes are resized)"),
        out=("runs/p2_train", "run folder: last.pt, model.pt, log.csv, result.json, samples/"),
        presets=PRESETS,
        image_size=(IMAGE_SIZE, "training size, a multiple of 32 (default %(default)s)"),
        grad_clip=GRAD_CLIP,
    )
    for name, value in DEFAULTS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=TYPES.get(name, positive_int),
            default=value,
            help="default %(default)s (why: DEFAULTS at the top of p2_ddim/train.py)",
        )
    p.add_argument(
        "--base-channels",
        type=positive_int,
        default=128,
        help="UNet width: 128 is the course UNet.pt's; 32 is the narrowest",
    )
    p.add_argument(
        "--sample-every",
        type=positive_int,
        default=5000,
        help="steps between sample grids (also at the end)",
    )
    p.add_argument("--sample-n", type=positive_int, default=16, help="images per sample grid")
    p.add_argument(
        "--sample-steps", type=positive_int, default=50, help="DDIM steps of the sample grids"
    )
    return parse_with_presets(p, argv, PRESETS)


def check_args(args, world_size: int) -> None:
    if args.image_size % DOWNSAMPLE_FACTOR:
        raise CLIError(
            f"--image-size must be a positive multiple of {DOWNSAMPLE_FACTOR}, got {args.image_size}"
        )
    if args.base_channels < 32 or args.base_channels % 32:
        raise CLIError(
            f"--base-channels must be a positive multiple of 32 (GroupNorm groups), got {args.base_channels}"
        )
    if args.batch_size % world_size:
        raise CLIError(
            f"--batch-size {args.batch_size} is not divisible by the {world_size} DDP ranks"
        )
    if not 1 <= args.sample_steps <= NUM_TRAIN_TIMESTEPS:
        raise CLIError(
            f"--sample-steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {args.sample_steps}"
        )


# --------------------------------------------------------------------------- data


def load_faces(folder, size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 of every image in `folder`, sorted by name (bicubic resize
    where needed). Kept in memory: the course's 38k faces are 0.47 GB at 64x64."""
    arrays = []
    for path in progress(list_images(folder, "face folder"), desc="loading faces", leave=False):
        image = open_rgb(path)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def epoch_order(n: int, seed: int, epoch: int, sampler) -> torch.Tensor:
    """This rank's shuffled image indices for `epoch`: the DDP sampler's shard, else a permutation."""
    if sampler is not None:
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler))
    return torch.randperm(n, generator=make_generator(derived_seed("order", seed, epoch)))


def to_model_range(faces: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """uint8 faces -> float in [-1, 1], mirrored left-right where `flips` is True."""
    x = faces.float() / 127.5 - 1.0
    return torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


# --------------------------------------------------------------------------- the DDPM objective


def add_noise(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """q(x_t | x_0): sqrt(a_t) x0 + sqrt(1 - a_t) eps, coefficients taken from the float64 schedule."""
    a = alphas_cumprod[t.cpu()].view(-1, 1, 1, 1)
    return a.sqrt().float().to(x0.device) * x0 + (1 - a).sqrt().float().to(x0.device) * noise


def draw_t_and_noise(
    n: int, shape: tuple[int, ...], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's draws, on the CPU so a seed means the same batch on any device."""
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=generator)
    return t, torch.randn((n, *shape), generator=generator)


def eps_loss(
    model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """MSE between the true noise and the model's prediction from x_t (float32 even under autocast)."""
    t, noise = t.to(x0.device), noise.to(x0.device)
    return F.mse_loss(model(add_noise(x0, t, noise, alphas_cumprod), t).float(), noise)


def train_step(
    model, opt, scaler, x0, t, noise, alphas_cumprod, grad_clip: float, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns (loss, gradient norm before clipping)."""
    with autocast(x0.device, dtype):
        loss = eps_loss(model, x0, t, noise, alphas_cumprod)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)  # clip the true gradients, not the fp16-scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss.detach(), grad_norm.detach()


def export_state_dict(ema: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The course UNet.pt's format: a plain {key: tensor} dict, loadable by pipeline.load_unet (weights_only)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(ema).state_dict().items()}


def mean_over_ranks(x: torch.Tensor, enabled: bool) -> float:
    if enabled:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x.item()


def save_samples(
    ema: FaceUNet, noise: torch.Tensor, steps: int, dtype: torch.dtype, path: Path
) -> None:
    """A DDIM grid (p2_ddim's own sampler: eta 0, x0 clipped) of the same noise at every step of training."""
    images = sample(ema, noise, steps=steps, dtype=dtype)
    save_grid(
        to_unit_range(images, "clip"),
        path,
        nrow=math.ceil(math.sqrt(len(noise))),
        value_range=(0.0, 1.0),
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    info, device = init_distributed(resolve_device(args.device))
    check_args(args, info.world_size)
    run = RunFolder.from_args(args, main=info.is_main)
    dtype = resolve_dtype(args.precision, device)
    faces = load_faces(args.data, args.image_size).to(device)
    sampler = make_train_sampler(faces, args.seed)
    rank_batch = args.batch_size // info.world_size
    per_epoch = (len(sampler) if sampler is not None else len(faces)) // rank_batch
    if per_epoch == 0:
        raise CLIError(
            f"--batch-size {args.batch_size} is larger than the {len(faces)} images in {args.data}"
        )

    seed_everything(args.seed)  # the same initial weights on every rank
    model = FaceUNet(args.base_channels, dropout=args.dropout).to(device)
    ema = FaceUNet(args.base_channels, dropout=args.dropout).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    alphas_cumprod = linear_alphas_cumprod()
    step = 0

    # Everything that defines the run but its length (--steps may grow) and where it runs.
    identity = {
        "data": str(Path(args.data).resolve()),
        "base_channels": args.base_channels,
        "image_size": args.image_size,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
        **{k: getattr(args, k) for k in DEFAULTS if k != "steps"},
    }
    state = run.load(identity, model=model, ema=ema, optimizer=opt, scaler=scaler)
    if state is not None:
        step = state["step"]
        log_main(f"resumed from {run.checkpoint} at step {step}")
    log = run.start(step, args.steps, LOG_FIELDS, command_line("p2_ddim.train", argv), device)
    train_model = DDP(model) if info.enabled else model
    log_main(
        f"{len(faces)} faces ({args.image_size}x{args.image_size}) from {args.data}; face UNet width "
        f"{args.base_channels}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
        f"{args.steps} steps of {args.batch_size} on {device} ({dtype})"
    )

    sample_noise = torch.randn(
        args.sample_n, 3, args.image_size, args.image_size, generator=make_generator(args.seed)
    )
    bar = progress(total=args.steps, initial=step, desc="train")
    t0, order_epoch, loss = time.time(), None, None
    while step < args.steps and not run.stopping:
        epoch, offset = divmod(step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(faces), args.seed, epoch, sampler), epoch
        gen = make_generator(derived_seed("noise", args.seed, info.rank, step))
        torch.manual_seed(derived_seed("dropout", args.seed, info.rank, step))
        flips = torch.rand(rank_batch, generator=gen) < 0.5  # faces are left-right symmetric
        x0 = to_model_range(
            faces[order[offset * rank_batch : (offset + 1) * rank_batch].to(device)], flips
        )
        t, noise = draw_t_and_noise(rank_batch, tuple(x0.shape[1:]), gen)
        # warmup, then constant: extending --steps later resumes exactly
        lr = warmup_cosine_lr(step, args.steps, args.warmup, args.lr, floor=1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, grad_norm = train_step(
            train_model, opt, scaler, x0, t, noise, alphas_cumprod, args.grad_clip, dtype
        )
        ema_update(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
        step += 1
        loss = mean_over_ranks(loss, info.enabled)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if log:
            log.writerow(
                [
                    step,
                    epoch,
                    f"{loss:.6f}",
                    f"{lr:.3e}",
                    f"{grad_norm.item():.4f}",
                    f"{time.time() - t0:.1f}",
                ]
            )
        if run.checkpoint_due(step, args.steps):
            run.save({"step": step}, model=model, ema=ema, optimizer=opt, scaler=scaler)
            if info.is_main:
                with atomic_path(run.model) as tmp:
                    torch.save(export_state_dict(ema), tmp)
        if info.is_main and (step % args.sample_every == 0 or step == args.steps):
            save_samples(
                ema,
                sample_noise,
                args.sample_steps,
                dtype,
                run.out / "samples" / f"step{step:06d}.png",
            )
    bar.close()
    run.finish(step, {} if loss is None else {"loss": loss})
    log_main(f"done: {run.model} (step {step} of {args.steps}, {time.time() - t0:.0f} s this run)")
    cleanup_distributed()


if __name__ == "__main__":
    run_cli(main)
