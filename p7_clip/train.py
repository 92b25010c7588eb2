"""Linear probe on frozen CLIP image features (CLIP paper, sec. 3.2), the standard evaluation beside zero-shot.

    python -m p7_clip.train --clip ViT-B-32=weights/ViT-B-32-openai --cifar cifar-10-batches-py --out outputs/p7/probe/ViT-B-32
    OMP_NUM_THREADS=1 python -m p7_clip.train --clip ViT-B-32=tiny \\
        --cifar ../shared/data/cifar10/cifar10_slice.npz --out outputs/p7_probe/ViT-B-32_tiny   # tiny random model

Unit image embeddings of CIFAR-10 train and test (cached in CACHE_DIR, keyed by model and
images, so a rerun skips the encoder) feed scikit-learn's L-BFGS logistic regression. The
inverse regularisation C is chosen on a stratified 10% of train held out (coarse decades,
then the two half-decade neighbours of the best); the final probe is fitted on all of train
and the test set is scored once. For comparison the same test features are classified
zero-shot with zeroshot.py's prompts. OUT gets probe.pt (model spec, C, coef/intercept
tensors, class names: what infer.py reads) and result.json (numbers, command, hardware, time).
"""
from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hw2_utils import (CIFAR10_CLASSES, CLIError, atomic_path, command_line, ensure_writable_dir, load_cifar10,
                       require_file, resolve_device, run_cli)
from p7_clip import zeroshot
from p7_clip.models import TINY, TINY_SEED, Clip, check_spec, encode_images, load_clip
from p7_clip.records import hardware, save_json

# C = 1/lambda. The paper sweeps lambda over 1e-6..1e6 on raw features; ours are unit-norm, where
# C = 1e-2 already underfits and 1e4 is all but unregularised. One refinement step of the paper's search follows.
C_DECADES = [10.0 ** k for k in range(-2, 5)]
VAL_FRACTION = 0.1  # held out of train to choose C; the test set is never used for it
MAX_ITER = 1000  # the paper's L-BFGS iteration cap
CACHE_VERSION = 1  # bump when the feature definition changes (it is part of the cache key)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", required=True, metavar="ARCH=WEIGHTS", help="ARCH=FOLDER, ARCH=FILE or ARCH=tiny (models.py)")
    p.add_argument("--cifar", required=True, help="cifar-10-batches-py/ folder or .npz with train_/test_ images and labels")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split (smoke runs)")
    p.add_argument("--out", required=True, help="output folder: probe.pt and result.json")
    p.add_argument("--cache-dir", default=None, help="feature cache (default OUT/cache)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    return p.parse_args(argv)


def cache_key(spec: str, *arrays: np.ndarray) -> str:
    """Hash of what the features depend on: the model (spec, and the weight files' size and
    mtime, so replaced weights miss the cache) and the exact image bytes."""
    arch, weights, _ = check_spec(spec)
    h = hashlib.sha256(f"{CACHE_VERSION}|{arch}|{TINY_SEED if weights == TINY else Path(weights).resolve()}".encode())
    if weights != TINY:
        files = sorted(Path(weights).rglob("*")) if Path(weights).is_dir() else [Path(weights)]
        h.update(repr([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def cached_features(path: Path, encode: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """(features, whether they came from the cache): read `path`, or run `encode` and save it atomically."""
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z}, True
    features = encode()
    with atomic_path(path) as tmp:
        np.savez(tmp, **features)
    return features, False


def fit_probe(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER).fit(x, y)


def choose_c(val_accuracy: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """(best C, validation accuracy per C tried): the decade grid, then the half-decade
    neighbours of its best. Ties go to the smaller C (the stronger regularisation)."""
    scores = {c: val_accuracy(c) for c in C_DECADES}
    best = max(sorted(scores), key=scores.get)
    for c in (best / 10 ** 0.5, best * 10 ** 0.5):
        scores[c] = val_accuracy(c)
    return max(sorted(scores), key=scores.get), dict(sorted(scores.items()))


def split_train_val(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of a stratified split that holds out VAL_FRACTION of every class."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(np.arange(len(y)), test_size=VAL_FRACTION, stratify=y, random_state=seed)
    except ValueError as e:
        raise CLIError(f"cannot hold out {VAL_FRACTION:.0%} of every class from {len(y)} train images ({e})") from None


def probe_state(spec: str, clip_name: str, c: float, clf) -> dict:
    """The checkpoint infer.py reads: plain tensors and strings (loads with weights_only=True)."""
    return {"clip": spec, "model": clip_name, "C": float(c), "coef": torch.from_numpy(clf.coef_.copy()),
            "intercept": torch.from_numpy(clf.intercept_.copy()), "classes": list(CIFAR10_CLASSES),
            "features": "unit-norm CLIP image embeddings (p7_clip.models.encode_images)"}


def load_probe(path: str | Path) -> dict:
    path = require_file(path, "probe checkpoint", "train one: python -m p7_clip.train --clip SPEC --cifar DATA --out DIR")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable or foreign file is the user's input, not a bug
        raise CLIError(f"{path} is not a P7 probe checkpoint (torch.load: {type(e).__name__})") from None
    if not isinstance(state, dict) or not {"clip", "coef", "intercept", "classes"} <= set(state):
        raise CLIError(f"{path} is not a P7 probe checkpoint (it lacks clip/coef/intercept/classes)")
    return state


def probe_predict(state: dict, features: np.ndarray) -> np.ndarray:
    """Class indices, computed as sklearn's LogisticRegression.predict does (X @ coef.T + intercept, argmax)."""
    coef, intercept = state["coef"].numpy(), state["intercept"].numpy()
    if features.shape[1] != coef.shape[1]:
        raise CLIError(f"features have {features.shape[1]} dimensions but the probe expects {coef.shape[1]}: another CLIP model?")
    return (features.astype(coef.dtype) @ coef.T + intercept).argmax(axis=1)


def encode_splits(clip: Clip, splits: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    from PIL import Image

    return {name: encode_images(clip, images, batch_size, load=Image.fromarray, desc=f"{clip.name} {name}").numpy()
            for name, images in splits.items()}


def zero_shot_accuracy(clip: Clip, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of zeroshot.py's single-prompt baseline and 18-template ensemble on the same features."""
    accuracy = {}
    for design in (zeroshot.BASELINE, zeroshot.ENSEMBLE):
        class_emb = zeroshot.class_embeddings(clip, CIFAR10_CLASSES, zeroshot.DESIGNS[design])
        accuracy[design] = round(float((zeroshot.predict(torch.from_numpy(features), class_emb).numpy() == labels).mean()), 4)
    return accuracy


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = last = time.perf_counter()
    seconds = {}

    def lap(name: str) -> None:  # wall time of each stage, for result.json
        nonlocal last
        seconds[name], last = round(time.perf_counter() - last, 2), time.perf_counter()

    check_spec(args.clip)
    device = resolve_device(args.device)
    train_images, train_labels = load_cifar10(args.cifar, "train", args.limit)
    test_images, test_labels = load_cifar10(args.cifar, "test", args.limit)
    missing = sorted(set(range(len(CIFAR10_CLASSES))) - set(train_labels.tolist()))
    if missing:
        raise CLIError(f"the train images lack classes {[CIFAR10_CLASSES[i] for i in missing]}: use more of them")
    out = ensure_writable_dir(args.out)
    clip = load_clip(args.clip, device)
    key = cache_key(args.clip, train_images, test_images)
    cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
    features, hit = cached_features(cache / f"features_{clip.tag}_{key}.npz",
                                    lambda: encode_splits(clip, {"train": train_images, "test": test_images}, args.batch_size))
    lap("features")

    fit_idx, val_idx = split_train_val(train_labels, args.seed)
    x, y = features["train"], train_labels
    best_c, val_acc = choose_c(lambda c: float(fit_probe(x[fit_idx], y[fit_idx], c).score(x[val_idx], y[val_idx])))
    lap("sweep")
    clf = fit_probe(x, y, best_c)
    state = probe_state(args.clip, clip.name, best_c, clf)
    with atomic_path(out / "probe.pt") as tmp:
        torch.save(state, tmp)
    test_acc = float((probe_predict(state, features["test"]) == test_labels).mean())
    lap("fit")

    zero_shot = zero_shot_accuracy(clip, features["test"], test_labels)
    lap("zeroshot")
    seconds["total"] = round(time.perf_counter() - start, 2)
    record = {"command": command_line("p7_clip.train", argv), "hardware": hardware(device), "model": clip.name,
              "clip": args.clip, "data": str(args.cifar), "feature_cache_hit": hit,
              "images": {"fit": len(fit_idx), "val": len(val_idx), "train": len(y), "test": len(test_labels)},
              "val_accuracy": {f"{c:.4g}": round(a, 4) for c, a in val_acc.items()}, "C": float(f"{best_c:.4g}"),
              "lbfgs_iterations": int(clf.n_iter_.max()), "train_accuracy": round(float(clf.score(x, y)), 4),
              "test_accuracy": round(test_acc, 4), "zero_shot_accuracy": zero_shot,
              "seconds": seconds}
    save_json(out / "result.json", record)
    print(f"{clip.name}: C={best_c:.4g} (val {val_acc[best_c]:.4f}), linear probe test {test_acc:.4f}; zero-shot "
          f"'{zeroshot.BASELINE}' {zero_shot[zeroshot.BASELINE]:.4f}, ensemble {zero_shot[zeroshot.ENSEMBLE]:.4f} "
          f"({len(test_labels)} test images, {seconds['total']:.1f} s, features {'cached' if hit else 'computed'})")
    return record


if __name__ == "__main__":
    run_cli(main)
