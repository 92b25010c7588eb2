"""The linear probe's checkpoint, train.py's OUT/model.pt: what train.py writes and infer.py reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hw2_utils import CIFAR10_CLASSES, CLIError, require_file


def probe_state(spec: str, clip_name: str, c: float, clf) -> dict:
    """The checkpoint of a fitted sklearn LogisticRegression: plain tensors and strings (loads
    with weights_only=True)."""
    return {
        "clip": spec,
        "model": clip_name,
        "C": float(c),
        "coef": torch.from_numpy(clf.coef_.copy()),
        "intercept": torch.from_numpy(clf.intercept_.copy()),
        "classes": list(CIFAR10_CLASSES),
        "features": "unit-norm CLIP image embeddings (p7_clip.models.encode_images)",
    }


def load_probe(path: str | Path) -> dict:
    path = require_file(
        path,
        "probe checkpoint",
        "train one: python -m p7_clip.train --clip SPEC --data CIFAR --out DIR",
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable or foreign file is the user's input, not a bug
        raise CLIError(
            f"{path} is not a P7 probe checkpoint (torch.load: {type(e).__name__})"
        ) from None
    if not isinstance(state, dict) or not {"clip", "coef", "intercept", "classes"} <= set(state):
        raise CLIError(
            f"{path} is not a P7 probe checkpoint (it lacks clip/coef/intercept/classes)"
        )
    return state


def probe_predict(state: dict, features: np.ndarray) -> np.ndarray:
    """Class indices, computed as sklearn's LogisticRegression.predict does (X @ coef.T + intercept, argmax)."""
    coef, intercept = state["coef"].numpy(), state["intercept"].numpy()
    if features.shape[1] != coef.shape[1]:
        raise CLIError(
            f"features have {features.shape[1]} dimensions but the probe expects {coef.shape[1]}: another CLIP model?"
        )
    return (features.astype(coef.dtype) @ coef.T + intercept).argmax(axis=1)
