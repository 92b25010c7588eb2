"""P1 benchmark: generate the 1000 graded digits with a checkpoint, time it, and grade.

    python -m bench.p1_ddpm                      # shipped checkpoint, grading setup
    python -m bench.p1_ddpm --guidance 0 1 2 3 5 --per-digit 10   # CFG sweep (+ cfg_sweep.png)

- OUT/mnistm is graded by the course's Classifier.pth (evaluation/digit_accuracy.py).
- OUT/svhn holds the checkpoint's second domain (USPS here, no SVHN on these machines); it
  is graded by the course LeNet architecture trained on USPS train, accepted only if it
  scores >= 0.95 on USPS val (printed), and cached in --work.
Results go to WORK/p1_bench.json, or WORK/p1_cfg_sweep.json with several --guidance values
(both read by p1_ddpm/report.py); images to WORK/w<w>_n<per-digit>/.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from evaluation.digit_accuracy import PREPROCESS, LeNet, load_mnistm_classifier, score_folder
from hw2_utils import (CLIError, atomic_path, command_line, make_generator, open_rgb, progress, resolve_device, run_cli,
                       save_grid, seed_everything)
from p1_ddpm import infer
from p1_ddpm.data import load_split
from p1_ddpm.pipeline import SHIPPED_CHECKPOINT

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
USPS_MIN_VAL_ACC = 0.95


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--digits-root", default=str(SHARED / "hw2_data" / "digits"), help="course layout holding usps/")
    p.add_argument("--classifier", default=str(SHARED / "grader" / "Classifier.pth"), help="course MNIST-M grader")
    p.add_argument("--work", default="outputs/p1", help="generated images, cached USPS grader, results json")
    p.add_argument("--guidance", type=float, nargs="+", default=[infer.GUIDANCE], help="one run per value")
    p.add_argument("--per-digit", type=int, default=50)
    p.add_argument("--sampler", default=infer.SAMPLER, choices=["ddim", "ddpm"])
    p.add_argument("--steps", type=int, default=infer.STEPS)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def usps_grader(digits_root: Path, cache: Path, device: torch.device) -> tuple[LeNet, float]:
    """The course LeNet trained on USPS train with the grader's preprocessing; val accuracy."""
    def tensors(split):
        images, labels = load_split(digits_root / "usps", split)
        from PIL import Image
        return torch.stack([PREPROCESS(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images]), labels

    x_val, y_val = tensors("val")
    model = LeNet().to(device)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        seed_everything(0)
        x, y = tensors("train")
        # One-cycle Adam, 30 epochs: 0.962 on USPS val (a constant rate for 15 epochs gave 0.940-0.956,
        # depending on the thread count).
        epochs, batches = 30, (len(x) + 127) // 128
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * batches)
        generator = make_generator(0)
        for _ in progress(range(epochs), desc="USPS grader epochs"):
            for idx in torch.randperm(len(x), generator=generator).split(128):
                xb = x[idx] + 0.1 * torch.randn(x[idx].shape, generator=generator)  # mild noise: generated digits are not clean scans
                loss = torch.nn.functional.cross_entropy(model(xb.to(device)), y[idx].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
        with atomic_path(cache) as tmp:
            torch.save(model.state_dict(), tmp)
    model.eval()
    with torch.no_grad():
        val_acc = (model(x_val.to(device)).argmax(1).cpu() == y_val).float().mean().item()
    return model, val_acc


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    work = Path(args.work)
    mnistm_grader = load_mnistm_classifier(args.classifier, device)
    usps_model, usps_val = usps_grader(Path(args.digits_root), work / "usps_lenet.pt", device)
    print(f"USPS grader (course LeNet trained on USPS train): val acc = {usps_val:.4f} on 2007 images")
    if usps_val < USPS_MIN_VAL_ACC:
        raise CLIError(f"USPS grader val acc {usps_val:.4f} < {USPS_MIN_VAL_ACC}: refusing to grade with it")

    results = []
    for w in args.guidance:
        out = work / f"w{w:g}_n{args.per_digit}"
        t0 = time.perf_counter()
        infer.main([str(out), "--checkpoint", args.checkpoint, "--guidance", str(w), "--per-digit", str(args.per_digit),
                    "--sampler", args.sampler, "--steps", str(args.steps), "--device", str(device)])
        seconds = time.perf_counter() - t0
        mnistm = score_folder(mnistm_grader, out / "mnistm", device)
        second = score_folder(usps_model, out / "svhn", device)
        results.append({"guidance": w, "seconds": round(seconds, 1), "mnistm_acc": mnistm["acc"],
                        "second_domain_acc": second["acc"], "images": mnistm["total"] + second["total"]})
        print(f"w={w:g}: MNIST-M acc = {mnistm['acc']:.4f} ({mnistm['correct']}/{mnistm['total']}), "
              f"second domain (USPS) acc = {second['acc']:.4f} ({second['correct']}/{second['total']}), "
              f"{seconds:.0f} s for {results[-1]['images']} images")

    record = {"checkpoint": args.checkpoint, "checkpoint_step": torch.load(args.checkpoint, weights_only=True)["step"],
              "sampler": args.sampler, "steps": args.steps, "per_digit": args.per_digit, "usps_grader_val_acc": usps_val,
              "device": str(device), "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
              if device.type == "cpu" else torch.cuda.get_device_name(device), "results": results}
    record["command"] = command_line("bench.p1_ddpm", argv)
    name = "p1_cfg_sweep.json" if len(args.guidance) > 1 else "p1_bench.json"
    with atomic_path(work / name) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    print(f"wrote {work / name}")
    if len(args.guidance) > 1:
        sweep_figure(work, args.guidance, args.per_digit)


def sweep_figure(work: Path, guidances: list[float], per_digit: int) -> None:
    """WORK/cfg_sweep.png: per guidance value one row per domain folder, digits 0-9 (the first noise)."""
    from torchvision.transforms.functional import pil_to_tensor

    rows = [[work / f"w{w:g}_n{per_digit}" / folder / f"{d}_001.png" for d in range(10)]
            for w in guidances for folder in ("mnistm", "svhn")]
    images = torch.stack([pil_to_tensor(open_rgb(f)) for row in rows for f in row]).float() / 255
    save_grid(images, work / "cfg_sweep.png", nrow=10, value_range=(0.0, 1.0))
    print(f"wrote {work / 'cfg_sweep.png'} (rows: w = {', '.join(f'{w:g}' for w in guidances)}, each mnistm then svhn)")


if __name__ == "__main__":
    run_cli(main)
