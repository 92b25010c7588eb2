"""P8 (c)/(d): Canny controls of real COCO images, ControlNet and multi-ControlNet pipelines on a
tiny SD (scale 0 must give the plain pipeline's images), and the two scripts' outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_shared
from hw2_utils import CLIError
from p8_controlnet import controlnet, multi_controlnet
from p8_controlnet.controls import canny, make_control
from p8_controlnet.multi_controlnet import scale_combinations
from p8_controlnet.pipelines import build_pipeline, generate, make_scheduler, scheduler_config
from p8_controlnet.tiny import build_tiny_controlnet, save_tiny_models
from stable_diffusion.tiny import build_tiny_sd

SCALE_ZERO_ATOL = 1e-6  # residuals x 0 are exact zeros; only float summation order may differ


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("p8c") / "models")


@pytest.fixture(scope="module")
def coco():
    folder = require_shared("coco", "val2017")
    return folder / "000000000139.jpg", folder / "000000000802.jpg"


def test_canny_of_a_real_image_is_binary_at_the_requested_size(coco):
    for size in (256, 96):
        edges = canny(Image.open(coco[0]), size)
        assert edges.size == (size, size) and edges.mode == "RGB"
        a = np.asarray(edges)
        assert set(np.unique(a)) == {0, 255}
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
        assert 0.01 < (a[..., 0] > 0).mean() < 0.4  # edges, not an empty or a saturated map
    loose, strict = (
        np.asarray(canny(Image.open(coco[0]), 256, lo, hi))[..., 0] > 0
        for lo, hi in ((50, 100), (200, 400))
    )
    assert loose.sum() > strict.sum()  # thresholds are passed through to OpenCV


def test_controls_from_user_images_and_annotator_errors(coco, tmp_path):
    user = make_control("seg", coco[1], 48)
    with Image.open(coco[1]) as im:
        w, h = im.size
    # the photo itself, centre-cropped and resized
    assert user.size == (48, 48) and np.asarray(user).std() > 10
    assert w != h
    try:
        import controlnet_aux  # noqa: F401

        match = "needs --annotators DIR holding dpt_hybrid-midas-501f0c75.pt"
    except ImportError:
        match = "the depth control needs controlnet_aux"
    with pytest.raises(CLIError, match=match):
        make_control("depth", coco[0], 64)
    with pytest.raises(CLIError, match="image not found"):
        make_control("canny", tmp_path / "missing.jpg", 64)


def test_scale_zero_reproduces_the_plain_pipeline_and_two_controls_act(models, coco):
    sd = build_tiny_sd(0)
    config = scheduler_config(models / "sd")
    nets = [build_tiny_controlnet(sd.unet, 1), build_tiny_controlnet(sd.unet, 2)]
    controls = [canny(Image.open(coco[0]), 32), make_control("seg", coco[1], 32)]
    run = dict(
        seeds=[4, 5],
        per_image={"prompt": ["a kitchen"] * 2, "negative_prompt": [""] * 2},
        num_inference_steps=3,
    )
    plain = generate(build_pipeline(sd, make_scheduler("dpm++2m", config)), **run)
    multi = build_pipeline(sd, make_scheduler("dpm++2m", config), nets)
    assert type(multi.controlnet).__name__ == "MultiControlNetModel"
    off = generate(multi, image=controls, controlnet_conditioning_scale=[0.0, 0.0], **run)
    assert (off - plain).abs().max() <= SCALE_ZERO_ATOL
    both = generate(multi, image=controls, controlnet_conditioning_scale=[1.0, 0.5], **run)
    first = generate(multi, image=controls, controlnet_conditioning_scale=[1.0, 0.0], **run)
    # each control changes the images
    assert (both - plain).abs().max() > 1e-2 and (both - first).abs().max() > 1e-2
    single = build_pipeline(sd, make_scheduler("dpm++2m", config), nets[:1])
    assert (
        generate(single, image=controls[0], controlnet_conditioning_scale=0.0, **run) - plain
    ).abs().max() <= SCALE_ZERO_ATOL
    assert torch.allclose(
        generate(single, image=controls[0], controlnet_conditioning_scale=1.0, **run),
        first,
        atol=1e-5,
    )


def test_scale_combinations():
    assert scale_combinations([1.0, 0.5], None) == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]
    assert scale_combinations([0.0, 0.7], None) == [(0.0, 0.0), (0.0, 0.7)]
    assert len(scale_combinations([1, 1, 1], [0.0, 0.5, 1.0])) == 27


def test_multi_controlnet_script_writes_a_grid_per_scale_combination(models, coco, tmp_path):
    record = multi_controlnet.main(
        [
            "--pretrained",
            str(models / "sd"),
            "--prompt",
            "a kitchen",
            "--control",
            "canny",
            str(coco[0]),
            "1.0",
            "--control",
            "seg",
            str(coco[1]),
            "0.5",
            "--controlnet",
            f"canny={models / 'controlnet-canny'}",
            "--controlnet",
            f"seg={models / 'controlnet-depth'}",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert [c["label"] for c in record["combinations"]] == [
        "canny 0, seg 0",
        "canny 0, seg 0.5",
        "canny 1, seg 0",
        "canny 1, seg 0.5",
    ]
    written = sorted(str(p.relative_to(tmp_path / "m")) for p in (tmp_path / "m").rglob("*.png"))
    assert written == [
        "c00_i000.png",
        "c01_i000.png",
        "c02_i000.png",
        "c03_i000.png",
        "controls/k0_canny.png",
        "controls/k1_seg.png",
        "grid.png",
    ]
    pixels = [np.asarray(Image.open(tmp_path / "m" / f"c{c:02d}_i000.png")) for c in range(4)]
    assert all(not np.array_equal(pixels[0], p) for p in pixels[1:])

    def refused(controls: str, extra: str = "") -> None:
        argv = f"--pretrained x --prompt p {controls} --controlnet canny=y {extra}".split()
        multi_controlnet.main([*argv, "--out", str(tmp_path / "n")])

    with pytest.raises(CLIError, match="no --controlnet TYPE=DIR for control type"):
        refused("--control depth a.png 1 --control canny b.png 1")
    with pytest.raises(CLIError, match="at least two --control"):
        refused("--control canny a.png 1")
    # the check controlnet.py has, shared
    with pytest.raises(CLIError, match="must be below --guidance-end"):
        refused(
            "--control canny a.png 1 --control seg b.png 1",
            "--guidance-start 0.9 --guidance-end 0.1",
        )
    with pytest.raises(CLIError, match="the scale must be a finite number"):
        refused("--control canny a.png nan --control seg b.png 1")


def test_controlnet_script_rows_per_scale_and_guidance_window(models, coco, tmp_path):
    args = [
        "--pretrained",
        str(models / "sd"),
        "--controlnet",
        str(models / "controlnet-canny"),
        "--image",
        str(coco[0]),
        "--prompt",
        "a living room",
        "--steps",
        "2",
        "--n",
        "2",
        "--device",
        "cpu",
    ]
    record = controlnet.main(
        [*args, "--scale", "0", "1", "--guidance-end", "0.5", "--out", str(tmp_path / "c")]
    )
    assert [(r["file"], r["scale"], r["seed"]) for r in record["images"]] == [
        ("s00_i000.png", 0.0, 0),
        ("s00_i001.png", 0.0, 1),
        ("s01_i000.png", 1.0, 0),
        ("s01_i001.png", 1.0, 1),
    ]
    assert json.loads((tmp_path / "c" / "run.json").read_text())["settings"]["guidance_end"] == 0.5
    control = np.asarray(Image.open(tmp_path / "c" / "control.png"))
    assert control.shape == (32, 32, 3) and set(np.unique(control)) <= {0, 255}
    with pytest.raises(CLIError, match="must be below --guidance-end"):
        controlnet.main(
            [
                *args,
                "--guidance-start",
                "0.6",
                "--guidance-end",
                "0.5",
                "--out",
                str(tmp_path / "d"),
            ]
        )
