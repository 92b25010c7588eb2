"""Accuracy of a classification CSV against the ground truth (DANN, image classification).

    python -m evaluation.csv_accuracy PRED.csv ../hw2_data/digits/usps/val.csv
    python -m evaluation.csv_accuracy PRED.csv ../shared/data/hw2_data/digits/usps/val.csv --gt-rows-only

Both files have the header `image_name,label`. Rows are joined on image_name, so their
order does not matter; a name found in only one file, a repeated name or a label that is
not an integer is an error that names the row. --gt-rows-only scores the ground truth's rows
and ignores predictions of other images (saying how many): the shared USPS folder holds the
train and val images together, so predictions for the whole folder include 7,291 train rows.
"""

from __future__ import annotations

import argparse
import os

from hw2_utils import HelpFormatter, read_label_csv, run_cli
from evaluation.common import check_same_names


def csv_accuracy(
    pred_csv: str | os.PathLike, gt_csv: str | os.PathLike, gt_rows_only: bool = False
) -> dict:
    """{'acc', 'correct', 'total', 'ignored'} over the rows of the ground truth; `ignored`
    counts the predictions of images the ground truth does not list (an error unless
    `gt_rows_only`)."""
    pred = read_label_csv(pred_csv, "prediction CSV")
    gt = read_label_csv(gt_csv, "ground-truth CSV")
    scored = {name: pred[name] for name in gt if name in pred} if gt_rows_only else pred
    check_same_names(scored, gt, str(pred_csv), str(gt_csv))
    correct = sum(pred[name] == label for name, label in gt.items())
    ignored = len(pred) - len(scored)
    return {"acc": correct / len(gt), "correct": correct, "total": len(gt), "ignored": ignored}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("pred", help="predictions: image_name,label")
    p.add_argument("gt", help="ground truth: image_name,label")
    p.add_argument(
        "--gt-rows-only",
        action="store_true",
        help="score only the images the ground truth lists, ignoring other predictions "
        "(by default a prediction the ground truth lacks is an error)",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = csv_accuracy(args.pred, args.gt, args.gt_rows_only)
    ignored = (
        f"; {result['ignored']} predictions of other images ignored" if result["ignored"] else ""
    )
    print(
        f"accuracy = {result['acc']:.4f} (correct/total = {result['correct']}/{result['total']}{ignored})"
    )
    return result


if __name__ == "__main__":
    run_cli(main)
