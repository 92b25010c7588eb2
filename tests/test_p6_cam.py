"""The deletion and insertion curves of cam.py: exact masking, the curves and their areas on a
toy model whose evidence is known (computed by hand), the ranking of a map on the evidence
above its baselines, and that a map's ties are broken at random; the shipped model's check
lives in test_p6_shipped.py."""

from __future__ import annotations

import torch
import torch.nn as nn

from p6_classification import cam
from p6_classification.data import CIFAR_MEAN


def test_mask_pixels_sets_exactly_the_first_pixels_of_the_order_to_the_mean():
    images = torch.randint(
        0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
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


def corner_curves(
    maps: dict[str, torch.Tensor], steps: int = 10
) -> dict[str, dict[str, torch.Tensor]]:
    """cam.curves for the corner images (predicted class 1) with each map's order and its baselines."""
    orders = cam.pixel_orders(maps, len(IMAGES), (8, 8), seed=0)
    return cam.curves(
        CornerModel(),
        lambda x: x.float() / 255,
        IMAGES,
        torch.ones(8, dtype=torch.long),
        orders,
        "cpu",
        steps,
    )


def p1(red: float) -> float:
    """CornerModel's probability of class 1 when the corner's mean red is `red` (in [0, 1])."""
    return torch.sigmoid(torch.tensor(10 * red, dtype=torch.float64)).item()


def test_curves_and_areas_match_the_hand_computed_ones():
    """64 pixels, the evidence is 4 of them. In the map's order the 4 come first: 10% of the
    pixels (6) already holds them all. Reversed (least salient first) they come last: only the
    100% point reaches them. Masked pixels take the mean colour: red 125/255, not 0."""
    c = corner_curves({"right": ON_EVIDENCE})
    intact, masked = p1(1.0), p1(round(255 * CIFAR_MEAN[0]) / 255)
    expected = {
        ("deletion", "right"): [intact] + [masked] * 10,
        ("insertion", "right"): [masked] + [intact] * 10,
        ("deletion", "right" + cam.LEAST): [intact] * 10 + [masked],
        ("insertion", "right" + cam.LEAST): [masked] * 10 + [intact],
    }
    for (mode, name), values in expected.items():
        torch.testing.assert_close(c[mode][name], torch.tensor([values] * 8, dtype=torch.float32))
    # trapezoids on 0, 0.1, ..., 1: one sloped interval, nine flat ones
    torch.testing.assert_close(
        cam.area(c["deletion"]["right"]),
        torch.full((8,), 0.05 * (intact + masked) + 0.9 * masked, dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )
    torch.testing.assert_close(
        cam.area(c["insertion"]["right"]),
        torch.full((8,), 0.05 * (intact + masked) + 0.9 * intact, dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )


def test_a_map_on_the_evidence_beats_random_pixels_and_another_images_map():
    c = corner_curves({"right": ON_EVIDENCE, "wrong": 1 - ON_EVIDENCE})
    deletion = {k: cam.area(v) for k, v in c["deletion"].items()}
    insertion = {k: cam.area(v) for k, v in c["insertion"].items()}
    assert (deletion["right"] < deletion["random"]).all() and (
        deletion["random"] < deletion["wrong"]
    ).all()
    assert (insertion["right"] > insertion["random"]).all() and (
        insertion["random"] > insertion["wrong"]
    ).all()
    # every image here has its evidence in the same corner: another image's map points at it too
    torch.testing.assert_close(deletion["right" + cam.ANOTHER], deletion["right"])
    again = corner_curves({"right": ON_EVIDENCE})
    # the random order is seeded
    assert torch.equal(again["deletion"]["random"], c["deletion"]["random"])


def test_ties_are_broken_at_random_not_by_pixel_position():
    """A flat map (all 0 after ReLU) must not delete the first rows first, which here hold the evidence."""
    c = corner_curves({"right": ON_EVIDENCE, "flat": torch.zeros(8, 8, 8)})
    # row order would mask pixels 0..5 at 10% and 0..12 at 20%: the whole corner by 20%, in every image
    assert (c["deletion"]["flat"][:, 2] > c["deletion"]["right"][:, 2]).sum() >= 6
