"""P6 benchmark on this machine: throughput, the shipped ResNet-18, the augmentation study and
the CAM deletion/insertion curves, on the whole CIFAR-10 (the shared JPEG copy: 45,000 train / 5,000
val held out / 10,000 test) and the 1,017 official-pixel test images of the shared slice.

    python -m bench.p6_classification --parts throughput          # ~5 min; run on an idle machine
    python -m bench.p6_classification --parts full                # the shipped model: a GPU run (~20 h on 2 threads)
    python -m bench.p6_classification --parts aug                 # the study: 8 runs of 30 epochs at once, a GPU
    python -m bench.p6_classification --parts cam                 # figures + deletion/insertion on 500 test images
    python -m bench.p6_classification --parts tta --ship          # test-time flip: chosen on val, put in the model
    # runs a GPU session brought back (bench/gpu_session.py):
    python -m bench.p6_classification --work outputs/gpu/p6 --parts full aug tta --trained-elsewhere --ship
    python -m bench.p6_classification --work /tmp/p6 --limit 300 --epochs 1 --aug-epochs 1 --aug-width 8 \\
        --throughput-width 8 --throughput-steps 1 --deletion 20   # smoke run: numbers meaningless

Parts:
- throughput: training images/s of our ResNet-18 and of torchvision's resnet18 with the same
  CIFAR stem, in the same run (fp32 and bf16 autocast, NCHW and channels_last, batch as the
  recipe's), the ratio ours/torchvision, the per-image cost of every augmentation preset
  against the model step, and whether the defaults (--precision auto, --memory-format) are the fastest row.
- full: train.py's default recipe (the shipped model) on --data, also scored on --also-test.
- aug: the augmentation study (p6_classification/aug_study.py): STUDY_PRESETS with train.py's
  recipe at --aug-epochs epochs, plus seed 1 of flip_crop for the spread, all runs at once.
- cam: cam.py on the model full just trained, else the shipped (or --checkpoint) one: 5 correct
  + 5 wrong test images, and the deletion and insertion curves on the first --deletion test
  images of the official-pixel slice.
- tta: the same model's val accuracy without and with the test-time flip (infer.py --tta flip);
  the one val prefers is scored once on both test sets, and --ship writes it into the model,
  where infer.py reads it (the flip doubles inference, so it must win on val to be chosen).
WORK gets bench.json (each part's numbers with its command and hardware), resnet18/ (the
run), aug/ and cam/. Every part resumes or is cheap to redo. --trained-elsewhere takes full's
and aug's runs as they came back from a GPU session (without last.pt, so they cannot resume):
full's exported model is scored here on both test sets, aug's record is kept as it is.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hw2_utils import (
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
    store_in_checkpoint,
)
from p6_classification import aug_study, cam, train
from p6_classification.augment import PRESETS, build_preset
from p6_classification.data import CIFAR_MEAN, CIFAR_STD, load_cifar
from p6_classification.infer import (
    CHECKPOINTS,
    SHIPPED,
    SHIPPED_RECORDS,
    TTA,
    load_checkpoint,
    predict,
)
from p6_classification.models import ResNet18

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FULL, SLICE = SHARED / "cifar10_full", SHARED / "cifar10" / "cifar10_slice.npz"
PARTS = ("throughput", "full", "aug", "cam", "tta")
# The study (issue #31: ResNet-18 width 64, >= 30 epochs, one schedule for every preset, a spread):
# train.py's recipe at 30 epochs for the seven presets that matter, a second seed of flip_crop.
STUDY_PRESETS = (
    "none",
    "flip_crop",
    "flip_crop_ls",
    "cutout",
    "autoaugment",
    "trivialaugment",
    "mixup_cutmix",
)
# all at once: one GPU holds them
STUDY_ARGS = [
    "--presets",
    *STUDY_PRESETS,
    "--spread-preset",
    "flip_crop",
    "--spread-seeds",
    "1",
    "--jobs",
    str(len(STUDY_PRESETS) + 1),
    "--workers",
    "3",
]
# What --ship copies for each part run (work-folder paths; full's model.pt becomes the shipped model).
SHIPPED_PARTS = {
    "throughput": ("bench.json",),
    "full": ("resnet18/model.pt", "resnet18/log.csv", "resnet18/curves.png", "bench.json"),
    "aug": ("aug/aug_study.json", "aug/aug_study.png"),
    "cam": ("cam/cam_resnet18.png", "cam/deletion_resnet18.json", "cam/deletion_resnet18.png"),
    "tta": ("bench.json",),
}


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


def ship(work: Path, parts: list[str]) -> None:
    """The parts' model and records into p6_classification/checkpoints/ (infer.SHIPPED_RECORDS).
    bench.json is merged: the parts run now replace theirs in the shipped record, the others stay."""
    CHECKPOINTS.mkdir(exist_ok=True)
    for record in dict.fromkeys(r for part in parts for r in SHIPPED_PARTS.get(part, ())):
        target = CHECKPOINTS / SHIPPED_RECORDS[record]
        with atomic_path(target) as tmp:
            if record == "bench.json":
                bench = json.loads((work / record).read_text())
                shipped = json.loads(target.read_text()) if target.is_file() else {}
                shipped.update({part: bench[part] for part in parts if part in bench})
                if "full" in parts and "tta" not in parts:  # a new model: the old one's choice goes
                    shipped.pop("tta", None)
                tmp.write_text(json.dumps(shipped, indent=2))
            else:
                shutil.copy(work / record, tmp)
        print(f"shipped {target}")
    if "tta" in parts:  # last: the shipped model carries the choice its record states
        chosen = json.loads((work / "bench.json").read_text())["tta"]["chosen"]
        store_in_checkpoint(CHECKPOINTS / SHIPPED.name, "tta", chosen, absent="none")


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


def exported_accuracy(
    final_pt: Path, sources: dict[str, str], device: torch.device
) -> dict[str, float]:
    """Test accuracy of the exported fp16 model.pt, loaded as infer.py loads it (fp32 compute), on
    each named source's test split: it should match the in-training (bf16 autocast) evaluation."""
    model, meta = load_checkpoint(final_pt, device)
    accuracy = {}
    for name, source in sources.items():
        cifar = load_cifar(source)
        accuracy[name] = accuracy_of(model, meta, cifar.test_images, cifar.test_labels, device)
    return accuracy


def recipe_differences(result: dict) -> list[str]:
    """What in a train.py run, as its result.json records it, differs from train.py's current
    defaults (train.RECIPE and the network): the recipe that --ship ships. The values are the
    run's resolved ones; a record from before result.json held them all ("recipe") gives its
    epochs, batch size and preset, and its command the rest."""
    default = train.parse_args([])
    ran = vars(train.parse_args(shlex.split(result["command"])[3:]))
    ran.update({k: result[k] for k in ("preset", "epochs", "batch_size") if k in result})
    ran.update(result.get("recipe", {}))
    differ = [k for k in train.RECIPE if ran[k] != getattr(default, k)]
    return differ + (["arch"] if result["arch"] != train.model_arch(default) else [])


def adopted_run(run: Path, also_test: str, device: torch.device, recipe_only: bool) -> dict:
    """train.py's result.json of a run that finished elsewhere, with the --also-test set (which
    did not travel) scored here on its exported model.pt, as infer.py loads it. `recipe_only`:
    refuse a run whose hyperparameters are not train.py's defaults (what --ship may ship)."""
    result = json.loads(
        require_file(
            run / "result.json", "the run's result (train.py writes it at the end)"
        ).read_text()
    )["metrics"]
    require_file(run / "model.pt", "the run's exported model")
    if recipe_only:
        differ = recipe_differences(result)
        if differ:
            raise CLIError(
                f"{run} was not trained with the recipe ({', '.join(differ)} differ): not shipped"
            )
    if result.get("also_test") is None:
        cifar = load_cifar(also_test)
        model, meta = load_checkpoint(run / "model.pt", device)
        accuracy = accuracy_of(model, meta, cifar.test_images, cifar.test_labels, device)
        result["also_test"] = {
            "data": cifar.source,
            "test_images": len(cifar.test_labels),
            "test_acc": accuracy,
            "scored_on": describe_hardware(device),
        }
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        default=str(FULL),
        help="CIFAR-10 to train on (default: the shared whole-CIFAR-10 JPEG copy)",
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
        "--epochs", type=positive_int, help="full: override the recipe's epochs (smoke runs)"
    )
    p.add_argument(
        "--aug-width", type=positive_int, default=64, help="aug: ResNet-18's width (smoke runs)"
    )
    p.add_argument(
        "--aug-epochs", type=positive_int, default=30, help="aug: epochs of every run (smoke runs)"
    )
    p.add_argument(
        "--trained-elsewhere",
        action="store_true",
        help="full, aug: take WORK's finished runs as a GPU session brought them back instead of training",
    )
    p.add_argument(
        "--checkpoint",
        default=str(SHIPPED),
        help="cam, tta: the model to explain or score (default: the shipped one, or WORK/resnet18/model.pt "
        "with --parts full)",
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help=f"after the parts: copy full's model.pt to {SHIPPED.relative_to(REPO)}, and full's log, "
        "aug's table and plot, cam's figures and curve record beside it, with the parts' records merged "
        "into the shipped bench record (what infer.py, cam.py and the report use on a fresh clone); "
        "tta's choice is written into the shipped model last",
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
        help="smoke runs only: train.py's --limit (a fixed random draw of N training "
        "and N/5 test images)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    work = Path(args.work)
    device = resolve_device(args.device)
    common = ["--data", args.data, "--seed", str(args.seed), "--device", args.device]
    if args.limit:
        common += ["--limit", str(args.limit)]
    changed = [
        f"--{name.replace('_', '-')}"
        for name in (
            "limit",
            "epochs",
            "also_test",
            "aug_width",
            "aug_epochs",
            "checkpoint",
            "deletion",
            "seed",
        )
        if getattr(args, name) != p.get_default(name)
    ]
    if Path(args.data).resolve() != FULL.resolve():
        changed.append("--data")
    if args.ship and changed:
        raise CLIError(f"--ship ships only the recipe's own runs, without {', '.join(changed)}")
    # cam and tta take the model this invocation trains, when it trains one, else --checkpoint.
    explained = (
        work / "resnet18" / "model.pt"
        if "full" in args.parts and args.checkpoint == str(SHIPPED)
        else args.checkpoint
    )
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
        epochs = ["--epochs", str(args.epochs)] if args.epochs else []
        if args.trained_elsewhere:
            result = adopted_run(work / "resnet18", args.also_test, device, recipe_only=args.ship)
        else:
            result = train.main(
                [*common, *epochs, "--also-test", args.also_test, "--out", str(work / "resnet18")]
            )
        if not args.limit:  # smoke runs: the whole test sets would cost more than the run
            result["exported_fp16_test_acc"] = exported_accuracy(
                work / "resnet18" / "model.pt",
                {"test": args.data, "also_test": args.also_test},
                device,
            )
        save("full", result)
    if "aug" in args.parts and args.trained_elsewhere:
        record = json.loads(
            require_file(work / "aug" / "aug_study.json", "the study's record").read_text()
        )
        if args.ship and (
            [r["preset"] for r in record["rows"]] != list(STUDY_PRESETS)
            or record["epochs"] != 30
            or record["arch"].get("width") != 64
        ):
            raise CLIError(
                f"{work / 'aug'} is not the study's budget (STUDY_PRESETS, 30 epochs, width 64): not shipped"
            )
    elif "aug" in args.parts:
        aug_study.main(
            [
                *common,
                *STUDY_ARGS,
                "--width",
                str(args.aug_width),
                "--epochs",
                str(args.aug_epochs),
                "--out",
                str(work / "aug"),
            ]
        )
    if "cam" in args.parts:
        cam.main(
            [
                "--checkpoint",
                str(explained),
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
        save("tta", test_time_flip(Path(explained), args.data, args.also_test, args.limit, device))
    if args.ship:
        ship(work, args.parts)
    return json.loads(bench_file.read_text()) if bench_file.is_file() else {}


if __name__ == "__main__":
    run_cli(main)
