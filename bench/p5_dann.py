"""P5 benchmark on the real data under an unsupervised selection protocol: the whole MNIST-M
(train, 59,001 labelled; its 9,001 test images are the source val) -> USPS (train, 7,291
images, labels unused), evaluated on USPS val (2,007).

    python -m bench.p5_dann                  # writes outputs/p5/p5_bench.json (+ the runs)
    python -m bench.p5_dann --ship           # also writes the shipped model and this JSON to p5_dann/checkpoints/

The protocol, fixed before any run:
1. Each row trains with p5_dann/train.py, which scores every epoch by SND, DEV and source val
   accuracy (p5_dann/selection.py; target *train* images and source labels only) and keeps
   the epoch SND ranks first. `target_only` selects on 10% of USPS train held out.
2. The shipped model is the adapted row (not `target_only`) whose SND-selected epoch has the
   highest SND: the criterion chooses the method and lambda too, not only the epoch.
3. Only then is USPS val read: once per row, every epoch's checkpoint scored, so the record
   can show what each criterion's choice is worth beside the oracle (the best epoch by USPS
   val, a row never shipped). AdaBN's column re-estimates BatchNorm statistics on USPS train.
Finally p5_dann/infer.py (what run.sh calls) runs over the USPS val images with the shipped
model and its CSV is checked against the labels. Re-running resumes every unfinished run.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import torch

from hw2_utils import CLIError, atomic_path, command_line, describe_hardware, require_dir, run_cli
from p5_dann import infer, train
from p5_dann.data import load_split
from p5_dann.model import adapt_batchnorm
from p5_dann.selection import CRITERIA, best_epoch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DIGITS, MNISTM_FULL = SHARED / "hw2_data" / "digits", SHARED / "mnistm_full" / "digits" / "mnistm"
FIXMATCH = ["--mode", "dann", "--consistency-weight", "1"]
# name -> (what it is, train.py arguments). Every row but target_only is a candidate for shipping.
ROWS = {
    "source_only": ("lower bound: source labels only", ["--mode", "source_only"]),
    "dann": ("DANN (Ganin et al. 2016)", ["--mode", "dann"]),
    "dann_entropy": (
        "DANN + target entropy 0.1 (Grandvalet & Bengio 2004)",
        ["--mode", "dann", "--entropy-weight", "0.1"],
    ),
    "dann_fixmatch": ("DANN + FixMatch consistency on the target (Sohn et al. 2020)", FIXMATCH),
    # lambda_max around the default (0.15), for the criterion to choose from
    "dann_fixmatch_lambda0.05": ("the same, lambda_max 0.05", [*FIXMATCH, "--lambda-max", "0.05"]),
    "dann_fixmatch_lambda0.5": ("the same, lambda_max 0.5", [*FIXMATCH, "--lambda-max", "0.5"]),
    # 6,562 USPS images (90% of train) make 51 steps an epoch: 20 epochs give the bound a comparable number of steps
    "target_only": (
        "upper bound: target labels (epoch chosen on held-out USPS train)",
        ["--mode", "target_only", "--epochs", "20"],
    ),
}
# the criterion that chooses each row's epoch and the shipped row (p5_dann/selection.py says why)
SHIP_BY = "snd"


def check_predictions(data_root: Path, target: str, checkpoint: Path, work: Path) -> dict:
    """run.sh's code path on the val images: seconds, and accuracy of the CSV it writes."""
    with open(data_root / target / "val.csv", newline="") as f:
        labels = {r["image_name"]: int(r["label"]) for r in csv.DictReader(f)}
    images = work / f"{target}_val_images"
    images.mkdir(parents=True, exist_ok=True)
    for name in labels:
        if not (images / name).is_symlink():
            (images / name).symlink_to((data_root / target / "data" / name).resolve())
    out_csv = work / f"{target}_val_pred.csv"
    start = time.time()
    infer.main(
        [
            str(images),
            str(out_csv),
            "--target",
            target,
            "--checkpoint",
            str(checkpoint),
            "--device",
            "cpu",
        ]
    )
    seconds = time.time() - start
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if sorted(r["image_name"] for r in rows) != sorted(labels):
        raise CLIError(f"{out_csv} does not list exactly the {len(labels)} val images")
    correct = sum(int(r["label"]) == labels[r["image_name"]] for r in rows)
    return {"images": len(rows), "accuracy": correct / len(rows), "seconds": round(seconds, 1)}


def target_val_by_epoch(run: Path, epochs: int, target_val: tuple) -> list[float]:
    """USPS val accuracy of each epoch's checkpoint: the one read of the target's labels per row."""
    return [
        train.accuracy(
            infer.load_checkpoint(run / f"epoch_{e:02d}.pt", torch.device("cpu"))[0],
            *target_val,
            torch.device("cpu"),
        )
        for e in range(1, epochs + 1)
    ]


def adabn_accuracy(checkpoint: Path, target_dir: Path, target_val: tuple) -> float:
    """The checkpoint scored with AdaBN statistics of the unlabelled target train images."""
    model, _ = infer.load_checkpoint(checkpoint, torch.device("cpu"))
    model = adapt_batchnorm(model, load_split(target_dir, "train")[0], torch.device("cpu"))
    return train.accuracy(model, *target_val, torch.device("cpu"))


def score_row(result: dict, accuracies: list[float]) -> dict:
    """What each criterion's choice of epoch scores on target val, beside the oracle's."""
    by = {}
    for c in (c for c in CRITERIA if c in result["history"][0]):
        chosen = best_epoch(result["history"], c)
        by[c] = {
            "epoch": chosen["epoch"],
            "score": chosen[c],
            "target_val_acc": accuracies[chosen["epoch"] - 1],
        }
    oracle = max(range(len(accuracies)), key=lambda i: (accuracies[i], i))
    by["oracle"] = {"epoch": oracle + 1, "target_val_acc": accuracies[oracle]}
    return by


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(DIGITS), help="the course's digits layout (usps/, ...)")
    p.add_argument(
        "--source",
        default=f"mnistm={MNISTM_FULL}",
        help="train.py's --source (default: the whole MNIST-M)",
    )
    p.add_argument("--target", default="usps")
    p.add_argument("--work", default="outputs/p5", help="runs and p5_bench.json")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument(
        "--ship",
        action="store_true",
        help="copy the criterion's choice and p5_bench.json to p5_dann/checkpoints/ (what run.sh and the "
        "report use); needs every row",
    )
    # anything else goes to train.py (e.g. --epochs, --device)
    args, extra = p.parse_known_args(argv)
    if args.ship and set(args.rows) != set(ROWS):
        raise CLIError("--ship compares every row: drop --rows")
    data_root, work = require_dir(args.data, "digits data root"), Path(args.work)
    results = {}
    for name in args.rows:  # 1. train and select, no target label read
        what, row_args = ROWS[name]
        results[name] = {
            "what": what,
            "args": row_args,
            **train.main(
                [
                    *row_args,
                    "--source",
                    args.source,
                    "--target",
                    args.target,
                    "--data",
                    str(data_root),
                    "--out",
                    str(work / f"{args.target}_{name}"),
                    *extra,
                ]
            ),
        }
    candidates = {n: r for n, r in results.items() if r["select"] == SHIP_BY}
    # 2. the best of the rows' chosen epochs, by the same criterion
    shipped = (
        best_epoch(
            [{"row": n, SHIP_BY: r["selected"][SHIP_BY]} for n, r in candidates.items()], SHIP_BY
        )["row"]
        if candidates
        else None
    )

    # 3. the target labels, read after every choice is made
    target_val = load_split(data_root / args.target, "val")
    for name, r in results.items():
        run = work / f"{args.target}_{name}"
        accuracies = target_val_by_epoch(run, len(r["history"]), target_val)
        r["selected_by"] = score_row(r, accuracies)
        r["target_val_acc_adabn"] = adabn_accuracy(
            run / "model.pt", data_root / args.target, target_val
        )
        r["last"] = {"epoch": len(accuracies), "target_val_acc": accuracies[-1]}
        chosen = r["selected_by"][r["select"]]
        print(
            f"{name}: {r['select']} chose epoch {chosen['epoch']} -> target val {chosen['target_val_acc']:.4f} "
            f"(oracle {r['selected_by']['oracle']['target_val_acc']:.4f} at epoch "
            f"{r['selected_by']['oracle']['epoch']}), {r['seconds']:.0f} s"
        )
    record = {
        "command": command_line("bench.p5_dann", argv),
        "hardware": describe_hardware(torch.device("cpu")),
        "source": args.source,
        "target": args.target,
        "epochs": train.parse_args(extra).epochs,
        "criterion": SHIP_BY,
        "rows": results,
    }
    if shipped:
        run = work / f"{args.target}_{shipped}"
        record["shipped"] = {
            "row": shipped,
            "selected_by": SHIP_BY,
            **results[shipped]["selected_by"][SHIP_BY],
        }
        with atomic_path(run / "shipped.pt") as tmp:  # model.pt is the epoch the criterion chose
            shutil.copy(run / "model.pt", tmp)
        record["inference"] = {
            "row": shipped,
            "adabn": False,
            **check_predictions(data_root, args.target, run / "shipped.pt", work),
        }
    with atomic_path(work / "p5_bench.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    if args.ship:
        infer.CHECKPOINTS.mkdir(exist_ok=True)
        for src, name in (
            (run / "shipped.pt", f"mnistm_{args.target}_dann.pt"),
            (work / "p5_bench.json", f"mnistm_{args.target}_bench.json"),
        ):
            with atomic_path(infer.CHECKPOINTS / name) as tmp:
                shutil.copy(src, tmp)
    print(
        f"\n| MNIST-M -> {args.target.upper()} | SND's epoch | DEV's | source val's | oracle | SND | wall time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        by = r["selected_by"]
        cells = [
            f"{by[c]['target_val_acc']:.4f}" if c in by else "–"
            for c in ("snd", "dev", "source_val_acc", "oracle")
        ]
        score = f"{by['snd']['score']:.4f}" if "snd" in by else "–"
        print(
            f"| {name}{' (shipped)' if name == shipped else ''} | {' | '.join(cells)} | {score} "
            f"| {r['seconds']:.0f} s |"
        )
    if "inference" in record:
        i = record["inference"]
        print(
            f"\ninfer.py on {i['images']} val images: accuracy {i['accuracy']:.4f}, {i['seconds']:.1f} s"
        )


if __name__ == "__main__":
    run_cli(main)
