"""Classify images into the CIFAR-10 classes with a linear probe (train.py) or zero-shot: OUT_CSV gets
`image_name,label` (label = class index 0..9, in CIFAR-10's order), written atomically.

    python -m p7_clip.infer --probe outputs/p7/probe/ViT-B-32/model.pt --images IMG_DIR --out pred.csv
    python -m p7_clip.infer --zeroshot --clip ViT-B-32=weights/ViT-B-32-openai --data cifar-10-batches-py --out pred.csv
    python -m p7_clip.infer --probe model.pt --images IMG_DIR --labels labels.csv --out pred.csv  # + accuracy

--images takes every image directly inside a folder (sorted by name); --data the test set of
cifar-10-batches-py/ or an .npz (rows named cifar_test_00000, ...), whose labels give the
accuracy. --labels is a CSV `image_name,label` (index or class name) for an image folder. The
probe knows its CLIP model; --clip overrides where its weights are (same architecture).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hw2_utils import (
    HelpFormatter,
    CIFAR10_CLASSES,
    CLIError,
    atomic_path,
    list_images,
    load_cifar10,
    open_rgb,
    positive_int,
    require_file,
    resolve_device,
    run_cli,
)
from p7_clip import zeroshot
from p7_clip.models import check_spec, encode_images, load_clip, parse_spec
from p7_clip.probe import load_probe, probe_predict


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--probe", metavar="PROBE_PT", help="a model.pt written by p7_clip/train.py")
    how.add_argument(
        "--zeroshot", action="store_true", help="zero-shot with --clip and the --design prompts"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", metavar="DIR", help="folder of images to classify")
    what.add_argument(
        "--data",
        help="CIFAR-10 (cifar-10-batches-py/ folder or .npz): classify its test set",
    )
    p.add_argument("--out", required=True, metavar="OUT_CSV", help="predictions, image_name,label")
    p.add_argument(
        "--clip", metavar="ARCH=WEIGHTS", help="the CLIP model (required with --zeroshot)"
    )
    p.add_argument(
        "--design",
        default=zeroshot.ENSEMBLE,
        choices=list(zeroshot.DESIGNS),
        help="zero-shot prompts",
    )
    p.add_argument(
        "--labels", metavar="CSV", help="image_name,label for --images: print the accuracy"
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="with --data: the first N test images"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    return p.parse_args(argv)


def pick_spec(args: argparse.Namespace, probe: dict | None) -> str:
    """The CLIP model to encode with: --clip, else the one the probe was trained on."""
    if probe is None:
        if not args.clip:
            raise CLIError("--zeroshot needs --clip ARCH=WEIGHTS")
        return args.clip
    if args.clip and parse_spec(args.clip)[0] != parse_spec(probe["clip"])[0]:
        raise CLIError(
            f"--clip {args.clip} is not the architecture the probe was trained on ({probe['clip']})"
        )
    return args.clip or probe["clip"]


def read_labels(path: str | Path, names: list[str]) -> np.ndarray:
    """Class indices of `names` from a CSV image_name,label; a label is an index or a class name."""
    path = require_file(path, "labels CSV")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"image_name", "label"} <= set(reader.fieldnames or []):
            raise CLIError(f"{path} must be a CSV with header image_name,label")
        rows = {r["image_name"]: r["label"].strip() for r in reader}
    lookup = {
        **{str(i): i for i in range(len(CIFAR10_CLASSES))},
        **{c: i for i, c in enumerate(CIFAR10_CLASSES)},
    }
    missing = [n for n in names if n not in rows]
    if missing:
        raise CLIError(f"{path} has no label for {len(missing)} image(s), e.g. {missing[0]}")
    bad = [rows[n] for n in names if rows[n] not in lookup]
    if bad:
        raise CLIError(f"{path}: label {bad[0]!r} is neither 0..9 nor a CIFAR-10 class name")
    return np.array([lookup[rows[n]] for n in names])


def load_inputs(
    args: argparse.Namespace,
) -> tuple[list[str], Sequence, Callable, np.ndarray | None]:
    """(row names, images, loader that turns one into a PIL image, true labels or None)."""
    if args.data:
        from PIL import Image

        images, labels = load_cifar10(args.data, "test", args.limit)
        return [f"cifar_test_{i:05d}" for i in range(len(images))], images, Image.fromarray, labels
    files = list_images(args.images)
    names = [f.name for f in files]
    return names, files, open_rgb, read_labels(args.labels, names) if args.labels else None


def write_predictions(path: str | Path, names: list[str], preds: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_name", "label"])
            writer.writerows(zip(names, preds.tolist()))


def main(argv=None) -> np.ndarray:
    args = parse_args(argv)
    if args.labels and not args.images:
        raise CLIError("--labels goes with --images (the CIFAR test set carries its own labels)")
    probe = load_probe(args.probe) if args.probe else None
    spec = pick_spec(args, probe)
    check_spec(spec)
    names, images, load, labels = load_inputs(args)
    clip = load_clip(spec, resolve_device(args.device))
    features = encode_images(clip, images, args.batch_size, load=load, desc=clip.name)
    if probe is not None:
        preds = probe_predict(probe, features.numpy())
    else:
        class_emb = zeroshot.class_embeddings(clip, CIFAR10_CLASSES, zeroshot.DESIGNS[args.design])
        preds = zeroshot.predict(features, class_emb).numpy()
    write_predictions(args.out, names, preds)
    method = f"probe {args.probe}" if probe is not None else f"zero-shot '{args.design}'"
    print(f"wrote {len(names)} predictions to {args.out} ({clip.name}, {method})")
    if labels is not None:
        print(
            f"accuracy {float((preds == labels).mean()):.4f} ({int((preds == labels).sum())}/{len(labels)})"
        )
    return preds


if __name__ == "__main__":
    run_cli(main)
