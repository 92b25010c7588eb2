"""P8 (e) attribute editing and (f) CLIP-guided latent refinement on the tiny models: our loop
against diffusers' pipeline, the edit strength's extremes, the differentiable CLIP preprocessing
against CLIP's processor, the refinement's rise, frozen weights and seeded curves, and both commands'
files and errors."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from p8_controlnet import edit, refine
from p8_controlnet.clip_score import ClipScorer
from p8_controlnet.denoise import timesteps, to_pixels
from p8_controlnet.pipelines import build_pipeline, generate, make_scheduler, scheduler_config
from p8_controlnet.tiny import save_tiny_models
from stable_diffusion.tiny import build_tiny_sd

SOURCE, EDITED = "a mountain lake at night", "a mountain lake during daylight"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("p8e") / "models")


@pytest.fixture(scope="module")
def sd():
    return build_tiny_sd(0)


@pytest.fixture(scope="module")
def scorer(models):
    return ClipScorer(str(models / "clip"), torch.device("cpu"))


def rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def tiny_args(models, out, *extra) -> list[str]:
    return [
        "--pretrained",
        str(models / "sd"),
        "--clip",
        str(models / "clip"),
        "--device",
        "cpu",
        "--steps",
        "4",
        "--out",
        str(out),
        *extra,
    ]


# multistep, ancestral, repeated timestep
@pytest.mark.parametrize("scheduler", ["dpm++2m", "euler-a", "pndm"])
def test_edit_strength_extremes_are_the_pure_prompts_images(models, sd, scheduler):
    pipe = build_pipeline(sd, make_scheduler(scheduler, scheduler_config(models / "sd")))
    args = edit.parse_args(tiny_args(models, "unused", "--source", SOURCE, "--edit", EDITED))
    editor = edit.Editor.from_args(pipe, args, 32)
    n = len(timesteps(pipe, 4))
    assert [edit.switch_step(s, n) for s in (0, 1)] == [n, 0]
    pure = {
        p: generate(
            pipe,
            [7],
            {"prompt": [p], "negative_prompt": [""]},
            num_inference_steps=4,
            guidance_scale=7.5,
        )
        for p in (SOURCE, EDITED)
    }
    source = editor.source_latents(7)
    with torch.no_grad():
        image = {
            (m, k): to_pixels(sd, editor.latents(m, 7, k, source))
            for m in edit.METHODS
            for k in (0, n // 2, n)
        }
    # Our loop gives diffusers' pipeline image: s = 0 (k = n) the source prompt's, s = 1 (k = 0) the edit's.
    assert (image["switch", n] - pure[SOURCE]).abs().max() <= 1e-6
    assert (image["switch", 0] - pure[EDITED]).abs().max() <= 1e-6
    # nothing re-noised: the source itself
    assert torch.equal(image["sdedit", n], to_pixels(sd, source))
    # the prompts differ visibly, so the above can fail
    assert (pure[SOURCE] - pure[EDITED]).abs().max() > 1e-2
    for m in edit.METHODS:  # half way is neither end
        assert min((image[m, n // 2] - pure[p]).abs().max() for p in (SOURCE, EDITED)) > 1e-3, m


def test_edit_command_writes_its_table_and_figures(models, tmp_path):
    out = tmp_path / "edit"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")  # not the command's: kept
    record = edit.main(tiny_args(models, out, "--strengths", "0", "0.5", "1", "--n", "2"))
    assert {p.name for p in out.iterdir()} == {*edit.OUTPUTS, "notes.txt"}
    table = rows(out / "edit.csv")
    assert [(r["method"], r["seed"], r["strength"], r["switch_step"]) for r in table] == [
        (m, seed, s, k)
        for seed in ("0", "1")
        for m in edit.METHODS
        for s, k in (("0.0", "4"), ("0.5", "2"), ("1.0", "0"))
    ]
    for r in table:
        assert -100 <= float(r["clip_to_source"]) <= 100 and -100 <= float(r["clip_to_edit"]) <= 100
        assert float(r["clip_edit_minus_source"]) == pytest.approx(
            float(r["clip_to_edit"]) - float(r["clip_to_source"]), abs=2e-4
        )
        if r["strength"] == "0.0":  # the source image itself
            assert float(r["ssim_to_source"]) == 1.0 and float(
                r["clip_image_cosine"]
            ) == pytest.approx(1.0, abs=1e-4)
    assert record["switch_steps"] == [4, 2, 0] and "-m p8_controlnet.edit" in record["command"]


def test_edit_rejects_bad_strengths_before_loading(models, tmp_path, capsys):
    with pytest.raises(SystemExit):
        edit.main(tiny_args(models, tmp_path / "e", "--strengths", "0", "1.5"))
    assert "--strengths: must be a probability" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_differentiable_clip_preprocessing_matches_the_processor(scorer):
    g = torch.Generator().manual_seed(0)
    for size in ((32, 32), (64, 64), (48, 80)):  # as is, resized, resized and centre-cropped
        images = torch.nn.functional.interpolate(
            torch.rand(2, 3, 8, 8, generator=g), size=size, mode="bilinear"
        )
        # Within the 8-bit rounding and PIL's resampling: one grey level is 0.0075 after CLIP's std.
        assert (scorer.pixel_values(images) - scorer.processed(images)).abs().max() < 0.03, size
        texts = ["a cat", "a red bus"]
        score = 100 * scorer.similarity(images, scorer.text_features(texts))
        assert torch.allclose(score, torch.from_numpy(scorer(images, texts)), atol=0.3), size


def test_refinement_raises_the_clip_score_and_moves_only_the_latents(models, sd, scorer):
    pipe = build_pipeline(sd, make_scheduler("ddim", scheduler_config(models / "sd")))
    prompts = ["a red bus", "a bowl of ramen"]
    args = refine.parse_args(tiny_args(models, "unused", "--steps", "3"))
    z0 = torch.cat(
        [refine.sampler_output(pipe, p, seed, args, 32) for seed, p in enumerate(prompts)]
    )
    modules = {
        "unet": sd.unet,
        "vae": sd.vae,
        "text_encoder": sd.text_encoder,
        "clip": scorer.model,
    }
    before = {
        (m, n): p.detach().clone()
        for m, module in modules.items()
        for n, p in module.named_parameters()
    }
    steps = list(refine.ascend(scorer, sd, z0, scorer.text_features(prompts), "adam", 0.05, 4, 0.1))
    cosines = torch.stack([cosine for _, _, cosine, _ in steps])  # (iterations + 1, images)
    assert (cosines.diff(dim=0) > 0).all()  # every step raises every image's score
    # the latents moved from the sampler's output
    assert (steps[-1][3] > 0).all() and (steps[0][3] == 0).all()
    for (m, n), value in before.items():
        p = dict(modules[m].named_parameters())[n]
        assert torch.equal(p, value) and p.grad is None and not p.requires_grad, (m, n)


def test_refine_command_gives_the_same_curve_for_the_same_seed(models, tmp_path):
    run = [
        "--prompt",
        "a red bus",
        "--n",
        "2",
        "--iterations",
        "3",
        "--lr",
        "0.05",
        "--show-iterations",
        "0",
        "3",
    ]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "5")):
        refine.main(tiny_args(models, tmp_path / name, *run, "--seed", seed))
    assert {p.name for p in (tmp_path / "a").iterdir()} == set(refine.OUTPUTS)
    curve = (tmp_path / "a" / "refine.csv").read_bytes()
    assert curve == (tmp_path / "b" / "refine.csv").read_bytes()
    assert curve != (tmp_path / "c" / "refine.csv").read_bytes()  # another seed: another curve
    table = rows(tmp_path / "a" / "refine.csv")
    assert [(r["seed"], r["iteration"]) for r in table] == [
        (s, str(i)) for i in range(4) for s in ("0", "1")
    ]
    for seed in ("0", "1"):
        first, *_, last = [r for r in table if r["seed"] == seed]
        assert float(last["clip_objective"]) > float(first["clip_objective"])
        assert float(first["latent_rms_change"]) == 0 < float(last["latent_rms_change"])


def test_refine_bad_numbers_are_one_error_line():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "p8_controlnet.infer",
            "refine",
            "--pretrained",
            "x",
            "--clip",
            "y",
            "--out",
            "z",
            "--lr",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert (
        r.returncode == 2
        and errors
        == [
            "python -m p8_controlnet.infer refine: error: argument --lr: "
            "must be a number above 0 (at most 1e+06), got 0"
        ]
        and "Traceback" not in r.stderr
    )
