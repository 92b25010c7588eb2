"""Digit accuracy of generated digits, as the course grades Problem 1 (conditional DDPM).

    python -m evaluation.digit_accuracy --folder OUT --checkpoint ../shared/data/grader/Classifier.pth
    python -m evaluation.digit_accuracy --folder OUT --checkpoint Classifier.pth --svhn-checkpoint svhn.pt2

OUT/mnistm/ (and OUT/svhn/) hold images whose label is the first character of the file
name (7_013.png -> 7). Each image is opened as RGB, resized to 28 (shorter side),
turned into a tensor and normalised with mean 0.5 / std 0.5, as the course grader does. The
course's transform keeps the aspect ratio, so a non-square image cannot be batched with the
others nor fed to the 28x28 LeNet there: it is refused here with one line, not scored otherwise.

MNIST-M is scored by the course's LeNet (Classifier.pth). The course's SVHN classifier (a
ResNet-34 that has to be downloaded) is not available here, so its architecture and
preprocessing are unknown: --svhn-checkpoint takes any 10-class classifier saved as a
.pt2 file with a dynamic batch size,
    torch.export.save(torch.export.export(model, (batch,), dynamic_shapes=({0: torch.export.Dim("n")},)), "svhn.pt2")
and feeds it the same preprocessed images as the MNIST-M model.
Without it the SVHN half is reported as skipped and no average is printed.
--usps-checkpoint scores OUT/svhn with the course LeNet trained on USPS instead, for checkpoints
whose second domain is USPS (the shipped P1 checkpoint: no SVHN exists on these machines).
"""

from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from hw2_utils import (
    HelpFormatter,
    CLIError,
    error_summary,
    list_images,
    load_torch_file,
    open_rgb,
    progress,
    require_dir,
    require_file,
    resolve_device,
    run_cli,
)

REPO = Path(__file__).resolve().parents[1]
# The course LeNet trained on USPS train by bench/p1_ddpm.py (USPS val accuracy, command and log in
# p1_ddpm/checkpoints/README.md): grades P1's second domain, USPS on these machines (no SVHN).
USPS_GRADER = REPO / "p1_ddpm" / "checkpoints" / "usps_grader_lenet.pt"

PREPROCESS = transforms.Compose(
    [
        transforms.Resize(28),
        transforms.ToTensor(),
        transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ]
)


class LeNet(nn.Module):
    """The course's MNIST-M grader; layer names match the keys of Classifier.pth."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


def load_mnistm_classifier(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    what: str = "MNIST-M classifier checkpoint",
    hint: str = "the course's Classifier.pth; a copy is at ../shared/data/grader/Classifier.pth",
) -> nn.Module:
    """The course LeNet from a state dict (bare or under 'state_dict'): Classifier.pth, or the
    same architecture trained on USPS (USPS_GRADER)."""
    path = Path(checkpoint)
    state = load_torch_file(path, what, hint)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the course saves {'state_dict': ..., 'optimizer': ...}
    model = LeNet()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        # wrong keys or shapes, or not a dict at all
        # line 1 is a generic header; line 2 names the keys
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise CLIError(
            f"{path} is not the course LeNet: {lines[min(1, len(lines) - 1)].strip()[:200]}"
        ) from None
    return model.eval().to(device)


def load_svhn_classifier(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu"
) -> nn.Module:
    """A classifier saved with torch.export.save (.pt2): the file carries its own
    architecture, which is not known here for the course's SVHN model."""
    path = require_file(checkpoint, "SVHN classifier checkpoint")
    if path.suffix != ".pt2":
        raise CLIError(f"{path}: the SVHN classifier must be a torch.export program (.pt2)")
    # Checked first, because torch.export.load logs a traceback as a warning before it fails.
    if not zipfile.is_zipfile(path) or not any(
        n.split("/")[-1] == "archive_format" for n in zipfile.ZipFile(path).namelist()
    ):
        raise CLIError(
            f"{path} is not a torch.export program (no .pt2 archive; save it with torch.export.save)"
        )
    try:
        return torch.export.load(path).module().to(device)
    except Exception as e:
        # a foreign or truncated file fails anywhere in the loader (BadZipFile, KeyError, ...)
        raise CLIError(f"{path} is not a torch.export program ({error_summary(e)})") from None


def label_of(path: Path) -> int:
    # str.isdigit() also accepts '²' or '٣', which int() then reads wrongly or not at all
    if path.name[:1] not in tuple("0123456789"):
        raise CLIError(f"cannot read a digit label from {path} (the name must start with 0-9)")
    return int(path.name[0])


def check_square(files: Sequence[Path], images: Sequence[Image.Image]) -> None:
    """A CLIError naming the first non-square image and their count (see the module's note)."""
    odd = [(f, im.size) for f, im in zip(files, images) if im.width != im.height]
    if odd:
        (first, (width, height)), n = odd[0], len(odd)
        raise CLIError(
            f"{first} is {width}x{height}, not square ({n} such images): the course grader "
            "resizes the shorter side to 28 and its LeNet takes only 28x28 inputs"
        )


@torch.no_grad()
def score_images(
    model: nn.Module,
    images: Sequence[Image.Image] | np.ndarray,
    labels: Sequence[int],
    device: str | torch.device = "cpu",
    batch_size: int = 500,
) -> dict:
    """Accuracy of `model` on in-memory images: PIL images, or uint8 arrays (N, H, W, 3)
    such as hw2_utils.to_uint8 returns. They go through PREPROCESS exactly as saved PNGs
    would, so a batch scores the same here as written to disk and graded from the folder.
    `model` must already be in eval mode, as the loaders above return it."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise CLIError("no images to score")
    device = torch.device(device)
    correct = 0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.stack(
            [
                PREPROCESS(im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)))
                for im in chunk
            ]
        )
        predictions = model(batch.to(device)).argmax(1).cpu()
        correct += int((predictions == torch.as_tensor(labels[start : start + batch_size])).sum())
    return {"acc": correct / len(images), "correct": correct, "total": len(images)}


def score_folder(
    model: nn.Module,
    folder: str | os.PathLike,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
) -> dict:
    """Accuracy over the images of `folder`, each labelled by its name's first character."""
    files = list_images(folder, "image folder")
    labels = [label_of(f) for f in files]
    images = [open_rgb(f) for f in progress(files, desc=Path(folder).name, leave=False)]
    check_square(files, images)
    return score_images(model, images, labels, device, batch_size)


def digit_accuracy(
    folder: str | os.PathLike,
    checkpoint: str | os.PathLike,
    svhn_checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    usps_checkpoint: str | os.PathLike | None = None,
) -> dict:
    """{'mnistm': {acc, correct, total}, 'svhn': same or None, 'acc': mean of the two
    accuracies, or None when the SVHN half was skipped, 'usps': the svhn/ folder scored by the
    USPS LeNet when the second domain is USPS, or None}."""
    device = resolve_device(device)
    root = require_dir(folder, "output folder")
    mnistm = score_folder(
        load_mnistm_classifier(checkpoint, device),
        require_dir(root / "mnistm", "MNIST-M folder"),
        device,
    )
    svhn = usps = None
    if svhn_checkpoint is not None:
        svhn = score_folder(
            load_svhn_classifier(svhn_checkpoint, device),
            require_dir(root / "svhn", "SVHN folder"),
            device,
        )
    if usps_checkpoint is not None:
        grader = load_mnistm_classifier(
            usps_checkpoint,
            device,
            "USPS grader checkpoint",
            f"the shipped one is {USPS_GRADER}; python -m bench.p1_ddpm trains it",
        )
        usps = score_folder(grader, require_dir(root / "svhn", "second-domain folder"), device)
    return {
        "mnistm": mnistm,
        "svhn": svhn,
        "acc": None if svhn is None else (mnistm["acc"] + svhn["acc"]) / 2,
        "usps": usps,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--folder",
        required=True,
        help="folder holding mnistm/ (and svhn/) with the generated images",
    )
    p.add_argument("--checkpoint", required=True, help="the course's MNIST-M Classifier.pth")
    p.add_argument(
        "--svhn-checkpoint",
        help="SVHN classifier saved with torch.export (.pt2); omitted: SVHN is skipped",
    )
    p.add_argument(
        "--usps-checkpoint",
        help=f"the course LeNet trained on USPS (shipped: {USPS_GRADER.relative_to(REPO)}): "
        "scores OUT/svhn when the second domain is USPS, as for the shipped P1 checkpoint",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = digit_accuracy(
        args.folder, args.checkpoint, args.svhn_checkpoint, args.device, args.usps_checkpoint
    )
    m, s = result["mnistm"], result["svhn"]
    print(f"MNIST-M acc = {m['acc']} (correct/total = {m['correct']}/{m['total']})")
    if s is None:
        print("SVHN acc = skipped (no --svhn-checkpoint given)")
        print("acc = not reported (needs both halves)")
    else:
        print(f"SVHN acc = {s['acc']} (correct/total = {s['correct']}/{s['total']})")
        print(f"acc = {result['acc']}")
    if result["usps"] is not None:
        u = result["usps"]
        print(
            f"USPS acc (svhn/ folder, second domain USPS) = {u['acc']} (correct/total = {u['correct']}/{u['total']})"
        )
    return result


if __name__ == "__main__":
    run_cli(main)
