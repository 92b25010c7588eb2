"""bench/gpu_call.py, the GPU call's launcher, rehearsed on the CPU with two tiny real P1 runs
side by side: each ends itself at its budget, the run folders come back in parts within the
device tool's limits, and unpack restores folders that the same train.py resumes."""

from __future__ import annotations

import json

import torch
from conftest import small_digits

from bench import gpu_call
from p1_ddpm import train


def test_run_packs_the_budgeted_runs_and_unpack_restores_them_to_resume(tmp_path):
    digits = small_digits(tmp_path / "digits")
    tiny = ["--data", str(digits), "--domains", "mnistm", "--device", "cpu", "--batch-size", "16"]
    tiny += ["--base-channels", "8", "--steps", "100000", "--ckpt-every", "1000"]
    jobs = {f"p1_seed{seed}": ["p1_ddpm.train", *tiny, "--seed", str(seed)] for seed in (0, 1)}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    out, work = tmp_path / "out", tmp_path / "device_work"
    note = gpu_call.main(
        ["run", str(tmp_path / "jobs.json"), "--max-seconds", "2", "--grace", "300"]
        + ["--work", str(work), "--out", str(out)]
    )
    assert {s["returncode"] for s in note["status"].values()} == {0}
    parts = sorted(out.iterdir())
    assert 1 <= len(parts) <= gpu_call.MAX_PARTS
    assert all(p.stat().st_size <= gpu_call.PART_BYTES for p in parts)

    back = gpu_call.main(["unpack", str(out), "--work", str(tmp_path / "back")])
    for name in jobs:
        result = json.loads((back / name / "result.json").read_text())
        assert not result["finished"] and result["step"] >= 1
        assert (back / name / "log.csv").read_text() == (work / name / "log.csv").read_text()
        model = torch.load(back / name / "model.pt", weights_only=True)
        assert model["step"] == result["step"]
    assert json.loads((back / "call.json").read_text())["jobs"] == jobs
    assert (back / "left_out.txt").read_text() == ""

    # the same command resumes the restored run where the call stopped it
    step = json.loads((back / "p1_seed0" / "result.json").read_text())["step"]
    train.main([*tiny, "--seed", "0", "--out", str(back / "p1_seed0"), "--max-seconds", "0.001"])
    result = json.loads((back / "p1_seed0" / "result.json").read_text())
    assert [s["from_step"] for s in result["sessions"]] == [0, step]
    assert result["step"] == step + 1
