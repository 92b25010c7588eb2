"""CLIP zero-shot on a tiny CLIP: predictions agree with transformers' own logits_per_image,
the prompt ensemble is the mean of unit text embeddings, cases and figure are written; the
P3 report section states only numbers found in files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import numbers, table_row
from hw2_utils import CLIError
from p3_textual_inversion import clip_zeroshot, report
from stable_diffusion.tokenizer import load_tokenizer

LABELS = {"0": "willow_tree", "1": "fox", "2": "bicycle", "3": "rose"}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            eos_token_id=49407,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(root / "clip")
    CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=load_tokenizer(),
    ).save_pretrained(root / "clip")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for c in range(4):
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                root / "images" / f"{c}_{450 + i}.png"
            )
    (root / "id2label.json").write_text(json.dumps(LABELS))
    return root


def _args(root, *extra):
    return [
        "--data",
        str(root / "images"),
        "--id2label",
        str(root / "id2label.json"),
        "--clip",
        str(root / "clip"),
        "--device",
        "cpu",
        "--batch-size",
        "5",
        *extra,
    ]


@pytest.mark.parametrize("ensemble", [False, True])
def test_predictions_match_transformers_logits(tiny_clip, tmp_path, ensemble):
    from transformers import CLIPModel, CLIPProcessor

    result = clip_zeroshot.main(
        _args(
            tiny_clip,
            "--figure",
            str(tmp_path / "cases.png"),
            "--json",
            str(tmp_path / "r.json"),
            *(["--ensemble"] if ensemble else []),
        )
    )
    model, processor = (
        CLIPModel.from_pretrained(tiny_clip / "clip"),
        CLIPProcessor.from_pretrained(tiny_clip / "clip"),
    )
    files = sorted((tiny_clip / "images").iterdir())
    images = [Image.open(f).convert("RGB") for f in files]
    names = [LABELS[str(c)].replace("_", " ") for c in range(4)]
    templates = clip_zeroshot.ENSEMBLE if ensemble else ["A photo of {}."]
    with torch.no_grad():
        text = []
        for template in templates:  # transformers' text_embeds are unit vectors; average them
            out = model(
                **processor(
                    text=[template.format(n) for n in names],
                    images=images[:1],
                    return_tensors="pt",
                    padding=True,
                )
            )
            text.append(out.text_embeds)
        out = model(
            **processor(
                text=[templates[0].format(n) for n in names],
                images=images,
                return_tensors="pt",
                padding=True,
            )
        )
        text = torch.nn.functional.normalize(torch.stack(text).mean(0), dim=-1)
        reference = (out.image_embeds @ text.T).argmax(-1)
        if not ensemble:
            assert torch.equal(reference, out.logits_per_image.argmax(-1))
    truth = torch.tensor([int(f.name.split("_")[0]) for f in files])
    assert [c["pred"] for c in result["cases"]] == [LABELS[str(int(p))] for p in reference]
    assert result["accuracy"] == pytest.approx((reference == truth).float().mean().item())
    assert len(result["success"]) == min(5, int((reference == truth).sum()))
    assert len(result["failure"]) == min(5, int((reference != truth).sum()))
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == result["accuracy"]
    with Image.open(tmp_path / "cases.png") as im:
        assert im.size == (1500, 700)


def test_bad_inputs(tiny_clip, tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "dog.png")
    with pytest.raises(CLIError, match="class_id"):
        clip_zeroshot.main(_args(tiny_clip) + ["--data", str(tmp_path / "imgs")])
    # offline, not cached: evaluation's loader says so
    with pytest.raises(CLIError, match="CLIP model not found"):
        clip_zeroshot.main(_args(tiny_clip) + ["--clip", "openai/clip-vit-base-patch32"])


def test_report_section_uses_only_files(tmp_path):
    empty = report.section(tmp_path)
    assert empty.count("not produced yet") == 3
    assert not re.search(r"\d\.\d|accuracy|\| \d", empty)  # no number without a file behind it
    (tmp_path / "p3" / "run1").mkdir(parents=True)
    (tmp_path / "p3" / "run1" / "log.csv").write_text(
        "step,loss,shift,seconds\n1,0.50000,0.1000,1.0\n2,0.30000,0.2000,2.0\n"
    )
    (tmp_path / "p3" / "clip_zeroshot.json").write_text(
        json.dumps(
            {
                "accuracy": 0.625,
                "n": 8,
                "success": [{"file": "1_1.png", "true": "fox", "pred": "fox", "prob": 0.9}],
                "failure": [],
            }
        )
    )
    text = report.section(tmp_path)
    run = table_row(text, "run1")
    assert [
        numbers(run[c]) for c in ("steps", "loss, first 100 steps", "loss, last 100 steps")
    ] == [
        [2],
        [0.4],
        [0.4],
    ]
    assert numbers(run["‖v − v₀‖"]) == [0.2] and numbers(run["seconds"]) == [2.0]
    assert "0.6250" in text and "1_1.png" in text  # the record's accuracy and its cases
