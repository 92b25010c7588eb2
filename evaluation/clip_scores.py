"""CLIP image and text scores of Textual Inversion outputs, as the course grades Problem 3.

    python -m evaluation.clip_scores --json_path ../shared/data/hw2_data/textual_inversion/input.json \\
        --input_dir ../shared/data/hw2_data/textual_inversion --output_dir OUT --clip CLIP_DIR

For concept C and prompt i of input.json, OUT/C/i/ must hold exactly 25 images, and
INPUT_DIR/C/ holds the concept's source images. For each generated image:
  image score = 100 x cosine(CLIP image embedding, source embedding), averaged over the sources;
  text score  = CLIP logits_per_image for the prompt's `prompt_4_clip_eval` text
                (logit scale x cosine of the image and text embeddings).
The 5 images with the highest image + 2.5 x text score are kept; the case passes when the
average image score and the average text score over them both reach the json's baseline.

The model is openai/clip-vit-base-patch32 with its processor, loaded from local files only:
a folder given by --clip (for example made by
`huggingface-cli download openai/clip-vit-base-patch32 --local-dir CLIP_DIR`), or the
model id when it is already in the Hugging Face cache.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from hw2_utils import (
    HelpFormatter,
    CLIError,
    error_summary,
    list_images,
    open_rgb,
    progress,
    require_file,
    resolve_device,
    run_cli,
)

CLIP_ID = "openai/clip-vit-base-patch32"
IMAGES_PER_PROMPT = 25
TOP_K = 5
TEXT_WEIGHT = 2.5


def load_clip(clip: str = CLIP_ID, device: str | torch.device = "cpu"):
    """(CLIPModel, CLIPProcessor) in eval mode from a local transformers CLIP folder or the local
    Hugging Face cache: the one loader of the grader, P3's zero-shot classifier and P8's CLIP scores."""
    from transformers import CLIPModel, CLIPProcessor

    how = (
        f"download {CLIP_ID}, e.g. `huggingface-cli download {CLIP_ID} --local-dir CLIP_DIR`, "
        "and pass --clip CLIP_DIR"
    )
    try:
        model = CLIPModel.from_pretrained(clip, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(clip, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CLIError(f"CLIP model not found at {clip!r} ({error_summary(e)}); {how}") from None
    tokenizer = processor.tokenizer
    # Asked for a model id it has no files for, transformers can hand back a tokenizer
    # holding only its special tokens instead of failing; scores from it would be garbage.
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise CLIError(f"the CLIP tokenizer at {clip!r} has no vocabulary (files missing); {how}")
    return model.eval().to(device), processor


def unit_features(features) -> torch.Tensor:
    """Unit-length embeddings from CLIPModel.get_image_features / get_text_features:
    transformers 5 returns an output whose pooler_output holds the projected features,
    earlier versions the tensor itself."""
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    return features / features.norm(dim=-1, keepdim=True)


@torch.no_grad()
def prompt_scores(
    model,
    processor,
    generated: list,
    sources: list,
    text: str,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Per generated image: (image score, text score), each an array of len(generated)."""
    device = torch.device(device)
    pixels = processor(images=sources, return_tensors="pt")["pixel_values"].to(device)
    source_embeds = unit_features(model.get_image_features(pixel_values=pixels))
    image_scores, text_scores = [], []
    for start in range(0, len(generated), batch_size):
        inputs = processor(
            text=[text],
            images=generated[start : start + batch_size],
            return_tensors="pt",
            padding=True,
        )
        out = model(**inputs.to(device))
        image_scores.append(100 * (out.image_embeds @ source_embeds.T).mean(dim=1))
        text_scores.append(out.logits_per_image[:, 0])
    return torch.cat(image_scores).cpu().numpy(), torch.cat(text_scores).cpu().numpy()


def top_k_means(
    image_scores: np.ndarray, text_scores: np.ndarray, k: int = TOP_K
) -> tuple[float, float]:
    """Mean image and text score over the k images ranked best by image + 2.5 x text
    (ties go to the later image, as the course's sorted(...)[-k:] does)."""
    keep = np.argsort(image_scores + TEXT_WEIGHT * text_scores, kind="stable")[-k:]
    return float(image_scores[keep].mean()), float(text_scores[keep].mean())


def read_prompts(json_path: str | os.PathLike) -> dict:
    path = require_file(json_path, "prompt json")
    try:
        concepts = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(concepts, dict) or not concepts:
        raise CLIError(f"{path} must map concept ids to their prompts")
    for key, concept in concepts.items():
        fields = ("src_image", "prompt_4_clip_eval", "baseline")
        if not isinstance(concept, dict) or any(f not in concept for f in fields):
            raise CLIError(f"{path}: concept {key!r} needs the fields {', '.join(fields)}")
        prompts = concept["prompt_4_clip_eval"]
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise CLIError(
                f"{path}: prompt_4_clip_eval of concept {key!r} must be a non-empty list of strings"
            )
        if len(prompts) != len(concept["baseline"]):
            raise CLIError(
                f"{path}: concept {key!r} has {len(prompts)} prompts "
                f"but {len(concept['baseline'])} baselines"
            )
        if not all(isinstance(b, list) and len(b) == 2 for b in concept["baseline"]):
            raise CLIError(
                f"{path}: each baseline of concept {key!r} must be [image score, text score]"
            )
    return concepts


def evaluate(
    json_path: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    clip: str = CLIP_ID,
    device: str = "auto",
) -> list[dict]:
    """One dict per (concept, prompt): concept, prompt_idx, src_image, prompt, image, text,
    baseline and passed."""
    concepts = read_prompts(json_path)
    device = resolve_device(device)
    # Check every folder before loading CLIP, so a missing output fails in a second.
    jobs = []
    for key, concept in concepts.items():
        sources = list_images(Path(input_dir) / key, f"source images of concept {key}")
        for index, text in enumerate(concept["prompt_4_clip_eval"]):
            generated = list_images(
                Path(output_dir) / key / str(index), f"output of concept {key} prompt {index}"
            )
            if len(generated) != IMAGES_PER_PROMPT:
                raise CLIError(
                    f"{Path(output_dir) / key / str(index)} must hold exactly {IMAGES_PER_PROMPT} images, "
                    f"found {len(generated)}"
                )
            jobs.append((key, concept, index, text, sources, generated))
    model, processor = load_clip(clip, device)
    results = []
    for key, concept, index, text, sources, generated in progress(jobs, desc="prompts"):
        image_scores, text_scores = prompt_scores(
            model,
            processor,
            [open_rgb(f) for f in generated],
            [open_rgb(f) for f in sources],
            text,
            device,
        )
        image, text_score = top_k_means(image_scores, text_scores)
        baseline = concept["baseline"][index]
        results.append(
            {
                "concept": key,
                "prompt_idx": index,
                "src_image": concept["src_image"],
                "prompt": text,
                "image": image,
                "text": text_score,
                "baseline": baseline,
                "passed": image >= baseline[0] and text_score >= baseline[1],
            }
        )
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--json_path", required=True, help="the course's input.json")
    p.add_argument(
        "--input_dir",
        required=True,
        help="folder with one sub-folder of source images per concept id",
    )
    p.add_argument(
        "--output_dir",
        required=True,
        help="generated images: OUTPUT_DIR/<concept>/<prompt index>/*.png",
    )
    p.add_argument(
        "--clip",
        default=CLIP_ID,
        help="local folder of openai/clip-vit-base-patch32 (model + processor)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    results = evaluate(args.json_path, args.input_dir, args.output_dir, args.clip, args.device)
    for r in results:
        print(f'Image source: "{r["src_image"]}", text prompt: {r["prompt"]}')
        print(f"CLIP Image Score: {r['image']:.2f}")
        print(f"CLIP Text Score: {r['text']:.2f}")
        print(
            "PASS"
            if r["passed"]
            else f"Fail! Baseline is {r['baseline'][0]:.2f}/{r['baseline'][1]:.2f}"
        )
    print(f"You have passed {sum(r['passed'] for r in results)}/{len(results)} cases")
    return results


if __name__ == "__main__":
    run_cli(main)
