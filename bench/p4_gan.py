"""P4 benchmarks. Each command prints its numbers and, with --json, saves them together with
the command and the hardware; p4_gan/report.py reads those files.

    # a short real run of both models on the 24 train faces (CPU, one thread): loss trends,
    # seconds per step, and the face rate of 100 images from each result
    OMP_NUM_THREADS=1 python bench/p4_gan.py smoke --data-root ../shared/data/hw2_data/face --out /tmp/p4_smoke --json runs/p4/smoke.json
    # FID against val and the face-recognition rate of a folder (run.sh's output, or real faces
    # to check the evaluation pipeline; FID needs --ref and pytorch-fid's Inception weights)
    python bench/p4_gan.py eval --images OUT --ref hw2_data/face/val \
        --fid-weights checkpoints/pt_inception-2015-12-05-6726825d.pth --json runs/p4/eval_improved.json
    # FLOPs per training step (counted on meta tensors), seconds per step at batch 128 on DEVICE,
    # and seconds for run.sh's 1000 images from a full-size generator (random weights cost the same)
    python bench/p4_gan.py cost --device cuda --json runs/p4/cost.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

# This script shares its name with the package it measures: take bench/ off the import
# path so `import p4_gan` finds the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from evaluation.face_rate import face_rate  # noqa: E402
from evaluation.fid import fid_from_dirs  # noqa: E402
from hw2_utils import atomic_path, ensure_writable_dir, resolve_device, run_cli  # noqa: E402
from p4_gan import infer, train  # noqa: E402
from p4_gan.figures import plot_curves, series  # noqa: E402
from p4_gan.pipeline import generate, load_generator, save_generator, with_standing_stats, write_images  # noqa: E402

MODELS = tuple(train.PRESETS)
COURSE_TRAIN_FACES = 38_464  # hw2_data/face/train in the course data


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}), torch threads: {torch.get_num_threads()}"


def trainer_for(model: str, device: torch.device, batch_size: int):
    """A full-size trainer of `model` with train.py's defaults."""
    args = train.parse_args(["--model", model, "--batch-size", str(batch_size)])
    return train.build_trainer(args, device, torch.float32, rank=0)


def window_means(path: Path, key: str, fraction: float = 0.2) -> tuple[float, float]:
    """Mean of `key` over the first and over the last `fraction` of log rows."""
    _, values = series(path, "step", key)
    k = max(1, round(len(values) * fraction))
    return sum(values[:k]) / k, sum(values[-k:]) / k


def cmd_smoke(args) -> dict:
    torch.manual_seed(args.seed)
    result = {"hardware": hardware(torch.device("cpu")), "data": str(args.data_root), "epochs": args.epochs,
              "batch_size": args.batch_size, "models": {}}
    for model in args.models:
        run = Path(args.out) / model
        train.main(["--model", model, "--data-root", str(args.data_root), "--out", str(run), "--no-resume",
                    "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                    "--fid-every", "0", "--sample-every", "0", "--ckpt-every", str(10 ** 9), "--log-every", "1",
                    "--device", "cpu"])
        log = run / "log.csv"
        steps, seconds = series(log, "step", "seconds")
        summary = {"steps": int(steps[-1]), "seconds_per_step": seconds[-1] / steps[-1]}
        for key in ("d_loss", "g_loss", "d_real", "d_fake"):
            first, last = window_means(log, key)
            summary[key] = {"first_20pct": first, "last_20pct": last}
        summary["all_finite"] = all(math.isfinite(v) for key in ("d_loss", "g_loss") for v in series(log, "step", key)[1])
        generator, _ = load_generator(run / "generator.pt")
        samples = ensure_writable_dir(run / f"samples_{args.n}")
        write_images(generate(generator, args.n, infer.SEED), samples)
        rate = face_rate(samples)
        summary.update(face_rate=rate["rate"], one_face=rate["one_face"], images=rate["total"],
                       curves=str(plot_curves(run)), grid=str(run / "samples" / f"epoch{args.epochs:04d}.png"))
        result["models"][model] = summary
        print(f"{model}: {json.dumps(summary, indent=2)}")
    return result


def cmd_eval(args) -> dict:
    result = {"images": str(args.images)}
    rate = face_rate(args.images)
    result.update(face_rate=rate["rate"], one_face=rate["one_face"], total=rate["total"])
    print(f"face rate: {100 * rate['rate']:.2f}% ({rate['one_face']}/{rate['total']})")
    if args.ref:
        device = resolve_device(args.device)
        result.update(ref=str(args.ref), fid=fid_from_dirs(args.images, args.ref, args.fid_weights, device=str(device)),
                      hardware=hardware(device))
        print(f"FID vs {args.ref}: {result['fid']:.3f}")
    return result


def cmd_cost(args) -> dict:
    device = resolve_device(args.device)
    result = {"hardware": hardware(device), "batch_size": args.batch_size, "models": {}}
    real = torch.rand(args.batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for model in MODELS:
        meta = trainer_for(model, torch.device("meta"), args.batch_size)  # shapes only: counts cost no compute
        with FlopCounterMode(display=False) as d_count:
            meta.d_step(real.to("meta"))
        with FlopCounterMode(display=False) as g_count:
            meta.g_step(args.batch_size)
        trainer = trainer_for(model, device, args.batch_size)
        times = []
        for _ in range(args.repeats + 1):  # the first iteration warms up (cuDNN autotuning, allocations)
            start = time.perf_counter()
            trainer.d_step(real.to(device))
            trainer.g_step(args.batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        per_step = sum(times[1:]) / args.repeats
        result["models"][model] = {"gflop_d_step": d_count.get_total_flops() / 1e9,
                                   "gflop_g_step": g_count.get_total_flops() / 1e9,
                                   "seconds_per_iteration": per_step,
                                   "hours_for_default_epochs_extrapolated":
                                       per_step * (COURSE_TRAIN_FACES // args.batch_size) * train.DEFAULTS["epochs"] / 3600}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_generator(Path(tmp) / "g.pt", with_standing_stats(trainer_for("dcgan", torch.device("cpu"), 1).G), {})
        start = time.perf_counter()
        infer.main([str(Path(tmp) / "out"), "--checkpoint", str(Path(tmp) / "g.pt"), "--device", str(device)])
        result["infer_1000_seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=2))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("smoke", help="short real training of both models on CPU, with loss trends and face rate")
    s.add_argument("--data-root", required=True, help="folder with train/ (e.g. ../shared/data/hw2_data/face)")
    s.add_argument("--out", required=True, help="run folders OUT/dcgan and OUT/improved (replaced)")
    s.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--batch-size", type=int, default=12)
    s.add_argument("--n", type=int, default=100, help="images generated for the face rate")
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("eval", help="face rate (and FID with --ref) of an image folder")
    s.add_argument("--images", required=True)
    s.add_argument("--ref", help="reference folder or .npz statistics for FID (e.g. hw2_data/face/val)")
    s.add_argument("--fid-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: download)")
    s.add_argument("--device", default="auto")
    s = sub.add_parser("cost", help="FLOPs and measured seconds per training iteration; inference seconds")
    s.add_argument("--batch-size", type=int, default=train.DEFAULTS["batch_size"])
    s.add_argument("--repeats", type=int, default=3, help="timed iterations after one warm-up")
    s.add_argument("--device", default="auto")
    for s in sub.choices.values():
        s.add_argument("--json", help="also save the numbers here (p4_gan/report.py reads runs/p4/*.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = {"smoke": cmd_smoke, "eval": cmd_eval, "cost": cmd_cost}[args.command](args)
    if args.json:
        result = {"command": shlex.join(["python", "bench/p4_gan.py", *(sys.argv[1:] if argv is None else argv)]), **result}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"saved {args.json}")
    return result


if __name__ == "__main__":
    run_cli(main)
