"""A concept's training images and the prompt templates that wrap its placeholder."""

from __future__ import annotations

from pathlib import Path

import torch

from hw2_utils import list_images, open_rgb

# The Textual Inversion caption lists, as diffusers' examples/textual_inversion/textual_inversion.py
# holds them (imagenet_templates_small, imagenet_style_templates_small, from the paper's code,
# rinongal/textual_inversion ldm/data/personalized*.py): varied wording and framing, so the learned
# vector captures the concept rather than one phrasing. "{}" is the placeholder. The style list's
# two repeated entries are the reference's, kept: captions are drawn uniformly from the list.
OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
]
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


def load_concept_images(folder: str | Path, size: int) -> torch.Tensor:
    """(N,3,size,size) in [-1, 1]: each image centre-cropped to a square, then resized."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    files = list_images(folder, "concept image folder")
    images = []
    for f in files:
        im = open_rgb(f)
        side = min(im.size)
        im = TF.center_crop(im, [side, side]).resize((size, size), Image.BICUBIC)
        images.append(TF.to_tensor(im) * 2 - 1)
    return torch.stack(images)
