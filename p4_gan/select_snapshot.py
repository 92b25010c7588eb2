r"""Choose a generator among a training run's snapshots by FID on training faces (the val faces
are never read: they are left for the final measurement, bench/p4_gan.py final).

    python -m p4_gan.select_snapshot RUN --data ../shared/data/celeba10k --out SEL

RUN is a p4_gan/train.py run folder with RUN/snapshots/generator_epochNNNN.pt (--snapshot-every
N; a GPU run trains with --fid-every 0 so that FID costs none of its time, and is scored here).
Each snapshot makes --fid-n images from --seed, quantised as run.sh's PNGs are, and is scored
against the first --fid-ref-n training faces (train.py's --fid-every measures the same). SEL
becomes the chosen generator's run folder: model.pt (the snapshot of the lowest FID, its bytes),
fid.csv (step,epoch,fid of every snapshot, as train.py writes it), log.csv (RUN's training log)
and result.json (the rows and the choice). Shipping it is a copy by hand, see
p4_gan/checkpoints/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from evaluation.fid import image_statistics, load_inception
from hw2_utils import (
    save_selection,
    HelpFormatter,
    CLIError,
    atomic_path,
    command_line,
    ensure_writable_dir,
    positive_int,
    require_dir,
    require_file,
    resolve_device,
    run_cli,
    seed_int,
)
from p4_gan.data import load_faces, split_source
from p4_gan.pipeline import load_generator
from p4_gan.train import measure_fid

CRITERION = "fid"  # lower is better: FID of the generated images against the training faces


def training_face_reference(data: str, n: int, weights: str | None, device: torch.device):
    """The Inception extractor, the number of training faces read and their statistics: the
    first `n` training faces of `data`, the reference that chooses among snapshots."""
    extractor = load_inception(weights, device)
    faces = load_faces(split_source(data, "train"), limit=n)
    return extractor, len(faces), image_statistics(faces, extractor, device=device)


def choose(rows: list[dict]) -> dict:
    """The row of the lowest FID (the earliest snapshot of equal ones)."""
    return min(rows, key=lambda row: row[CRITERION])


def write_fid_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(
            "step,epoch,fid\n" + "".join(f"{r['step']},{r['epoch']},{r['fid']:.4f}\n" for r in rows)
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run", help="a train.py run folder holding snapshots/generator_epochNNNN.pt")
    p.add_argument(
        "--data", required=True, help="folder with the training faces (train/ or train.npz)"
    )
    p.add_argument(
        "--out", required=True, help="the chosen generator's run folder (not RUN itself)"
    )
    p.add_argument(
        "--fid-n",
        type=positive_int,
        default=1000,
        help="generated images per FID (train.py's default; default: %(default)s)",
    )
    p.add_argument(
        "--fid-ref-n",
        type=positive_int,
        default=2000,
        help="training faces FID is measured against (train.py's default; default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="z of the generated images (train.py's --seed default; default: %(default)s)",
    )
    p.add_argument("--fid-weights", help="FID Inception weights (default: evaluation/fid.py's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = require_dir(args.run, "training run folder")
    if Path(args.out).resolve() == run.resolve():
        raise CLIError(f"--out must be another folder than RUN {run}: its log and result stay")
    snapshots = sorted((run / "snapshots").glob("generator_epoch*.pt"))
    if not snapshots:
        raise CLIError(
            f"no snapshots/generator_epochNNNN.pt in {run} (train with --snapshot-every)"
        )
    log = require_file(run / "log.csv", "the run's training log")
    device = resolve_device(args.device)
    start = time.perf_counter()
    extractor, n_faces, reference = training_face_reference(
        args.data, args.fid_ref_n, args.fid_weights, device
    )
    rows = []
    for path in snapshots:
        generator, meta = load_generator(path, device)
        fid = measure_fid(generator, extractor, reference, args.fid_n, args.seed, device)
        rows.append({"file": path.name, "step": meta["step"], "epoch": meta["epoch"], "fid": fid})
        print(f"epoch {meta['epoch']}: FID {fid:.2f} on {n_faces} training faces", flush=True)
    chosen = choose(rows)
    out = ensure_writable_dir(args.out)
    with atomic_path(out / "model.pt") as tmp:
        shutil.copy(run / "snapshots" / chosen["file"], tmp)
    with atomic_path(out / "log.csv") as tmp:
        shutil.copy(log, tmp)
    write_fid_csv(out / "fid.csv", rows)
    result = save_selection(
        out,
        len(rows),
        time.perf_counter() - start,
        recipe={
            "run": str(run),
            "data": args.data,
            "fid_n": args.fid_n,
            "fid_ref_n": n_faces,
            "seed": args.seed,
        },
        metrics={"criterion": f"lowest {CRITERION}", "rows": rows, "chosen": chosen},
        command=command_line("p4_gan.select_snapshot", argv),
        device=device,
    )
    print(f"chose epoch {chosen['epoch']} (FID {chosen['fid']:.2f}): {out / 'model.pt'}")
    return result


if __name__ == "__main__":
    run_cli(main)
