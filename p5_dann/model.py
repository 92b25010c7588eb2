"""DANN (Ganin et al. 2016): feature extractor, label classifier, domain classifier, and
the gradient reversal layer between features and the domain classifier."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -lambda."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambda_ * grad, None


def grl_lambda(progress: float, gamma: float = 10.0) -> float:
    """The paper's schedule 2 / (1 + exp(-gamma p)) - 1: 0 at the start, -> 1 at the end,
    so the noisy early domain signal cannot wreck the features."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DANN(nn.Module):
    """28x28x3 digits -> 10 classes (label head) and 2 domains (domain head)."""

    # Ganin et al.'s MNIST extractor (32/48 channels) widened to 32/64: 0.34 s per
    # 128+128-image training step on one CPU thread here; 64/128 costs 0.8 s.
    def __init__(self, feature_dim: int = 64 * 4 * 4, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),        # 28 -> 24 -> 12
            nn.Conv2d(32, 64, 5), nn.BatchNorm2d(64), nn.Dropout2d(0.1), nn.ReLU(), nn.MaxPool2d(2),  # -> 8 -> 4
            nn.Flatten())
        self.label_head = nn.Sequential(
            nn.Linear(feature_dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
        self.domain_head = nn.Sequential(
            nn.Linear(feature_dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 2))

    def forward(self, x: torch.Tensor, lambda_: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.label_head(f), self.domain_head(GradientReversal.apply(f, lambda_))
