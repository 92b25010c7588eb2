"""The deletion metric of cam.py: exact masking, that it ranks a map that points at the
evidence above random pixels (on a toy model whose evidence is known), and that it breaks a
map's ties at random; the shipped model's check lives in test_p6_shipped.py."""
from __future__ import annotations

import torch
import torch.nn as nn

from p6_classification import cam
from p6_classification.data import CIFAR_MEAN


def test_mask_pixels_sets_exactly_the_first_pixels_of_the_order_to_the_mean():
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    order = torch.stack([torch.arange(20).flip(0), torch.arange(20)])
    masked = cam.mask_pixels(images, order, fraction=0.25)  # 5 of 20 pixels
    mean = torch.tensor([round(255 * m) for m in CIFAR_MEAN], dtype=torch.uint8)
    changed = (masked != images).any(dim=1).flatten(1)
    for i, pixels in enumerate(([19, 18, 17, 16, 15], [0, 1, 2, 3, 4])):
        flat = masked[i].flatten(1)
        assert all(torch.equal(flat[:, p], mean) for p in pixels)
        assert set(changed[i].nonzero()[:, 0].tolist()) <= set(pixels)
        untouched = [p for p in range(20) if p not in pixels]
        assert torch.equal(flat[:, untouched], images[i].flatten(1)[:, untouched])


class CornerModel(nn.Module):
    """Class 1's logit is the mean red of the top-left 2x2 corner: the evidence is known."""

    def forward(self, x):
        red = x[:, 0, :2, :2].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(red), 10 * red], dim=1)


# Eight 8x8 images whose only evidence (for CornerModel's class 1) is the red top-left corner.
IMAGES = torch.zeros(8, 3, 8, 8, dtype=torch.uint8)
IMAGES[:, 0, :2, :2] = 255
ON_EVIDENCE = torch.zeros(8, 8, 8)
ON_EVIDENCE[:, :2, :2] = 1


def corner_deletion(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cam.deletion's probabilities for the corner images, predicted class 1."""
    return cam.deletion(CornerModel(), lambda x: x.float() / 255, IMAGES, torch.ones(8, dtype=torch.long), maps, "cpu")


def drops(probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: probs["intact"] - v for k, v in probs.items() if k != "intact"}


def test_deletion_ranks_a_map_on_the_evidence_above_random_pixels():
    probs = corner_deletion({"right": ON_EVIDENCE, "wrong": 1 - ON_EVIDENCE})
    drop = drops(probs)
    assert (drop["right"] > drop["random"]).all() and (drop["random"] >= drop["wrong"]).all()
    assert torch.equal(drop["wrong"], torch.zeros(8))  # masking elsewhere leaves the evidence intact
    again = corner_deletion({"right": ON_EVIDENCE})
    assert torch.equal(again["random"], probs["random"])  # the random baseline is seeded


def test_deletion_breaks_ties_at_random_not_by_pixel_position():
    """A flat map (all 0 after ReLU) must not mask the first rows, which here hold the evidence."""
    drop = drops(corner_deletion({"right": ON_EVIDENCE, "flat": torch.zeros(8, 8, 8)}))
    # row order would mask pixels 0..12, the whole evidence corner, in every image
    assert (drop["flat"] < drop["right"]).sum() >= 6
