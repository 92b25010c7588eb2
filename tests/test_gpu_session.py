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


def rehearse(tmp_path, *extra: str):
    """`run --device cpu --tiny` in a subprocess, as the device tool runs the call; returns the
    folder OUT that comes back and the one `unpack` restored it into."""
    require_shared("cifar10", "cifar10_slice.npz")
    require_shared("hw2_data", "face", "train")
    out, work, back = tmp_path / "out", tmp_path / "work", tmp_path / "back"
    run = [sys.executable, "-m", "bench.gpu_session", "run", "--device", "cpu", "--tiny"]
    run += ["--no-timings", "--budget", "150", "--out", str(out), "--work", str(work), *extra]
    done = subprocess.run(run, cwd=gpu_session.REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    gpu_session.main(["unpack", str(out), "--work", str(back)])
    return out, back


def test_tiny_rehearsal_trains_every_job_and_unpacks_what_the_benches_read(tmp_path):
    out, back = rehearse(tmp_path)
    parts = sorted(out.iterdir())
    assert parts and all(p.name.startswith("session.tar.part-") for p in parts)
    assert len(parts) <= RETURNED_FILES
    assert all(p.stat().st_size <= gpu_session.PART_BYTES for p in parts)

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


def test_without_a_main_run_the_study_is_first_in_line(tmp_path):
    """--p6-main no (what auto does while the shipped model is train.py's recipe): no main run,
    the study and the P4 runs train and come back."""
    _, back = rehearse(tmp_path, "--p6-main", "no")
    session = json.loads((back / "session.json").read_text())
    p4_jobs = {f"p4_{name}" for name in list(gpu_session.P4_VARIANTS)[:2]}
    assert set(session["jobs"]) == {"p6_study", *p4_jobs}
    assert session["p6_plan"]["main"] == "no" and session["p6_plan"]["main_epochs"] == 0
    assert all(job["returncode"] == 0 for job in session["jobs"].values())
    assert not (back / "p6" / "resnet18").exists()
    study = json.loads((back / "p6" / "aug" / "aug_study.json").read_text())
    assert [row["preset"] for row in study["rows"]] == list(gpu_session.STUDY_PRESETS)


def test_auto_skips_the_main_run_only_while_the_shipped_model_is_the_recipe(tmp_path, monkeypatch):
    from p6_classification import train

    # the shipped model (p6_classification/checkpoints/p6_bench.json) was trained with the recipe ...
    assert gpu_session.shipped_p6_is_the_recipe()
    # ... and is not once the recipe moves on, though its command names no recipe flag
    monkeypatch.setitem(train.DEFAULTS["resnet18"], "epochs", 200)
    assert not gpu_session.shipped_p6_is_the_recipe()
    monkeypatch.undo()

    monkeypatch.setattr(gpu_session, "CHECKPOINTS", tmp_path)
    assert not gpu_session.shipped_p6_is_the_recipe()  # no record: nothing shipped to repeat
    record = tmp_path / gpu_session.SHIPPED_RECORDS["bench.json"]
    arch = {"model": "resnet18", "stem": "cifar", "width": 64}
    run = {"command": "python -m p6_classification.train --data D --out O", "arch": arch}
    run["recipe"] = {k: getattr(train.parse_args([]), k) for k in train.RECIPE}
    record.write_text(json.dumps({"full": run}))
    assert gpu_session.shipped_p6_is_the_recipe()
    for changed in ({"recipe": {**run["recipe"], "lr": 0.1}}, {"arch": {**arch, "width": 32}}):
        record.write_text(json.dumps({"full": {**run, **changed}}))
        assert not gpu_session.shipped_p6_is_the_recipe()


class FakeJob:
    def __init__(self, name: str, running: bool = True):
        self.name, self.is_running = name, running

    def running(self) -> bool:
        return self.is_running


def test_the_first_p6_job_in_line_is_never_stopped_for_itself():
    names = ["improved_b64", "resnet32_b64"]
    p4 = {f"p4_{n}": FakeJob(f"p4_{n}") for n in names}
    study, main = FakeJob("p6_study"), FakeJob("p6_main")
    with_main = {"p6_main": main, "p6_study": study, **p4}
    assert gpu_session.next_to_stop(with_main, main, names) is study
    study.is_running = False
    assert gpu_session.next_to_stop(with_main, main, names) is p4["p4_resnet32_b64"]
    study.is_running = True
    # no main run: the study is first, so the P4 runs go, the last named first
    study_first = {"p6_study": study, **p4}
    assert gpu_session.next_to_stop(study_first, study, names) is p4["p4_resnet32_b64"]
    p4["p4_resnet32_b64"].is_running = False
    assert gpu_session.next_to_stop(study_first, study, names) is p4["p4_improved_b64"]
    p4["p4_improved_b64"].is_running = False
    assert gpu_session.next_to_stop(study_first, study, names) is None
