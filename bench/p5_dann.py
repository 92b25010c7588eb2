"""P5 benchmark on the real data: MNIST-M (train, 8000 labelled) -> USPS (train, 7291
images, labels unused), evaluated on USPS val (2007). Trains every row of the table below
with p5_dann/train.py, then times p5_dann/infer.py over the USPS val images with the
DANN model and checks its CSV against the labels.

    python -m bench.p5_dann                  # writes outputs/p5/p5_bench.json (+ the runs)
    python -m bench.p5_dann --ship           # also copies the DANN model and this JSON to p5_dann/checkpoints/

Each row's checkpoint is the epoch with the best *source* val accuracy (no target labels
are read for selection); the table gives its target val accuracy and the last epoch's.
Re-running resumes every unfinished run.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from hw2_utils import CLIError, atomic_path, command_line, require_dir, run_cli
from p5_dann import infer, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hw2_data" / "digits"
# name -> (what it is, train.py arguments)
ROWS = {
    "source_only": ("lower bound: source labels only", ["--mode", "source_only"]),
    "no_grl": ("ablation: DANN's per-domain batches, lambda = 0", ["--mode", "dann", "--lambda-max", "0"]),
    "dann": ("DANN", ["--mode", "dann"]),
    "dann_entropy": ("DANN + target entropy 0.1", ["--mode", "dann", "--entropy-weight", "0.1"]),
    "target_only": ("upper bound: target labels", ["--mode", "target_only"]),
}
SHIPPED = "dann_entropy"  # fixed before the runs; not picked by its target accuracy


def check_predictions(data_root: Path, target: str, checkpoint: Path, work: Path) -> dict:
    """run.sh's code path on the val images: seconds, and accuracy of the CSV it writes."""
    with open(data_root / target / "val.csv", newline="") as f:
        labels = {r["image_name"]: int(r["label"]) for r in csv.DictReader(f)}
    images = work / f"{target}_val_images"
    if not images.is_dir():
        images.mkdir(parents=True)
        for name in labels:
            (images / name).symlink_to((data_root / target / "data" / name).resolve())
    out_csv = work / f"{target}_val_pred.csv"
    start = time.time()
    infer.main([str(images), str(out_csv), "--target", target, "--checkpoint", str(checkpoint), "--device", "cpu"])
    seconds = time.time() - start
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if sorted(r["image_name"] for r in rows) != sorted(labels):
        raise CLIError(f"{out_csv} does not list exactly the {len(labels)} val images")
    correct = sum(int(r["label"]) == labels[r["image_name"]] for r in rows)
    return {"images": len(rows), "accuracy": correct / len(rows), "seconds": round(seconds, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(SHARED))
    p.add_argument("--target", default="usps")
    p.add_argument("--work", default="outputs/p5", help="runs and p5_bench.json")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--ship", action="store_true",
                   help=f"copy the {SHIPPED} model and p5_bench.json to p5_dann/checkpoints/ (what run.sh and the report use)")
    args, extra = p.parse_known_args(argv)  # anything else goes to train.py (e.g. --epochs, --device)
    if args.ship and SHIPPED not in args.rows:
        raise CLIError(f"--ship needs the {SHIPPED} row")
    data_root, work = require_dir(args.data_root, "digits data root"), Path(args.work)
    results = {}
    for name in args.rows:
        what, row_args = ROWS[name]
        result = train.main([*row_args, "--target", args.target, "--data-root", str(data_root),
                             "--out", str(work / f"{args.target}_{name}"), *extra])
        results[name] = {"what": what, "args": row_args, **result}
        print(f"{name}: selected epoch {result['selected']['epoch']} -> target val "
              f"{result['selected']['target_val_acc']:.4f} (last {result['final']['target_val_acc']:.4f}), "
              f"{result['seconds']:.0f} s")
    record = {"command": command_line("bench.p5_dann", argv),
              "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)",
              "source": "mnistm", "target": args.target, "epochs": train.parse_args(extra).epochs, "rows": results}
    if SHIPPED in results:
        best = work / f"{args.target}_{SHIPPED}" / "best.pt"
        record["inference"] = {"row": SHIPPED, **check_predictions(data_root, args.target, best, work)}
    with atomic_path(work / "p5_bench.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    if args.ship:
        infer.CHECKPOINTS.mkdir(exist_ok=True)
        shutil.copy(work / f"{args.target}_{SHIPPED}" / "best.pt", infer.CHECKPOINTS / f"mnistm_{args.target}_dann.pt")
        shutil.copy(work / "p5_bench.json", infer.CHECKPOINTS / f"mnistm_{args.target}_bench.json")
    print(f"\n| MNIST-M -> {args.target.upper()} | target val acc (epoch chosen by source val) | last epoch | wall time |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['selected']['target_val_acc']:.4f} | {r['final']['target_val_acc']:.4f} | "
              f"{r['seconds']:.0f} s |")
    if "inference" in record:
        i = record["inference"]
        print(f"\ninfer.py on {i['images']} val images: accuracy {i['accuracy']:.4f}, {i['seconds']:.1f} s")


if __name__ == "__main__":
    run_cli(main)
