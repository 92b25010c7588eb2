"""Predict digits for every image in a folder: IMG_DIR -> OUT_CSV with `image_name,label`.

python -m p5_dann.infer IMG_DIR OUT_CSV                 # target read from the path (usps / svhn); = bash p5_dann/run.sh
python -m p5_dann.infer IMG_DIR OUT_CSV --target usps --checkpoint runs/p5/usps_dann/model.pt
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from hw2_utils import (
    HelpFormatter,
    CLIError,
    check_not_input,
    atomic_path,
    check_output_path,
    error_summary,
    list_images,
    load_torch_file,
    positive_int,
    progress,
    resolve_device,
    run_cli,
)
from p5_dann.data import load_image
from p5_dann.model import DANN

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
TARGETS = ("usps", "svhn")


def pick_target(img_dir: Path, target: str | None) -> str:
    if target:
        return target
    found = [t for t in TARGETS if t in str(img_dir.resolve()).lower()]
    if len(found) != 1:
        raise CLIError(
            f"cannot tell the target domain from {img_dir}: pass --target usps or --target svhn"
        )
    return found[0]


def load_checkpoint(path: Path, device: torch.device) -> tuple[DANN, dict]:
    blob = load_torch_file(
        path,
        "P5 checkpoint",
        "train it: python -m p5_dann.sweep (then copy its model.pt), "
        "or python -m p5_dann.train --mode dann --target <target>",
    )
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        found = f"keys {sorted(blob)[:5]}" if isinstance(blob, dict) else f"a {type(blob).__name__}"
        raise CLIError(
            f"{path} is not a P5 checkpoint: expected a dict with a state_dict, found {found}"
        )
    model = DANN()
    state, expected = blob["state_dict"], model.state_dict()
    mismatches = [f"missing {k}" for k in expected if k not in state]
    mismatches += [f"unexpected {k}" for k in state if k not in expected]
    mismatches += [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and getattr(state[k], "shape", None) != v.shape
    ]
    if mismatches:  # another problem's weights, or another DANN architecture
        more = f", and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
        raise CLIError(
            f"{path} is not a P5 checkpoint: {len(mismatches)} keys do not match the DANN "
            f"({', '.join(mismatches[:3])}{more})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # keys and shapes match, the tensors do not (e.g. sparse ones)
        raise CLIError(f"{path} is not a P5 checkpoint ({error_summary(e)})") from None
    return model.to(device).eval(), blob


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("img_dir")
    p.add_argument("out_csv")
    p.add_argument("--target", choices=TARGETS, help="default: read from IMG_DIR's path")
    p.add_argument("--checkpoint", help="default: p5_dann/checkpoints/mnistm_<target>_dann.pt")
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    check_output_path(args.out_csv, folder=False)
    files = list_images(args.img_dir)
    ckpt = (
        Path(args.checkpoint)
        if args.checkpoint
        else CHECKPOINTS / f"mnistm_{pick_target(Path(args.img_dir), args.target)}_dann.pt"
    )
    check_not_input([args.out_csv], [ckpt, *files])
    device = resolve_device(args.device)
    model, _ = load_checkpoint(ckpt, device)
    labels = []
    with torch.no_grad():
        for start in progress(range(0, len(files), args.batch_size), desc="predict"):
            x = torch.stack([load_image(f) for f in files[start : start + args.batch_size]])
            labels += model.classify(x.to(device)).argmax(1).tolist()
    with atomic_path(args.out_csv) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_name", "label"])
            writer.writerows((path.name, label) for path, label in zip(files, labels))
    print(f"wrote {len(files)} predictions to {args.out_csv}")


if __name__ == "__main__":
    run_cli(main)
