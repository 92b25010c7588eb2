"""P5's unsupervised selection criteria (p5_dann/selection.py) on hand-made cases: DEV's
control-variate risk, its density ratio on a known pair of Gaussians, SND's entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from p5_dann.selection import best_epoch, density_ratio, dev_risk, effective_sample_size, snd_score


def test_dev_risk_equals_the_papers_formula_by_hand():
    w, losses = np.array([0.5, 1.0, 1.5, 1.0]), np.array([1.0, 0.0, 1.0, 0.0])
    wl = w * losses  # [0.5, 0, 1.5, 0], mean 0.5
    cov = np.sum((wl - wl.mean()) * (w - w.mean())) / 3  # only (1.0)(0.5) is non-zero: 0.5 / 3
    var = np.sum((w - w.mean()) ** 2) / 3  # 0.5 / 3
    eta = -cov / var  # -1
    assert cov == pytest.approx(1 / 6) and eta == pytest.approx(-1.0)
    # 0.5 (mean(w) = 1: no correction)
    assert dev_risk(w, losses) == pytest.approx(wl.mean() + eta * w.mean() - eta)
    # weights whose mean is not 1 are corrected toward it: 0.2 * 1.5 + eta * 1.5 - eta with eta = -0.2
    assert dev_risk(np.array([1.0, 2.0]), np.array([0.2, 0.2])) == pytest.approx(0.2)


def test_dev_risk_with_equal_weights_is_the_plain_error():
    losses = np.array([0, 1, 1, 0, 1.0])
    assert dev_risk(np.ones(5), losses) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        dev_risk(np.ones(3), np.ones(4))


def test_known_density_ratio_gives_the_target_risk():
    """Source N(0, 1), target N(1, 1): the true ratio is exp(x - 1/2). Losses 1 where x > 1:
    the source error is P(x > 1) = 0.159, the target error P(x > 1 | target) = 0.5. The
    true-ratio DEV recovers 0.5, and so does the estimated ratio, while the plain error does not."""
    rng = np.random.default_rng(0)
    source, target, val = (
        rng.normal(0, 1, (4000, 1)),
        rng.normal(1, 1, (4000, 1)),
        rng.normal(0, 1, (20000, 1)),
    )
    losses = (val[:, 0] > 1).astype(float)
    assert losses.mean() == pytest.approx(0.159, abs=0.01)
    assert dev_risk(np.exp(val[:, 0] - 0.5), losses) == pytest.approx(0.5, abs=0.02)
    estimated = density_ratio(source, target, val, seed=0)
    assert np.corrcoef(estimated, np.exp(val[:, 0] - 0.5))[0, 1] > 0.99
    assert dev_risk(estimated, losses) == pytest.approx(0.5, abs=0.04)


def test_snd_is_the_mean_neighbourhood_entropy_by_hand():
    # three probability vectors: a and b identical, c orthogonal to both
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # a's neighbours: b (cosine 1) and c (cosine 0) -> softmax(1/t, 0) ; the same for b; c sees (0, 0) -> uniform
    p = math.exp(1 / t) / (math.exp(1 / t) + 1)
    h_ab = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert snd_score(probs, temperature=t) == pytest.approx((2 * h_ab + math.log(2)) / 3)
    assert snd_score(probs, temperature=t, chunk=2) == pytest.approx(
        snd_score(probs, temperature=t)
    )


def test_best_epoch_follows_each_criterions_direction():
    history = [
        {"epoch": 1, "dev": 0.2, "snd": 3.0, "source_val_acc": 0.9},
        {"epoch": 2, "dev": 0.1, "snd": 2.0, "source_val_acc": 0.9},
        {"epoch": 3, "dev": 0.3, "snd": 4.0, "source_val_acc": 0.8},
    ]
    assert best_epoch(history, "dev")["epoch"] == 2  # lowest estimated risk
    assert best_epoch(history, "snd")["epoch"] == 3  # highest density
    assert best_epoch(history, "source_val_acc")["epoch"] == 2  # ties go to the later epoch


def test_effective_sample_size_by_hand():
    assert effective_sample_size(np.ones(4)) == pytest.approx(1.0)
    # one sample carries all: 1/n
    assert effective_sample_size(np.array([1.0, 0, 0, 0])) == pytest.approx(0.25)
    assert effective_sample_size(np.array([1.0, 1, 2, 0])) == pytest.approx(16 / 6 / 4)
