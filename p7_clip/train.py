"""Linear probe on frozen CLIP image features (CLIP paper, sec. 3.2), the standard evaluation beside zero-shot.

    python -m p7_clip.train --clip ViT-B-32=weights/ViT-B-32-openai --data cifar-10-batches-py \\
        --out outputs/p7/probe/ViT-B-32
    OMP_NUM_THREADS=1 python -m p7_clip.train --clip ViT-B-32=tiny \\
        --data ../shared/data/cifar10/cifar10_slice.npz --out outputs/p7_probe/ViT-B-32_tiny   # tiny random model

Unit image embeddings of CIFAR-10 train and test (cached in CACHE_DIR, keyed by model and
images, so a rerun skips the encoder) feed scikit-learn's L-BFGS logistic regression. The
inverse regularisation C is chosen on a stratified 10% of train held out (coarse decades,
then the two half-decade neighbours of the best): each C tried is one step of the run, logged
in OUT/log.csv and checkpointed in OUT/last.pt, so re-running the command resumes the search
(--max-seconds ends a session after a step: model.pt then holds the best C so far, fitted on all
of train, and the test set waits for the end). The final probe is fitted on all of train and the
test set is scored once. For comparison the same test features are classified zero-shot with
zeroshot.py's prompts. OUT gets model.pt (the probe, p7_clip/probe.py: what infer.py reads) and
result.json (the recipe, steps, sessions; its metrics the numbers, command, hardware, time).
No probe ships: --preset shipped is the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hw2_utils import (
    HelpFormatter,
    CIFAR10_CLASSES,
    CLIError,
    REQUIRED,
    RunFolder,
    add_common_args,
    atomic_path,
    command_line,
    describe_hardware,
    load_cifar10,
    parse_with_presets,
    positive_int,
    resolve_device,
    run_cli,
)
from p7_clip import zeroshot
from p7_clip.models import TINY, TINY_SEED, Clip, check_spec, encode_images, load_clip
from p7_clip.probe import probe_predict, probe_state

# C = 1/lambda. The paper sweeps lambda over 1e-6..1e6 on raw features; ours are unit-norm, where
# C = 1e-2 already underfits and 1e4 is all but unregularised. One refinement step of the paper's search follows.
C_DECADES = [10.0**k for k in range(-2, 5)]
SEARCH_STEPS = len(C_DECADES) + 2  # the decades, then the best one's two half-decade neighbours
VAL_FRACTION = 0.1  # held out of train to choose C; the test set is never used for it
MAX_ITER = 1000  # the paper's L-BFGS iteration cap
CACHE_VERSION = 1  # bump when the feature definition changes (it is part of the cache key)
LOG_FIELDS = ["step", "C", "val_accuracy", "seconds"]
PRESETS = {"shipped": {}}  # nothing trained here ships: the defaults


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--clip",
        required=True,
        metavar="ARCH=WEIGHTS",
        help="ARCH=FOLDER, ARCH=FILE or ARCH=tiny (models.py)",
    )
    add_common_args(
        p,
        data=(REQUIRED, "cifar-10-batches-py/ folder or .npz with train_/test_ images and labels"),
        out=(REQUIRED, "run folder: model.pt, result.json, log.csv, last.pt"),
        presets=PRESETS,
        precision=None,
        ckpt_every=1,
        limit="use only the first N images of each split (smoke runs)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="feature cache (default OUT/cache; kept by --no-resume: it is "
        "keyed by the model and the images)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    return parse_with_presets(p, argv, PRESETS)


def cache_key(spec: str, *arrays: np.ndarray) -> str:
    """Hash of what the features depend on: the model (spec, and the weight files' size and
    mtime, so replaced weights miss the cache) and the exact image bytes."""
    arch, weights, _ = check_spec(spec)
    h = hashlib.sha256(
        f"{CACHE_VERSION}|{arch}|{TINY_SEED if weights == TINY else Path(weights).resolve()}".encode()
    )
    if weights != TINY:
        files = sorted(Path(weights).rglob("*")) if Path(weights).is_dir() else [Path(weights)]
        h.update(
            repr(
                [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
            ).encode()
        )
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def cached_features(
    path: Path, encode: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
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


def next_c(scores: dict[float, float]) -> float | None:
    """The next C to try given the validation accuracy of those tried so far, or None when the
    search is done: every decade, then the two half-decade neighbours of the best decade."""
    for c in C_DECADES:
        if c not in scores:
            return c
    best = best_c({c: scores[c] for c in C_DECADES})
    return next((c for c in (best / 10**0.5, best * 10**0.5) if c not in scores), None)


def best_c(scores: dict[float, float]) -> float:
    """The C with the best validation accuracy; ties go to the smaller C (the stronger regularisation)."""
    return max(sorted(scores), key=scores.get)


def split_train_val(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of a stratified split that holds out VAL_FRACTION of every class."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(
            np.arange(len(y)), test_size=VAL_FRACTION, stratify=y, random_state=seed
        )
    except ValueError as e:
        raise CLIError(
            f"cannot hold out {VAL_FRACTION:.0%} of every class from {len(y)} train images ({e})"
        ) from None


def encode_splits(
    clip: Clip, splits: dict[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
    from PIL import Image

    return {
        name: encode_images(
            clip, images, batch_size, load=Image.fromarray, desc=f"{clip.name} {name}"
        ).numpy()
        for name, images in splits.items()
    }


def zero_shot_accuracy(clip: Clip, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of zeroshot.py's single-prompt baseline and 18-template ensemble on the same features."""
    accuracy = {}
    for design in (zeroshot.BASELINE, zeroshot.ENSEMBLE):
        class_emb = zeroshot.class_embeddings(clip, CIFAR10_CLASSES, zeroshot.DESIGNS[design])
        accuracy[design] = round(
            float(
                (zeroshot.predict(torch.from_numpy(features), class_emb).numpy() == labels).mean()
            ),
            4,
        )
    return accuracy


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    check_spec(args.clip)
    device = resolve_device(args.device)
    run = RunFolder.from_args(args)
    train_images, train_labels = load_cifar10(args.data, "train", args.limit)
    test_images, test_labels = load_cifar10(args.data, "test", args.limit)
    missing = sorted(set(range(len(CIFAR10_CLASSES))) - set(train_labels.tolist()))
    if missing:
        raise CLIError(
            f"the train images lack classes {[CIFAR10_CLASSES[i] for i in missing]}: use more of them"
        )
    identity = {
        "clip": args.clip,
        "data": str(Path(args.data).resolve()),
        "limit": args.limit,
        "seed": args.seed,
    }
    state = run.load(identity)
    # C -> validation accuracy, the search so far
    scores: dict[float, float] = state["val_accuracy"] if state else {}
    if state:
        print(f"resumed from {run.checkpoint} at step {len(scores)}")
    log = run.start(
        len(scores), SEARCH_STEPS, LOG_FIELDS, command_line("p7_clip.train", argv), device
    )

    clip = load_clip(args.clip, device)
    key = cache_key(args.clip, train_images, test_images)
    cache = Path(args.cache_dir) if args.cache_dir else run.out / "cache"
    features, hit = cached_features(
        cache / f"features_{clip.tag}_{key}.npz",
        lambda: encode_splits(clip, {"train": train_images, "test": test_images}, args.batch_size),
    )
    t_features = time.perf_counter()

    fit_idx, val_idx = split_train_val(train_labels, args.seed)
    x, y = features["train"], train_labels
    while not run.stopping and (c := next_c(scores)) is not None:
        t_fit = time.perf_counter()
        scores[c] = float(fit_probe(x[fit_idx], y[fit_idx], c).score(x[val_idx], y[val_idx]))
        log.writerow(
            [len(scores), f"{c:.4g}", f"{scores[c]:.4f}", f"{time.perf_counter() - t_fit:.2f}"]
        )
        if run.checkpoint_due(len(scores), SEARCH_STEPS):
            run.save({"val_accuracy": scores})
    t_search = time.perf_counter()

    chosen = best_c(scores)
    clf = fit_probe(x, y, chosen)
    state = probe_state(args.clip, clip.name, chosen, clf)
    with atomic_path(run.model) as tmp:
        torch.save(state, tmp)
    if run.stopping:  # --max-seconds: the best C so far; the test set waits for the end
        return run.finish(len(scores), {"C_so_far": float(f"{chosen:.4g}")})
    test_acc = float((probe_predict(state, features["test"]) == test_labels).mean())
    t_fit = time.perf_counter()
    zero_shot = zero_shot_accuracy(clip, features["test"], test_labels)
    t_end = time.perf_counter()

    # this session's
    seconds = {
        "features": t_features - t_start,
        "sweep": t_search - t_features,
        "fit": t_fit - t_search,
        "zeroshot": t_end - t_fit,
        "total": t_end - t_start,
    }
    record = {
        "command": command_line("p7_clip.train", argv),
        "hardware": describe_hardware(device),
        "model": clip.name,
        "clip": args.clip,
        "data": str(args.data),
        "feature_cache_hit": hit,
        "images": {
            "fit": len(fit_idx),
            "val": len(val_idx),
            "train": len(y),
            "test": len(test_labels),
        },
        "val_accuracy": {f"{c:.4g}": round(a, 4) for c, a in sorted(scores.items())},
        "C": float(f"{chosen:.4g}"),
        "lbfgs_iterations": int(clf.n_iter_.max()),
        "train_accuracy": round(float(clf.score(x, y)), 4),
        "test_accuracy": round(test_acc, 4),
        "zero_shot_accuracy": zero_shot,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    run.finish(len(scores), record)
    print(
        f"{clip.name}: C={chosen:.4g} (val {scores[chosen]:.4f}), linear probe test {test_acc:.4f}; zero-shot "
        f"'{zeroshot.BASELINE}' {zero_shot[zeroshot.BASELINE]:.4f}, ensemble {zero_shot[zeroshot.ENSEMBLE]:.4f} "
        f"({len(test_labels)} test images, {seconds['total']:.1f} s, features {'cached' if hit else 'computed'})"
    )
    return record


if __name__ == "__main__":
    run_cli(main)
