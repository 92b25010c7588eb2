"""Predict CIFAR-10 classes with a trained model: INPUT -> OUT_CSV with `image_name,label`.

    python -m p6_classification.infer IMG_DIR OUT_CSV                        # the shipped ResNet-18
    python -m p6_classification.infer IMG_DIR OUT_CSV --labels IMG_DIR/labels.csv
    python -m p6_classification.infer ../shared/data/cifar10_full OUT_CSV   # the CIFAR-10 test set
    python -m p6_classification.infer IMG_DIR OUT_CSV --checkpoint runs/p6/resnet18/model.pt

INPUT is a folder of images (any size; resized to 32x32), or CIFAR-10 itself (any source
hw2_utils.load_cifar10 reads), whose test images are named 00000.png, 00001.png, ... by index.
`label` is the class index (0 airplane ... 9 truck). Accuracy is printed when labels are
known: always for CIFAR-10, and for a folder given --labels (a CSV `image_name,label`).
--tta flip (the default, see TTA_DEFAULT) averages the logits of each image and its mirror
image; --tta none scores the plain model.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    list_images,
    positive_int,
    progress,
    resolve_device,
    run_cli,
)
from p6_classification.augment import build_preset
from p6_classification.data import load_cifar, load_images
from p6_classification.models import build_model


# The shipped model: train.py's default recipe on the whole CIFAR-10 (JPEG copy); README "P6".
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
SHIPPED = CHECKPOINTS / "resnet18_cifar10.pt"

# Test-time augmentations infer.py knows: the standard presets train on mirrored images, so a
# mirror image is as familiar to the model as the original and its logits a second opinion.
TTA = ("none", "flip")
# Chosen on the 5,000 val images of the shipped model by `python -m bench.p6_classification
# --parts tta` (the flip only if it scores higher on val, as it doubles inference); record: "tta"
# in p6_classification/checkpoints/p6_bench.json ("chosen").
TTA_DEFAULT = "flip"


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A train.py `model.pt` -> (model in eval mode, its metadata)."""
    path = Path(path)
    if not path.is_file():
        how = (
            "the shipped model comes with the repository; remake it with `python -m "
            "p6_classification.train --preset shipped --data ../shared/data/cifar10_full --out DIR`"
            if path == SHIPPED
            else "train one: `python -m p6_classification.train "
            "--data ../shared/data/cifar10_full --out DIR`, then use DIR/model.pt"
        )
        raise CLIError(f"checkpoint not found: {path} ({how})")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(meta["arch"], len(meta["classes"]))
        model.load_state_dict(meta["state_dict"])
    except CLIError:
        raise
    except Exception as e:  # any unreadable or foreign file is a user error here
        raise CLIError(f"{path} is not a P6 model.pt ({type(e).__name__}: {e})") from None
    return model.to(device).eval(), meta


def logits_with_tta(model: torch.nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """The model's logits for a normalised batch; with "flip", the mean of the batch's and its
    mirror image's logits."""
    logits = model(x)
    return (logits + model(x.flip(-1))) / 2 if tta == "flip" else logits


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    meta: dict,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    tta: str = "none",
) -> torch.Tensor:
    """Class indices for uint8 (N,3,32,32) images, with the checkpoint's eval transform and the
    test-time augmentation `tta` (one of TTA)."""
    transform = build_preset(meta["preset"], meta["mean"], meta["std"], len(meta["classes"])).eval
    out = [
        logits_with_tta(model, transform(x).to(device), tta).argmax(1).cpu()
        for x in progress(images.split(batch_size), desc="predict")
    ]
    return torch.cat(out)


def is_cifar10(source: Path) -> bool:
    """Whether `source` is one of hw2_utils.load_cifar10's layouts rather than an image folder."""
    return (
        source.suffix == ".npz"
        or source.name == "cifar-10-batches-py"
        or (source / "cifar-10-batches-py").is_dir()
        or (source / "test.npz").is_file()
    )


def read_labels(path: str | Path, names: list[str]) -> torch.Tensor:
    try:
        with open(path, newline="") as f:
            table = {row["image_name"]: int(row["label"]) for row in csv.DictReader(f)}
    except OSError as e:
        raise CLIError(f"cannot read --labels {path}: {e.strerror}") from None
    except (KeyError, TypeError, ValueError):
        raise CLIError(
            f"--labels {path} must be a CSV with columns image_name,label (integer class indices)"
        ) from None
    missing = [n for n in names if n not in table]
    if missing:
        raise CLIError(f"{path} has no label for {len(missing)} image(s), e.g. {missing[0]}")
    return torch.tensor([table[n] for n in names])


def main(argv=None) -> float | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "input", help="image folder, CIFAR-10 root, cifar-10-batches-py, or the .npz slice"
    )
    p.add_argument("out_csv")
    p.add_argument(
        "--checkpoint",
        default=str(SHIPPED),
        help="model.pt written by train.py / vit_finetune.py (default: the shipped ResNet-18)",
    )
    p.add_argument("--labels", help="for an image folder: CSV image_name,label to score against")
    p.add_argument(
        "--tta",
        choices=TTA,
        default=TTA_DEFAULT,
        help="test-time augmentation: flip averages each image's and its mirror's logits, none "
        "scores the plain model (default: %(default)s, chosen on val: TTA_DEFAULT in infer.py)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    source = Path(args.input)
    if is_cifar10(source):
        cifar = load_cifar(source)
        images, labels = cifar.test_images, cifar.test_labels
        names = [f"{i:05d}.png" for i in range(len(labels))]
    else:
        files = list_images(source)
        names = [f.name for f in files]
        labels = read_labels(args.labels, names) if args.labels else None
        images = load_images(files)
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    predictions = predict(model, meta, images, device, args.batch_size, args.tta)
    with atomic_path(args.out_csv) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_name", "label"])
            writer.writerows(zip(names, predictions.tolist()))
    flipped = (
        " (test-time flip: mean logits of each image and its mirror)" if args.tta == "flip" else ""
    )
    print(f"wrote {len(names)} predictions to {args.out_csv}{flipped}")
    if labels is None:
        return None
    accuracy = (predictions == labels).float().mean().item()
    print(f"accuracy {accuracy:.4f} ({int((predictions == labels).sum())}/{len(labels)})")
    return accuracy


if __name__ == "__main__":
    run_cli(main)
