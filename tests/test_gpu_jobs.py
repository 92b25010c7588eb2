"""The planned GPU calls (bench/gpu_jobs/), rehearsed on the CPU: every job's arguments are
options of its command; P4's long run with the light state it carries (no optimizer moments,
bf16) trains, comes back through gpu_call's --keep into a kept folder and from there through
--resume into the next call's work folder, where the same job resumes it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from bench import gpu_call
from conftest import require_shared
from p4_gan import train as p4_train
from p6_classification import train as p6_train

JOBS = sorted((Path(gpu_call.REPO) / "bench" / "gpu_jobs").glob("*.json"))
LAUNCHER = ["--out", "X", "--max-seconds", "420", "--compact-checkpoint"]  # what gpu_call adds


def test_there_are_jobs_for_each_planned_call():
    assert {p.stem for p in JOBS} == {"p6_recipe_a", "p4_long", "p4_long_plain", "p6_aug_study"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.stem)
def test_every_jobs_arguments_are_options_of_its_command(path):
    for name, (module, *argv) in gpu_call.read_jobs(str(path)).items():
        if module == "p6_classification.aug_study":
            # the study's own options, then every other one goes to each run's train.py
            assert argv[:6] == [
                "--data",
                ".device/data/cifar10_full",
                "--epochs",
                "30",
                "--jobs",
                "5",
            ]
            p6_train.parse_args([*argv[6:], "--data", "D", *LAUNCHER])
            continue
        args = importlib.import_module(module).parse_args([*argv, *LAUNCHER])
        assert args.max_seconds == 420 and args.compact_checkpoint
        if module == "p4_gan.train":
            assert args.preset == "long" and args.no_optimizer_state
            assert args.fast_step == (name == "p4_long" and path.stem == "p4_long")
        if module == "p6_classification.train":
            assert args.preset == "recipe_a" and args.official_pixels == ""


def _long_run(out: Path, epochs: int) -> None:
    p4_train.main(
        [
            "--preset", "long", "--data", str(require_shared("hw2_data", "face")), "--out", str(out),
            "--g-channels", "4", "--d-channels", "8", "--batch-size", "8", "--epochs", str(epochs),
            "--device", "cpu", "--sample-every", "0", "--snapshot-every", "1", "--log-every", "1",
            "--compact-checkpoint", "--no-optimizer-state", "--fast-step", "--force-resume",
        ]
    )  # fmt: skip


def test_p4_long_run_state_goes_to_the_repository_and_back_and_resumes(tmp_path, capsys):
    work = tmp_path / "device" / "runs"
    _long_run(work / "p4_long", epochs=1)  # the "call": 3 steps
    state = torch.load(work / "p4_long" / "last.pt", weights_only=False)
    assert state["trainer"]["opt_g"] is None and state["trainer"]["opt_d"] is None
    assert state["trainer"]["G"]["net.0.weight"].dtype == torch.bfloat16

    # back here: the call's parts unpacked, its state kept where the repository holds it
    out = tmp_path / "out"
    gpu_call.write_parts(work, out, {"jobs": {}})
    kept = tmp_path / "repo" / "p4_gan" / "checkpoints" / "gpu_run"
    gpu_call.main(
        ["unpack", str(out), "--work", str(tmp_path / "back"), "--keep", f"p4_long={kept}"]
    )
    assert sorted(p.name for p in kept.iterdir()) == ["last.pt", "log.csv", "result.json"]

    # the next call: pack puts it in the new work folder, and the same job resumes it
    shared = tmp_path / "shared"
    (shared / "celeba10k").mkdir(parents=True)
    (shared / "celeba10k" / "train.npz").write_bytes(b"faces")
    device = tmp_path / "device2"
    gpu_call.main(
        ["pack", "celeba10k/train.npz", "--shared", str(shared), "--device-dir", str(device)]
        + ["--resume", f"p4_long={kept}"]
    )
    assert (device / "data" / "celeba10k" / "train.npz.xz").is_file()
    capsys.readouterr()
    _long_run(device / "runs" / "p4_long", epochs=2)
    assert "resumed at step 3; Adam afresh" in capsys.readouterr().out
    result = json.loads((device / "runs" / "p4_long" / "result.json").read_text())
    assert result["finished"] and result["step"] == 6
    assert [s["from_step"] for s in result["sessions"]] == [0, 3]


def test_resume_and_keep_take_name_equals_folder():
    with pytest.raises(gpu_call.CLIError, match="NAME=DIR"):
        gpu_call.named_dirs(["p4_gan/checkpoints/gpu_run"], "--resume")


def test_p4_long_state_travels_both_ways_within_the_limits():
    """Out: the code (tracked files under 1 MB: stage.sh stash moves the rest), the faces and
    --preset long's full-size light last.pt within 64 MiB, with 1 MiB for the wheel. Back:
    last.pt, the fp16 model.pt and at least one fp16 snapshot within gpu_call's parts."""
    import io
    import subprocess

    from hw2_utils.runs import _bfloat16
    from p4_gan.pipeline import save_generator

    args = p4_train.parse_args(["--preset", "long"])
    trainer = p4_train.build_trainer(args, torch.device("cpu"), torch.float32, rank=0)
    trainer.keep_optimizer_state = False
    state, generator = io.BytesIO(), io.BytesIO()
    torch.save({"trainer": _bfloat16(trainer.state_dict())}, state)
    save_generator(generator, trainer.G, {}, half=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=gpu_call.REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    sizes = [(gpu_call.REPO / name.decode()).stat().st_size for name in listed if name]
    code = sum(size for size in sizes if size < 2**20)
    faces = require_shared("celeba10k", "train.npz").stat().st_size
    mib = 2**20
    assert (code + faces + state.tell()) / mib < 63, (code / mib, faces / mib, state.tell() / mib)
    back = state.tell() + 2 * generator.tell() + mib  # last.pt, model.pt, one snapshot, the rest
    assert back < gpu_call.MAX_PARTS * gpu_call.PART_BYTES - mib


def test_what_does_not_fit_is_the_oldest(tmp_path, monkeypatch):
    """Over the return budget, a run's last.pt and the newest snapshot come back, the oldest not."""
    import os

    run = tmp_path / "work" / "p4_long"
    (run / "snapshots").mkdir(parents=True)
    (run / "last.pt").write_bytes(b"s" * 3000)
    for age, name in enumerate(["generator_epoch0200.pt", "generator_epoch0100.pt"]):
        path = run / "snapshots" / name
        path.write_bytes(b"g" * 3000)
        os.utime(path, (1e9 - age * 100, 1e9 - age * 100))  # epoch 100 written first
    monkeypatch.setattr(
        gpu_call, "PART_BYTES", 2**20 + 9000
    )  # 9,000 bytes past the 1 MiB reserve: two files
    monkeypatch.setattr(gpu_call, "MAX_PARTS", 1)
    gpu_call.write_parts(tmp_path / "work", tmp_path / "out", {})
    back = gpu_call.main(["unpack", str(tmp_path / "out"), "--work", str(tmp_path / "back")])
    assert (back / "left_out.txt").read_text() == "p4_long/snapshots/generator_epoch0100.pt"
    assert (back / "p4_long" / "snapshots" / "generator_epoch0200.pt").is_file()
