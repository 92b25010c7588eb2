"""bench/gpu_session.py, the one prepared command a lent GPU machine runs: its CPU rehearsal
(--tiny) starts every job, packs what comes back into parts the device tool can return, and
`unpack` restores runs that the project's own loaders read (the P6 model, fp16 P4 snapshots)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from conftest import require_shared

from bench import gpu_session
from p4_gan.pipeline import generate, load_generator
from p6_classification.infer import load_checkpoint

RETURNED_FILES = 8  # the device tool brings back at most 8 files a call


def test_tiny_rehearsal_trains_every_job_and_unpacks_what_the_benches_read(tmp_path):
    require_shared("cifar10", "cifar10_slice.npz")
    require_shared("hw2_data", "face", "train")
    out, work, back = tmp_path / "out", tmp_path / "work", tmp_path / "back"
    run = [sys.executable, "-m", "bench.gpu_session", "run", "--device", "cpu", "--tiny"]
    run += ["--no-timings", "--budget", "150", "--out", str(out), "--work", str(work)]
    done = subprocess.run(run, cwd=gpu_session.REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    parts = sorted(out.iterdir())
    assert parts and all(p.name.startswith("session.tar.part-") for p in parts)
    assert len(parts) <= RETURNED_FILES
    assert all(p.stat().st_size <= gpu_session.PART_BYTES for p in parts)
    gpu_session.main(["unpack", str(out), "--work", str(back)])

    session = json.loads((back / "session.json").read_text())
    assert session["tiny"] and session["not_returned"] == []
    p4_jobs = [f"p4_{name}" for name in list(gpu_session.P4_VARIANTS)[:2]]
    assert set(session["jobs"]) == {"p6_main", "p6_study", *p4_jobs}
    assert all(
        job["returncode"] == 0 and job["stopped"] is None for job in session["jobs"].values()
    )

    model, info = load_checkpoint(back / "p6" / "resnet18" / "final.pt", torch.device("cpu"))
    assert info["epochs"] == session["p6_plan"]["main_epochs"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    study = json.loads((back / "p6" / "aug" / "aug_study.json").read_text())
    assert [row["preset"] for row in study["rows"]] == list(gpu_session.STUDY_PRESETS)
    for job in p4_jobs:
        snapshots = sorted((back / "p4_fp16" / job.removeprefix("p4_") / "snapshots").glob("*.pt"))
        assert snapshots, job
        generator, meta = load_generator(snapshots[-1])
        assert meta["epoch"] == int(snapshots[-1].stem.removeprefix("generator_epoch"))
        images = generate(generator, 2, seed=0)
        assert images.shape[0] == 2 and torch.isfinite(images).all()
