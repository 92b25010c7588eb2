"""P6 benchmark on this machine: throughput, the trained ResNet-18, the CAM deletion/insertion
curves and the test-time flip, on the whole CIFAR-10 (the shared JPEG copy: 45,000 train / 5,000
val held out / 10,000 test) and the 1,017 official-pixel test images of the shared slice. It only
measures: it reads a run folder or a checkpoint and writes its records under WORK.

    python -m bench.p6_classification --parts throughput          # ~5 min; run on an idle machine
    python -m bench.p6_classification --parts full                # scores the run WORK/resnet18
    python -m bench.p6_classification --parts cam                 # figures + deletion/insertion on 500 test images
    python -m bench.p6_classification --parts tta                 # test-time flip: infer.py's TTA_DEFAULT
    python -m bench.p6_classification --work /tmp/p6 --limit 300 --throughput-width 8 \\
        --throughput-steps 1 --deletion 20 --checkpoint RUN/model.pt   # smoke run: numbers meaningless

Parts:
- throughput: training images/s of our ResNet-18 and of torchvision's resnet18 with the same
  CIFAR stem, in the same run (fp32 and bf16 autocast, NCHW and channels_last, batch as the
  recipe's), the ratio ours/torchvision, the per-image cost of every augmentation preset
  against the model step, and whether the defaults (--precision auto, --memory-format) are the fastest row.
- full: a finished train.py run folder (--run, default WORK/resnet18; the shipped model's is
  `python -m p6_classification.train --preset shipped --data ../shared/data/cifar10_full --out
  outputs/p6/resnet18`): its result.json, with its exported model.pt scored as infer.py loads it
  (fp16 weights, fp32 compute, no flip) on both test sets.
- cam: cam.py on --checkpoint (default the shipped model): 5 correct + 5 wrong test images, and
  the deletion and insertion curves on the first --deletion test images of the official-pixel slice.
- tta: --checkpoint's val accuracy without and with the test-time flip (infer.py --tta flip); the
  one val prefers is scored once on both test sets. The flip doubles inference, so it must win on
  val to be chosen; the choice becomes infer.py's TTA_DEFAULT by hand, with a pointer to the record.
WORK gets bench.json (each part's numbers with its command and hardware) and cam/. The
augmentation study trains, so it is its own command (p6_classification/aug_study.py), and
shipping a model or a record is a copy by hand (p6_classification/checkpoints/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    autocast,
    command_line,
    cpu_has_bf16,
    describe_hardware,
    positive_int,
    require_file,
    resolve_device,
    resolve_dtype,
    run_cli,
    seed_int,
)
from p6_classification import cam, train
from p6_classification.augment import PRESETS, build_preset
from p6_classification.data import CIFAR_MEAN, CIFAR_STD, load_cifar
from p6_classification.infer import SHIPPED, TTA, load_checkpoint, predict
from p6_classification.models import ResNet18

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FULL, SLICE = SHARED / "cifar10_full", SHARED / "cifar10" / "cifar10_slice.npz"
PARTS = ("throughput", "full", "cam", "tta")


def torchvision_resnet18() -> nn.Module:
    """torchvision's resnet18 with the CIFAR stem our model uses (3x3 stride-1 conv, no max-pool)."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1, model.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    return model


def step_seconds(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> float:
    """Seconds of one training step (forward, backward, SGD step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with autocast(device, dtype):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def throughput(
    images: torch.Tensor, width: int, batch: int, steps: int, device: torch.device
) -> dict:
    """Training images/s of each configuration. Ours and torchvision's take their timed steps
    in alternation (the order flipping every round), so that a slower or busier spell of the
    machine hits both alike; images/s come from the median step, the ratio is the median of the
    rounds' ratios."""
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    x = (images[:batch].float() / 255 - mean) / std
    y = (torch.arange(batch) % 10).to(device)
    builders = {"ours": lambda: ResNet18(width=width)}
    if width == 64:  # torchvision's resnet18 has one width
        builders["torchvision"] = torchvision_resnet18
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            xi = x.to(device).contiguous(memory_format=fmt)
            runs = {}
            for name, build in builders.items():
                torch.manual_seed(0)
                model = build().to(device, memory_format=fmt)
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
                    step_seconds(model, opt, xi, y, dtype, device)
                runs[name] = (model, opt, [])
            for round_ in range(steps):
                for name in builders if round_ % 2 == 0 else reversed(list(builders)):
                    model, opt, times = runs[name]
                    times.append(step_seconds(model, opt, xi, y, dtype, device))
            row = {"dtype": str(dtype).removeprefix("torch."), "channels_last": channels_last}
            for name, (_, _, times) in runs.items():
                row[f"{name}_images_per_s"] = round(batch / statistics.median(times), 2)
            if "torchvision" in runs:
                ratios = [t / o for o, t in zip(runs["ours"][2], runs["torchvision"][2])]
                row["ours_over_torchvision"] = round(statistics.median(ratios), 3)
            rows.append(row)
            print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    fastest = max(rows, key=lambda r: r["ours_images_per_s"])
    auto_dtype = resolve_dtype("auto", device)
    auto = {
        "dtype": str(auto_dtype).removeprefix("torch."),
        "channels_last": train.parse_args([]).memory_format == "channels_last",
    }
    return {
        "width": width,
        "batch": batch,
        "steps": steps,
        "rows": rows,
        "cpu_has_bf16": cpu_has_bf16(),
        "auto": auto,
        "auto_is_fastest": auto == {k: fastest[k] for k in ("dtype", "channels_last")},
    }


def augmentation_cost(images: torch.Tensor, n: int) -> dict[str, float]:
    """Microseconds per image of every preset's training transform, on one thread (a 32x32 image's
    transform gains nothing from more; train.py runs it in the main process on the CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        costs = {}
        for name in PRESETS:
            preset = build_preset(name, CIFAR_MEAN, CIFAR_STD)
            start = time.perf_counter()
            out = torch.stack([preset.train(image) for image in images[:n]])
            if preset.batch is not None:
                preset.batch(out, torch.arange(len(out)) % 10)
            costs[name] = round((time.perf_counter() - start) / len(out) * 1e6, 1)
        return costs
    finally:
        torch.set_num_threads(threads)


def test_time_flip(
    checkpoint: Path, data: str, also_test: str, limit: int | None, device: torch.device
) -> dict:
    """Val accuracy of `checkpoint` with each of infer.TTA, the choice (the flip only if it wins:
    it doubles inference), and the two test sets scored once with the choice."""
    model, meta = load_checkpoint(checkpoint, device)
    cifar, extra = load_cifar(data), load_cifar(also_test)  # both read now: a bad path fails first
    _, val, test = train.hold_out(cifar, limit)

    start = time.perf_counter()
    val_images, val_labels = val
    val_correct = {
        tta: predict(model, meta, val_images, device, tta=tta) == val_labels for tta in TTA
    }
    val_acc = {tta: c.float().mean().item() for tta, c in val_correct.items()}
    chosen = "flip" if val_acc["flip"] > val_acc["none"] else "none"
    return {
        "checkpoint": str(checkpoint.resolve().relative_to(REPO))
        if checkpoint.resolve().is_relative_to(REPO)
        else str(checkpoint),
        "val_images": len(val[1]),
        "val_acc": val_acc,
        # the paired difference (McNemar's discordant pairs): images the flip fixes and breaks
        "val_flip_fixes": int((val_correct["flip"] & ~val_correct["none"]).sum()),
        "val_flip_breaks": int((~val_correct["flip"] & val_correct["none"]).sum()),
        "chosen": chosen,
        "test_images": len(test[1]),
        "test_acc": accuracy_of(model, meta, *test, device, chosen),
        "also_test": {
            "data": extra.source,
            "test_images": len(extra.test_labels),
            "test_acc": accuracy_of(
                model, meta, extra.test_images, extra.test_labels, device, chosen
            ),
        },
        "seconds": round(time.perf_counter() - start, 1),
        "hardware": describe_hardware(device),
    }


def accuracy_of(model, meta: dict, images, labels, device, tta: str = "none") -> float:
    """Top-1 accuracy of infer.predict's classes (the checkpoint's eval transform, `tta`)."""
    return (predict(model, meta, images, device, tta=tta) == labels).float().mean().item()


def score_run(run: Path, data: str, also_test: str, device: torch.device) -> dict:
    """A finished train.py run's numbers as its result.json records them ("metrics"), with its
    exported model.pt scored as infer.py loads it (fp16 weights, fp32 compute, no flip) on the test
    split of --data and of --also-test: it should match the in-training (bf16 autocast) evaluation."""
    run_result = json.loads(
        require_file(run / "result.json", "the run's result (train.py writes it)").read_text()
    )
    if not run_result["finished"]:
        raise CLIError(
            f"{run} stopped at step {run_result['step']} of {run_result['total_steps']}: "
            "run its train.py command again to finish it"
        )
    result = run_result["metrics"]
    model, meta = load_checkpoint(
        require_file(run / "model.pt", "the run's exported model"), device
    )
    sets = {"test": load_cifar(data), "also_test": load_cifar(also_test)}
    exported = {
        name: accuracy_of(model, meta, cifar.test_images, cifar.test_labels, device)
        for name, cifar in sets.items()
    }
    if result.get("also_test") is None:  # a test set the run did not score
        extra = sets["also_test"]
        result["also_test"] = {
            "data": extra.source,
            "test_images": len(extra.test_labels),
            "test_acc": exported["also_test"],
            "scored_on": describe_hardware(device),
        }
    return {**result, "exported_fp16_test_acc": exported}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--data",
        default=str(FULL),
        help="CIFAR-10 whose train images time the throughput and whose val and test splits "
        "are scored (default: the shared whole-CIFAR-10 JPEG copy)",
    )
    p.add_argument(
        "--also-test",
        default=str(SLICE),
        help="second test set (default: the 1,017 official-pixel images)",
    )
    p.add_argument("--work", default="outputs/p6", help="RUNS_DIR/p6 for the report")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--throughput-width", type=positive_int, default=64)
    p.add_argument(
        "--throughput-batch", type=positive_int, default=train.DEFAULTS["resnet18"]["batch_size"]
    )
    p.add_argument(
        "--throughput-steps",
        type=positive_int,
        default=8,
        help="timed steps per model and configuration",
    )
    p.add_argument(
        "--run",
        help="full: a finished train.py run folder holding result.json and model.pt "
        "(default: WORK/resnet18)",
    )
    p.add_argument(
        "--checkpoint",
        default=str(SHIPPED),
        help="cam, tta: the model to explain or score (default: the shipped one)",
    )
    p.add_argument(
        "--deletion",
        type=positive_int,
        default=500,
        help="cam: test images for the deletion and insertion curves",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        help="tta, smoke runs only: train.py's --limit (a fixed random draw of N training "
        "and N/5 test images, whose val split is scored)",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="cam: cam.py's --seed (default 0)")
    p.add_argument("--device", default="auto")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    work = Path(args.work)
    device = resolve_device(args.device)
    command = command_line("bench.p6_classification", argv)
    bench_file = work / "bench.json"  # parts run separately are merged; each keeps its own command

    def save(part: str, value: dict) -> None:
        record = json.loads(bench_file.read_text()) if bench_file.is_file() else {}
        record[part] = {**value, "bench_command": command}
        with atomic_path(bench_file) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        print(f"wrote {part} to {bench_file}")

    if "throughput" in args.parts:
        images = load_cifar(args.data).train_images
        result = throughput(
            images, args.throughput_width, args.throughput_batch, args.throughput_steps, device
        )
        step_us = 1e6 / max(r["ours_images_per_s"] for r in result["rows"])
        result["augmentation_us_per_image"] = augmentation_cost(images, 512)
        result["model_step_us_per_image"] = round(step_us, 1)
        save("throughput", {**result, "hardware": describe_hardware(device)})
    if "full" in args.parts:
        run = Path(args.run) if args.run else work / "resnet18"
        save("full", score_run(run, args.data, args.also_test, device))
    if "cam" in args.parts:
        cam.main(
            [
                "--checkpoint",
                args.checkpoint,
                "--data",
                args.also_test,
                "--correct",
                "5",
                "--wrong",
                "5",
                "--deletion",
                str(args.deletion),
                "--seed",
                str(args.seed),
                "--device",
                args.device,
                "--out",
                str(work / "cam"),
            ]
        )
    if "tta" in args.parts:
        save(
            "tta",
            test_time_flip(Path(args.checkpoint), args.data, args.also_test, args.limit, device),
        )
    return json.loads(bench_file.read_text()) if bench_file.is_file() else {}


if __name__ == "__main__":
    run_cli(main)
