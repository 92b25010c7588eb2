"""(b) Zero-shot CIFAR-10 test classification with several prompt designs.

    python -m p7_clip.zeroshot --clip ViT-B-32=weights/ViT-B-32-openai --clip RN50=weights/RN50-openai \\
        --data cifar-10-batches-py --out outputs/p7/zeroshot

--cifar is the official `cifar-10-batches-py/` folder (its 10,000-image test_batch) or an .npz
with test_images/test_labels (e.g. ../shared/data/cifar10/cifar10_slice.npz, 1,017 images).
Each design turns a class name into text with one or more templates; with several, the class
embedding is the normalised mean of the unit embeddings of every template (CLIP's prompt
ensembling). An image gets the class whose embedding has the highest cosine with it.
OUT gets zeroshot.json (accuracy per model and design, confusion matrices), zeroshot.md (the
table) and confusion_MODEL.png for the design named by --confusion.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from hw2_utils import (
    HelpFormatter,
    CIFAR10_CLASSES,
    check_output_path,
    command_line,
    describe_hardware,
    load_cifar10,
    markdown_table,
    positive_int,
    pyplot,
    resolve_device,
    run_cli,
    save_figure,
    save_json,
    save_text,
)
from p7_clip.models import Clip, add_model_args, check_specs, encode_images, encode_texts, load_clip

# The 18 CIFAR-10 templates of the CLIP authors' prompt-engineering notebook.
CIFAR_TEMPLATES = [
    f"a {q}photo of {a} {{}}."
    for a in ("a", "the")
    for q in ("", "blurry ", "black and white ", "low contrast ", "high contrast ", "bad ", "good ")
]
CIFAR_TEMPLATES += [
    f"a photo of {a} {size} {{}}." for a in ("a", "the") for size in ("small", "big")
]
DESIGNS = {
    "class name": ["{}"],
    "a photo of a {}.": ["a photo of a {}."],
    # Single prompts in the style of the seeds: one attribute that fits 32x32 CIFAR images.
    "a high-quality photo of a {}.": ["a high-quality photo of a {}."],
    "a low-resolution photo of a {}.": ["a low-resolution photo of a {}."],
    "a blurry photo of a {}.": ["a blurry photo of a {}."],
    "ensemble of 18 templates": CIFAR_TEMPLATES,
}
BASELINE, ENSEMBLE = "a photo of a {}.", "ensemble of 18 templates"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, default_batch=256)
    p.add_argument(
        "--data",
        required=True,
        help="CIFAR-10: cifar-10-batches-py/ folder or .npz with test_images/test_labels",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="use only the first N test images"
    )
    p.add_argument(
        "--confusion",
        default=ENSEMBLE,
        choices=list(DESIGNS),
        help="design whose confusion matrix is plotted",
    )
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def ensemble(per_template: torch.Tensor) -> torch.Tensor:
    """(T, C, D) unit embeddings of T templates x C classes -> (C, D) unit class embeddings:
    the mean over templates, renormalised."""
    return F.normalize(per_template.mean(dim=0), dim=-1)


def class_embeddings(clip: Clip, classnames: list[str], templates: list[str]) -> torch.Tensor:
    texts = [t.format(c) for t in templates for c in classnames]
    return ensemble(encode_texts(clip, texts).reshape(len(templates), len(classnames), -1))


def predict(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Index of the class embedding with the highest cosine to each unit image embedding."""
    return (image_emb @ class_emb.T).argmax(dim=1)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """(true, predicted) counts."""
    return np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def plot_confusion(path, matrix: np.ndarray, classes: list[str], title: str) -> None:
    plt = pyplot()
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    save_figure(fig, path, tight=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_specs(args.clip)
    device = resolve_device(args.device)
    images, labels = load_cifar10(args.data, "test", args.limit)
    out = check_output_path(args.out, folder=True)  # created by its first file, after the work
    from PIL import Image

    record = {
        "command": command_line("p7_clip.zeroshot", argv),
        "hardware": describe_hardware(device),
        "images": len(images),
        "data": str(args.data),
        "designs": DESIGNS,
        "accuracy": {},
        "confusion": {},
    }
    for spec in args.clip:
        clip = load_clip(spec, device)
        image_emb = encode_images(
            clip, images, args.batch_size, load=Image.fromarray, desc=clip.name
        )
        record["accuracy"][clip.name] = {}
        for design, templates in DESIGNS.items():
            preds = predict(image_emb, class_embeddings(clip, CIFAR10_CLASSES, templates)).numpy()
            record["accuracy"][clip.name][design] = round(float((preds == labels).mean()), 4)
            if design == args.confusion:
                matrix = confusion_matrix(labels, preds, len(CIFAR10_CLASSES))
                record["confusion"][clip.name] = {
                    "design": design,
                    "tag": clip.tag,
                    "matrix": matrix.tolist(),
                }
                plot_confusion(
                    out / f"confusion_{clip.tag}.png",
                    matrix,
                    CIFAR10_CLASSES,
                    f"{clip.name}, {design}: accuracy {(preds == labels).mean():.4f}",
                )
        acc = record["accuracy"][clip.name]
        print(
            f"{clip.name}: '{BASELINE}' {acc[BASELINE]:.4f} -> {ENSEMBLE} {acc[ENSEMBLE]:.4f} "
            f"({100 * (acc[ENSEMBLE] - acc[BASELINE]):+.2f} points)"
        )
    table = markdown_table(
        ["prompt design", *record["accuracy"]],
        [
            [
                f"`{d}`" if d != ENSEMBLE else d,
                *(f"{100 * a[d]:.2f}%" for a in record["accuracy"].values()),
            ]
            for d in DESIGNS
        ],
    )
    table = "\n".join(table) + "\n"
    save_text(
        out / "zeroshot.md", f"Zero-shot CIFAR-10 accuracy on {len(images)} test images.\n\n{table}"
    )
    print(table)
    save_json(out / "zeroshot.json", record)
    return record


if __name__ == "__main__":
    run_cli(main)
