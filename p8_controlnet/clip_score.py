"""CLIP score of generated images: the cosine between each image's and its prompt's CLIP
embeddings (x100, as in Hessel et al. 2021 without their clipping at 0), with a CLIP model loaded
from a local folder by the course grader's loader (evaluation/clip_scores.py).

Scores go through CLIP's own processor on 8-bit images, as a saved PNG would be scored. CLIP
refinement (refine.py) needs a gradient instead: `similarity` preprocesses in torch (resize,
centre crop, mean/std) and keeps the graph. CLIP's weights are frozen either way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.clip_scores import load_clip, unit_features
from hw2_utils import to_uint8


class ClipScorer:
    def __init__(self, path: str, device: torch.device):
        self.model, self.processor = load_clip(path, device)
        self.model.requires_grad_(False)  # refinement ascends the score in the image, never in CLIP
        self.device = device

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(N, D) unit text embeddings."""
        tokens = self.processor.tokenizer(list(texts), padding=True, return_tensors="pt").to(
            self.device
        )
        return unit_features(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, D) unit image embeddings of preprocessed pixels; differentiable."""
        return unit_features(
            self.model.get_image_features(pixel_values=pixel_values.to(self.device))
        )

    @torch.no_grad()
    def processed(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's processor on (N,3,H,W) images in [0,1], rounded to 8 bits as a PNG holds them."""
        pil = [Image.fromarray(a) for a in to_uint8(images.detach().cpu(), (0.0, 1.0)).numpy()]
        return self.processor(images=pil, return_tensors="pt")["pixel_values"]

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """The processor's steps in torch, differentiable: shortest edge resized (bicubic, antialiased),
        centre crop, CLIP's mean/std. Within the 8-bit rounding of `processed`."""
        ip = self.processor.image_processor
        (h, w), side = images.shape[-2:], ip.size["shortest_edge"]
        size = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
        x = F.interpolate(
            images.float(), size=size, mode="bicubic", antialias=True, align_corners=False
        )
        top, left = (size[0] - ip.crop_size["height"]) // 2, (size[1] - ip.crop_size["width"]) // 2
        x = x[..., top : top + ip.crop_size["height"], left : left + ip.crop_size["width"]]
        mean, std = (
            torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (ip.image_mean, ip.image_std)
        )
        return (x - mean) / std

    def similarity(self, images: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(N,) cosines of images in [0,1] with unit text features, with the gradient to the images."""
        return (self.image_features(self.pixel_values(images)) * text_features).sum(-1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, texts: list[str]) -> np.ndarray:
        """(N,3,H,W) in [0,1] and N texts -> N scores in [-100, 100]."""
        image = self.image_features(self.processed(images))
        return (100 * (image * self.text_features(texts)).sum(-1)).float().cpu().numpy()

    @torch.no_grad()
    def image_cosine(self, images: torch.Tensor, references: torch.Tensor) -> np.ndarray:
        """(N,) cosines between the CLIP embeddings of images and of references (image similarity)."""
        a, b = (self.image_features(self.processed(x)) for x in (images, references))
        return (a * b).sum(-1).float().cpu().numpy()
