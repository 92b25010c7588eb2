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

    # Ganin et al.'s MNIST extractor (32/48 channels) widened to 32/64, with BatchNorm;
    # small enough that the whole benchmark trains on a 2-core CPU in minutes.
    def __init__(self, feature_dim: int = 64 * 4 * 4, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 24 -> 12
            nn.Conv2d(32, 64, 5),
            nn.BatchNorm2d(64),
            nn.Dropout2d(0.1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 8 -> 4
            nn.Flatten(),
        )
        self.label_head = nn.Sequential(
            nn.Linear(feature_dim, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(256, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
        self.domain_head = nn.Sequential(
            nn.Linear(feature_dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 2)
        )

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.label_head(self.features(x))

    def forward(
        self, *batches: torch.Tensor, lambda_: float = 0.0
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(label logits, domain logits) for each batch. Batches of different domains go
        through the network one by one, so in training every BatchNorm normalises each
        domain with its own statistics (with one concatenated batch, training was unstable
        and target accuracy lower in our trial runs). One call, so DDP sees one forward."""
        outputs = []
        for x in batches:
            f = self.features(x)
            outputs.append(
                (self.label_head(f), self.domain_head(GradientReversal.apply(f, lambda_)))
            )
        return outputs


@torch.no_grad()
def adapt_batchnorm(
    model: DANN, images: torch.Tensor, device: torch.device, batch_size: int = 500
) -> DANN:
    """AdaBN (Li et al. 2016): replace every BatchNorm's running statistics by the mean and
    variance of the features of `images` (unlabelled target images; averaged over batches of
    `batch_size`), so that at test time the target is normalised with its own statistics, as
    each domain was in training (forward() normalises the domains one by one). Only BN buffers
    change; the model is left in eval mode."""
    # The classifier's path only: the domain head is not run here, so its statistics stay as trained.
    norms = [
        m
        for part in (model.features, model.label_head)
        for m in part.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches: the statistics of all the images
        m.train()
    try:
        for chunk in images.split(batch_size):
            model.classify(chunk.to(device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model
