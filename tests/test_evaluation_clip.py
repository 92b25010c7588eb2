"""evaluation/clip_scores.py with a tiny CLIP built from config and a hand-made tokenizer:
per-prompt top-5 scores checked against an independent numpy computation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hw2_utils import CLIError, run_cli
from evaluation.clip_scores import load_clip, main, top_k_means

PROMPTS = {
    "0": ["a dog on a hill.", "a dog on a bench."],
    "1": ["a street, in the style of revoy."],
}


def build_tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir()
    chars = [chr(i) for i in range(33, 127)]  # printable ASCII, alone and word-final
    vocab = (
        chars + [c + "</w>" for c in chars] + ["do", "dog</w>", "<|startoftext|>", "<|endoftext|>"]
    )
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nd o\ndo g</w>\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    special = dict(
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            **special,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_images(folder, n, seed, size=(40, 36)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"{k:02d}.png"
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    clip = build_tiny_clip(root / "clip")
    for seed, (concept, prompts) in enumerate(PROMPTS.items()):
        write_images(root / "src" / concept, 3, seed=100 + seed, size=(64, 48))
        for index in range(len(prompts)):
            write_images(root / "out" / concept / str(index), 25, seed=10 * seed + index)
    return root, clip


def expected_scores(clip, root, concept, index, text):
    """Top-5 means computed here from the model's embeddings with numpy."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip).eval(), CLIPProcessor.from_pretrained(clip)

    def unit(x):
        x = (x if isinstance(x, torch.Tensor) else x.pooler_output).numpy().astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def embed(folder):
        images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
        return unit(model.get_image_features(**processor(images=images, return_tensors="pt")))

    with torch.no_grad():
        generated, sources = (
            embed(root / "out" / concept / str(index)),
            embed(root / "src" / concept),
        )
        text_embed = unit(
            model.get_text_features(**processor.tokenizer([text], return_tensors="pt"))
        )
        scale = model.logit_scale.exp().item()
    image = 100 * (generated @ sources.T).mean(axis=1)
    text_score = scale * (generated @ text_embed.T)[:, 0]
    best = np.argsort(-(image + 2.5 * text_score))[:5]
    return image[best].mean(), text_score[best].mean()


def write_json(root, baselines):
    data = {
        c: {
            "src_image": f"concept {c}",
            "token_name": f"<new{c}>",
            "prompt": prompts,
            "prompt_4_clip_eval": prompts,
            "baseline": baselines[c],
        }
        for c, prompts in PROMPTS.items()
    }
    (root / "input.json").write_text(json.dumps(data))
    return root / "input.json"


def test_scores_match_independent_top5_and_baselines_decide_pass(setup, capsys):
    root, clip = setup
    expected = {
        (c, i): expected_scores(clip, root, c, i, text)
        for c, prompts in PROMPTS.items()
        for i, text in enumerate(prompts)
    }
    # prompt 0/0 just passes, 0/1 misses the image baseline, 1/0 misses the text baseline
    nudge = {("0", 0): (-0.01, -0.01), ("0", 1): (0.01, -0.01), ("1", 0): (-0.01, 0.01)}
    baselines = {
        c: [
            [expected[c, i][0] + nudge[c, i][0], expected[c, i][1] + nudge[c, i][1]]
            for i in range(len(prompts))
        ]
        for c, prompts in PROMPTS.items()
    }
    results = main(
        [
            "--json_path",
            str(write_json(root, baselines)),
            "--input_dir",
            str(root / "src"),
            "--output_dir",
            str(root / "out"),
            "--clip",
            str(clip),
            "--device",
            "cpu",
        ]
    )
    for r in results:
        assert (r["image"], r["text"]) == pytest.approx(
            expected[r["concept"], r["prompt_idx"]], abs=1e-4
        )
    assert [r["passed"] for r in results] == [True, False, False]
    out = capsys.readouterr().out
    assert 'Image source: "concept 0", text prompt: a dog on a hill.' in out
    assert out.rstrip().endswith("You have passed 1/3 cases")


def test_top5_ranks_by_image_plus_2_5_text():
    image = np.array([90.0, 10, 50, 60, 70, 80, 20])
    text = np.array([0.0, 40, 10, 5, 1, 2, 30])  # totals 90, 110, 75, 72.5, 72.5, 85, 95
    # best five: indices 1, 6, 0, 5, 2 (the 72.5 tie is cut)
    assert top_k_means(image, text) == pytest.approx(
        ((10 + 20 + 90 + 80 + 50) / 5, (40 + 30 + 0 + 2 + 10) / 5)
    )


def test_prompt_folder_needs_exactly_25_images(setup, tmp_path, capsys):
    root, clip = setup
    out = tmp_path / "out"
    for concept, prompts in PROMPTS.items():
        for index in range(len(prompts)):
            write_images(
                out / concept / str(index), 24 if (concept, index) == ("0", 1) else 25, seed=index
            )
    json_path = write_json(tmp_path, {c: [[0, 0]] * len(p) for c, p in PROMPTS.items()})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            lambda: main(
                [
                    "--json_path",
                    str(json_path),
                    "--input_dir",
                    str(root / "src"),
                    "--output_dir",
                    str(out),
                    "--clip",
                    str(clip),
                ]
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "must hold exactly 25 images, found 24" in err and len(err.strip().splitlines()) == 1


def test_missing_tokenizer_files_are_an_error_not_an_empty_vocabulary(setup, tmp_path):
    from transformers import CLIPImageProcessor

    _, clip = setup
    partial = tmp_path / "clip"
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip / name, partial / name)
    CLIPImageProcessor.from_pretrained(clip).save_pretrained(partial)
    with pytest.raises(CLIError, match="tokenizer .* has no vocabulary"):
        load_clip(str(partial))
    with pytest.raises(CLIError, match="CLIP model not found"):
        load_clip("openai/clip-vit-base-patch32")  # offline and not cached
