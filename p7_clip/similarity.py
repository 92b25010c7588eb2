"""(a) CLIP similarity of (image, text) pairs: the cosine of every image with every text.

    python -m p7_clip.similarity --clip ViT-B-32=weights/ViT-B-32-openai --coco ../shared/data/coco --n 10 \\
        --out outputs/p7/similarity
    python -m p7_clip.similarity --clip RN50=weights/RN50-openai --pairs my_pairs.csv --out OUT

--pairs is a CSV with header `image,text` (image paths relative to the CSV); --coco takes the
first N images of a COCO captions json, each with its first caption. For each model, OUT gets
similarity_MODEL.csv (rows: images, columns: texts) and similarity_MODEL.png (heat-map), and
similarity.json the matrices plus how many images rank their own text first.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import torch

from hw2_utils import (
    HelpFormatter,
    atomic_path,
    check_output_path,
    command_line,
    describe_hardware,
    open_rgb,
    positive_int,
    pyplot,
    resolve_device,
    run_cli,
    save_figure,
    save_json,
)
from p7_clip.data import load_coco, read_pairs
from p7_clip.models import add_model_args, check_specs, encode_images, encode_texts, load_clip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="CSV with header image,text")
    src.add_argument(
        "--data",
        help="COCO root (annotations/captions_val2017.json + val2017/)",
    )
    p.add_argument(
        "--n", type=positive_int, default=10, help="pairs taken from --data (the study uses 10)"
    )
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def similarity_matrix(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(I, T) cosines of unit image and text embeddings: entry (i, t) compares image i with text t."""
    return image_emb @ text_emb.T


def load_pairs(args) -> list[tuple[Path, str]]:
    if args.pairs:
        return read_pairs(args.pairs)
    return [(im.path, im.captions[0]) for im in load_coco(args.data, limit=args.n)]


def write_csv(path: Path, sim: torch.Tensor, images: list[str], texts: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", *texts])
    for name, row in zip(images, sim.tolist()):
        writer.writerow([name, *(f"{v:.4f}" for v in row)])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def plot_heatmap(
    path: Path, sim: torch.Tensor, images: list[str], texts: list[str], title: str
) -> None:
    plt = pyplot()
    n_img, n_txt = sim.shape
    fig, ax = plt.subplots(figsize=(2 + 0.9 * n_txt, 1.5 + 0.6 * n_img))
    im = ax.imshow(sim.numpy(), cmap="viridis")
    for i in range(n_img):
        for t in range(n_txt):
            ax.text(t, i, f"{sim[i, t]:.2f}", ha="center", va="center", fontsize=7, color="white")
    short = [t if len(t) <= 40 else t[:37] + "..." for t in texts]
    ax.set_xticks(range(n_txt), short, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n_img), images, fontsize=7)
    ax.set_xlabel("text")
    ax.set_ylabel("image")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    save_figure(fig, path, tight=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_specs(args.clip)
    device = resolve_device(args.device)
    pairs = load_pairs(args)
    out = check_output_path(args.out, folder=True)  # created by its first file, after the work
    images, texts = [p.name for p, _ in pairs], [t for _, t in pairs]
    record = {
        "command": command_line("p7_clip.similarity", argv),
        "hardware": describe_hardware(device),
        "images": images,
        "texts": texts,
        "models": {},
    }
    for spec in args.clip:
        clip = load_clip(spec, device)
        image_emb = encode_images(clip, [p for p, _ in pairs], args.batch_size, load=open_rgb)
        sim = similarity_matrix(image_emb, encode_texts(clip, texts))
        own_first = int((sim.argmax(dim=1) == torch.arange(len(pairs))).sum())
        write_csv(out / f"similarity_{clip.tag}.csv", sim, images, texts)
        plot_heatmap(
            out / f"similarity_{clip.tag}.png",
            sim,
            images,
            texts,
            f"{clip.name}: image-text cosine",
        )
        record["models"][clip.name] = {
            "tag": clip.tag,
            "matrix": [[round(v, 4) for v in r] for r in sim.tolist()],
            "diagonal_mean": round(float(sim.diag().mean()), 4),
            "off_diagonal_mean": round(
                float((sim.sum() - sim.diag().sum()) / max(sim.numel() - len(pairs), 1)), 4
            ),
            "own_text_first": own_first,
        }
        print(
            f"{clip.name}: {own_first}/{len(pairs)} images rank their own text first; "
            f"mean cosine {record['models'][clip.name]['diagonal_mean']:.4f} on the diagonal, "
            f"{record['models'][clip.name]['off_diagonal_mean']:.4f} off it"
        )
    save_json(out / "similarity.json", record)
    return record


if __name__ == "__main__":
    run_cli(main)
