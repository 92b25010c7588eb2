"""P8 (b): slerp/lerp and the custom beta schedules against their closed forms, the CLIP score
against CLIPModel's own forward pass, and the sampling study's tables and figures on a tiny SD."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from p8_controlnet import sampling_study
from p8_controlnet.clip_score import ClipScorer
from p8_controlnet.pipelines import SCHEDULERS, make_scheduler, scheduler_config
from p8_controlnet.schedules import custom_betas, lerp, slerp
from p8_controlnet.tiny import save_tiny_models
from stable_diffusion.loader import V1_CONFIG_DIR


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("p8s") / "models")


def test_slerp_matches_the_closed_form():
    e1, e2 = torch.eye(2, dtype=torch.float64)
    for t in (0.0, 0.3, 0.5, 1.0):  # orthogonal, equal norms: a point on the circle of radius 2
        expected = 2 * (math.cos(t * math.pi / 2) * e1 + math.sin(t * math.pi / 2) * e2)
        assert torch.allclose(slerp(2 * e1, 2 * e2, t), expected, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(3, 77, 16, generator=g, dtype=torch.float64),
        torch.randn(3, 77, 16, generator=g, dtype=torch.float64),
    )
    an, bn = a.numpy(), b.numpy()
    theta = np.arccos(
        np.sum(an * bn, -1, keepdims=True)
        / np.linalg.norm(an, axis=-1, keepdims=True)
        / np.linalg.norm(bn, axis=-1, keepdims=True)
    )
    # t = 0.7, token by token
    expected = (np.sin(0.3 * theta) * an + np.sin(0.7 * theta) * bn) / np.sin(theta)
    assert np.allclose(slerp(a, b, 0.7).numpy(), expected, atol=1e-12)
    assert torch.equal(slerp(a, 3 * a, 0.25), lerp(a, 3 * a, 0.25))  # parallel: lerp
    unit = a / a.norm(dim=-1, keepdim=True)
    assert torch.allclose(
        slerp(unit, b / b.norm(dim=-1, keepdim=True), 0.5).norm(dim=-1),
        torch.ones(3, 77, dtype=torch.float64),
    )


def test_custom_schedules_follow_their_formulas():
    b0, b1, T = 0.00085, 0.012, 1000
    s = np.linspace(0, 1, T)
    betas = {
        kind: custom_betas(kind, T, b0, b1).numpy()
        for kind in ("linear", "inverse-square", "log-decay")
    }
    for kind, b in betas.items():
        assert b.shape == (T,) and np.all(np.diff(b) > 0), kind
        assert abs(b[0] - b0) < 1e-15 and abs(b[-1] - b1) < 1e-15, kind
    assert np.allclose(betas["linear"], np.linspace(b0, b1, T), atol=1e-15)
    # 1/sqrt(beta) is linear in t
    assert np.allclose(np.diff(betas["inverse-square"] ** -0.5, 2), 0, atol=1e-9)
    assert np.allclose(
        betas["log-decay"], b0 + (b1 - b0) * np.log(1 + 9 * s) / np.log(10), atol=1e-15
    )
    assert betas["inverse-square"][T // 2] < betas["linear"][T // 2] < betas["log-decay"][T // 2]
    with pytest.raises(ValueError, match="unknown schedule"):
        custom_betas("cosine")
    config = scheduler_config(V1_CONFIG_DIR)
    for name in SCHEDULERS:  # every scheduler takes them as its training schedule
        scheduler = make_scheduler(name, config, custom_betas("log-decay"))
        assert np.allclose(
            scheduler.alphas_cumprod.double().numpy(), np.cumprod(1 - betas["log-decay"]), rtol=1e-5
        ), name


def test_clip_score_is_the_cosine_of_clips_own_embeddings(models):
    scorer = ClipScorer(str(models / "clip"), torch.device("cpu"))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a red bus", "a cat", "a bowl of ramen"]
    scores = scorer(images, texts)
    from PIL import Image

    from hw2_utils import to_uint8

    pil = [Image.fromarray(a) for a in to_uint8(images, (0.0, 1.0)).numpy()]
    with torch.no_grad():
        out = scorer.model(
            **scorer.processor(text=texts, images=pil, return_tensors="pt", padding=True)
        )
    assert np.allclose(
        scores, 100 * (out.image_embeds * out.text_embeds).sum(-1).numpy(), atol=1e-4
    )


def test_sampling_study_tables_and_figures(models, tmp_path):
    out = tmp_path / "study"
    sampling_study.main(
        [
            "--pretrained",
            str(models / "sd"),
            "--clip",
            str(models / "clip"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--schedulers",
            "ddim",
            "euler-a",
            "--steps-list",
            "1",
            "2",
            "--guidances",
            "1",
            "7.5",
            "--seeds",
            "0",
            "--steps",
            "3",
            "--intermediate-steps",
            "1",
            "3",
            "--alphas",
            "0",
            "0.5",
            "1",
        ]
    )
    with open(out / "grid.csv") as f:
        grid = list(csv.DictReader(f))
    assert sorted((r["scheduler"], r["steps"], r["guidance"]) for r in grid) == sorted(
        (s, n, g) for s in ("ddim", "euler-a") for n in ("1", "2") for g in ("1.0", "7.5")
    )
    assert all(
        -100 <= float(r["clip_score"]) <= 100 and float(r["wall_s_per_image"]) > 0 for r in grid
    )
    with open(out / "schedules.csv") as f:
        assert [r["schedule"] for r in csv.DictReader(f)] == [
            "trained (scaled_linear)",
            "linear",
            "inverse-square",
            "log-decay",
        ]
    with open(out / "interpolation.csv") as f:
        interp = {
            (r["method"], float(r["alpha"])): float(r["embedding_norm"]) for r in csv.DictReader(f)
        }
    # The tiny text encoder ends in a LayerNorm (weight 1, bias 0), so every token vector has norm
    # sqrt(32): slerp keeps that norm along the path, lerp shrinks it in between.
    assert interp["slerp", 0.5] == pytest.approx(interp["slerp", 0.0], rel=1e-4)
    assert interp["lerp", 0.5] < interp["slerp", 0.5] - 0.1
    assert interp["lerp", 1.0] == pytest.approx(interp["slerp", 1.0], rel=1e-4)
    figures = {
        "by_scheduler.png",
        "by_steps.png",
        "by_guidance.png",
        "grid_images.png",
        "schedules.png",
        "schedule_curves.png",
        "intermediates.png",
        "interpolation.png",
    }
    assert figures <= {p.name for p in out.iterdir()} and (out / "study.json").is_file()


def test_the_last_intermediate_decodes_to_the_final_image(models):
    args = sampling_study.parse_args(
        [
            "--pretrained",
            str(models / "sd"),
            "--out",
            "unused",
            "--device",
            "cpu",
            "--steps",
            "3",
            "--seeds",
            "0",
            "1",
            "--scheduler",
            "euler",
        ]
    )
    study = sampling_study.Study(args)
    decoded, final = sampling_study.decoded_intermediates(study, [1, 3])
    # (timestep, images): later steps, lower t
    assert list(decoded) == [1, 3] and decoded[1][0] > decoded[3][0]
    assert torch.allclose(decoded[3][1], final, atol=1e-5)
    assert (decoded[1][1] - final).abs().max() > 1e-3
