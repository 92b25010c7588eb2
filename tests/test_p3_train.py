"""Textual Inversion training on a tiny SD: only the new token's row may move, the loss on
real images falls, and resuming gives the same vector as an uninterrupted run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import require_shared
from PIL import Image

from hw2_utils import CLIError
from p3_textual_inversion import train
from p3_textual_inversion.data import OBJECT_TEMPLATES, STYLE_TEMPLATES, load_concept_images
from p3_textual_inversion.embeddings import (
    add_tokens,
    initializer_vector,
    learned_rows,
    load_embeds,
)
from stable_diffusion.tiny import build_tiny_sd, save_diffusers_folder

V = 49408  # CLIP's vocabulary; the learned token gets id V


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_diffusers_folder(build_tiny_sd(seed=0), tmp_path_factory.mktemp("tiny") / "sd")


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concept")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _args(model_dir, images, out, *extra):
    return train.parse_args(
        [
            "--data",
            str(images),
            "--placeholder",
            "<new1>",
            "--initializer",
            "dog",
            "--pretrained",
            str(model_dir),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--grad-accum",
            "1",
            "--batch-size",
            "2",
            "--validation-every",
            "0",
            "--ckpt-every",
            "1",
            *extra,
        ]
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_only_the_new_row_changes(model_dir, images_dir, tmp_path, precision):
    sd = train.train(
        _args(
            model_dir,
            images_dir,
            tmp_path,
            "--steps",
            "3",
            "--lr",
            "1e-2",
            "--precision",
            precision,
        )
    )
    fresh = build_tiny_sd(seed=0)
    init = initializer_vector(fresh, "dog")
    rows = learned_rows(sd)
    table = rows(torch.arange(V + 1))
    # every old row, bit for bit
    assert torch.equal(table[:V], fresh.text_encoder.embeddings.token_embedding.weight)
    assert (table[V] - init).abs().max() > 1e-3 and rows.new.dtype == torch.float32
    for name in ("unet", "vae"):
        trained, ref = getattr(sd, name).state_dict(), getattr(fresh, name).state_dict()
        assert all(
            torch.equal(trained[k].float(), ref[k].to(trained[k].dtype).float()) for k in ref
        ), name
    te = {
        k.replace("token_embedding.base.", "token_embedding."): v
        for k, v in sd.text_encoder.state_dict().items()
    }
    assert all(torch.equal(te[k], v) for k, v in fresh.text_encoder.state_dict().items())
    saved = load_embeds([tmp_path / "model.pt"])
    assert list(saved) == ["<new1>"] and torch.equal(saved["<new1>"], table[V].detach())


def test_loss_falls_on_real_images(model_dir, tmp_path):
    """A fixed evaluation batch (the five dog photos, fixed t and noise) before and after
    training; deterministic, so any decrease is the learned vector's doing."""
    dogs = require_shared("hw2_data", "textual_inversion", "0")
    images = load_concept_images(dogs, 32)

    def eval_loss(sd) -> float:
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            z = (sd.encode_images(images).mean * sd.latent_scale).repeat(4, 1, 1, 1)
            t = torch.randint(0, 1000, (len(z),), generator=g)
            noise = torch.randn(z.shape, generator=g)
            context = sd.encode_text(["a photo of a <new1>"] * len(z))
            pred = sd.unet(
                sd.schedule.q_sample(z, t, noise), t, encoder_hidden_states=context
            ).sample
            return torch.nn.functional.mse_loss(pred, noise).item()

    before = build_tiny_sd(seed=0)
    add_tokens(before, {"<new1>": initializer_vector(before, "dog")})
    trained = train.train(
        _args(
            model_dir,
            dogs,
            tmp_path,
            "--steps",
            "30",
            "--batch-size",
            "4",
            "--lr",
            "5e-3",
            "--no-scale-lr",
            "--ckpt-every",
            "30",
        )
    )
    assert eval_loss(trained) < eval_loss(before) - 1e-3
    logged = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "log.csv"))]
    assert len(logged) == 30 and all(np.isfinite(logged))


def test_resume_gives_the_uninterrupted_result(model_dir, images_dir, tmp_path):
    straight = train.train(_args(model_dir, images_dir, tmp_path / "a", "--steps", "4"))
    train.train(_args(model_dir, images_dir, tmp_path / "b", "--steps", "2"))
    resumed = train.train(_args(model_dir, images_dir, tmp_path / "b", "--steps", "4"))
    assert torch.equal(learned_rows(straight).new, learned_rows(resumed).new)
    assert [r["step"] for r in csv.DictReader(open(tmp_path / "b" / "log.csv"))] == [
        "1",
        "2",
        "3",
        "4",
    ]


def test_bad_inputs_are_clear_errors(model_dir, images_dir, tmp_path):
    with pytest.raises(CLIError, match="concept image folder is not a directory"):
        train.train(_args(model_dir, tmp_path / "nowhere", tmp_path / "x", "--steps", "1"))
    with pytest.raises(CLIError, match="exactly one"):
        train.train(
            _args(
                model_dir,
                images_dir,
                tmp_path / "y",
                "--steps",
                "1",
                "--initializer",
                "golden retriever",
            )
        )


def test_caption_templates_are_the_textual_inversion_reference_lists():
    """diffusers' imagenet_templates_small (27) and imagenet_style_templates_small (19, two of
    them repeated), each with one placeholder; train.py's sample prompt uses the first."""
    assert len(OBJECT_TEMPLATES) == len(set(OBJECT_TEMPLATES)) == 27 and len(STYLE_TEMPLATES) == 19
    assert sorted({t for t in STYLE_TEMPLATES if STYLE_TEMPLATES.count(t) == 2}) == [
        "a close-up painting in the style of {}",
        "a cropped painting in the style of {}",
    ]
    assert all(t.count("{}") == 1 for t in OBJECT_TEMPLATES + STYLE_TEMPLATES)
    assert (OBJECT_TEMPLATES[0], OBJECT_TEMPLATES[-1]) == (
        "a photo of a {}",
        "a photo of a small {}",
    )
    assert (STYLE_TEMPLATES[0], STYLE_TEMPLATES[-1]) == (
        "a painting in the style of {}",
        "a large painting in the style of {}",
    )


def test_learned_embeds_are_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders its metadata by a per-process hash seed; save_embeds sorts it, so the same
    command writes the same file (and the file still reads back, metadata and all)."""
    import subprocess
    import sys

    from safetensors import safe_open

    script = (
        "import sys, torch; from p3_textual_inversion.embeddings import save_embeds; "
        "save_embeds(sys.argv[1], {'<new1>': torch.arange(8.0), '<new2>': -torch.arange(8.0)}, "
        "{k: k * 3 for k in 'abcdefgh'} | {'recipe': 'python -m p3 --out é'})"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert len({path.read_bytes() for path in paths}) == 1
    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == {**{k: k * 3 for k in "abcdefgh"}, "recipe": "python -m p3 --out é"}
        assert torch.equal(f.get_tensor("<new2>"), -torch.arange(8.0))
    assert torch.equal(load_embeds([paths[0]])["<new1>"], torch.arange(8.0))
