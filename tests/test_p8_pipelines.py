"""P8 (a): the eight schedulers through diffusers on a tiny SD, seeded reproducibility, the
txt2img JSON sidecar (round trip and replay), gallery marks, memory options and weight errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import REPO
from hw2_utils import CLIError
from p8_controlnet import infer, txt2img
from p8_controlnet.pipelines import (
    SCHEDULERS,
    apply_memory_options,
    build_pipeline,
    check_controlnet_fits,
    generate,
    make_scheduler,
    scheduler_config,
)
from p8_controlnet.tiny import save_tiny_models
from stable_diffusion.tiny import build_tiny_sd

EXPECTED_CLASSES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("p8") / "models")


@pytest.fixture(scope="module")
def pipe(models):
    return build_pipeline(build_tiny_sd(0), make_scheduler("ddim", scheduler_config(models / "sd")))


def texts(*prompts):
    return {"prompt": list(prompts), "negative_prompt": [""] * len(prompts)}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs_two_steps(pipe, models, name):
    pipe.scheduler = make_scheduler(name, scheduler_config(models / "sd"))
    assert type(pipe.scheduler).__name__ == EXPECTED_CLASSES[name]
    steps = []
    images = generate(
        pipe,
        [0, 1, 2],
        texts("a cat", "a dog", "a bus"),
        batch_size=2,
        num_inference_steps=2,
        callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw,
    )
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    # Two steps per batch; PLMS (PNDM without PRK) evaluates the UNet twice in its first step
    # (diffusers repeats that timestep), so it makes three calls.
    per_batch = [0, 1, 2] if name == "pndm" else [0, 1]
    assert steps == per_batch * 2
    if name == "dpm++2m":
        assert (
            pipe.scheduler.config.algorithm_type == "dpmsolver++"
            and pipe.scheduler.config.solver_order == 2
        )


def test_fixed_seed_gives_identical_images_whatever_the_batching(pipe, models):
    # ancestral: fresh noise every step
    pipe.scheduler = make_scheduler("euler-a", scheduler_config(models / "sd"))
    run = dict(per_image=texts("a cat", "a cat"), num_inference_steps=3)
    a, b = generate(pipe, [7, 8], batch_size=2, **run), generate(pipe, [7, 8], batch_size=2, **run)
    assert torch.equal(a, b)
    one_by_one = generate(pipe, [7, 8], batch_size=1, **run)
    assert torch.allclose(a, one_by_one, atol=1e-5)
    assert (a[0] - a[1]).abs().max() > 0.05  # seeds 7 and 8 differ


def test_attention_slicing_keeps_the_images_and_offload_needs_cuda(models):
    sd = build_tiny_sd(0)
    plain = build_pipeline(sd, make_scheduler("ddim", scheduler_config(models / "sd")))
    reference = generate(plain, [3], texts("a cat"), num_inference_steps=2)
    sliced = apply_memory_options(
        build_pipeline(sd, make_scheduler("ddim", scheduler_config(models / "sd"))),
        torch.device("cpu"),
        attention_slicing=True,
        vae_tiling=True,
    )
    assert torch.allclose(
        generate(sliced, [3], texts("a cat"), num_inference_steps=2), reference, atol=1e-5
    )
    sliced.disable_attention_slicing()
    with pytest.raises(CLIError, match="needs --device cuda"):
        apply_memory_options(plain, torch.device("cpu"), cpu_offload=True)


def run_txt2img(models, out, *extra):
    return txt2img.main(
        [
            "--pretrained",
            str(models / "sd"),
            "--out",
            str(out),
            "--steps",
            "2",
            "--device",
            "cpu",
            "--scheduler",
            "unipc",
            "--seed",
            "5",
            *extra,
        ]
    )


def test_sidecar_round_trips_and_replays_the_same_bytes(models, tmp_path):
    record = run_txt2img(
        models,
        tmp_path / "a",
        "--prompt",
        "a red bus",
        "--prompt",
        "a cat",
        "--n",
        "2",
        "--negative-prompt",
        "blurry",
        "--guidance",
        "5",
        "--batch-size",
        "3",
    )
    sidecar = json.loads((tmp_path / "a" / "run.json").read_text())
    assert sidecar == json.loads(json.dumps(record))
    settings = sidecar["settings"]
    assert settings["prompt"] == ["a red bus", "a cat"] and settings["negative_prompt"] == "blurry"
    assert [settings[k] for k in ("scheduler", "steps", "guidance", "seed", "n")] == [
        "unipc",
        2,
        5.0,
        5,
        2,
    ]
    assert [(r["file"], r["prompt"], r["seed"]) for r in sidecar["images"]] == [
        ("p00_i000.png", "a red bus", 5),
        ("p00_i001.png", "a red bus", 6),
        ("p01_i000.png", "a cat", 5),
        ("p01_i001.png", "a cat", 6),
    ]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [r["file"] for r in sidecar["images"]] + ["run.json"]
    )
    with Image.open(tmp_path / "a" / "p01_i001.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"

    txt2img.main(
        [
            "--replay",
            str(tmp_path / "a" / "run.json"),
            "--out",
            str(tmp_path / "b"),
            "--device",
            "cpu",
        ]
    )
    replayed = json.loads((tmp_path / "b" / "run.json").read_text())
    assert replayed["settings"] == settings
    for r in sidecar["images"]:
        assert (tmp_path / "a" / r["file"]).read_bytes() == (
            tmp_path / "b" / r["file"]
        ).read_bytes()


def test_gallery_marks_successes_and_failures(models, tmp_path):
    (tmp_path / "prompts.txt").write_text("# gallery\na red bus\n\na bowl of ramen\n")
    gallery = [
        "--gallery",
        str(tmp_path / "prompts.txt"),
        "--n",
        "2",
        "--clip",
        str(models / "clip"),
    ]
    first = run_txt2img(models, tmp_path / "g1", *gallery)
    scores = sorted(r["clip"] for r in first["images"])
    threshold = (scores[1] + scores[2]) / 2  # half the images fall below it
    record = run_txt2img(models, tmp_path / "g2", *gallery, "--min-clip", str(threshold))
    assert record["settings"]["prompt"] == ["a red bus", "a bowl of ramen"]
    assert [r["verdict"] for r in record["images"]] == [
        "off-prompt" if r["clip"] < threshold else "ok" for r in record["images"]
    ]
    assert sum(r["verdict"] == "ok" for r in record["images"]) == 2
    assert (tmp_path / "g2" / "gallery.png").stat().st_size > 0
    flat = torch.full((2, 3, 8, 8), 0.5)
    flat[1, :, :4] = 0.9
    assert txt2img.verdicts(flat, None, 0.0) == ["blank", "ok"]


def test_missing_weights_are_one_line_errors(models, tmp_path):
    with pytest.raises(
        CLIError,
        match=r"Stable Diffusion checkpoint not found: .*nope\.ckpt \(bash hw2_download_ckpt\.sh",
    ):
        run_txt2img(
            models, tmp_path / "x", "--prompt", "a cat", "--pretrained", str(tmp_path / "nope.ckpt")
        )
    assert not (tmp_path / "x").exists()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "p8_controlnet.controlnet",
            "--pretrained",
            str(models / "sd"),
            "--controlnet",
            str(tmp_path / "no-controlnet"),
            "--image",
            "x.png",
            "--prompt",
            "a cat",
            "--out",
            str(tmp_path / "y"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=REPO,
    )
    assert r.returncode == 2 and not (tmp_path / "y").exists()
    assert r.stderr.strip().splitlines() == [
        "python -m p8_controlnet.controlnet: error: ControlNet weights not found: "
        f"{tmp_path / 'no-controlnet' / 'config.json'} "
        "(pass a diffusers ControlNet folder, e.g. "
        "`huggingface-cli download lllyasviel/sd-controlnet-canny --local-dir DIR` "
        "(SD v1.5 ControlNets also fit SD v1.4))"
    ]


def test_controlnet_must_fit_the_unet_and_infer_dispatches(tmp_path, capsys):
    from types import SimpleNamespace

    unet = SimpleNamespace(
        config=SimpleNamespace(cross_attention_dim=768, block_out_channels=[320, 640, 1280, 1280])
    )
    check_controlnet_fits(SimpleNamespace(config=unet.config), unet, "sd15-canny")
    sd2 = SimpleNamespace(
        config=SimpleNamespace(cross_attention_dim=1024, block_out_channels=[320, 640, 1280, 1280])
    )
    with pytest.raises(
        CLIError,
        match=r"ControlNet sd21-canny does not fit .*\(1024, \(320, 640, 1280, 1280\)\) vs the UNet's",
    ):
        check_controlnet_fits(sd2, unet, "sd21-canny")
    with pytest.raises(
        CLIError, match="unknown command 'draw': use one of txt2img, study, controlnet, multi"
    ):
        infer.main(["draw"])
    with pytest.raises(CLIError, match="give --prompt"):
        infer.main(["txt2img", "--pretrained", str(tmp_path), "--out", str(tmp_path / "o")])
