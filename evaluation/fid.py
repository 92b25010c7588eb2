"""Fréchet Inception Distance between two image folders, as `python -m pytorch_fid` gives it.

    python evaluation/fid.py GEN_DIR REF_DIR --weights pt_inception-2015-12-05-6726825d.pth
    python evaluation/fid.py GEN_DIR REF_DIR --save-stats ref_stats.npz   # cache REF_DIR's statistics
    python evaluation/fid.py GEN_DIR ref_stats.npz                        # reuse them

Features are pytorch-fid's InceptionV3 pool3 activations (2048-d) with the standard FID
weights, and the distance is pytorch-fid's calculate_frechet_distance. The images are
the files of each folder with pytorch-fid's extensions, opened as RGB and scaled to 0-1;
the network resizes them to 299x299 itself. The weights are pytorch-fid's own file: give
it with --weights, or it is downloaded once into the torch hub cache when online
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_fid import inception as pf_inception
from pytorch_fid.fid_score import IMAGE_EXTENSIONS, calculate_frechet_distance
from torchvision.transforms.functional import to_tensor

from hw2_utils import CLIError, atomic_path, list_images, open_rgb, progress, require_file, resolve_device, run_cli

WEIGHTS_NAME = Path(pf_inception.FID_WEIGHTS_URL).name
WEIGHTS_SHA256_PREFIX = WEIGHTS_NAME.rsplit("-", 1)[1].split(".")[0]  # torch hub's naming convention


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """pytorch-fid's InceptionV3 returning [pool3 features (N, 2048, 1, 1)] for inputs in 0-1.

    pytorch-fid only knows how to download its weights, so a local file is handed to it by
    standing in for that download."""
    if weights is None:
        try:
            model = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        except (OSError, RuntimeError) as e:  # URLError is an OSError; offline hub errors are RuntimeErrors
            raise CLIError(f"cannot download the FID Inception weights ({e}); fetch {pf_inception.FID_WEIGHTS_URL} "
                           "and pass --weights PATH") from None
        return model.eval().to(device)
    path = require_file(weights, "FID Inception weights", f"pytorch-fid's {WEIGHTS_NAME}, from {pf_inception.FID_WEIGHTS_URL}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        print(f"warning: {path} is not pytorch-fid's {WEIGHTS_NAME} (sha256 {digest[:8]}); scores are not standard FIDs")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        raise CLIError(f"{path} is not the FID Inception weights: it cannot be read as a PyTorch checkpoint") from None
    try:
        with mock.patch.object(pf_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
            model = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except (RuntimeError, TypeError, AttributeError) as e:  # wrong keys or shapes, or not a dict at all
        raise CLIError(f"{path} is not the FID Inception weights ({str(e).splitlines()[0]})") from None
    return model.eval().to(device)


@torch.no_grad()
def activations(files: list[Path], extractor: nn.Module, batch_size: int = 50,
                device: str | torch.device = "cpu") -> np.ndarray:
    """(N, D) float64 features, computed as pytorch-fid's get_activations does."""
    rows = []
    for start in progress(range(0, len(files), batch_size), desc="features", leave=False):
        images = [to_tensor(open_rgb(f)) for f in files[start:start + batch_size]]
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:
            raise CLIError(f"images of different sizes {sorted(sizes)} among {files[start].parent}: FID needs one size")
        features = extractor(torch.stack(images).to(device))[0]
        if features.shape[2:] != (1, 1):
            features = F.adaptive_avg_pool2d(features, (1, 1))
        rows.append(features.flatten(1).cpu().numpy().astype(np.float64))
    return np.concatenate(rows)


def statistics(source: str | os.PathLike, extractor: nn.Module, batch_size: int = 50,
               device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a folder's features, or read from a .npz with keys mu and sigma."""
    source = Path(source)
    if source.suffix == ".npz":
        require_file(source, "FID statistics file")
        try:
            with np.load(source) as f:
                return f["mu"], f["sigma"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise CLIError(f"{source} is not an FID statistics file with mu and sigma ({e})") from None
    files = list_images(source, "image folder", extensions=tuple(f".{e}" for e in IMAGE_EXTENSIONS))
    if len(files) < 2:
        raise CLIError(f"{source} holds {len(files)} image; a covariance needs at least 2")
    features = activations(files, extractor, batch_size, device)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write pytorch-fid's .npz format (keys mu, sigma), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise CLIError(f"statistics file must end in .npz: {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object stops numpy from appending another .npz
            np.savez_compressed(f, mu=mu, sigma=sigma)
    return path


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    (mu_a, sigma_a), (mu_b, sigma_b) = stats_a, stats_b
    if mu_a.shape != mu_b.shape:
        raise CLIError(f"feature sizes differ: {mu_a.shape[0]} vs {mu_b.shape[0]} (statistics from another network?)")
    return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def fid_from_dirs(gen: str | os.PathLike, ref: str | os.PathLike, weights: str | os.PathLike | None = None,
                  extractor: nn.Module | None = None, device: str = "auto", batch_size: int = 50,
                  save_stats: str | os.PathLike | None = None) -> float:
    """FID between folder `gen` and folder (or .npz statistics) `ref`. `extractor` replaces
    the Inception network (tests pass a small one); `save_stats` writes ref's statistics."""
    if batch_size < 1:
        raise CLIError(f"batch size must be positive, got {batch_size}")
    device = resolve_device(device)
    extractor = (extractor or load_inception(weights, device)).to(device).eval()
    ref_stats = statistics(ref, extractor, batch_size, device)
    if save_stats is not None:
        save_statistics(save_stats, *ref_stats)
    return frechet_distance(statistics(gen, extractor, batch_size, device), ref_stats)


def default_stats_path(ref: str | os.PathLike) -> Path:
    ref = Path(ref).resolve()
    return ref.with_name(f"{ref.name}_fid_stats.npz")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gen", help="folder of generated images")
    p.add_argument("ref", help="folder of reference images, or a .npz written by --save-stats")
    p.add_argument("--weights", help=f"local copy of pytorch-fid's {WEIGHTS_NAME} (default: download when online)")
    p.add_argument("--save-stats", nargs="?", const="", metavar="NPZ",
                   help="write REF's mu/sigma to NPZ (default: REF_fid_stats.npz next to REF); put it after GEN REF")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def main(argv=None) -> float:
    args = parse_args(argv)
    save_stats = None
    if args.save_stats is not None:
        if args.ref.endswith(".npz"):
            raise CLIError("--save-stats needs REF to be an image folder, not statistics")
        save_stats = args.save_stats or default_stats_path(args.ref)
    value = fid_from_dirs(args.gen, args.ref, args.weights, device=args.device,
                          batch_size=args.batch_size, save_stats=save_stats)
    if save_stats is not None:
        print(f"saved statistics of {args.ref} to {save_stats}")
    print(f"FID: {value}")
    return value


if __name__ == "__main__":
    run_cli(main)
