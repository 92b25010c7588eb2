"""P5 benchmark: source-only / DANN / target-only for MNIST-M -> USPS on the real data,
with wall times. Selection is by source val (target labels unseen); both the selected and
the final epoch's target val accuracy are reported.

    python bench/p5_dann.py                       # writes outputs/p5/p5_bench.json
    python bench/p5_dann.py --ship                # also copies the models to p5_dann/checkpoints/
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and `p5_dann` would name
# this file instead of the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from hw2_utils import atomic_path, run_cli  # noqa: E402
from p5_dann import train  # noqa: E402
from p5_dann.infer import CHECKPOINTS  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hw2_data" / "digits"
MODES = ("source_only", "dann", "target_only")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(SHARED))
    p.add_argument("--target", default="usps")
    p.add_argument("--work", default="outputs/p5", help="runs and p5_bench.json")
    p.add_argument("--epochs", type=int, default=train.DEFAULTS["epochs"])
    p.add_argument("--ship", action="store_true", help="copy each mode's selected model to p5_dann/checkpoints/")
    args, extra = p.parse_known_args(argv)  # anything else goes to train.py (e.g. --gray, --device)
    work = Path(args.work)
    rows = {}
    for mode in MODES:
        result = train.main(["--mode", mode, "--target", args.target, "--data-root", args.data_root,
                             "--out", str(work / f"{args.target}_{mode}"), "--epochs", str(args.epochs), *extra])
        rows[mode] = result
        print(f"{mode}: selected epoch {result['selected']['epoch']} -> target val {result['selected']['target_val_acc']:.4f}"
              f" (final {result['final']['target_val_acc']:.4f}), {result['seconds']:.0f} s")
        if args.ship:
            CHECKPOINTS.mkdir(exist_ok=True)
            shutil.copy(work / f"{args.target}_{mode}" / "best.pt", CHECKPOINTS / f"mnistm_{args.target}_{mode}.pt")
    record = {"command": " ".join(["python bench/p5_dann.py", *(argv if argv is not None else sys.argv[1:])]),
              "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)", "target": args.target,
              "epochs": args.epochs, "modes": rows}
    with atomic_path(work / "p5_bench.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    print(f"\n| MNIST-M -> {args.target.upper()} | target val acc (selected by source val) | final epoch | wall time |")
    print("| --- | --- | --- | --- |")
    for mode, r in rows.items():
        print(f"| {mode} | {r['selected']['target_val_acc']:.4f} | {r['final']['target_val_acc']:.4f} | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    run_cli(main)
