"""CLIP score of generated images: the cosine between each image's and its prompt's CLIP
embeddings (x100, as in Hessel et al. 2021 without their clipping at 0), with a CLIP model loaded
from a local folder by the course grader's loader (evaluation/clip_scores.py)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.clip_scores import load_clip
from hw2_utils import to_uint8


def _features(output) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projection; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    def __init__(self, path: str, device: torch.device):
        self.model, self.processor = load_clip(path, device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, texts: list[str]) -> np.ndarray:
        """(N,3,H,W) in [0,1] and N texts -> N scores in [-100, 100]."""
        pil = [Image.fromarray(a) for a in to_uint8(images, (0.0, 1.0)).numpy()]
        inputs = self.processor(text=list(texts), images=pil, return_tensors="pt", padding=True).to(self.device)
        image = F.normalize(_features(self.model.get_image_features(pixel_values=inputs["pixel_values"])), dim=-1)
        text = F.normalize(_features(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                                  attention_mask=inputs["attention_mask"])), dim=-1)
        return (100 * (image * text).sum(-1)).float().cpu().numpy()
