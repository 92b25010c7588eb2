"""Train the conditional DDPM (digit x domain) with classifier-free guidance.

    python -m p1_ddpm.train --data hw2_data/digits --domains mnistm svhn --out runs/p1
    torchrun --nproc_per_node=4 -m p1_ddpm.train ...           # multi-GPU (DDP)

The shipped checkpoint's two stages (p1_ddpm/checkpoints/README.md):

    python -m p1_ddpm.train --preset shipped-stage1 --data D --out RUN1
    python -m p1_ddpm.train --preset shipped-stage2 --data D --init-from RUN1/model.pt --out RUN2

Re-running the same command resumes from OUT/last.pt (--no-resume starts over; --max-seconds
ends a session early). OUT/model.pt is the exportable (shippable) EMA model; OUT/samples/ holds
a grid per --sample-every steps; OUT/log.csv one row per step; OUT/result.json the recipe, the
steps reached and the command, commit and hardware of every session.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

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
    error_summary,
    fraction_below_one,
    init_distributed,
    log_main,
    make_train_sampler,
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
    unwrap,
    warmup_cosine_lr,
)
from p1_ddpm.data import digit_domain_dataset, parse_domains
from p1_ddpm.diffusion import GaussianDiffusion
from p1_ddpm.model import ConditionalUNet, UNetConfig
from p1_ddpm.pipeline import export_weights, generate, load_model

# fmt: off
DEFAULTS = dict(
    steps=7500,          # total, counting a warm start's steps
    batch_size=64,       # more optimizer steps per CPU-second than 128 at this model size
    lr=5e-4,             # high for a diffusion model, fine for 2.7 M params with warmup + EMA
    warmup=200,
    ema_decay=0.999,     # horizon ~1k steps: long enough to smooth, short enough for a few-k-step CPU run
    cond_drop=0.1,       # P(drop both labels): trains the unconditional branch CFG needs
    snr_gamma=5.0,       # Min-SNR-5 loss weights (0 = plain DDPM loss); gamma = 5 as in Hang et al.
)
# fmt: on
TYPES = dict(
    lr=positive_float,
    ema_decay=fraction_below_one,
    cond_drop=probability,
    snr_gamma=non_negative_float,
)
# The recipe behind the shipped checkpoint, trained on this project's 2-core CPU in two stages
# (p1_ddpm/checkpoints/README.md has both commands and their logs, seconds included; the shipped
# file's "recipe" records them; README "P1" the measured accuracy). No SVHN exists on these
# machines: USPS is the second domain. Stage 2 also needs --init-from RUN1/model.pt.
PRESETS = {
    # plain DDPM loss
    "shipped-stage1": dict(domains=["mnistm", "usps"], steps=2000, snr_gamma=0.0, sample_every=500),
    # DEFAULTS with MNIST-M twice per epoch; its schedule spans 7,500 steps, stopped at 6,750
    "shipped-stage2": dict(domains=["mnistm", "usps"], steps=7500, repeat=[2, 1], stop_at=6750),
}
LOG_FIELDS = ["step", "loss", "lr", "seconds"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(
        p,
        data=("hw2_data/digits", "folder holding one sub-folder per domain"),
        out=("runs/p1", "run folder: last.pt, model.pt, log.csv, result.json, samples/"),
        presets=PRESETS,
        ckpt_every=250,
        grad_clip=1.0,
    )
    p.add_argument(
        "--domains",
        nargs="+",
        default=["mnistm", "svhn"],
        help="domain names (sub-folders of --data) or NAME=PATH; order = domain index",
    )
    for name, value in DEFAULTS.items():  # counts must be >= 1 (--warmup 1 is no warmup)
        p.add_argument(
            f"--{name.replace('_', '-')}", type=TYPES.get(name, positive_int), default=value
        )
    p.add_argument(
        "--repeat",
        type=positive_int,
        nargs="+",
        help="times each domain's images appear per epoch, in --domains "
        "order (default 1 each); e.g. 2 1 doubles the share of the first domain",
    )
    p.add_argument("--base-channels", type=positive_int, default=UNetConfig.base_channels)
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="DataLoader workers (data is in memory; 0 is fine)",
    )
    p.add_argument("--sample-every", type=positive_int, default=1000)
    p.add_argument(
        "--stop-at",
        type=positive_int,
        help="end the run after this step although --steps sets the length of its learning-rate "
        "schedule (default: at --steps)",
    )
    p.add_argument(
        "--init-from",
        help="warm start from exported weights (e.g. the shipped checkpoint) when OUT/last.pt "
        "does not exist; the optimizer starts fresh and the step count continues from the checkpoint's",
    )
    return parse_with_presets(p, argv, PRESETS)


def lr_at(step: int, args, start: int = 0) -> float:
    """Linear warmup, then cosine decay to 10% of the peak, over steps start..args.steps
    (a warm start begins at the checkpoint's step count and warms up again)."""
    return warmup_cosine_lr(step - start, args.steps - start, args.warmup, args.lr, floor=0.1)


def sample_grid(ema: ConditionalUNet, n_domains: int, path: Path, device: torch.device) -> None:
    """Every digit in every domain, DDIM 50 steps at w = 2, the same noise at every step of training."""
    digits = torch.arange(10).repeat_interleave(n_domains)
    domains = torch.arange(n_domains).repeat(10)
    images, _ = generate(
        ema, digits, domains, seed=0, guidance=2.0, sampler="ddim", steps=50, device=device
    )
    save_grid(images, path, nrow=n_domains * 5)


def make_loader(dataset, args, info):
    sampler = make_train_sampler(dataset, args.seed)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size // info.world_size,
        sampler=sampler,
        shuffle=sampler is None,
        drop_last=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(derived_seed(args.seed, "order")),
    )
    if len(loader) == 0:  # drop_last leaves no batch: the step loop would wait for one forever
        raise CLIError(f"{len(dataset)} training images: fewer than one batch of {args.batch_size}")
    return loader, sampler


def build_unet(args, n_domains: int, device) -> tuple[ConditionalUNet, ConditionalUNet]:
    """The trained UNet and its EMA copy (starting equal, never trained directly)."""
    try:  # GroupNorm needs every width divisible by its groups, the time embedding an even width
        model = ConditionalUNet(
            UNetConfig(num_domains=n_domains, base_channels=args.base_channels)
        ).to(device)
    except (ValueError, RuntimeError) as e:
        raise CLIError(
            f"--base-channels {args.base_channels} builds no UNet ({error_summary(e)}): use 8, 16 or a "
            "multiple of 32"
        ) from None
    # the faster convs (python -m bench.p1_ddpm --speed)
    model = model.to(memory_format=torch.channels_last)
    ema = ConditionalUNet(model.config).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    return model, ema


def warm_start(args, model, ema, domain_names: list[str], command: str, device) -> tuple[int, str]:
    """--init-from: continue an exported model.pt as a new stage; returns its step and the recipe
    that names every stage."""
    init, init_domains = load_model(args.init_from, device)
    if init_domains != domain_names or init.config != model.config:
        raise CLIError(
            f"--init-from {args.init_from}: domains {init_domains} / config differ from this run's"
        )
    model.load_state_dict(init.state_dict())
    ema.load_state_dict(init.state_dict())
    blob = torch.load(args.init_from, weights_only=True)
    if blob["step"] >= args.steps:
        raise CLIError(
            f"--init-from {args.init_from} is at step {blob['step']}; --steps ({args.steps}) must be larger"
        )
    log_main(f"warm start from {args.init_from} (step {blob['step']})")
    return blob["step"], f"{blob['recipe']}  &&  {command}"


def train_step(
    train_model,
    model,
    ema,
    opt,
    diffusion,
    batch,
    step: int,
    start: int,
    args,
    device,
    dtype,
    noise_gen,
) -> tuple[torch.Tensor, float]:
    """One optimisation step: labels dropped together (CFG's unconditional branch), the
    epsilon-MSE loss, clipped gradients, the EMA update. Returns the loss and the learning rate."""
    x, digit, domain = batch
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    digit, domain = digit.to(device), domain.to(device)
    drop = (torch.rand(len(x), generator=noise_gen) < args.cond_drop).to(device)
    digit = torch.where(drop, model.null_digit, digit)
    domain = torch.where(drop, model.null_domain, domain)
    lr = lr_at(step, args, start)
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast(device, dtype):
        loss = diffusion.training_loss(
            train_model, x, digit, domain, generator=noise_gen, snr_gamma=args.snr_gamma or None
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    ema_update(ema, unwrap(model), min(args.ema_decay, (1 + step) / (10 + step)))
    return loss, lr


def main(argv=None) -> None:
    args = parse_args(argv)
    info, device = init_distributed(resolve_device(args.device))
    run = RunFolder.from_args(args, main=info.is_main)
    dtype = resolve_dtype(args.precision, device)
    seed_everything(args.seed, info.rank)
    domains = parse_domains(args.domains, args.data)
    domain_names = [n for n, _ in domains]
    command = command_line("p1_ddpm.train", argv)

    dataset = digit_domain_dataset(domains, args.repeat)
    loader, sampler = make_loader(dataset, args, info)
    log_main(f"{len(dataset)} training images from {', '.join(f'{n} ({p})' for n, p in domains)}")
    model, ema = build_unet(args, len(domains), device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    noise_gen = torch.Generator().manual_seed(derived_seed(args.seed, "noise", info.rank))
    diffusion = GaussianDiffusion()
    step, epoch, start, recipe = 0, 0, 0, command

    # Everything that defines the run but its length (--steps may grow) and where it runs.
    identity = {
        "domains": [[n, str(p.resolve())] for n, p in domains],
        "repeat": args.repeat,
        "base_channels": args.base_channels,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
        **{k: getattr(args, k) for k in DEFAULTS if k != "steps"},
    }
    state = run.load(identity, model=model, ema=ema, optimizer=opt, generator=noise_gen)
    if state is not None:
        step, epoch, start, recipe = state["step"], state["epoch"], state["start"], state["recipe"]
        log_main(f"resumed from {run.checkpoint} at step {step}")
    elif args.init_from:
        step, recipe = warm_start(args, model, ema, domain_names, command, device)
        start = step
    total = min(args.steps, args.stop_at or args.steps)
    log = run.start(step, total, LOG_FIELDS, command, device)
    train_model = DDP(model) if info.enabled else model
    n_params = sum(p.numel() for p in model.parameters())
    log_main(
        f"UNet {n_params / 1e6:.2f} M parameters; {args.steps} steps of {args.batch_size} on {device} ({dtype})"
    )

    bar = progress(total=total, initial=step, desc="train")
    t0, loss = time.time(), None
    while step < total and not run.stopping:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            loss, lr = train_step(
                train_model,
                model,
                ema,
                opt,
                diffusion,
                batch,
                step,
                start,
                args,
                device,
                dtype,
                noise_gen,
            )
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if log:
                log.writerow([step, f"{loss.item():.5f}", f"{lr:.2e}", f"{time.time() - t0:.1f}"])
            if run.checkpoint_due(step, total):
                run.save(
                    {"step": step, "epoch": epoch, "start": start, "recipe": recipe},
                    model=model,
                    ema=ema,
                    optimizer=opt,
                    generator=noise_gen,
                )
                if info.is_main:
                    with atomic_path(run.model) as tmp:
                        torch.save(export_weights(ema, domain_names, step, recipe), tmp)
            if info.is_main and (step % args.sample_every == 0 or step == total):
                sample_grid(ema, len(domains), run.out / "samples" / f"step{step:06d}.png", device)
            if step >= total or run.stopping:
                break
        epoch += 1
    bar.close()
    run.finish(step, {"loss": loss.item()} if loss is not None else {})
    log_main(f"done: {run.model} (step {step} of {total}, {time.time() - t0:.0f} s this run)")
    cleanup_distributed()


if __name__ == "__main__":
    run_cli(main)
