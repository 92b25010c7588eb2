"""CLIP zero-shot classification: each image gets the label whose "A photo of {object}." text
embedding is closest (cosine) to the image embedding.

    python -m p3_textual_inversion.clip_zeroshot --data hw2_data/clip_zeroshot/val \\
        --id2label hw2_data/clip_zeroshot/id2label.json --clip PATH/clip-vit-base-patch32 \\
        --figure runs/p3/clip_cases.png --json runs/p3/clip_zeroshot.json [--ensemble]

Image names are {class_id}_{image_id}.png. Prints the accuracy and 5 successful and 5 failed
cases (the first ones in file-name order), and saves them as a figure. --ensemble averages
the text embedding over several prompt templates, as a comparison with the single prompt.
--clip is a local transformers CLIP folder (the course uses openai/clip-vit-base-patch32), loaded
by the grader's loader, evaluation.clip_scores.load_clip.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F

import hw2_utils
from evaluation.clip_scores import load_clip, unit_features
from hw2_utils import (
    HelpFormatter,
    CLIError,
    list_images,
    open_rgb,
    positive_int,
    progress,
    pyplot,
    require_file,
    resolve_device,
    run_cli,
    save_json,
)

PROMPT = "A photo of {}."
ENSEMBLE = [
    PROMPT,
    "A photo of a {}.",
    "A blurry photo of a {}.",
    "A close-up photo of a {}.",
    "A bright photo of the {}.",
    "A cropped photo of the {}.",
    "A good photo of a {}.",
    "An image of a {}.",
]
NAME = re.compile(r"(\d+)_(\d+)\.(png|jpg|jpeg)", re.IGNORECASE)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="folder of {class_id}_{image_id}.png")
    p.add_argument("--id2label", required=True, help="json {class_id: object name}")
    p.add_argument(
        "--clip", required=True, help="local transformers CLIP folder (model + processor files)"
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="average text embeddings over %d templates" % len(ENSEMBLE),
    )
    p.add_argument("--figure", default=None, help="PNG of the 5 successful and 5 failed cases")
    p.add_argument("--json", default=None, help="write accuracy and per-image predictions here")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def read_labels(path: str | Path) -> dict[int, str]:
    try:
        raw = json.loads(require_file(path, "id2label json").read_text())
        return {int(k): str(v) for k, v in raw.items()}
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise CLIError(f"{path} must be a json object {{class_id: name}} ({e})") from None


def labelled_images(folder: str | Path, labels: dict[int, str]) -> list[tuple[Path, int]]:
    """(image, class id) for every image in `folder`, named {class_id}_{image_id}.png."""
    items = []
    for f in list_images(folder, "--data", extensions=(".png", ".jpg", ".jpeg")):
        m = NAME.fullmatch(f.name)
        if not m:
            raise CLIError(f"{f.name}: image names must be {{class_id}}_{{image_id}}.png")
        if int(m[1]) not in labels:
            raise CLIError(f"{f.name}: class {m[1]} is not in the id2label json")
        items.append((f, int(m[1])))
    return items


@torch.no_grad()
def text_features(model, processor, names: list[str], templates: list[str]) -> torch.Tensor:
    """(C, D) unit vectors: per class, the mean over templates of the unit text embeddings."""
    per_template = []
    for template in templates:
        tokens = processor.tokenizer(
            [template.format(n) for n in names], padding=True, return_tensors="pt"
        )
        per_template.append(unit_features(model.get_text_features(**tokens.to(model.device))))
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


@torch.no_grad()
def image_features(model, processor, files: list[Path], batch_size: int) -> torch.Tensor:
    feats = []
    for start in progress(range(0, len(files), batch_size), desc="images"):
        images = [open_rgb(f) for f in files[start : start + batch_size]]
        pixels = processor.image_processor(images=images, return_tensors="pt").pixel_values
        feats.append(
            unit_features(model.get_image_features(pixel_values=pixels.to(model.device))).cpu()
        )
    return torch.cat(feats)


def classify(args: argparse.Namespace) -> dict:
    labels = read_labels(args.id2label)
    items = labelled_images(args.data, labels)
    model, processor = load_clip(args.clip, resolve_device(args.device))
    class_ids = sorted(labels)
    names = [labels[c].replace("_", " ") for c in class_ids]  # "willow_tree" -> "willow tree"
    text = text_features(model, processor, names, ENSEMBLE if args.ensemble else [PROMPT]).cpu()
    images = image_features(model, processor, [f for f, _ in items], args.batch_size)
    probs = (model.logit_scale.exp().item() * images @ text.T).softmax(-1)
    conf, pred = probs.max(-1)
    cases = [
        {
            "file": f.name,
            "true": labels[c],
            "pred": labels[class_ids[p]],
            "prob": round(float(q), 4),
        }
        for (f, c), p, q in zip(items, pred.tolist(), conf)
    ]
    correct = [labels[c] == case["pred"] for (_, c), case in zip(items, cases)]
    return {
        "accuracy": sum(correct) / len(items),
        "n": len(items),
        "ensemble": args.ensemble,
        "success": [c for c, ok in zip(cases, correct) if ok][:5],
        "failure": [c for c, ok in zip(cases, correct) if not ok][:5],
        "cases": cases,
    }


def plot_cases(result: dict, images_dir: Path, path: str | Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(2, 5, figsize=(15, 7))
    for row, kind in enumerate(("success", "failure")):
        for col in range(5):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(result[kind]):
                case = result[kind][col]
                ax.imshow(open_rgb(images_dir / case["file"]))
                ax.set_title(
                    f"{case['file']}\ntrue: {case['true']}\npred: {case['pred']} ({case['prob']:.2f})",
                    fontsize=9,
                    color="green" if kind == "success" else "red",
                )
    fig.suptitle(
        f"CLIP zero-shot: accuracy {result['accuracy']:.4f} on {result['n']} images"
        f"{' (prompt ensemble)' if result['ensemble'] else ''}"
    )
    fig.tight_layout()
    hw2_utils.save_figure(fig, path, dpi=100)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = classify(args)
    print(
        f"accuracy {result['accuracy']:.4f} ({round(result['accuracy'] * result['n'])}/{result['n']})"
        f"{' with prompt ensemble' if args.ensemble else ''}"
    )
    for kind in ("success", "failure"):
        for case in result[kind]:
            print(
                f"  {kind:7s} {case['file']}: true {case['true']!r}, predicted {case['pred']!r} (p={case['prob']:.3f})"
            )
    if args.figure:
        plot_cases(result, Path(args.data), args.figure)
        print(f"figure: {args.figure}")
    if args.json:
        save_json(args.json, result)
    return result


if __name__ == "__main__":
    run_cli(main)
