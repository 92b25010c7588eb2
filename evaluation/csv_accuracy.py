"""Accuracy of a classification CSV against the ground truth (DANN, image classification).

    python -m evaluation.csv_accuracy PRED.csv ../hw2_data/digits/usps/val.csv

Both files have the header `image_name,label`. Rows are joined on image_name, so their
order does not matter; a name found in only one file, a repeated name or a label that is
not an integer is an error that names the row.
"""

from __future__ import annotations

import argparse
import os

from hw2_utils import read_label_csv, run_cli
from evaluation.common import check_same_names


def csv_accuracy(pred_csv: str | os.PathLike, gt_csv: str | os.PathLike) -> dict:
    """{'acc', 'correct', 'total'} over the rows of the ground truth."""
    pred = read_label_csv(pred_csv, "prediction CSV")
    gt = read_label_csv(gt_csv, "ground-truth CSV")
    check_same_names(pred, gt, str(pred_csv), str(gt_csv))
    correct = sum(pred[name] == label for name, label in gt.items())
    return {"acc": correct / len(gt), "correct": correct, "total": len(gt)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("pred", help="predictions: image_name,label")
    p.add_argument("gt", help="ground truth: image_name,label")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = csv_accuracy(args.pred, args.gt)
    print(f"accuracy = {result['acc']:.4f} (correct/total = {result['correct']}/{result['total']})")
    return result


if __name__ == "__main__":
    run_cli(main)
