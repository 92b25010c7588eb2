"""Train a 64x64 face GAN from scratch: (A) DCGAN as in the paper, or (B) the improved GAN
(hinge loss, spectrally normalised D, EMA generator, DiffAugment); either with the DCGAN
networks (the default) or, with --model resnet, SNGAN's residual ones (p4_gan/models.py).

    python -m p4_gan.train --preset dcgan --data hw2_data/face --out runs/p4/dcgan
    python -m p4_gan.train --preset improved --data ../shared/data/celeba10k --out runs/p4/improved
    python -m p4_gan.train --preset shipped --data ../shared/data/celeba10k --out runs/p4/shipped
    python -m p4_gan.train --preset improved --model resnet --g-channels 32 --d-channels 32 --snapshot-every 10 ...
    torchrun --nproc_per_node=4 -m p4_gan.train --preset improved ...   # --batch-size stays the global batch
    python -m p4_gan.train --preset improved --fast-step --device cuda ...   # CUDA graphs (p4_gan/fast_step.py)

DATA_ROOT holds train/ (the course's 64x64 PNGs) or train.npz (the celeba10k archive);
training never reads val. Re-running the same command resumes from OUT/last.pt (--max-seconds
ends a session early). Outputs: OUT/model.pt (what infer.py loads: the EMA generator for
`improved`, with frozen BN statistics), OUT/generator_best.pt (lowest FID so far),
OUT/samples/epochNNNN.png (the same 64 z every epoch), OUT/log.csv (losses, mean D logits),
OUT/result.json (recipe, steps reached, sessions), OUT/fid.csv and, with --snapshot-every N,
OUT/snapshots/generator_epochNNNN.pt (model.pt as it was every N-th epoch, for choosing a
generator by FID after a run trained with --fid-every 0). FID is measured
every --fid-every epochs on --fid-n generated images against the first --fid-ref-n
*training* faces (statistics cached in OUT/fid_ref.npz), so choosing generator_best.pt
never looks at val, the faces the final FID is reported on. The Inception weights are
evaluation/fid.py's default (--fid-weights to change). With --compact-checkpoint the exported
generators are fp16 as well.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from evaluation.fid import (
    DEFAULT_WEIGHTS,
    frechet_distance,
    image_statistics,
    load_inception,
    save_statistics,
    statistics,
)
from hw2_utils import (
    HelpFormatter,
    CLIError,
    RunFolder,
    add_common_args,
    atomic_path,
    cleanup_distributed,
    command_line,
    fraction_below_one,
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
    to_uint8,
)
from p4_gan.data import epoch_order, load_faces, split_source
from p4_gan.diffaugment import parse_policy
from p4_gan.fast_step import FastSteps
from p4_gan.gan import GANTrainer, Recipe, assert_ranks_in_sync
from p4_gan.models import ARCHS, GANConfig
from p4_gan.pipeline import generate, save_generator, with_standing_stats

# The two models (A: dcgan, B: improved), and the recipe that made the shipped p4_gan.pt; an
# option on the command line overrides its entry.
# fmt: off
IMPROVED = dict(model="dcgan", loss="hinge", d_norm="spectral", diffaug="color,translation,cutout",
                ema_decay=0.999)
PRESETS = {
    "dcgan": dict(model="dcgan", loss="dcgan", d_norm="batch", diffaug="none", ema_decay=0.0),
    # Hinge + spectral norm (SNGAN) keeps D Lipschitz without a costly penalty; DiffAugment stops
    # D memorising 38k faces; EMA averages away G's step-to-step oscillation (~1k-step horizon).
    "improved": IMPROVED,
    # B as the GPU run of 2026-12-04 trained it (p4_gan/checkpoints/README.md): WGAN-GP's Adam betas
    # and 2 D steps per G step at batch 64; the shipped file is its epoch-90 generator (a constant
    # learning rate: stopping there is --epochs 90), in fp16, on --data celeba10k
    "shipped": dict(IMPROVED, batch_size=64, d_steps=2, beta1=0.0, beta2=0.9, epochs=90,
                    precision="bf16", fid_every=0, sample_every=10, snapshot_every=10),
    # The run planned to go on across GPU calls (issue 41, bench/gpu_jobs/README.md), NOT YET RUN:
    # B with the changes the shipped run's measurements point to: D barely ahead all run (hinge
    # loss 1.7-1.9) -> TTUR, D's lr 4x G's, and D twice as wide; ~100k G steps as reference
    # recipes train (1,600 epochs of celeba10k's 8,000 faces: 62 steps at batch 128), the last
    # fifth with both learning rates falling linearly to 0; a slower EMA for the longer run. FID
    # on train faces is measured here from the snapshots (the Inception weights do not travel).
    "long": dict(IMPROVED, batch_size=128, lr=1e-4, d_lr=4e-4, beta1=0.0, beta2=0.9,
                 d_channels=128, ema_decay=0.9995, lr_decay_start=0.8, epochs=1600,
                 precision="bf16", fid_every=0, sample_every=100, snapshot_every=100),
}
# fmt: on
# fmt: off
DEFAULTS = dict(
    epochs=100,        # 300 steps/epoch at batch 128: 30k steps, beyond DCGAN's ~20 epochs of CelebA's 200k faces
    batch_size=128,    # the DCGAN paper's
    lr=2e-4,           # the DCGAN paper's Adam, also SNGAN's best hinge+SN setting with one D step per G step
    d_lr=None,         # D's own learning rate (TTUR: above G's); None: --lr
    lr_decay_start=1.0,  # fraction of the steps after which both learning rates fall linearly to 0; 1: constant
    lecam_weight=0.0,  # LeCam regulariser in D's loss (Tseng et al. 2021, for small data sets); 0: off
    beta1=0.5,
    beta2=0.999,
    d_steps=1,         # D updates per G update (WGAN-GP usually takes 5, with lr 1e-4, betas 0, 0.9)
    gp_weight=10.0,    # wgan-gp only
)
# fmt: on
TYPES = dict(
    lr=positive_float,
    d_lr=positive_float,
    lr_decay_start=probability,
    lecam_weight=non_negative_float,
    beta1=fraction_below_one,
    beta2=fraction_below_one,
    gp_weight=non_negative_float,
)
GRID = 64  # images in each epoch's sample grid
LOG_FIELDS = ["step", "epoch", "d_loss", "g_loss", "d_real", "d_fake", "gp", "seconds"]


def lr_scale(step: int, total: int, decay_start: float) -> float:
    """The learning rates' factor at `step` (counting from 0): 1 until decay_start * total steps,
    then falling linearly to 0 at `total`."""
    first = decay_start * total
    return 1.0 if step < first else (total - step) / (total - first)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(
        p,
        data=("hw2_data/face", "folder holding train/ (PNGs) or train.npz (celeba10k)"),
        out=(None, "run folder (default runs/p4/PRESET)"),
        presets=PRESETS,
        ckpt_every=1000,
    )
    for name, value in DEFAULTS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", type=TYPES.get(name, positive_int), default=value
        )
    p.add_argument(
        "--model",
        choices=ARCHS,
        help="override the preset's networks (every preset uses dcgan). resnet: "
        "SNGAN's residual G and D, with --d-norm spectral or none (as --preset improved has); ~12 M "
        "parameters in G and 10 M in D at the default channels, ~3.4 M and 2.5 M with "
        "--g-channels 32 --d-channels 32",
    )
    p.add_argument(
        "--loss", choices=["dcgan", "hinge", "wgan-gp"], help="override the preset's loss"
    )
    p.add_argument(
        "--d-norm",
        choices=["batch", "spectral", "none"],
        help="override the preset's D normalisation",
    )
    p.add_argument(
        "--diffaug",
        help="override the preset's DiffAugment ops: comma-separated color,translation,cutout or none",
    )
    p.add_argument(
        "--ema-decay", type=fraction_below_one, help="override the preset's EMA decay (0 = no EMA)"
    )
    p.add_argument(
        "--fast-step",
        action="store_true",
        help="on a GPU, replay each D and G update as a CUDA graph (p4_gan/fast_step.py); random "
        "numbers are drawn on the device, so the run differs from a plain one there (on the CPU it "
        "is the same run); one process, fp32 or bf16",
    )
    p.add_argument(
        "--no-optimizer-state",
        action="store_true",
        help="leave Adam's moments out of OUT/last.pt: with --compact-checkpoint it holds G, its "
        "EMA and D in bf16 (~20 MB at the default widths, ~36 MB with --d-channels 128, a third to "
        "a half of the full state), what a GPU call can carry beside celeba10k; a run resumed from "
        "it starts both Adam optimisers afresh (p4_gan/checkpoints/README.md: what that costs)",
    )
    p.add_argument(
        "--g-channels",
        type=positive_int,
        default=GANConfig.g_channels,
        help="G's last hidden width c: widths 8c..c for dcgan, 16c..c for resnet (default %(default)s)",
    )
    p.add_argument(
        "--d-channels",
        type=positive_int,
        default=GANConfig.d_channels,
        help="D's first width c: widths c..8c for dcgan, c..16c for resnet (default %(default)s)",
    )
    p.add_argument(
        "--log-every", type=positive_int, default=10, help="steps per log.csv row (means over them)"
    )
    p.add_argument(
        "--sample-every",
        type=non_negative_int,
        default=1,
        help="epochs between sample grids (0 = only at the end)",
    )
    p.add_argument(
        "--fid-every",
        type=non_negative_int,
        default=10,
        help="epochs between FID measurements (0 = never)",
    )
    p.add_argument(
        "--snapshot-every",
        type=non_negative_int,
        default=0,
        help="epochs between exports of the generator, as model.pt is exported, to "
        "OUT/snapshots/generator_epochNNNN.pt (default 0: none)",
    )
    p.add_argument(
        "--fid-n", type=positive_int, default=1000, help="generated images per FID measurement"
    )
    p.add_argument(
        "--fid-ref-n",
        type=positive_int,
        default=2000,
        help="training faces that FID is measured against",
    )
    p.add_argument(
        "--fid-weights",
        help=f"FID Inception weights (default {DEFAULT_WEIGHTS.name}, see evaluation/fid.py)",
    )
    args = parse_with_presets(p, argv, PRESETS)
    if args.preset is None:
        p.error("--preset is required: dcgan (model A), improved (model B), shipped or long")
    args.out = Path(args.out or f"runs/p4/{args.preset}")
    if args.fid_every > 0 and min(args.fid_n, args.fid_ref_n) < 2:
        p.error(
            f"--fid-n and --fid-ref-n must be at least 2 (FID needs a covariance), got {args.fid_n}, {args.fid_ref_n}"
        )
    return args


def build_trainer(args, device, dtype, rank) -> GANTrainer:
    try:
        config = GANConfig(
            g_channels=args.g_channels,
            d_channels=args.d_channels,
            d_norm=args.d_norm,
            arch=args.model,
        )
        recipe = Recipe(
            loss=args.loss,
            diffaug=parse_policy(args.diffaug),
            ema_decay=args.ema_decay,
            gp_weight=args.gp_weight,
            lr=args.lr,
            d_lr=args.d_lr,
            betas=(args.beta1, args.beta2),
            lecam_weight=args.lecam_weight,
        )
        return GANTrainer(
            config, recipe, device, dtype, seed=args.seed, rank=rank, fast=args.fast_step
        )
    except ValueError as e:
        raise CLIError(str(e)) from None


def fid_setup(args, faces: torch.Tensor, device):
    """The Inception extractor and the statistics of the first --fid-ref-n training faces
    (computed once, then read from OUT/fid_ref.npz), or (None, None) without FID."""
    if args.fid_every <= 0:
        return None, None
    try:
        extractor = load_inception(args.fid_weights, device)
    except CLIError as e:
        raise CLIError(f"{e} (or --fid-every 0 to train without FID)") from None
    cache = Path(args.out) / "fid_ref.npz"
    if cache.is_file():
        return extractor, statistics(cache, extractor)
    log_main(f"FID reference: the first {args.fid_ref_n} training faces")
    mu, sigma = image_statistics(faces[: args.fid_ref_n], extractor, device=device)
    save_statistics(cache, mu, sigma)
    return extractor, (mu, sigma)


def measure_fid(
    generator, extractor, ref_stats, n: int, seed: int, device, truncation=None
) -> float:
    """FID of n generated images, quantised to 8 bits exactly as run.sh's PNGs are."""
    images = to_uint8(generate(generator, n, seed, truncation=truncation)).permute(0, 3, 1, 2)
    return frechet_distance(image_statistics(images, extractor, device=device), ref_stats)


def export(path: Path, generator, args, step: int, epoch: int, command: str) -> None:
    """The generator as infer.py reads it; in fp16 with --compact-checkpoint (a GPU call brings
    model.pt and the snapshots back within 64 MB beside last.pt)."""
    meta = {"preset": args.preset, "step": step, "epoch": epoch, "recipe": command}
    with atomic_path(path) as tmp:
        save_generator(tmp, generator, meta, half=args.compact_checkpoint)


def train_step(
    trainer: GANTrainer, faces: torch.Tensor, indices: torch.Tensor, step: int, d_steps: int
) -> dict:
    """One D step on a batch of real faces (each flipped with p = 0.5), and a G step every
    `d_steps`-th step (`step` counts from 1). Returns the losses, left on the device."""
    stats = trainer.d_step(trainer.real_batch(faces, indices))
    if step % d_steps == 0:
        stats.update(trainer.g_step(len(indices)))
    return stats


class RunningMeans:
    """Each loss's mean since the last log line; read (one device sync) only when logged."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, stats: dict) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {k: (self.sums[k] / self.counts[k]).item() for k in self.sums}
        self.sums, self.counts = {}, {}
        return means


class EpochOutputs:
    """What a run writes at the end of an epoch, each on its own schedule: a sample grid
    (--sample-every), a generator snapshot (--snapshot-every), FID against the training faces
    (--fid-every; the best so far becomes generator_best.pt) and the checkpoint with
    model.pt (--ckpt-every, or --max-seconds). Every one is the exported generator with standing BN
    statistics: what run.sh would sample from at that step."""

    def __init__(
        self,
        run: RunFolder,
        args,
        extractor,
        ref_stats,
        steps_per_epoch: int,
        total_steps: int,
        command: str,
        device,
        info,
    ):
        self.run, self.args, self.extractor, self.ref_stats = run, args, extractor, ref_stats
        self.steps_per_epoch, self.total_steps, self.command, self.device, self.info = (
            steps_per_epoch,
            total_steps,
            command,
            device,
            info,
        )
        self.fid_log = (
            run.open_log(["step", "epoch", "fid"], "fid.csv") if extractor is not None else None
        )

    def write(self, step: int, trainer: GANTrainer, best_fid: float, start: float) -> float:
        """Write what is due after `step` (training began at time.time() `start`); returns the best FID so far."""
        args, main = self.args, self.info.is_main
        epoch, within = divmod(step, self.steps_per_epoch)
        epoch_done, last_step = within == 0, step == self.total_steps
        grid_due = epoch_done and (
            (args.sample_every and epoch % args.sample_every == 0) or last_step
        )
        fid_due = (
            epoch_done and self.extractor is not None and (epoch % args.fid_every == 0 or last_step)
        )
        snapshot_due = epoch_done and args.snapshot_every > 0 and epoch % args.snapshot_every == 0
        checkpoint_due = self.run.checkpoint_due(step, self.total_steps)
        if not (grid_due or fid_due or snapshot_due or checkpoint_due):
            return best_fid
        frozen = with_standing_stats(trainer.exported_generator()) if main else None
        if grid_due and main:
            save_grid(
                generate(frozen, GRID, args.seed),
                self.run.out / "samples" / f"epoch{epoch:04d}.png",
                nrow=8,
            )
        if snapshot_due and main:
            export(
                self.run.out / "snapshots" / f"generator_epoch{epoch:04d}.pt",
                frozen,
                args,
                step,
                epoch,
                self.command,
            )
        if fid_due:
            fid = measure_fid(
                frozen, self.extractor, self.ref_stats, args.fid_n, args.seed, self.device
            )
            self.fid_log.writerow([step, epoch, f"{fid:.4f}"])
            log_main(f"epoch {epoch}: FID {fid:.2f} (best so far {min(fid, best_fid):.2f})")
            if fid < best_fid:
                best_fid = fid
                export(self.run.out / "generator_best.pt", frozen, args, step, epoch, self.command)
        if checkpoint_due:
            assert_ranks_in_sync(trainer.G, trainer.D)  # every rank takes part before rank 0 writes
            self.run.save(
                {"step": step, "best_fid": best_fid, "seconds": time.time() - start},
                trainer=trainer,
            )
            if main:
                export(self.run.model, frozen, args, step, epoch, self.command)
        return best_fid


def main(argv=None) -> None:
    args = parse_args(argv)
    info, device = init_distributed(resolve_device(args.device))
    dtype = resolve_dtype(args.precision, device)
    # every step has the same shapes: time cuDNN's algorithms once, keep the fastest
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed, info.rank)
    if args.batch_size % info.world_size:
        raise CLIError(
            f"--batch-size {args.batch_size} must be a multiple of the {info.world_size} processes"
        )
    if args.fast_step and info.world_size > 1:
        raise CLIError("--fast-step trains in one process: leave out torchrun or --fast-step")
    if args.fast_step and args.precision == "fp16":
        raise CLIError("--fast-step takes fp32 or bf16: fp16's loss scaler syncs with the host")
    command = command_line("p4_gan.train", argv)
    run = RunFolder.from_args(args, main=info.is_main)

    # bad options fail before the slow parts
    trainer = build_trainer(args, device, dtype, info.rank)
    trainer.keep_optimizer_state = not args.no_optimizer_state
    source = split_source(args.data, "train")
    faces = load_faces(source)
    extractor, ref_stats = fid_setup(args, faces, device) if info.is_main else (None, None)
    faces = faces.to(device)
    steps_per_epoch = len(faces) // args.batch_size
    if steps_per_epoch == 0:
        raise CLIError(f"{len(faces)} training faces are fewer than one batch of {args.batch_size}")
    total_steps = args.epochs * steps_per_epoch
    # What a resumed run must share with the one that wrote last.pt (not its length: --epochs may grow).
    identity = {
        "preset": args.preset,
        "config": trainer.config.to_dict(),
        "recipe": repr(trainer.recipe),
        "data": str(source.resolve()),
        "fid_ref_n": args.fid_ref_n,
        # where the random numbers come from (the key only when set: earlier runs resume)
        **({"fast_step": True} if args.fast_step else {}),
    }
    state = run.load(identity, trainer=trainer)
    step, best_fid, seconds = (
        (state["step"], state["best_fid"], state.get("seconds", 0.0))
        if state
        else (0, float("inf"), 0.0)
    )
    fields = LOG_FIELDS[:-1] + (["lecam"] if args.lecam_weight > 0 else []) + LOG_FIELDS[-1:]
    log = run.start(step, total_steps, fields, command, device)
    outputs = EpochOutputs(
        run, args, extractor, ref_stats, steps_per_epoch, total_steps, command, device, info
    )
    n_g, n_d = (sum(p.numel() for p in net.parameters()) for net in (trainer.G, trainer.D))
    log_main(
        f"{args.preset} ({args.model}): G {n_g / 1e6:.2f} M, D {n_d / 1e6:.2f} M parameters; {len(faces)} faces, "
        f"{steps_per_epoch} steps/epoch x {args.epochs} epochs of {args.batch_size} on {device} ({dtype}), "
        f"{trainer.recipe}"
        + (f"; resumed at step {step}" if state else "")
        + (
            "; Adam afresh (last.pt holds no optimizer state)"
            if state and state["trainer"]["opt_g"] is None
            else ""
        )
    )

    means = RunningMeans()
    bar = progress(total=total_steps, initial=step, desc=f"train {args.preset}")
    start = time.time() - seconds  # seconds count training time across resumes
    fast = FastSteps(trainer, faces, args.batch_size, args.d_steps) if args.fast_step else None
    order, order_epoch = None, -1
    while step < total_steps and not run.stopping:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            # on the faces' device: a step's indices are then a slice there, not a copy from the host
            order, order_epoch = epoch_order(len(faces), args.seed, epoch).to(device), epoch
        indices = order[index * args.batch_size : (index + 1) * args.batch_size][
            info.rank :: info.world_size
        ]
        if args.lr_decay_start < 1:
            trainer.set_lr_scale(lr_scale(step, total_steps, args.lr_decay_start))
        step += 1
        if fast is not None:
            means.add(fast(indices, step))
        else:
            means.add(train_step(trainer, faces, indices, step, args.d_steps))
        bar.update(1)
        if step % args.log_every == 0 or step == total_steps:
            logged = means.pop()
            if log:
                log.writerow(
                    [
                        step,
                        f"{step / steps_per_epoch:.3f}",
                        *(f"{logged[k]:.5f}" if k in logged else "" for k in fields[2:-1]),
                        f"{time.time() - start:.1f}",
                    ]
                )
            bar.set_postfix({k: f"{v:.3f}" for k, v in logged.items()})
        best_fid = outputs.write(step, trainer, best_fid, start)
    bar.close()
    run.finish(step, {"best_fid": best_fid} if best_fid < float("inf") else {})
    log_main(
        f"done: {run.model} (step {step} of {total_steps}, {time.time() - start:.0f} s of training)"
    )
    cleanup_distributed()


if __name__ == "__main__":
    run_cli(main)
