"""Train a CIFAR-10 classifier with the honest protocol: 10% of the training images (5,000
of 50,000) are held out for validation and every choice is made on them (recipe A holds out
none and chooses nothing); the test set is evaluated once, after the last epoch, and that
final-epoch accuracy is what we report.

    python -m p6_classification.train --preset shipped --data ../shared/data/cifar10_full --out RUN  # the shipped model
    python -m p6_classification.train --preset recipe_a --data ../shared/data/cifar10_full --out RUN  # recipe A
    python -m p6_classification.train --data data/cifar10 --download          # official CIFAR-10, torchvision layout
    python -m p6_classification.train --data DATA --stem imagenet            # torchvision's stock stem
    python -m p6_classification.train --data ../shared/data/cifar10/cifar10_slice.npz --width 16 --epochs 15
    python -m p6_classification.vit_finetune --data DATA --weights weights/vit_b16/model.safetensors
    torchrun --nproc_per_node=N -m p6_classification.train ...               # DDP; --batch-size is global

--data is torchvision's CIFAR10 layout (ROOT/cifar-10-batches-py), the shared whole-CIFAR-10
JPEG copy (a folder with train.npz/test.npz) or the shared .npz slice (hw2_utils.load_cifar10).
--also-test scores a second test set once at the end (the slice's 1,017 official-pixel images
beside the JPEG copy's 10,000). --official-pixels puts the slice's 5,085 official-pixel training
images in place of their JPEG copies (matched by pixels within each class). --val-fraction 0
trains on every training image: nothing is then chosen on held-out images and the last epoch
ships. --ema-decay D evaluates and exports an exponential moving average of the weights.
OUT gets log.csv (a row per epoch, first column the step), last.pt (re-running the same command
resumes from it; a session ends at an epoch's end, so --ckpt-every (steps) and --max-seconds act
at the first epoch end due), model.pt (the exported model in fp16, for infer.py and cam.py),
result.json (the recipe, steps reached, sessions; at the end val and test accuracy, wall time)
and curves.png (training loss, validation accuracy and learning rate per epoch). The warmup is
capped at a quarter of the run (MAX_WARMUP_FRACTION), with a warning: a short smoke run would
otherwise end before its learning rate reached the peak.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from copy import deepcopy
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
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
    describe_hardware,
    ema_update,
    fraction_below_one,
    init_distributed,
    log_main,
    make_train_sampler,
    non_negative_float,
    non_negative_int,
    parse_with_presets,
    positive_int,
    progress,
    pyplot,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_figure,
    seed_everything,
    to_device,
    unwrap,
    warmup_cosine_lr,
)
from p6_classification import augment
from p6_classification.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    CLASSES,
    SPLIT_SEED,
    VAL_FRACTION,
    ImageTensors,
    load_cifar,
    load_train_split,
    replace_with_official,
    split_train_val,
)
from p6_classification.models import VIT_NAME, build_model, input_normalization

# Per model. resnet18's is the recipe of the shipped model (PRESETS["shipped"]), a GPU recipe (one
# H200; on 2 CPU threads an epoch takes minutes (README "P6"), so pass a smaller --epochs there).
# Long schedules are where stronger augmentation pays off (the study); cutout is the cheapest that does.
# fmt: off
DEFAULTS = {
    "resnet18": dict(
        epochs=150,
        batch_size=512,       # 88 steps an epoch: half the per-step launch overhead that bounds a small net on a GPU
        lr=0.4,               # 0.1 per 128 images, scaled linearly
        weight_decay=5e-4,    # the standard CIFAR value; lower overfits the 45k training images
        warmup_epochs=3.0,    # linear warmup (the large batch's lr needs it), then cosine to zero
        aug="cutout",
    ),
    "vit": dict(
        epochs=10,            # a pretrained ViT-B/16 converges on CIFAR-10 within a few epochs
        batch_size=128,
        lr=0.01,              # SGD fine-tuning rate of the ViT paper's transfer recipe
        weight_decay=0.0,     # ditto: no weight decay when fine-tuning
        warmup_epochs=0.5,
        aug="flip_crop",
    ),
}
# fmt: on
# The shipped resnet18_cifar10.pt: resnet18's recipe above (width 64, CIFAR stem, bf16 autocast,
# channels_last: the defaults) on the whole CIFAR-10 JPEG copy (p6_classification/checkpoints/README.md).
# Recipe A (issue 41), not yet run: airbench's ResNet-18 baseline (peak lr 0.2 at batch 500,
# nesterov, reflect-pad translate + cutout) on all 50,000 training images (no val split: the last
# epoch ships) with the slice's official pixels in place of their JPEG copies, label smoothing 0.1
# and a weight EMA (half-life ~700 steps = 7 of the 200 epochs of 100 steps).
PRESETS = {
    "shipped": dict(model="resnet18", **DEFAULTS["resnet18"]),
    "recipe_a": dict(
        model="resnet18",
        epochs=200,
        batch_size=500,
        lr=0.2,
        weight_decay=5e-4,
        warmup_epochs=3.0,
        aug="cutout",
        label_smoothing=0.1,
        padding_mode="reflect",
        ema_decay=0.999,
        val_fraction=0.0,
        official_pixels="../shared/data/cifar10/cifar10_slice.npz",
    ),
}
MOMENTUM = 0.9  # Nesterov
MAX_WARMUP_FRACTION = 0.25  # of the run's steps
# The recipe a resumed run must share with the run that wrote last.pt (the epochs too: they
# shape the learning-rate schedule).
RECIPE = (
    "aug",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "limit",
    "seed",
    "label_smoothing",
    "padding_mode",
    "ema_decay",
    "val_fraction",
    "official_pixels",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", choices=sorted(DEFAULTS), default="resnet18")
    # A checkpoint every epoch (minutes of ResNet-18 on a CPU).
    add_common_args(
        p,
        data=(
            "data/cifar10",
            "CIFAR-10: torchvision's layout, the whole-CIFAR-10 JPEG copy folder or the .npz slice",
        ),
        out=(None, "run folder (default runs/p6/<model>)"),
        presets=PRESETS,
        precision="auto",
        ckpt_every=1,
        image_size=(224, "vit: input size; CIFAR images are upsampled to it"),
        limit="smoke runs: a fixed random draw of N training images (10%% of them held out for "
        "validation) and N/5 test images",
    )
    p.add_argument(
        "--download", action="store_true", help="download CIFAR-10 into --data when it is missing"
    )
    for name, value in DEFAULTS["resnet18"].items():
        kind = (
            str
            if isinstance(value, str)
            else positive_int
            if isinstance(value, int)
            else non_negative_float
        )
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"default {DEFAULTS['resnet18'][name]} (resnet18), {DEFAULTS['vit'][name]} (vit)",
        )
    p.add_argument(
        "--stem",
        choices=["cifar", "imagenet"],
        default="cifar",
        help="resnet18: 3x3 stem or torchvision's",
    )
    p.add_argument(
        "--width",
        type=positive_int,
        default=64,
        help="resnet18: channels of the first stage (64 = standard)",
    )
    p.add_argument(
        "--weights",
        help="vit: pretrained weights file, 'hub' (online only) or 'none' (random init)",
    )
    p.add_argument("--vit-name", default=VIT_NAME, help="vit: timm model name")
    p.add_argument(
        "--vit-kwargs", default="{}", help="vit: JSON of extra timm.create_model arguments"
    )
    p.add_argument(
        "--trainable-blocks",
        type=non_negative_int,
        default=4,
        help="vit: last blocks fine-tuned (the rest frozen)",
    )
    p.add_argument(
        "--memory-format",
        choices=["channels_last", "contiguous"],
        default="channels_last",
        help="channels_last is the faster in fp32 and bf16 on the CPUs measured "
        "(bench/p6_classification.py --parts throughput) and on GPUs",
    )
    p.add_argument(
        "--also-test",
        metavar="DATA",
        help="a second CIFAR-10 source whose test split is also scored once at the end",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        help="DataLoader workers (default 4 on CUDA, 0 on the CPU)",
    )
    p.add_argument(
        "--label-smoothing",
        type=fraction_below_one,
        help="cross-entropy label smoothing (default: the --aug preset's, 0.1 for flip_crop_ls "
        "and label_smoothing, else 0)",
    )
    p.add_argument(
        "--padding-mode",
        choices=augment.PADDING_MODES,
        default="constant",
        help="how the random crop pads the image: zeros or its mirrored border (default %(default)s)",
    )
    p.add_argument(
        "--ema-decay",
        type=fraction_below_one,
        default=0.0,
        help="evaluate and export an exponential moving average of the weights, updated every "
        "step with this decay (BatchNorm statistics copied); 0 = the trained weights "
        "(default %(default)s)",
    )
    p.add_argument(
        "--val-fraction",
        type=fraction_below_one,
        default=VAL_FRACTION,
        help="training images held out for validation (a fixed draw); 0 trains on all of them "
        "and logs no validation accuracy (default %(default)s)",
    )
    p.add_argument(
        "--official-pixels",
        metavar="NPZ",
        help="an .npz with train_images/train_labels of official CIFAR-10 pixels (the shared "
        "slice) that replace their JPEG copies in --data's training set, matched by pixels "
        "within each class (default: none)",
    )
    args = parse_with_presets(p, argv, PRESETS)
    for name, value in DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # torch 2.14's CPU backward of a channels_last 1x1 stride-2 conv with fewer than 8 input
    # channels corrupts the heap (ResNet's first downsample at width < 8); nothing that narrow is useful.
    if args.width < 8:
        p.error("--width must be at least 8")
    if args.aug not in augment.PRESETS:
        p.error(f"--aug must be one of {', '.join(augment.PRESETS)}")
    return args


def model_arch(args) -> dict:
    if args.model == "resnet18":
        return {"model": "resnet18", "stem": args.stem, "width": args.width}
    try:
        kwargs = json.loads(args.vit_kwargs)
    except json.JSONDecodeError as e:
        raise CLIError(f"--vit-kwargs is not JSON: {e}") from None
    return {
        "model": "vit",
        "name": args.vit_name,
        "img_size": args.image_size,
        "trainable_blocks": args.trainable_blocks,
        "timm_kwargs": kwargs,
    }


def random_subset(
    images: torch.Tensor, labels: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))[:n]
    return images[keep], labels[keep]


def warmup_steps(args, steps_per_epoch: int) -> int:
    """--warmup-epochs in steps, at most MAX_WARMUP_FRACTION of the run (one warning line when
    that cuts it: e.g. 3 warmup epochs of a 2-epoch smoke run would never reach the peak lr)."""
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    cap = int(MAX_WARMUP_FRACTION * total)
    if warmup > cap:
        log_main(
            f"warning: --warmup-epochs {args.warmup_epochs:g} is more than "
            f"{MAX_WARMUP_FRACTION:.0%} of {args.epochs} epochs: warming up over {cap} of "
            f"{total} steps",
            file=sys.stderr,
        )
    return min(warmup, cap)


@torch.no_grad()
def evaluate(model, images, labels, transform, device, dtype, channels_last: bool) -> float:
    """Top-1 accuracy; `transform` is the preset's eval transform, applied per batch on the
    device (uint8 travels, 4x fewer bytes), the count read once at the end."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in zip(images.split(500), labels.split(500)):
        x = transform(x.to(device))
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with autocast(device, dtype):
            correct += (model(x).argmax(1) == y.to(device)).sum()
    return correct.item() / len(labels)


LOG_FIELDS = ["step", "epoch", "lr", "train_loss", "val_acc", "seconds", "precision", "hardware"]


def plot_curves(run_dir: Path) -> Path:
    """Training loss, validation accuracy and the learning rate (at each epoch's end) from log.csv."""
    plt = pyplot()

    with open(run_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epoch = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, key, title in zip(
        axes,
        ("train_loss", "val_acc", "lr"),
        (
            "training loss",
            f"validation accuracy (last {float(rows[-1]['val_acc']):.4f})"
            if rows[-1]["val_acc"]
            else "no validation images",
            "learning rate at the epoch's end",
        ),
    ):
        # --val-fraction 0 logs an empty val_acc: that panel stays empty
        ax.plot(
            *zip(*((e, float(r[key])) for e, r in zip(epoch, rows) if r[key])), marker="o", ms=3
        )
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run_dir.name}: {rows[-1]['hardware']}", fontsize=9)
    fig.tight_layout()
    path = run_dir / "curves.png"
    save_figure(fig, path, dpi=110)
    return path


def device_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    augment,
    order: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
):
    """An epoch of (augmented images, labels) batches taken from `images` (uint8, on the device
    that trains) in the shuffled `order` (the same on every rank; each rank takes its share of
    every global batch), augmented by the preset's BatchAugment with draws from `generator`.
    The last incomplete batch is dropped, as the loader path does."""
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = to_device(order[start : start + batch_size][rank::world_size], images.device)
        yield augment(images[index], generator), labels[index]


def train_epoch(
    train_model,
    batches,
    steps: int,
    warmup: int,
    preset,
    opt,
    epoch: int,
    args,
    device,
    dtype,
    channels_last: bool,
    ema=None,
) -> float:
    """One epoch of SGD with the warmup + cosine learning rate; returns the mean training loss.
    The loss is summed on the device: reading it every step would stall the GPU's queue.
    `ema` (a copy of the model, or None) follows the weights after every step (--ema-decay)."""
    train_model.train()
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(
        progress(batches, total=steps, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
    ):
        if preset.batch is not None:
            x, y = preset.batch(x, y)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(epoch * steps + i, args.epochs * steps, warmup, args.lr)
        with autocast(device, dtype):
            logits = train_model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=preset.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            with torch.no_grad():
                ema_update(ema, unwrap(train_model), args.ema_decay)
        loss_sum += loss.detach()
    return loss_sum.item() / steps


class Splits(NamedTuple):
    """The images of one run, uint8 NCHW with their labels; `val` already on the training device
    (it is scored every epoch), `extra` the --also-test source (or None)."""

    source: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    extra: object


def load_splits(args, info, device) -> Splits:
    # With --download under torchrun, rank 0 fetches the archive while the other ranks wait.
    cifar = load_cifar(args.data, download=args.download) if info.is_main else None
    if info.enabled and args.download:
        torch.distributed.barrier()
    if cifar is None:
        cifar = load_cifar(args.data)
    # read now: a bad path fails before training
    extra = load_cifar(args.also_test) if args.also_test else None
    if args.official_pixels:
        cifar = with_official_pixels(cifar, args.official_pixels)
    train, (val_x, val_y), test = hold_out(cifar, args.limit, args.val_fraction)
    return Splits(cifar.source, train, (val_x.to(device), val_y.to(device)), test, extra)


def with_official_pixels(cifar, path: str):
    """`cifar` whose training set holds the official pixels of the .npz at `path` in place of
    their JPEG copies (data.replace_with_official: matched within class, one-to-one)."""
    images, match = replace_with_official(
        cifar.train_images, cifar.train_labels, *load_train_split(path)
    )
    log_main(
        f"{len(match.index)} training images replaced by their official pixels from {path} "
        f"(MAD to the copy {match.mad.mean():.1f} mean, {match.mad.max():.1f} max; runner-up "
        f"{match.runner_up_mad.min():.1f} min)"
    )
    return replace(cifar, train_images=images)


def hold_out(cifar, limit: int | None = None, val_fraction: float = VAL_FRACTION):
    """((train images, labels), (val ...), (test ...)) of a loaded CIFAR-10: the fixed val split
    of every run (bench.p6_classification's tta part scores the same val images); with
    val_fraction 0 every training image trains and val is empty."""
    train_x, train_y = cifar.train_images, cifar.train_labels
    test_x, test_y = cifar.test_images, cifar.test_labels
    if limit:  # a fixed random subset: the whole-CIFAR-10 archives are sorted by class
        train_x, train_y = random_subset(train_x, train_y, limit)
        test_x, test_y = random_subset(test_x, test_y, max(1, limit // 5))
    train_x, train_y, val_x, val_y = split_train_val(train_x, train_y, val_fraction)
    return (train_x, train_y), (val_x, val_y), (test_x, test_y)


def build_classifier(args, device, channels_last: bool):
    """The model (seeded: the same initial weights on every rank; DDP also broadcasts rank 0's),
    its architecture dict and its input normalisation."""
    arch = model_arch(args)
    if arch["model"] == "vit" and args.weights is None:
        raise CLIError(
            "the ViT needs --weights PATH (pretrained timm weights), --weights hub, or --weights none"
        )
    if arch["model"] == "resnet18" and args.weights is not None:
        raise CLIError("--weights is for the ViT; ResNet-18 trains from scratch")
    seed_everything(args.seed)
    model = build_model(
        arch, len(CLASSES), None if args.weights in (None, "none") else args.weights
    ).to(device)
    mean, std = input_normalization(model) or (CIFAR_MEAN, CIFAR_STD)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, arch, (mean, std)


class EpochBatches:
    """Each epoch's training batches. Flips, crops and cutout run on whole batches of images kept
    on the training device; per-image policies (AutoAugment, TrivialAugment, ...) run in
    DataLoader workers. Seeding per epoch makes the shuffle order and every augmentation draw a
    function of (seed, epoch, rank): a resumed run continues exactly as an uninterrupted one."""

    def __init__(self, images, labels, preset, args, device, info):
        self.preset, self.seed, self.batch_size, self.info = (
            preset,
            args.seed,
            args.batch_size,
            info,
        )
        # reseeded every epoch: the shuffle and every augmentation draw
        self.generator = torch.Generator()
        if preset.device_train is not None:
            self.on_device = images.to(device), labels.to(device)
            self.sampler = self.loader = None
            self.steps = len(labels) // args.batch_size
        else:
            dataset = ImageTensors(images, labels, preset.train)
            self.sampler = make_train_sampler(dataset, args.seed)
            workers = (
                args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
            )
            self.loader = DataLoader(
                dataset,
                batch_size=args.batch_size // info.world_size,
                sampler=self.sampler,
                shuffle=self.sampler is None,
                drop_last=True,
                num_workers=workers,
                generator=self.generator,
                pin_memory=device.type == "cuda",
            )
            self.steps = len(self.loader)
        if self.steps == 0:
            raise CLIError(
                f"{len(labels)} training images: fewer than one batch of {args.batch_size}"
            )

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int):
        seed_everything(derived_seed(self.seed, "global", epoch) % 2**31, self.info.rank)
        # It also seeds the DataLoader workers' augmentation draws: each rank its own (the
        # shuffle itself comes from the DistributedSampler under DDP, not from this generator).
        self.generator.manual_seed(derived_seed(self.seed, "augment", epoch, self.info.rank))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.loader is not None:
            return self.loader
        # One order for all ranks, so that their shares of a batch are disjoint.
        order = torch.randperm(
            len(self.on_device[1]),
            generator=torch.Generator().manual_seed(derived_seed(self.seed, "order", epoch)),
        )
        return device_batches(
            *self.on_device,
            self.preset.device_train,
            order,
            self.batch_size,
            self.generator,
            self.info.rank,
            self.info.world_size,
        )


def export(
    out: Path, model, arch, mean, std, args, epoch: int, val_acc: float, command: str
) -> None:
    """model.pt in fp16: half the size (ResNet-18: 22 MB, small enough to ship);
    bench/p6_classification.py --parts full measures the exported file's test accuracy against
    the in-training one."""
    with atomic_path(out / "model.pt") as tmp:
        half = {
            k: (v.half() if v.is_floating_point() else v).cpu()
            for k, v in model.state_dict().items()
        }
        torch.save(
            {
                "state_dict": half,
                "arch": arch,
                "mean": mean,
                "std": std,
                "classes": CLASSES,
                "preset": args.aug,  # the file's name for its augmentation (infer's eval transform)
                "epochs": epoch,
                "val_acc": val_acc,
                "command": command,
            },
            tmp,
        )


def score_test_sets(
    model, data: Splits, preset, device, dtype, channels_last: bool
) -> tuple[float, dict | None]:
    """The one look at the test set(s): the final epoch's model, whatever the val curve did."""
    test_acc = evaluate(model, *data.test, preset.eval, device, dtype, channels_last)
    if data.extra is None:
        return test_acc, None
    extra = data.extra
    return test_acc, {
        "data": extra.source,
        "test_images": len(extra.test_labels),
        "test_acc": evaluate(
            model, extra.test_images, extra.test_labels, preset.eval, device, dtype, channels_last
        ),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    info, device = init_distributed(resolve_device(args.device))
    dtype = resolve_dtype(args.precision, device)
    channels_last = args.memory_format == "channels_last"
    # fixed input shapes: let cuDNN pick its fastest kernels
    torch.backends.cudnn.benchmark = device.type == "cuda"
    command = command_line("p6_classification.train", argv)
    run = RunFolder.from_args(args, f"runs/p6/{args.model}", main=info.is_main)

    data = load_splits(args, info, device)
    model, arch, (mean, std) = build_classifier(args, device, channels_last)
    preset = augment.build_preset(args.aug, mean, std, len(CLASSES), padding_mode=args.padding_mode)
    if args.label_smoothing is not None:
        preset = replace(preset, label_smoothing=args.label_smoothing)
    batches = EpochBatches(*data.train, preset, args, device, info)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        trainable, lr=args.lr, momentum=MOMENTUM, nesterov=True, weight_decay=args.weight_decay
    )
    # The averaged weights are what is evaluated and exported; the model itself keeps training.
    ema = deepcopy(model).requires_grad_(False).eval() if args.ema_decay else None
    stateful = {"model": model, "optimizer": opt, **({"ema": ema} if ema is not None else {})}

    # What a resumed run must share with the one that wrote last.pt.
    identity = {"arch": arch, "data": data.source, **{k: getattr(args, k) for k in RECIPE}}
    state = run.load(identity, **stateful)
    epoch, seconds, val_acc = (
        (state["epoch"], state["seconds"], state["val_acc"]) if state else (0, 0.0, None)
    )
    steps, warmup = len(batches), warmup_steps(args, len(batches))
    step, total = epoch * steps, args.epochs * steps
    log = run.start(step, total, LOG_FIELDS, command, device)
    train_model = DDP(model) if info.enabled else model
    log_main(
        f"{arch} ({sum(p.numel() for p in trainable) / 1e6:.2f} M trainable parameters), augmentation {args.aug}; "
        f"{len(data.train[1])} train / {len(data.val[1])} val / {len(data.test[1])} test images from "
        f"{data.source}; {device} {dtype}" + (f"; resumed after epoch {epoch}" if state else "")
    )

    while epoch < args.epochs and not run.stopping:
        epoch_batches = batches.epoch(epoch)
        start = time.perf_counter()
        train_loss = train_epoch(
            train_model,
            epoch_batches,
            steps,
            warmup,
            preset,
            opt,
            epoch,
            args,
            device,
            dtype,
            channels_last,
            ema,
        )
        epoch, step = epoch + 1, step + steps
        seconds += time.perf_counter() - start
        scored = ema if ema is not None else unwrap(model)
        val_acc = (
            evaluate(scored, *data.val, preset.eval, device, dtype, channels_last)
            if len(data.val[1])
            else None
        )
        val_text = "" if val_acc is None else f"{val_acc:.4f}"
        log_main(
            f"epoch {epoch}: train loss {train_loss:.4f}" + (val_text and f", val acc {val_text}")
        )
        if log:
            log.writerow(
                [
                    step,
                    epoch,
                    f"{opt.param_groups[0]['lr']:.5f}",
                    f"{train_loss:.4f}",
                    val_text,
                    f"{seconds:.1f}",
                    str(dtype).removeprefix("torch."),
                    describe_hardware(device),
                ]
            )
        if run.checkpoint_due(step, total, since=step - steps):
            run.save({"epoch": epoch, "seconds": seconds, "val_acc": val_acc}, **stateful)
    scored = ema if ema is not None else unwrap(model)
    if epoch < args.epochs:  # --max-seconds ended this session: the test set waits for the end
        if info.is_main:
            export(run.out, scored, arch, mean, std, args, epoch, val_acc, command)
        cleanup_distributed()
        return run.finish(step, {"val_acc": val_acc})

    test_acc, also = score_test_sets(scored, data, preset, device, dtype, channels_last)
    result = {
        "command": command,
        "hardware": describe_hardware(device),
        "world_size": info.world_size,
        "arch": arch,
        "preset": args.aug,  # the records' name for the augmentation
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        # every RECIPE value as resolved: what bench.p6_classification compares with DEFAULTS
        "recipe": {k: getattr(args, k) for k in RECIPE},
        "precision": str(dtype),
        "channels_last": channels_last,
        "data": data.source,
        "train_images": len(data.train[1]),
        "val_images": len(data.val[1]),
        "test_images": len(data.test[1]),
        "val_acc": val_acc,
        "test_acc": test_acc,
        "train_seconds": round(seconds, 1),
        "also_test": also,
    }
    if info.is_main:
        export(run.out, scored, arch, mean, std, args, epoch, val_acc, command)
        plot_curves(run.out)
    run.finish(step, result)
    also_line = f", test acc {also['test_acc']:.4f} on {also['data']}" if also else ""
    val_line = "no val images" if val_acc is None else f"val acc {val_acc:.4f}"
    log_main(
        f"done: {val_line}, test acc {test_acc:.4f}{also_line} (final epoch), {seconds:.0f} s training"
    )
    cleanup_distributed()
    return result


if __name__ == "__main__":
    run_cli(main)
