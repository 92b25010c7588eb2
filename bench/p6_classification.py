"""P6 benchmark on this machine and the shared CIFAR-10 slice (5,085 train / 1,017 test
real images; 10% of the training images held out for validation, test evaluated once).

    python bench/p6_classification.py --work outputs/p6                 # everything, real sizes
    python bench/p6_classification.py --work outputs/p6 --parts throughput
    python bench/p6_classification.py --work /tmp/p6 --subset 300 --slice-epochs 1 --aug-epochs 1 \\
        --throughput-width 8 --throughput-steps 1                      # smoke run: numbers meaningless

Parts:
- throughput: ResNet-18 training images/s (forward, backward, SGD step) in fp32 and bf16
  autocast, each in NCHW and channels_last.
- slice: ResNet-18 (width 64 unless --slice-width) trained on the slice; val and test accuracy
  and wall time.
- aug: the augmentation study (p6_classification/aug_study.py) on the slice, every preset
  with one seed and budget, a narrower ResNet-18 (--aug-width) to fit a CPU budget.
WORK gets bench.json (throughput + slice, with the command and hardware), slice_resnet18/
(the run) and aug/ (the study's table, plot and runs). Everything resumes when re-run.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; keep `bench/` out of imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hw2_utils import atomic_path, autocast, resolve_device, run_cli  # noqa: E402
from p6_classification import aug_study, train  # noqa: E402
from p6_classification.data import CIFAR_MEAN, CIFAR_STD, load_cifar  # noqa: E402
from p6_classification.models import ResNet18  # noqa: E402

SLICE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10_slice.npz"
PARTS = ("throughput", "slice", "aug")


def throughput(images: torch.Tensor, width: int, batch: int, steps: int, device: torch.device) -> list[dict]:
    """Training images/s of ResNet-18 on real images, after one untimed warm-up step."""
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    x = ((images[:batch].float() / 255 - mean) / std).to(device)
    y = torch.arange(batch, device=device) % 10
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            torch.manual_seed(0)
            model = ResNet18(width=width).to(device)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model, inputs = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            for step in range(steps + 1):
                if step == 1:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                with autocast(device, dtype):
                    loss = F.cross_entropy(model(inputs).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            rows.append({"dtype": str(dtype).removeprefix("torch."), "channels_last": channels_last,
                         "images_per_s": round(batch * steps / seconds, 2)})
            print(f"{rows[-1]['dtype']:>8} channels_last={channels_last!s:<5} {rows[-1]['images_per_s']:.1f} images/s")
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SLICE), help="the .npz slice (or any CIFAR-10 root)")
    p.add_argument("--work", default="outputs/p6", help="RUNS_DIR/p6 for the report")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--throughput-width", type=int, default=64)
    p.add_argument("--throughput-batch", type=int, default=32)
    p.add_argument("--throughput-steps", type=int, default=2, help="timed steps per configuration")
    p.add_argument("--slice-width", type=int, default=64)
    p.add_argument("--slice-epochs", type=int, default=10)
    p.add_argument("--slice-preset", default="flip_crop")
    p.add_argument("--slice-precision", default="fp32", help="fp32 on CPUs without bf16 units (see throughput)")
    p.add_argument("--aug-width", type=int, default=16)
    p.add_argument("--aug-epochs", type=int, default=15)
    p.add_argument("--subset", type=int, help="smoke runs only: the first N training images (and N/5 test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    work = Path(args.work)
    device = resolve_device(args.device)
    common = ["--data", args.data, "--seed", str(args.seed), "--device", args.device]
    if args.subset:
        common += ["--subset", str(args.subset)]
    command = shlex.join(["python", "bench/p6_classification.py", *argv])
    bench_file = work / "bench.json"  # parts run separately are merged; each keeps its own command
    record = json.loads(bench_file.read_text()) if bench_file.is_file() else {}

    if "throughput" in args.parts:
        images = load_cifar(args.data).train_images
        rows = throughput(images, args.throughput_width, args.throughput_batch, args.throughput_steps, device)
        record["throughput"] = {"command": command, "hardware": train.hardware(device), "width": args.throughput_width,
                                "batch": args.throughput_batch, "steps": args.throughput_steps, "rows": rows}
    if "slice" in args.parts:
        result = train.main([*common, "--width", str(args.slice_width), "--epochs", str(args.slice_epochs),
                             "--preset", args.slice_preset, "--precision", args.slice_precision,
                             "--out", str(work / "slice_resnet18")])
        record["slice"] = {**result, "bench_command": command}
    if "aug" in args.parts:
        aug_study.main([*common, "--width", str(args.aug_width), "--epochs", str(args.aug_epochs),
                        "--out", str(work / "aug")])
    if {"throughput", "slice"} & set(args.parts):
        with atomic_path(bench_file) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        print(f"wrote {bench_file}")
    return record


if __name__ == "__main__":
    run_cli(main)
