"""MSE between generated and ground-truth images, as the course grades Problem 2 (DDIM).

    python -m evaluation.ddim_mse --pred OUT --gt ../hw2_data/face/GT

Files are paired by name. Each pair is compared as uint8 RGB arrays on the 0-255 scale:
the per-image MSE is the mean squared difference over all pixels and channels, and the
score is the mean of the per-image values. A file without a partner, or a pair whose
sizes differ, is an error.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from hw2_utils import HelpFormatter, CLIError, list_images, open_rgb, run_cli
from evaluation.common import check_same_names


def mse_dirs(pred: str | os.PathLike, gt: str | os.PathLike) -> dict:
    """{'mse': mean over images, 'per_image': {file name: MSE}} for same-named images."""
    pred_files = {p.name: p for p in list_images(pred, "prediction folder")}
    gt_files = {p.name: p for p in list_images(gt, "ground-truth folder")}
    check_same_names(pred_files, gt_files, f"prediction folder {pred}", f"ground-truth folder {gt}")
    per_image = {}
    for name in sorted(gt_files):
        a = np.asarray(open_rgb(pred_files[name]), dtype=np.float64)
        b = np.asarray(open_rgb(gt_files[name]), dtype=np.float64)
        if a.shape != b.shape:
            raise CLIError(
                f"{name}: prediction is {a.shape[1]}x{a.shape[0]} but ground truth is {b.shape[1]}x{b.shape[0]}"
            )
        per_image[name] = float(np.mean((a - b) ** 2))
    return {"mse": float(np.mean(list(per_image.values()))), "per_image": per_image}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pred", required=True, help="folder of generated images")
    p.add_argument(
        "--gt", required=True, help="folder of ground-truth images with the same file names"
    )
    p.add_argument("--per-image", action="store_true", help="also print each image's MSE")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = mse_dirs(args.pred, args.gt)
    if args.per_image:
        for name, value in result["per_image"].items():
            print(f"{name}: {value:.4f}")
    print(f"MSE = {result['mse']:.4f} over {len(result['per_image'])} images")
    return result


if __name__ == "__main__":
    run_cli(main)
