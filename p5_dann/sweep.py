"""P5's sweep under an unsupervised selection protocol, fixed before any run: every row of ROWS
trained on one scenario (default the whole MNIST-M, 59,001 labelled -> USPS train, 7,291 images,
labels unused), and one model chosen among them with no target label read.

    python -m p5_dann.sweep --out outputs/p5/sweep            # every row, then the choice
    python -m p5_dann.sweep --rows source_only dann --epochs 1 --out /tmp/p5   # others go to train.py
    python -m bench.p5_dann --sweep outputs/p5/sweep          # then: target val, read once per row

1. Each row trains with p5_dann/train.py in OUT/<target>_<row>/, which scores every epoch by SND,
   DEV and source val accuracy (p5_dann/selection.py; target *train* images and source labels
   only), keeps each epoch as epoch_NN.pt and exports as model.pt the epoch SND ranks first.
   `target_only` selects on 10% of the target train images held out.
2. The chosen model is the adapted row (not `target_only`) whose exported epoch has the highest
   SND: the criterion chooses the method and lambda too, not only the epoch.
OUT becomes the choice's run folder: OUT/model.pt (the chosen row's model.pt) and OUT/result.json
(every row's per-epoch scores and the choice). Re-running resumes every unfinished row. Shipping
is a copy by hand, see p5_dann/checkpoints/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from hw2_utils import (
    save_selection,
    HelpFormatter,
    CLIError,
    atomic_path,
    command_line,
    load_torch_file,
    require_dir,
    run_cli,
)
from p5_dann import train
from p5_dann.selection import CRITERIA, best_epoch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DIGITS, MNISTM_FULL = SHARED / "hw2_data" / "digits", SHARED / "mnistm_full" / "digits" / "mnistm"
FIXMATCH = ["--mode", "dann", "--consistency-weight", "1"]
# name -> (what it is, train.py arguments). Every row but target_only is a candidate.
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
    # 6,562 USPS images (90% of train) make 51 steps an epoch: 20 epochs give the bound a
    # comparable number of steps
    "target_only": (
        "upper bound: target labels (epoch chosen on held-out USPS train)",
        ["--mode", "target_only", "--epochs", "20"],
    ),
}
# the criterion that chooses each row's epoch and the row (p5_dann/selection.py says why)
CHOOSE_BY = "snd"


def row_folder(out: Path, target: str, name: str) -> Path:
    return out / f"{target}_{name}"


def epoch_scores(blob: dict) -> dict:
    """The epoch and selection scores an exported P5 model carries (train.py writes them)."""
    return {key: blob[key] for key in ("epoch", *CRITERIA) if key in blob}


def row_record(run: Path, name: str) -> dict:
    """A finished row as its run folder holds it: the epoch its model.pt is, every epoch's
    scores (epoch_NN.pt) and its training seconds (result.json)."""
    exported = load_torch_file(run / "model.pt", "the row's exported model")
    history = [
        epoch_scores(load_torch_file(path, "an epoch's model"))
        for path in sorted(run.glob("epoch_*.pt"))
    ]
    what, args = ROWS[name]
    return {
        "what": what,
        "args": args,
        # train.py's choice of epoch: on held-out target train images for the upper bound
        "select": "source_val_acc" if exported["mode"] == "target_only" else CHOOSE_BY,
        "selected": epoch_scores(exported),
        "history": history,
        "final": history[-1],
        "seconds": json.loads((run / "result.json").read_text())["seconds"],
    }


def choose(rows: dict[str, dict]) -> str | None:
    """The row, among those whose epoch CHOOSE_BY chose, whose chosen epoch CHOOSE_BY ranks first
    (a tie goes to the later row); None without such a row."""
    candidates = [
        {"row": name, CHOOSE_BY: row["selected"][CHOOSE_BY]}
        for name, row in rows.items()
        if row["select"] == CHOOSE_BY
    ]
    return best_epoch(candidates, CHOOSE_BY)["row"] if candidates else None


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--data", default=str(DIGITS), help="the course's digits layout (default: %(default)s)"
    )
    p.add_argument(
        "--source",
        default=f"mnistm={MNISTM_FULL}",
        help="train.py's --source (default: the whole MNIST-M, %(default)s)",
    )
    p.add_argument("--target", default="usps", help="default: %(default)s")
    p.add_argument("--out", default="outputs/p5/sweep", help="default: %(default)s")
    p.add_argument(
        "--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="default: every row"
    )
    return p.parse_known_args(argv)


def main(argv=None) -> dict:
    args, extra = parse_args(argv)  # anything else goes to train.py (e.g. --epochs, --device)
    if any(a.startswith("--max-s") for a in extra):
        # each row would get the whole budget, and the choice would be among unfinished rows
        raise CLIError("the sweep trains every row to its end: run without --max-seconds")
    data_root, out = require_dir(args.data, "digits data root"), Path(args.out)
    start = time.perf_counter()
    rows = {}
    for name in args.rows:
        run = row_folder(out, args.target, name)
        common = ["--source", args.source, "--target", args.target, "--data", str(data_root)]
        train.main([*ROWS[name][1], *common, "--out", str(run), *extra])
        rows[name] = row_record(run, name)
    chosen = choose(rows)
    if chosen is None:
        raise CLIError(f"no row among {', '.join(args.rows)} is chosen by {CHOOSE_BY}")
    with atomic_path(out / "model.pt") as tmp:
        shutil.copy(row_folder(out, args.target, chosen) / "model.pt", tmp)
    result = save_selection(
        out,
        len(rows),
        time.perf_counter() - start,
        recipe={
            "data": str(data_root),
            "source": args.source,
            "target": args.target,
            "rows": args.rows,
            "train_args": extra,
            "epochs": train.parse_args(extra).epochs,
        },
        metrics={
            "criterion": CHOOSE_BY,
            "rows": rows,
            "chosen": {"row": chosen, **rows[chosen]["selected"]},
        },
        command=command_line("p5_dann.sweep", argv),
        device=torch.device("cpu"),
    )
    print(
        f"{CHOOSE_BY} chose {chosen}, epoch {rows[chosen]['selected']['epoch']}: {out / 'model.pt'}"
    )
    return result


if __name__ == "__main__":
    run_cli(main)
