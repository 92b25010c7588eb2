"""P2 training (p2_ddim/train.py) on the 24 real train faces with a narrow UNet at 32x32:
q(x_t | x_0) against diffusers, the loss falling, bit-exact resume, the exported UNet.pt
going through infer.py, and bad input."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from conftest import REPO, require_shared, run_torchrun
from hw2_utils import CLIError, make_generator, to_uint8
from p2_ddim import infer, train
from p2_ddim.ddim import linear_alphas_cumprod
from p2_ddim.pipeline import load_unet, sample, to_unit_range
from p2_ddim.unet import FaceUNet

WIDTH, SIZE, BATCH = 32, 32, 8  # narrowest GroupNorm(32) width; 24 faces / 8 = 3 steps per epoch
TINY = [
    "--base-channels",
    str(WIDTH),
    "--image-size",
    str(SIZE),
    "--batch-size",
    str(BATCH),
    "--warmup",
    "2",
    "--ckpt-every",
    "2",
    "--sample-every",
    "2",
    "--sample-n",
    "4",
    "--sample-steps",
    "2",
    "--device",
    "cpu",
]


def faces_dir() -> Path:
    return require_shared("hw2_data", "face", "train")


def _train(out: Path, *extra: str) -> None:
    train.main(["--data", str(faces_dir()), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """4 uninterrupted steps: crosses the epoch boundary after step 3."""
    out = tmp_path_factory.mktemp("p2_train") / "straight"
    _train(out, "--steps", "4")
    return out


def test_add_noise_matches_diffusers():
    g = make_generator(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    alphas = linear_alphas_cumprod()
    ours = train.add_noise(x0, t, noise, alphas)
    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )
    ref.alphas_cumprod = alphas  # diffusers' own float32 cumprod drifts (see test_p2_ddim)
    # diffusers takes 1 - a_t in float32, which at t = 0 (a = 0.9999) keeps only ~4 digits: 2.6e-6 off.
    assert (ours - ref.add_noise(x0, noise, t)).abs().max().item() < 1e-5
    a = alphas[t].view(-1, 1, 1, 1)
    exact = a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()
    # ours keeps the float64 schedule's precision
    assert (ours.double() - exact).abs().max().item() < 1e-6


def test_loss_falls_on_real_faces():
    """Six train_step calls (train.py's own step) on one real batch; the loss on a fixed
    probe (t, noise) draw, without dropout, must fall at every step and halve overall."""
    x0 = train.to_model_range(
        train.load_faces(faces_dir(), SIZE)[:BATCH], torch.zeros(BATCH, dtype=torch.bool)
    )
    assert x0.shape == (BATCH, 3, SIZE, SIZE) and -1 <= x0.min() < x0.max() <= 1
    torch.manual_seed(0)
    model = FaceUNet(WIDTH)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    alphas = linear_alphas_cumprod()
    probe_t, probe_noise = train.draw_t_and_noise(BATCH, (3, SIZE, SIZE), make_generator(123))

    def probe() -> float:
        model.eval()
        with torch.no_grad():
            loss = train.eps_loss(model, x0, probe_t, probe_noise, alphas).item()
        model.train()
        return loss

    losses = [probe()]
    for step in range(6):
        t, noise = train.draw_t_and_noise(BATCH, (3, SIZE, SIZE), make_generator(step))
        train.train_step(model, opt, scaler, x0, t, noise, alphas, 1.0, torch.float32)
        losses.append(probe())
    assert 0.8 < losses[0] < 1.5, losses  # a random UNet: roughly the noise variance
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 1.061 -> 0.330


def _log(out: Path) -> list[dict]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resumed_run_equals_uninterrupted_run(straight, tmp_path):
    resumed = tmp_path / "resumed"
    _train(resumed, "--steps", "2")  # stops mid-epoch 0
    _train(resumed, "--steps", "4")
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(resumed / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    for i, moments in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][k]) for k, v in moments.items()), (
            f"optimizer state {i}"
        )
    ua, ub = (torch.load(p / "model.pt", weights_only=True) for p in (straight, resumed))
    assert all(torch.equal(v, ub[k]) for k, v in ua.items())
    rows_a, rows_b = _log(straight), _log(resumed)
    assert [int(r["step"]) for r in rows_b] == [1, 2, 3, 4] and [r["epoch"] for r in rows_b] == [
        "0",
        "0",
        "0",
        "1",
    ]
    # the same batches, t and noise
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert sorted(p.name for p in (resumed / "samples").iterdir()) == [
        "step000002.png",
        "step000004.png",
    ]
    assert (straight / "samples" / "step000004.png").read_bytes() == (
        resumed / "samples" / "step000004.png"
    ).read_bytes()


def test_resume_refuses_a_different_run(straight, tmp_path):
    shutil.copytree(straight, tmp_path / "run")
    with pytest.raises(CLIError, match="belongs to another run .*image_size: 32 there, 64 now"):
        train.main(
            [
                "--data",
                str(faces_dir()),
                "--out",
                str(tmp_path / "run"),
                *TINY,
                "--image-size",
                "64",
            ]
        )


def test_exported_weights_are_unet_pt_and_infer_samples_them(straight, tmp_path):
    exported = torch.load(straight / "model.pt", weights_only=True)
    last = torch.load(straight / "last.pt", weights_only=False)
    # UNet.pt's keys, in order
    assert type(exported) is dict and list(exported) == list(FaceUNet(WIDTH).state_dict())
    assert all(torch.equal(v, last["ema"][k]) for k, v in exported.items())  # the EMA ...
    # ... not the raw weights
    assert not all(torch.equal(v, last["model"][k]) for k, v in exported.items())
    unet = load_unet(straight / "model.pt", torch.device("cpu"))
    assert unet.base_channels == WIDTH and not unet.training

    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    noises = torch.randn(2, 3, SIZE, SIZE, generator=make_generator(7))
    for i, x in enumerate(noises):
        torch.save(x[None], noise_dir / f"{i:02d}.pt")
    infer.main(
        [
            str(noise_dir),
            str(tmp_path / "out"),
            str(straight / "model.pt"),
            "--steps",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00.png", "01.png"]
    expected = to_uint8(to_unit_range(sample(unet, noises, steps=2), "clip"), (0.0, 1.0)).numpy()
    for i in range(2):
        with Image.open(tmp_path / "out" / f"{i:02d}.png") as image:
            assert np.array_equal(np.asarray(image), expected[i])
    assert not np.array_equal(expected[0], expected[1])


def test_missing_image_folder_is_a_one_line_error(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HW2_QUIET": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2_ddim.train",
            "--data",
            str(tmp_path / "absent"),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr and "absent" in r.stderr, (
        r.stderr
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~40 s of two-process start-up and training on a 2-core CPU
def test_torchrun_two_ranks(tmp_path):
    r = run_torchrun(
        [
            "-m",
            "p2_ddim.train",
            "--data",
            str(faces_dir()),
            "--out",
            str(tmp_path),
            *TINY,
            "--steps",
            "4",
        ],
        timeout=300,
    )
    assert r.stdout.count("done:") == 1  # rank 0 alone logs and writes
    rows = _log(tmp_path)  # each rank takes 4 of its 12-face shard per step: 3 steps per epoch
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 1)]
    assert load_unet(tmp_path / "model.pt", torch.device("cpu")).base_channels == WIDTH
