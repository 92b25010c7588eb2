"""P2 end to end on a narrow random-weight UNet: hw2_2.sh's output contract, the two pixel
maps, bad input, the analysis figures at 64x64, bench MSE and the report section."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from bench import p2_ddim as bench
from hw2_utils import CLIError
from p2_ddim import analysis, infer
from p2_ddim.pipeline import load_unet, sample
from p2_ddim.report import section
from p2_ddim.unet import FaceUNet

TINY_WIDTH = 32  # the smallest width GroupNorm(32) allows


@pytest.fixture(scope="module")
def tiny_unet_pt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "UNet.pt"
    torch.save(FaceUNet(TINY_WIDTH).state_dict(), path)
    return path


def write_noises(folder, count: int, size: int, seed: int = 0):
    """NN.pt files as the course ships them, alternating (1,3,H,W) and (3,H,W)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        x = torch.randn(1, 3, size, size, generator=g)
        torch.save(x if i % 2 == 0 else x[0], folder / f"{i:02d}.pt")
    return folder


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert (image.mode, image.format) == ("RGB", "PNG")
        return np.asarray(image)


def test_hw2_2_sh_end_to_end(tiny_unet_pt, tmp_path):
    noise = write_noises(tmp_path / "noise", 2, 32)
    (noise / "notes.txt").write_text("not a noise file")  # only *.pt count
    out = tmp_path / "new" / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HW2_QUIET": "1"}
    run = subprocess.run(
        ["bash", str(REPO / "hw2_2.sh"), str(noise), str(out), str(tiny_unet_pt)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    # nothing else, no temp files
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png"]
    images = [pixels(out / f"{i:02d}.png") for i in range(2)]
    assert all(a.shape == (32, 32, 3) for a in images)
    assert not np.array_equal(images[0], images[1])

    bad = subprocess.run(
        [
            "bash",
            str(REPO / "hw2_2.sh"),
            str(tmp_path / "absent"),
            str(tmp_path / "o2"),
            str(tiny_unet_pt),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "absent" in bad.stderr
    usage = subprocess.run(
        ["bash", str(REPO / "hw2_2.sh"), str(noise)], capture_output=True, text=True, timeout=10
    )
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_pixel_maps_clip_and_minmax(tiny_unet_pt, tmp_path):
    noise = write_noises(tmp_path / "noise", 2, 32, seed=1)
    for pixel_map in ("clip", "minmax"):
        infer.main(
            [
                str(noise),
                str(tmp_path / pixel_map),
                str(tiny_unet_pt),
                "--steps",
                "3",
                "--device",
                "cpu",
                "--pixel-map",
                pixel_map,
            ]
        )
    x = sample(
        load_unet(tiny_unet_pt, torch.device("cpu")),
        torch.stack([torch.load(noise / "00.pt")[0], torch.load(noise / "01.pt")]),
        steps=3,
    )
    for i in range(2):
        clip = pixels(tmp_path / "clip" / f"{i:02d}.png")
        expected = (
            ((x[i].clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        )
        assert np.array_equal(clip, expected)
        stretched = pixels(tmp_path / "minmax" / f"{i:02d}.png")
        # each image stretched to the full range
        assert stretched.min() == 0 and stretched.max() == 255


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: None, "no .pt noise files"),
        (lambda d: torch.save(torch.randn(3, 32), d / "00.pt"), r"shape \(3, 32\)"),
        (lambda d: torch.save(torch.randn(1, 4, 32, 32), d / "00.pt"), r"shape \(4, 32, 32\)"),
        (lambda d: torch.save(torch.randn(1, 3, 48, 32), d / "00.pt"), "positive multiples of 32"),
        (lambda d: torch.save(torch.randn(1, 3, 0, 0), d / "00.pt"), "positive multiples of 32"),
        (
            lambda d: torch.save({"noise": torch.randn(3, 32, 32)}, d / "00.pt"),
            "holds a dict, not a tensor",
        ),
        (lambda d: (d / "00.pt").write_bytes(b"not a torch file"), "not a readable PyTorch file"),
        (
            lambda d: (
                torch.save(torch.randn(3, 32, 32), d / "00.pt"),
                torch.save(torch.randn(3, 64, 64), d / "01.pt"),
            ),
            "but 00.pt has",
        ),
    ],
)
def test_bad_noise_input_is_one_clear_error_and_writes_nothing(tiny_unet_pt, tmp_path, make, match):
    noise = tmp_path / "noise"
    noise.mkdir()
    make(noise)
    out = tmp_path / "out"
    with pytest.raises(CLIError, match=match) as err:
        infer.main([str(noise), str(out), str(tiny_unet_pt), "--device", "cpu"])
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_analysis_figures_at_64(tiny_unet_pt, tmp_path):
    noise = write_noises(tmp_path / "noise", 4, 64)
    out = tmp_path / "runs" / "p2"
    analysis.main([str(noise), str(tiny_unet_pt), str(out), "--steps", "1", "--device", "cpu"])
    sizes = {}
    for name in ("eta_grid.png", "interp_slerp.png", "interp_lerp.png"):
        with Image.open(out / name) as image:
            sizes[name] = image.size
    assert sizes["interp_slerp.png"] == sizes["interp_lerp.png"]
    assert sizes["interp_slerp.png"][0] > 2 * sizes["interp_slerp.png"][1]  # one row of 11
    assert sizes["eta_grid.png"][1] > sizes["eta_grid.png"][0]  # 5 rows of 4
    info = json.loads((out / "analysis.json").read_text())
    assert (
        info["steps"] == 1
        and info["image_size"] == [64, 64]
        and info["unet_base_channels"] == TINY_WIDTH
    )
    (noise / "03.pt").unlink()
    with pytest.raises(CLIError, match="lacks 03.pt"):
        analysis.main([str(noise), str(tiny_unet_pt), str(out), "--device", "cpu"])


def test_bench_mse_of_both_maps_feeds_the_report(tiny_unet_pt, tmp_path):
    runs = tmp_path / "runs"
    empty = section(runs)  # nothing measured yet: every block names its command, no numbers
    for command in (
        "python -m p2_ddim.analysis",
        "python -m bench.p2_ddim gt",
        "python -m bench.p2_ddim speed",
        "python -m bench.p2_ddim cost",
    ):
        assert command in empty
    assert "| clip |" not in empty

    noise = write_noises(tmp_path / "noise", 2, 32, seed=3)
    gt = tmp_path / "GT"
    # clip map as "GT"
    infer.main([str(noise), str(gt), str(tiny_unet_pt), "--steps", "2", "--device", "cpu"])
    result = bench.main(
        [
            "gt",
            str(noise),
            str(tiny_unet_pt),
            str(gt),
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "bench"),
            "--json",
            str(runs / "p2" / "mse.json"),
        ]
    )
    assert result["maps"]["clip"]["mse"] == 0.0  # the same sampler and map reproduce GT exactly
    assert result["maps"]["minmax"]["mse"] > 0.0
    bench.main(
        [
            "cost",
            "--n",
            "1",
            "--size",
            "32",
            "--width",
            "32",
            "--steps",
            "50",
            "--json",
            str(runs / "p2" / "cost.json"),
        ]
    )

    report = section(runs)
    minmax = result["maps"]["minmax"]
    assert "| clip | 0.00 | 0.00 | **0.00** |" in report
    assert f"**{minmax['mse']:.2f}**" in report
    # speed still missing
    assert "python -m bench.p2_ddim gt" in report and "python -m bench.p2_ddim speed" in report
    assert "python -m p2_ddim.analysis" in report
    # the MSE cites the command that measured it
    assert f"python -m bench.p2_ddim gt {noise}" in report
