r"""t-SNE of DANN features on val images of both domains, coloured by digit and by domain.

    python -m p5_dann.analysis --checkpoint p5_dann/checkpoints/mnistm_usps_dann.pt \
        --data ../shared/data/hw2_data/digits --target usps --out outputs/p5

Writes OUT/tsne_<target>_<tag>_class.png and OUT/tsne_<target>_<tag>_domain.png (openTSNE,
fixed seed); the tag defaults to the checkpoint's row name (its mode and target-side losses,
e.g. dann_fixmatch for the shipped model). A source-only checkpoint
gives the unadapted picture to compare with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hw2_utils import HelpFormatter, make_generator, pyplot, resolve_device, run_cli, save_figure
from p5_dann.data import domain_folder, load_split
from p5_dann.infer import load_checkpoint
from p5_dann.train import DEFAULTS

POINTS_PER_DOMAIN = 1000  # t-SNE cost grows fast; 1000 per domain keeps it under a minute on a CPU


@torch.no_grad()
def features(model, images: torch.Tensor, device) -> np.ndarray:
    return torch.cat([model.features(x.to(device)).cpu() for x in images.split(500)]).numpy()


def tsne_plots(
    model, tag: str, data_root: str, source: str, target: str, out: Path, device, seed: int = 0
) -> list[Path]:
    """t-SNE of the features of val images of both domains (NAME or NAME=PATH, as train.py takes them)."""
    plt = pyplot()
    from openTSNE import TSNE

    feats, digits, domains = [], [], []
    domain_names = []
    for index, spec in enumerate((source, target)):
        name, folder = domain_folder(spec, data_root)
        domain_names.append(name)
        x, y = load_split(folder, "val")
        keep = torch.randperm(len(y), generator=make_generator(seed + index))[:POINTS_PER_DOMAIN]
        feats.append(features(model, x[keep], device))
        digits.append(y[keep].numpy())
        domains.append(np.full(len(keep), index))
    embedding = np.asarray(TSNE(random_state=seed, n_jobs=1).fit(np.concatenate(feats)))
    digits, domains = np.concatenate(digits), np.concatenate(domains)
    written = []
    for kind, colours, names in (
        ("class", digits, [str(d) for d in range(10)]),
        ("domain", domains, domain_names),
    ):
        fig, ax = plt.subplots(figsize=(6, 6))
        cmap = plt.get_cmap("tab10")
        for value, label in enumerate(names):
            sel = colours == value
            ax.scatter(embedding[sel, 0], embedding[sel, 1], s=3, color=cmap(value), label=label)
        ax.legend(markerscale=4, fontsize=8)
        ax.set_title(f"{tag}: {domain_names[0]} -> {domain_names[1]}, coloured by {kind}")
        ax.set_xticks([])
        ax.set_yticks([])
        path = out / f"tsne_{domain_names[1]}_{tag}_{kind}.png"
        save_figure(fig, path, dpi=120, tight=True)
        written.append(path)
    return written


def row_name(meta: dict) -> str:
    """The bench row a checkpoint was trained as: its mode, the target-side losses it used, and
    its lambda_max where that is not train.py's default (p5_dann/sweep.py's names)."""
    config = meta.get("config", {})
    parts = [str(meta.get("mode", "model"))]
    parts += [
        name
        for name, key in (("entropy", "entropy_weight"), ("fixmatch", "consistency_weight"))
        if config.get(key, 0) > 0
    ]
    if config.get("lambda_max", DEFAULTS["lambda_max"]) != DEFAULTS["lambda_max"]:
        parts.append(f"lambda{config['lambda_max']:g}")
    return "_".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--data",
        default="hw2_data/digits",
        help="folder holding the domains' folders (NAME), unless NAME=PATH",
    )
    p.add_argument("--source", default="mnistm")
    p.add_argument("--target", default="usps")
    p.add_argument("--out", default="outputs/p5")
    p.add_argument(
        "--tag",
        help="name in the file names and titles (default: the checkpoint's row, e.g. dann_fixmatch)",
    )
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    model, meta = load_checkpoint(Path(args.checkpoint), device)
    tag = args.tag or row_name(meta)
    for path in tsne_plots(model, tag, args.data, args.source, args.target, Path(args.out), device):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
