"""P5 benchmark: the rows of a p5_dann/sweep.py run folder measured on the target's val images,
read here for the first time, after the sweep made every choice (step 3 of its protocol).

    python -m bench.p5_dann                          # outputs/p5/sweep -> outputs/p5/p5_bench.json
    python -m bench.p5_dann --sweep SWEEP --work outputs/p5 --data ../shared/data/hw2_data/digits

For every row, every epoch's checkpoint (epoch_NN.pt) is scored on target val once, so the record
can show what each criterion's choice of epoch is worth beside the oracle (the best epoch by
target val, never a choice); AdaBN's column is the row's model.pt with BatchNorm statistics
re-estimated on the target train images. Finally p5_dann/infer.py (what run.sh calls) runs over
the val images with the sweep's chosen model (SWEEP/model.pt) and its CSV is checked against the
labels. It only measures: WORK gets p5_bench.json and infer.py's CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    command_line,
    describe_hardware,
    require_dir,
    require_file,
    run_cli,
)
from p5_dann import infer, train
from p5_dann.data import load_split
from p5_dann.model import adapt_batchnorm
from p5_dann.selection import CRITERIA, best_epoch
from p5_dann.sweep import row_folder


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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--sweep",
        default="outputs/p5/sweep",
        help="a p5_dann/sweep.py run folder (default: %(default)s)",
    )
    p.add_argument(
        "--work", default="outputs/p5", help="where p5_bench.json goes (default: %(default)s)"
    )
    p.add_argument("--data", help="the digits layout holding the target (default: the sweep's)")
    args = p.parse_args(argv)
    sweep = require_dir(args.sweep, "sweep run folder")
    swept = json.loads(
        require_file(
            sweep / "result.json", "the sweep's result (p5_dann/sweep.py writes it)"
        ).read_text()
    )
    recipe, metrics = swept["recipe"], swept["metrics"]
    data_root = require_dir(args.data or recipe["data"], "digits data root")
    target, criterion, work = recipe["target"], metrics["criterion"], Path(args.work)
    # the target labels, read after every choice is made
    target_val = load_split(data_root / target, "val")
    rows = {}
    for name, row in metrics["rows"].items():
        run = row_folder(sweep, target, name)
        accuracies = target_val_by_epoch(run, len(row["history"]), target_val)
        rows[name] = {
            **row,
            "selected_by": score_row(row, accuracies),
            "target_val_acc_adabn": adabn_accuracy(
                run / "model.pt", data_root / target, target_val
            ),
            "last": {"epoch": len(accuracies), "target_val_acc": accuracies[-1]},
        }
        chosen, oracle = (rows[name]["selected_by"][c] for c in (row["select"], "oracle"))
        print(
            f"{name}: {row['select']} chose epoch {chosen['epoch']} -> target val "
            f"{chosen['target_val_acc']:.4f} (oracle {oracle['target_val_acc']:.4f} at epoch "
            f"{oracle['epoch']}), {row['seconds']:.0f} s"
        )
    chosen_row = metrics["chosen"]["row"]
    record = {
        "command": command_line("bench.p5_dann", argv),
        "hardware": describe_hardware(torch.device("cpu")),
        "sweep": {
            "folder": str(sweep),
            "command": swept.get("command"),
            "hardware": swept["hardware"],
        },
        "source": recipe["source"],
        "target": target,
        "epochs": recipe["epochs"],
        "criterion": criterion,
        "rows": rows,
        # the sweep's choice, the model that is shipped (the report reads this name)
        "shipped": {
            "row": chosen_row,
            "selected_by": criterion,
            **rows[chosen_row]["selected_by"][criterion],
        },
        "inference": {
            "row": chosen_row,
            "adabn": False,
            **check_predictions(data_root, target, sweep / "model.pt", work),
        },
    }
    with atomic_path(work / "p5_bench.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    print_table(record)
    return record


def print_table(record: dict) -> None:
    columns = "SND's epoch | DEV's | source val's | oracle | SND | wall time"
    print(f"\n| MNIST-M -> {record['target'].upper()} | {columns} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in record["rows"].items():
        by = r["selected_by"]
        cells = [
            f"{by[c]['target_val_acc']:.4f}" if c in by else "–"
            for c in ("snd", "dev", "source_val_acc", "oracle")
        ]
        score = f"{by['snd']['score']:.4f}" if "snd" in by else "–"
        shipped = " (shipped)" if name == record["shipped"]["row"] else ""
        print(f"| {name}{shipped} | {' | '.join(cells)} | {score} | {r['seconds']:.0f} s |")
    i = record["inference"]
    print(
        f"\ninfer.py on {i['images']} val images: accuracy {i['accuracy']:.4f}, {i['seconds']:.1f} s"
    )


if __name__ == "__main__":
    run_cli(main)
