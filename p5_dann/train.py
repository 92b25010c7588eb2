"""Train DANN, or its lower / upper bounds, for one source -> target scenario.

    python p5_dann/train.py --mode dann --source mnistm --target usps --data-root hw2_data/digits
    python p5_dann/train.py --mode source_only ...    # lower bound: source labels only
    python p5_dann/train.py --mode target_only ...    # upper bound: target labels (not allowed for DANN)
    torchrun --nproc_per_node=N p5_dann/train.py ...  # DDP

DANN sees source images + labels and target *images only*. Model selection uses the
source val split (the target labels stay unseen); target val accuracy is logged for the
report. Re-running the same command resumes from OUT/last.pt.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

from hw2_utils import (atomic_path, cleanup_distributed, init_distributed, log_main, make_train_sampler, progress,
                       resolve_device, run_cli, seed_everything, unwrap)
from p5_dann.data import load_split
from p5_dann.model import DANN, grl_lambda

# The paper's recipe (Ganin et al. 2016, sec. 5.2.2) except where noted.
DEFAULTS = dict(
    epochs=25,           # ~1550 steps on the 8000 MNIST-M images: the bench's CPU budget
    batch_size=128,      # per domain: each step sees 128 source + 128 target images
    lr=0.01,             # mu_0; annealed as mu_0 / (1 + 10 p)^0.75
    momentum=0.9,
    weight_decay=5e-4,   # not in the paper; small, steadies the BN-heavy heads
)
# Mild geometric jitter for both domains: USPS digits fill their frame while MNIST-M ones
# are padded, so scale and shift invariance is what transfers.
MAX_ROTATION_DEG, SCALE_RANGE, MAX_SHIFT = 10.0, (0.8, 1.25), 0.1


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random rotation, scale and shift in one grid_sample call (a per-image
    torchvision transform loop costs more than the network here)."""
    n = len(x)
    u = torch.rand(n, 4, generator=generator)
    angle = torch.deg2rad((2 * u[:, 0] - 1) * MAX_ROTATION_DEG)
    scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * MAX_SHIFT * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["source_only", "dann", "target_only"], default="dann")
    p.add_argument("--source", default="mnistm")
    p.add_argument("--target", default="usps", help="usps or svhn (any folder name under --data-root)")
    p.add_argument("--data-root", default="hw2_data/digits")
    p.add_argument("--out", help="run folder (default runs/p5/<target>_<mode>)")
    for name, value in DEFAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--gray", action="store_true", help="convert every image to grayscale (both domains)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True).expand_as(x).contiguous()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    model.eval()
    correct = sum((model(x.to(device))[0].argmax(1).cpu() == y).sum().item()
                  for x, y in zip(images.split(500), labels.split(500)))
    return correct / len(labels)


def main(argv=None) -> dict:
    args = parse_args(argv)
    info, device = init_distributed(resolve_device(args.device))
    seed_everything(args.seed, info.rank)
    out = Path(args.out or f"runs/p5/{args.target}_{args.mode}")
    train_set = args.target if args.mode == "target_only" else args.source
    x_train, y_train = load_split(args.data_root, train_set, "train")
    x_src_val, y_src_val = load_split(args.data_root, train_set, "val")
    x_tgt_val, y_tgt_val = load_split(args.data_root, args.target, "val")
    x_tgt = load_split(args.data_root, args.target, "train")[0] if args.mode == "dann" else None  # labels dropped
    if args.gray:
        x_train, x_src_val, x_tgt_val = map(to_gray, (x_train, x_src_val, x_tgt_val))
        x_tgt = to_gray(x_tgt) if x_tgt is not None else None

    def loader(x: torch.Tensor, *rest: torch.Tensor, seed: int) -> DataLoader:
        data = TensorDataset(x, *rest)
        sampler = make_train_sampler(data, seed)
        return DataLoader(data, batch_size=args.batch_size // info.world_size, sampler=sampler, drop_last=True,
                          shuffle=sampler is None, generator=torch.Generator().manual_seed(seed))

    train_loader = loader(x_train, y_train, seed=args.seed)
    target_loader = loader(x_tgt, seed=args.seed + 1) if x_tgt is not None else None
    model = DANN().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    aug_gen = torch.Generator().manual_seed(args.seed * 1000 + info.rank)
    epoch, best = 0, {"source_val_acc": -1.0}
    last = out / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        epoch, best = state["epoch"], state["best"]
        torch.set_rng_state(state["rng"])
        aug_gen.set_state(state["aug_rng"])
        log_main(f"resumed from {last} after epoch {epoch}")
    train_model = DDP(model) if info.enabled else model
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "log.csv", "a", newline="", buffering=1)
    log = csv.writer(log_file)
    if epoch == 0 and info.is_main:
        log.writerow(["epoch", "lambda", "lr", "label_loss", "domain_loss", "source_val_acc", "target_val_acc", "seconds"])
    t0 = time.time()

    while epoch < args.epochs:
        train_model.train()
        for sampler in (train_loader.sampler, getattr(target_loader, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        target_iter = iter(target_loader) if target_loader else None
        sums = torch.zeros(2)
        for i, (x, y) in enumerate(progress(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)):
            p = (epoch * steps_per_epoch + i) / total_steps
            lambda_ = grl_lambda(p)
            for group in opt.param_groups:
                group["lr"] = args.lr / (1 + 10 * p) ** 0.75
            if target_iter is not None:
                try:
                    x_t = next(target_iter)[0]
                except StopIteration:  # the target set is smaller than the source set
                    target_iter = iter(target_loader)
                    x_t = next(target_iter)[0]
                x = torch.cat([x, x_t])
            if not args.no_augment:
                x = random_affine(x, aug_gen)
            logits, domain_logits = train_model(x.to(device), lambda_)
            n_src = len(y)
            label_loss = F.cross_entropy(logits[:n_src], y.to(device))
            domain_loss = torch.zeros((), device=device)
            if target_iter is not None:
                domain = torch.cat([torch.zeros(n_src), torch.ones(len(x) - n_src)]).long().to(device)
                domain_loss = F.cross_entropy(domain_logits, domain)
            opt.zero_grad(set_to_none=True)
            (label_loss + domain_loss).backward()
            opt.step()
            sums += torch.tensor([label_loss.item(), domain_loss.item()])
        epoch += 1
        record = {"epoch": epoch, "source_val_acc": accuracy(unwrap(model), x_src_val, y_src_val, device),
                  "target_val_acc": accuracy(unwrap(model), x_tgt_val, y_tgt_val, device)}
        if info.is_main:
            means = (sums / steps_per_epoch).tolist()
            log.writerow([epoch, f"{lambda_:.3f}", f"{opt.param_groups[0]['lr']:.5f}", f"{means[0]:.4f}",
                          f"{means[1]:.4f}", f"{record['source_val_acc']:.4f}", f"{record['target_val_acc']:.4f}",
                          f"{time.time() - t0:.1f}"])
            log_main(f"epoch {epoch}: source val {record['source_val_acc']:.4f}, target val {record['target_val_acc']:.4f}")
            export = {"state_dict": unwrap(model).state_dict(), "mode": args.mode, "source": args.source,
                      "target": args.target, "gray": args.gray, **record}
            if record["source_val_acc"] > best["source_val_acc"]:  # selection never looks at target labels
                best = record
                with atomic_path(out / "best.pt") as tmp:
                    torch.save(export, tmp)
            with atomic_path(out / "final.pt") as tmp:
                torch.save(export, tmp)
            with atomic_path(last) as tmp:
                torch.save({"model": unwrap(model).state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                            "best": best, "rng": torch.get_rng_state(), "aug_rng": aug_gen.get_state()}, tmp)
    log_file.close()
    final = {"selected": best, "final": record if epoch and args.epochs else None, "seconds": round(time.time() - t0, 1)}
    log_main(f"done: best-by-source-val epoch {best.get('epoch')} -> target val {best.get('target_val_acc', 0):.4f}")
    cleanup_distributed()
    return final


if __name__ == "__main__":
    run_cli(main)
