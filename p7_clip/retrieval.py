"""(c) COCO text <-> image retrieval with CLIP over the first N val images and their captions.

    python -m p7_clip.retrieval --clip ViT-B-32=weights/ViT-B-32-openai --clip RN50=weights/RN50-openai \\
        --data COCO_ROOT --n 100 --query "an airplane flying in the sky" --out outputs/p7/retrieval

COCO_ROOT holds annotations/captions_val2017.json and val2017/. Recall@k, text -> image: the
fraction of captions whose own image is among the k images most similar to it; image -> text:
the fraction of images with at least one of their own captions among the k most similar
captions. OUT gets retrieval.json, retrieval.md (one table, all models) and, per model,
query_MODEL.png with the --top-k images closest to --query.
"""

from __future__ import annotations

import argparse

import torch

from hw2_utils import (
    HelpFormatter,
    check_output_path,
    command_line,
    describe_hardware,
    markdown_table,
    open_rgb,
    positive_int,
    pyplot,
    resolve_device,
    run_cli,
    save_figure,
    save_json,
    save_text,
)
from p7_clip.data import CocoImage, load_coco
from p7_clip.models import add_model_args, check_specs, encode_images, encode_texts, load_clip

KS = (1, 5, 10)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, default_batch=64)
    p.add_argument(
        "--data",
        required=True,
        help="COCO root (annotations/captions_val2017.json + val2017/)",
    )
    p.add_argument(
        "--n",
        type=positive_int,
        default=100,
        help="first N images of the json (fewer if it lists fewer)",
    )
    p.add_argument(
        "--query", default="an airplane flying in the sky", help="text whose top images are shown"
    )
    p.add_argument("--top-k", type=positive_int, default=5, help="images shown for --query")
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks=KS) -> dict[int, float]:
    """scores (Q, G): query x gallery similarity; positives (Q, G) bool: the right answers.
    Recall@k = fraction of queries with a right answer among their k highest-scoring items."""
    order = scores.argsort(dim=1, descending=True)
    hits = positives.gather(1, order)  # hits[q, r]: is the item ranked r-th for query q right?
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


def caption_owner(images: list[CocoImage]) -> torch.Tensor:
    """Image index of every caption, captions listed image by image."""
    return torch.tensor([i for i, im in enumerate(images) for _ in im.captions])


def both_directions(
    image_emb: torch.Tensor, text_emb: torch.Tensor, owner: torch.Tensor
) -> dict[str, dict[int, float]]:
    positives = owner[:, None] == torch.arange(len(image_emb))[None, :]  # (captions, images)
    sim = text_emb @ image_emb.T
    return {
        "text_to_image": recall_at_k(sim, positives),
        "image_to_text": recall_at_k(sim.T, positives.T),
    }


def plot_query(
    path, images: list[CocoImage], scores: torch.Tensor, query: str, k: int, title: str
) -> None:
    plt = pyplot()
    top = scores.topk(min(k, len(images)))
    fig, axes = plt.subplots(
        1, len(top.indices), figsize=(3.2 * len(top.indices), 3.6), squeeze=False
    )
    for rank, (ax, idx, score) in enumerate(
        zip(axes[0], top.indices.tolist(), top.values.tolist()), 1
    ):
        ax.imshow(open_rgb(images[idx].path))
        ax.set_title(f"#{rank}: {images[idx].path.name}\ncosine {score:.3f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f'{title}: "{query}"')
    save_figure(fig, path, tight=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_specs(args.clip)
    device = resolve_device(args.device)
    images = load_coco(args.data, limit=args.n)
    captions = [c for im in images for c in im.captions]
    owner = caption_owner(images)
    out = check_output_path(args.out, folder=True)  # created by its first file, after the work
    record = {
        "command": command_line("p7_clip.retrieval", argv),
        "hardware": describe_hardware(device),
        "images": len(images),
        "captions": len(captions),
        "query": args.query,
        "recall": {},
        "top": {},
        "tags": {},
    }
    for spec in args.clip:
        clip = load_clip(spec, device)
        image_emb = encode_images(
            clip, [im.path for im in images], args.batch_size, load=open_rgb, desc=clip.name
        )
        text_emb = encode_texts(clip, captions)
        record["recall"][clip.name] = both_directions(image_emb, text_emb, owner)
        record["tags"][clip.name] = clip.tag
        query_scores = (encode_texts(clip, [args.query]) @ image_emb.T)[0]
        record["top"][clip.name] = [
            images[i].path.name for i in query_scores.topk(min(args.top_k, len(images))).indices
        ]
        plot_query(
            out / f"query_{clip.tag}.png", images, query_scores, args.query, args.top_k, clip.name
        )
    rows = [
        [name, *(f"{100 * r[d][k]:.1f}" for d in ("text_to_image", "image_to_text") for k in KS)]
        for name, r in record["recall"].items()
    ]
    table = markdown_table(["model", *(f"{d} R@{k}" for d in ("T2I", "I2T") for k in KS)], rows)
    table = "\n".join(table) + "\n"
    save_text(
        out / "retrieval.md",
        f"COCO val, {len(images)} images and their {len(captions)} captions; recall in %.\n\n"
        f"{table}",
    )
    print(table)
    save_json(out / "retrieval.json", record)
    return record


if __name__ == "__main__":
    run_cli(main)
