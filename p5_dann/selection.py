"""Unsupervised model selection for domain adaptation: scores that rank checkpoints (epochs,
hyperparameters, methods) without one target label.

- SND, Soft Neighborhood Density (Saito et al., ICCV 2021): the mean entropy of each target
  image's softmax-weighted neighbourhood among the others, in the space of the predicted class
  probabilities. Higher is better. The shipped criterion (p5_dann/sweep.py), chosen before
  any target val accuracy of this protocol's runs was seen, because DEV degenerates here (below).
- DEV, Deep Embedded Validation (You et al., ICML 2019): the source val error, importance-
  weighted by the density ratio w(x) = p_target(x) / p_source(x) of the model's features
  (estimated by a domain classifier), with the paper's control variate to cut its variance.
  It estimates the *target* error rate: lower is better. Reported with the effective sample
  size of its weights, (sum w)^2 / sum w^2 as a fraction of the val set (`dev_ess`), a
  label-free check of whether the estimate means anything: MNIST-M and USPS features are
  ~99.9% separable, and in a first trial run the weights' ESS was 1 to 4 images of 9,001.

Both read only source images with labels and target *train* images; nothing here takes a
target label.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SND_TEMPERATURE = 0.05  # the paper's temperature for the neighbourhood softmax
# domain classifier strengths tried; chosen by held-out domain accuracy,
DOMAIN_C_GRID = (0.001, 0.01, 0.1, 1.0)
# as the reference chooses its MLP's weight decay


def dev_risk(weights: np.ndarray, losses: np.ndarray) -> float:
    """DEV's risk from per-sample density ratios and losses of the source val set (You et al.
    2019, Alg. 1): mean(w * l) + eta * mean(w) - eta with eta = -Cov(w * l, w) / Var(w). The
    control variate uses that E[w] = 1 under the source distribution; with all weights equal
    it has nothing to correct (eta = 0) and the risk is the weighted mean."""
    weights, losses = np.asarray(weights, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if weights.shape != losses.shape or weights.ndim != 1 or len(weights) < 2:
        raise ValueError(
            f"dev_risk needs two 1-D arrays of one length >= 2, got {weights.shape} and {losses.shape}"
        )
    weighted = weights * losses
    variance = weights.var(ddof=1)
    eta = -np.cov(weighted, weights)[0, 1] / variance if variance > 0 else 0.0
    return float(weighted.mean() + eta * weights.mean() - eta)


def density_ratio(
    source: np.ndarray, target: np.ndarray, query: np.ndarray, seed: int = 0
) -> np.ndarray:
    """w(x) = p_target(x) / p_source(x) at each `query` row, from a domain classifier trained on
    `source` (label 0) against `target` (label 1) rows: w = P(t|x) / P(s|x) * n_s / n_t, the
    prior ratio undoing the classes' sizes. The classifier (standardised logistic regression)
    takes the strength from DOMAIN_C_GRID that best separates a held-out 20%."""
    x = np.concatenate([source, target])
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    x_fit, x_held, y_fit, y_held = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    best, best_acc = None, -1.0
    for c in DOMAIN_C_GRID:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(
            x_fit, y_fit
        )
        acc = clf.score(x_held, y_held)
        if acc > best_acc:
            best, best_acc = clf, acc
    p_target = np.clip(best.predict_proba(query)[:, 1], 1e-6, 1 - 1e-6)
    return p_target / (1 - p_target) * len(source) / len(target)


def snd_score(
    probs: torch.Tensor, temperature: float = SND_TEMPERATURE, chunk: int = 2048
) -> float:
    """SND (Saito et al. 2021): cosine similarities between the target images' class-probability
    vectors, each image's similarities to the *other* images (itself masked out) turned into a
    softmax at `temperature`, and the mean entropy of those neighbourhood distributions. Rows
    in chunks so 7,000 images never hold a full float64 N x N matrix at once."""
    unit = torch.nn.functional.normalize(probs.double(), dim=1)
    entropies = []
    for start in range(0, len(unit), chunk):
        sim = unit[start : start + chunk] @ unit.T / temperature
        rows = torch.arange(start, min(start + chunk, len(unit)))
        sim[rows - start, rows] = float("-inf")
        p = sim.softmax(1)
        entropies.append(-(p * p.clamp_min(1e-300).log()).sum(1))
    return float(torch.cat(entropies).mean())


@torch.no_grad()
def _features_and_logits(
    model, images: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    feats, logits = [], []
    for x in images.split(500):
        f = model.features(x.to(device))
        feats.append(f.float().cpu())
        logits.append(model.label_head(f).float().cpu())
    return torch.cat(feats), torch.cat(logits)


def selection_scores(
    model,
    source_train: torch.Tensor,
    source_val: torch.Tensor,
    source_val_labels: torch.Tensor,
    target_train: torch.Tensor,
    device: torch.device,
    seed: int = 0,
) -> dict:
    """Every criterion for one checkpoint: source val accuracy, DEV (an estimate of the target
    error rate) and SND, from source images (labels of the val part only) and target train images."""
    f_src, _ = _features_and_logits(model, source_train, device)
    f_val, logits_val = _features_and_logits(model, source_val, device)
    f_tgt, logits_tgt = _features_and_logits(model, target_train, device)
    errors = (logits_val.argmax(1) != source_val_labels).double().numpy()
    weights = density_ratio(f_src.numpy(), f_tgt.numpy(), f_val.numpy(), seed=seed)
    return {
        "source_val_acc": float(1 - errors.mean()),
        "snd": snd_score(logits_tgt.softmax(1)),
        "dev": dev_risk(weights, errors),
        "dev_ess": effective_sample_size(weights),
    }


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2 over len(w): 1 for equal weights, 1/n when one sample carries them all."""
    return float(weights.sum() ** 2 / (weights**2).sum() / len(weights))


# criterion -> (what the record calls it, True when higher is better)
CRITERIA = {
    "dev": ("DEV risk (estimated target error)", False),
    "snd": ("SND", True),
    "source_val_acc": ("source val accuracy", True),
}


def best_epoch(history: list[dict], criterion: str) -> dict:
    """The entry of `history` (one dict per epoch) that `criterion` ranks first; ties go to the later epoch."""
    higher = CRITERIA[criterion][1]
    return max(reversed(history), key=lambda h: h[criterion] if higher else -h[criterion])
