"""Robustness of CLIP zero-shot classification to Gaussian noise, Gaussian blur and rotation
of growing intensity, on one image set (CIFAR-10 test images).

    python -m p7_clip.robustness --clip ViT-B-32=weights/ViT-B-32-openai --clip RN50=weights/RN50-openai \\
        --data cifar-10-batches-py --limit 1000 --out outputs/p7/robustness

Each perturbation is applied to the original 32x32 image (pixel values in [0, 1]) before
CLIP's own preprocessing. Noise is drawn from a generator seeded with --seed, the same for
every model. Per model, perturbation and intensity: the accuracy and the mean softmax
probability of the true class (CLIP's logit scale, the --design prompts). OUT gets
robustness.json and robustness.png (one panel per perturbation).
"""

from __future__ import annotations

import argparse
import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from hw2_utils import (
    HelpFormatter,
    CIFAR10_CLASSES,
    check_output_path,
    command_line,
    describe_hardware,
    load_cifar10,
    make_generator,
    positive_int,
    pyplot,
    resolve_device,
    run_cli,
    save_figure,
    save_json,
    seed_int,
)
from p7_clip.models import add_model_args, check_specs, encode_images, load_clip, logit_scale
from p7_clip.zeroshot import DESIGNS, ENSEMBLE, class_embeddings

# Intensities, from none to strong; the x axis of each panel.
LEVELS = {
    "gaussian_noise": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5],  # std of the added noise, image in [0, 1]
    "gaussian_blur": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0],  # sigma in pixels of the 32x32 image
    "rotation": [0, 15, 30, 45, 90, 180],  # degrees, counter-clockwise, corners filled black
}
UNITS = {
    "gaussian_noise": "noise std",
    "gaussian_blur": "blur sigma (px)",
    "rotation": "rotation (degrees)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, default_batch=256)
    p.add_argument(
        "--data",
        required=True,
        help="CIFAR-10: cifar-10-batches-py/ folder or .npz with test_images/test_labels",
    )
    p.add_argument("--limit", type=positive_int, default=1000, help="first N test images")
    p.add_argument(
        "--design",
        default=ENSEMBLE,
        choices=list(DESIGNS),
        help="prompt design for the class embeddings",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the noise")
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def perturb(
    images: torch.Tensor, kind: str, level: float, generator: torch.Generator
) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> the same perturbed, still in [0, 1]. Level 0 is the identity."""
    if level == 0:
        return images
    if kind == "gaussian_noise":
        noise = torch.randn(images.shape, generator=generator)
        return (images + level * noise).clamp(0, 1)
    if kind == "gaussian_blur":
        size = 2 * math.ceil(3 * level) + 1  # covers +-3 sigma
        return TF.gaussian_blur(images, [size, size], [level, level])
    if kind == "rotation":
        return TF.rotate(images, float(level), interpolation=InterpolationMode.BILINEAR)
    raise ValueError(f"unknown perturbation {kind!r}")


def scores(
    image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor, scale: float
) -> dict[str, float]:
    """Accuracy and mean probability of the true class under CLIP's softmax over the classes."""
    probs = (scale * image_emb @ class_emb.T).softmax(dim=1)
    return {
        "accuracy": round(float((probs.argmax(1) == labels).float().mean()), 4),
        "true_class_probability": round(float(probs[torch.arange(len(labels)), labels].mean()), 4),
    }


def plot(path, results: dict, n: int) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(LEVELS), figsize=(5 * len(LEVELS), 4), sharey=True)
    for ax, kind in zip(axes, LEVELS):
        for i, (model, by_kind) in enumerate(results.items()):
            colour = f"C{i}"
            ax.plot(
                LEVELS[kind],
                [r["accuracy"] for r in by_kind[kind]],
                "o-",
                color=colour,
                label=f"{model} accuracy",
            )
            ax.plot(
                LEVELS[kind],
                [r["true_class_probability"] for r in by_kind[kind]],
                "s--",
                color=colour,
                label=f"{model} p(true class)",
            )
        ax.axhline(1 / len(CIFAR10_CLASSES), color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xlabel(UNITS[kind])
        ax.set_title(kind.replace("_", " "))
        ax.set_ylim(0, 1)
    axes[0].set_ylabel(f"CIFAR-10, {n} test images")
    axes[-1].legend(fontsize=7, loc="upper right")
    save_figure(fig, path, tight=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_specs(args.clip)
    device = resolve_device(args.device)
    images, labels = load_cifar10(args.data, "test", args.limit)
    out = check_output_path(args.out, folder=True)  # created by its first file, after the work
    clean = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(labels)
    results = {}
    for spec in args.clip:
        clip = load_clip(spec, device)
        class_emb = class_embeddings(clip, CIFAR10_CLASSES, DESIGNS[args.design])
        results[clip.name] = {kind: [] for kind in LEVELS}
        for kind, levels in LEVELS.items():
            generator = make_generator(args.seed)  # the same noise for every model
            for level in levels:
                batch = perturb(clean, kind, level, generator)
                emb = encode_images(
                    clip,
                    batch,
                    args.batch_size,
                    load=TF.to_pil_image,
                    desc=f"{clip.name} {kind} {level}",
                )
                results[clip.name][kind].append(scores(emb, class_emb, labels, logit_scale(clip)))
            print(
                f"{clip.name} {kind}: accuracy "
                + " ".join(f"{r['accuracy']:.3f}" for r in results[clip.name][kind])
            )
    plot(out / "robustness.png", results, len(images))
    record = {
        "command": command_line("p7_clip.robustness", argv),
        "hardware": describe_hardware(device),
        "images": len(images),
        "design": args.design,
        "seed": args.seed,
        "levels": LEVELS,
        "results": results,
    }
    save_json(out / "robustness.json", record)
    return record


if __name__ == "__main__":
    run_cli(main)
