"""Predict digits for every image in a folder: IMG_DIR -> OUT_CSV with `image_name,label`.

    python p5_dann/infer.py IMG_DIR OUT_CSV                 # target read from the path (usps / svhn)
    python p5_dann/infer.py IMG_DIR OUT_CSV --target usps --checkpoint runs/p5/usps_dann/best.pt
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from hw2_utils import CLIError, atomic_path, list_images, progress, resolve_device, run_cli
from p5_dann.data import load_image
from p5_dann.model import DANN

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
TARGETS = ("usps", "svhn")


def pick_target(img_dir: Path, target: str | None) -> str:
    if target:
        return target
    found = [t for t in TARGETS if t in str(img_dir.resolve()).lower()]
    if len(found) != 1:
        raise CLIError(f"cannot tell the target domain from {img_dir}: pass --target usps or --target svhn")
    return found[0]


def load_checkpoint(path: Path, device: torch.device) -> tuple[DANN, dict]:
    if not path.is_file():
        raise CLIError(f"checkpoint not found: {path} (train it: python bench/p5_dann.py --ship, "
                       "or python p5_dann/train.py --mode dann --target <target>)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = DANN()
        model.load_state_dict(blob["state_dict"])
    except Exception as e:  # any unreadable or foreign file is a user error here
        raise CLIError(f"{path} is not a P5 checkpoint ({type(e).__name__})") from None
    return model.to(device).eval(), blob


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("img_dir")
    p.add_argument("out_csv")
    p.add_argument("--target", choices=TARGETS, help="default: read from IMG_DIR's path")
    p.add_argument("--checkpoint", help="default: p5_dann/checkpoints/mnistm_<target>_dann.pt")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    files = list_images(args.img_dir)
    device = resolve_device(args.device)
    ckpt = Path(args.checkpoint) if args.checkpoint else CHECKPOINTS / f"mnistm_{pick_target(Path(args.img_dir), args.target)}_dann.pt"
    model, _ = load_checkpoint(ckpt, device)
    labels = []
    with torch.no_grad():
        for start in progress(range(0, len(files), args.batch_size), desc="predict"):
            x = torch.stack([load_image(f) for f in files[start:start + args.batch_size]])
            labels += model.classify(x.to(device)).argmax(1).tolist()
    with atomic_path(args.out_csv) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_name", "label"])
            writer.writerows((path.name, label) for path, label in zip(files, labels))
    print(f"wrote {len(files)} predictions to {args.out_csv}")


if __name__ == "__main__":
    run_cli(main)
