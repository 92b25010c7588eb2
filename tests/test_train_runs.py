"""One way to run a training run (hw2_utils.runs) in every train.py: resume by default,
--no-resume starts over, OUT/log.csv keeps a header and each step once after a crash and a
resume, and --max-seconds ends a session with OUT/last.pt, model.pt, result.json and log.csv that
the same command finishes. The helper itself: identity check, log trimming, provenance, the
common options, presets, the folder lock."""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import REPO, require_shared, small_digits
from PIL import Image

from hw2_utils import (
    REQUIRED,
    CLIError,
    RunFolder,
    add_common_args,
    git_commit,
    parse_with_presets,
    runs,
)
from p1_ddpm import train as p1
from p2_ddim import train as p2
from p3_textual_inversion import train as p3
from p4_gan import train as p4
from p5_dann import train as p5
from p6_classification import train as p6
from p7_clip import train as p7
from p8_controlnet import train as p8
from stable_diffusion.tiny import build_tiny_sd, save_diffusers_folder

# --------------------------------------------------------------------------- every train.py


@dataclass
class Case:
    module: object  # the train.py; its main(argv) runs it
    argv: Callable[[Path, int], list[str]]  # (OUT, steps) -> arguments of a tiny run
    steps: int  # of a whole run, in log rows
    # what must equal an uninterrupted run's, where resume is exact
    weights: Callable[[Path], dict] | None = None
    unit: int = 1  # optimizer steps per log row (P5 and P6 log, check and stop at epoch ends)


def _tensors(path: Path, *keys: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {k: state[k] for k in keys}


def _concept(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _case(name: str, tmp: Path) -> Case:
    common = ["--device", "cpu", "--ckpt-every", "2"]  # every 2 rows: P5 and P6 set their own
    if name == "p1":
        digits = small_digits(tmp / "digits")
        # the loader reshuffles on resume: not exact
        return Case(
            p1,
            lambda out, n: [
                "--data",
                str(digits),
                "--domains",
                "mnistm",
                "usps",
                "--out",
                str(out),
                "--batch-size",
                "16",
                "--base-channels",
                "8",
                "--sample-every",
                "100",
                "--steps",
                str(n),
                *common,
            ],
            4,
        )
    if name == "p2":
        faces = require_shared("hw2_data", "face", "train")
        return Case(
            p2,
            lambda out, n: [
                "--data",
                str(faces),
                "--out",
                str(out),
                "--base-channels",
                "32",
                "--image-size",
                "32",
                "--batch-size",
                "8",
                "--warmup",
                "2",
                "--sample-every",
                "100",
                "--sample-n",
                "4",
                "--sample-steps",
                "2",
                "--steps",
                str(n),
                *common,
            ],
            4,
            lambda out: torch.load(out / "model.pt", weights_only=True),
        )
    if name == "p3":
        sd, images = (
            save_diffusers_folder(build_tiny_sd(seed=0), tmp / "sd"),
            _concept(tmp / "concept"),
        )
        return Case(
            p3,
            lambda out, n: [
                "--data",
                str(images),
                "--placeholder",
                "<new1>",
                "--initializer",
                "dog",
                "--pretrained",
                str(sd),
                "--out",
                str(out),
                "--grad-accum",
                "1",
                "--batch-size",
                "2",
                "--validation-every",
                "0",
                "--steps",
                str(n),
                *common,
            ],
            4,
            lambda out: _tensors(out / "last.pt", "rows"),
        )
    if name == "p4":  # 24 faces in batches of 8: 3 steps an epoch
        faces = require_shared("hw2_data", "face")
        return Case(
            p4,
            lambda out, n: [
                "--preset",
                "improved",
                "--data",
                str(faces),
                "--out",
                str(out),
                "--g-channels",
                "4",
                "--d-channels",
                "4",
                "--batch-size",
                "8",
                "--epochs",
                str(n // 3),
                "--log-every",
                "1",
                "--fid-every",
                "0",
                "--sample-every",
                "0",
                *common,
            ],
            6,
            lambda out: _tensors(out / "last.pt", "trainer")["trainer"]["G"],
        )
    if name == "p5":  # a row is an epoch: 2 steps of 32 images in batches of 16
        digits = small_digits(tmp / "digits", splits=("train", "val"))
        return Case(
            p5,
            lambda out, n: [
                "--mode",
                "dann",
                "--data",
                str(digits),
                "--out",
                str(out),
                "--batch-size",
                "16",
                "--consistency-weight",
                "1",
                "--epochs",
                str(n),
                *common[:2],
                "--ckpt-every",
                "4",
            ],
            4,
            lambda out: _tensors(out / "last.pt", "model")["model"],
            unit=2,
        )
    if name == "p6":  # a row is an epoch: 3 steps of the 90 training images in batches of 30
        cifar = require_shared("cifar10", "cifar10_slice.npz")
        return Case(
            p6,
            lambda out, n: [
                "--data",
                str(cifar),
                "--limit",
                "100",
                "--width",
                "8",
                "--batch-size",
                "30",
                "--epochs",
                str(n),
                "--out",
                str(out),
                *common[:2],
                "--ckpt-every",
                "6",
            ],
            4,
            lambda out: _tensors(out / "last.pt", "model")["model"],
            unit=3,
        )
    if name == "p7":  # a step is one C of the search, which has SEARCH_STEPS of them
        cifar = require_shared("cifar10", "cifar10_slice.npz")
        return Case(
            p7,
            lambda out, n: [
                "--clip",
                "ViT-B-32=tiny",
                "--data",
                str(cifar),
                "--limit",
                "300",
                "--out",
                str(out),
                *common,
            ],
            p7.SEARCH_STEPS,
            lambda out: _tensors(out / "model.pt", "coef", "intercept"),
        )
    coco = (
        require_shared("coco", "val2017"),
        require_shared("coco", "annotations", "captions_val2017.json"),
    )
    sd = save_diffusers_folder(build_tiny_sd(seed=0), tmp / "sd")
    return Case(
        p8,
        lambda out, n: [
            "--pretrained",
            str(sd),
            "--data",
            str(coco[0]),
            "--captions",
            str(coco[1]),
            "--limit",
            "2",
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--steps",
            str(n),
            *common,
        ],
        4,
        lambda out: _tensors(out / "last.pt", "controlnet")["controlnet"],
    )


def _log(out: Path) -> tuple[list[str], list[int]]:
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [int(r[0]) for r in rows[1:]]


def _sessions(out: Path) -> list[int]:
    return [s["from_step"] for s in _result(out)["sessions"]]


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key])), key


@pytest.mark.parametrize("name", ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"])
def test_crash_resume_and_no_resume(name, tmp_path, monkeypatch):
    """A KeyboardInterrupt just after row 3 is logged (the checkpoint is at row 2); the rerun
    resumes from row 2, leaving each row logged once; --no-resume then starts over."""
    case = _case(name, tmp_path)
    due = RunFolder.checkpoint_due

    def crash_after_row_3(self, step, total, since=None):
        if step == 3 * case.unit:
            raise KeyboardInterrupt
        return due(self, step, total, since)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(RunFolder, "checkpoint_due", crash_after_row_3)
        with pytest.raises(KeyboardInterrupt):
            case.module.main(case.argv(run, case.steps))
    rows = [case.unit * i for i in range(1, case.steps + 1)]
    assert _log(run) == (case.module.LOG_FIELDS, rows[:3])
    case.module.main(case.argv(run, case.steps))
    assert _log(run) == (case.module.LOG_FIELDS, rows)
    assert _sessions(run) == [0, 2 * case.unit]
    if case.weights is not None:
        straight = tmp_path / "straight"
        case.module.main(case.argv(straight, case.steps))
        _assert_equal(case.weights(run), case.weights(straight))

    # p7's search has a fixed length; p4's runs are whole epochs of 3 steps
    short = {"p7": case.steps, "p4": 3}.get(name, min(2, case.steps))
    case.module.main([*case.argv(run, short), "--no-resume"])
    assert _log(run) == (case.module.LOG_FIELDS, rows[:short])
    assert _sessions(run) == [0]


def _float_dtypes(value) -> set:
    """The floating-point dtypes in a checkpoint, but its optimizers' step counts and learning
    rates (tensors in P4, kept exact)."""
    if isinstance(value, torch.Tensor):
        return {value.dtype} if value.is_floating_point() else set()
    if isinstance(value, dict):
        kept = ("step", "lr")
        return set().union(*(_float_dtypes(v) for k, v in value.items() if k not in kept), set())
    if isinstance(value, (list, tuple)):
        return set().union(*map(_float_dtypes, value), set())
    return set()


@pytest.mark.parametrize("name", ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"])
def test_a_budget_ends_the_session_and_the_same_command_finishes_the_run(
    name, tmp_path, monkeypatch
):
    """--max-seconds 15 on a clock that advances 10 s at each look: the first step boundary
    ends the session (it has used 20 s, and another step of 20 would pass 15) with last.pt
    (compact: bfloat16), model.pt, log.csv and result.json unfinished at that step; the same
    command on a clock that stands still then resumes the run to its end."""
    case = _case(name, tmp_path)
    run, ticks = tmp_path / "run", itertools.count(0.0, 10.0)
    argv = [*case.argv(run, case.steps), "--max-seconds", "15", "--compact-checkpoint"]
    monkeypatch.setattr(runs, "clock", lambda: next(ticks))
    case.module.main(argv)
    assert {"last.pt", "model.pt", "result.json", "log.csv"} <= {p.name for p in run.iterdir()}
    result, total = _result(run), case.steps * case.unit
    assert (result["finished"], result["step"], result["total_steps"]) == (False, case.unit, total)
    assert _float_dtypes(torch.load(run / "last.pt", weights_only=True)) <= {torch.bfloat16}
    assert _log(run) == (case.module.LOG_FIELDS, [case.unit])

    monkeypatch.setattr(runs, "clock", lambda: 0.0)
    case.module.main(argv)
    result = _result(run)
    assert (result["finished"], result["step"], result["total_steps"]) == (True, total, total)
    assert [s["from_step"] for s in result["sessions"]] == [0, case.unit]
    assert result["recipe"]["max_seconds"] == 15.0 and result["hardware"]
    assert _log(run)[1] == [case.unit * i for i in range(1, case.steps + 1)]


# --------------------------------------------------------------------------- the helper


def test_identity_mismatch_names_every_differing_key(tmp_path):
    run = RunFolder(tmp_path / "run", ckpt_every=1)
    run.load({"lr": 0.1, "data": "a"})
    run.start(0, 1, ["step"], "python -m x", torch.device("cpu"))
    run.save({"step": 1})
    with pytest.raises(
        CLIError, match=r"another run \(data: 'a' there, 'b' now; seed: None there, 0 now\)"
    ):
        RunFolder(tmp_path / "run", ckpt_every=1).load({"lr": 0.1, "data": "b", "seed": 0})
    assert RunFolder(tmp_path / "run", ckpt_every=1).load({"lr": 0.1, "data": "a"})["step"] == 1
    assert (
        RunFolder(tmp_path / "run", ckpt_every=1, resume=False).load({"lr": 0.1, "data": "b"})
        is None
    )
    torch.save({"step": 1}, tmp_path / "run" / "last.pt")  # written before runs.py existed
    with pytest.raises(CLIError, match="records no run identity"):
        RunFolder(tmp_path / "run", ckpt_every=1).load({})


def test_log_is_trimmed_to_the_checkpoint_and_starting_over_resets_the_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("1,0.5\n2,0.4\n3,0.3\n")  # an older, headerless log
    (out / "samples.png").write_text("not the run's bookkeeping")
    torch.save({"identity": {}, "step": 2}, out / "last.pt")
    run = RunFolder(out, ckpt_every=1)
    state = run.load({})
    log = run.start(state["step"], 3, ["step", "loss"], "cmd 1", torch.device("cpu"))
    log.writerow([3, 0.25])
    run.close()
    assert (out / "log.csv").read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4", "3,0.25"]
    assert (out / "last.pt").is_file()

    run = RunFolder(out, ckpt_every=1, resume=False)
    assert run.load({}) is None
    run.start(0, 3, ["step", "loss"], "cmd 2", torch.device("cpu"))
    run.finish(0)
    assert (out / "log.csv").read_text().splitlines() == ["step,loss"]
    # nothing else is touched
    assert not (out / "last.pt").exists() and (out / "samples.png").is_file()
    record = _result(out)
    assert [s["command"] for s in record["sessions"]] == ["cmd 2"]
    assert record["sessions"][0]["hardware"].endswith(f"(torch {torch.__version__})")


def test_checkpoint_cadence_includes_the_last_step(tmp_path):
    run = RunFolder(tmp_path, ckpt_every=3)
    assert [s for s in range(1, 8) if run.checkpoint_due(s, 7)] == [3, 6, 7]
    # checked at epoch ends of 2 steps: the first epoch end at or after each multiple of 3
    assert [s for s in range(2, 11, 2) if run.checkpoint_due(s, 10, since=s - 2)] == [4, 6, 10]


def test_bad_out_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CLIError, match="exists and is not a folder"):
        RunFolder(tmp_path / "file", ckpt_every=1)


def test_git_commit_reads_branches_packed_refs_and_detached_heads(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert git_commit(tmp_path) is None  # not a checkout
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    assert git_commit(tmp_path) == sha
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert git_commit(tmp_path) == sha
    (git / "HEAD").write_text(sha[::-1] + "\n")
    assert git_commit(tmp_path) == sha[::-1]
    assert len(git_commit() or "x" * 40) == 40  # this repository, or no checkout at all


# --------------------------------------------------------------------------- the common options


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_common_args(
        p,
        data=(REQUIRED, "images"),
        out=("runs/x", "run folder"),
        presets={"shipped": {}},
        image_size=(64, "size"),
        limit="first N",
        grad_clip=1.0,
    )
    return p


def test_common_options_refuse_bad_input_while_parsing(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--data", "a", "--image-size", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


def test_a_preset_sets_defaults_and_the_command_line_overrides_it():
    presets = {"shipped": {"image_size": 32, "limit": 7}}
    p = argparse.ArgumentParser()
    add_common_args(
        p, data=(REQUIRED, "d"), out=("o", "o"), presets=presets, image_size=(64, "s"), limit="n"
    )
    args = parse_with_presets(p, ["--data", "d", "--preset", "shipped", "--limit", "3"], presets)
    assert (args.image_size, args.limit, args.preset) == (32, 3, "shipped")
    assert parse_with_presets(p, ["--data", "d"], presets).image_size == 64
    assert parse_with_presets(p, ["--data", "d", "--pres=shipped"], presets).image_size == 32


@pytest.mark.parametrize("module", [p1, p2, p3, p4, p5, p6, p7, p8])
def test_every_train_py_offers_the_common_spellings_only(module, capsys):
    """The common options by their one spelling in every train.py's --help, --preset shipped
    (P1: its two stages) among the presets."""
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    shown = set(re.findall(r"--[a-z-]+", capsys.readouterr().out))
    assert {
        "--data",
        "--out",
        "--preset",
        "--device",
        "--seed",
        "--ckpt-every",
        "--max-seconds",
        "--compact-checkpoint",
        "--no-resume",
    } <= shown
    shipped = {"shipped-stage1", "shipped-stage2"} if module is p1 else {"shipped"}
    assert shipped <= set(module.PRESETS)


def test_force_resume_accepts_a_moved_data_folder_and_says_so(tmp_path, capsys):
    run = RunFolder(tmp_path / "run", ckpt_every=1)
    run.load({"data": "/old/place/mnistm"})
    run.start(0, 1, ["step"], "python -m x", torch.device("cpu"))
    run.save({"step": 1})
    with pytest.raises(CLIError, match="--force-resume if only the data's location changed"):
        RunFolder(tmp_path / "run", ckpt_every=1).load({"data": "/new/place/mnistm"})
    state = RunFolder(tmp_path / "run", ckpt_every=1, force=True).load(
        {"data": "/new/place/mnistm"}
    )
    assert state["step"] == 1 and "resuming" in capsys.readouterr().err


def test_a_second_trainer_on_the_same_folder_is_refused_and_the_first_finishes(tmp_path):
    """Two processes on one --out: the second exits 2 with one error line naming the first's pid;
    the first ends its session (--max-seconds) with each step logged once."""
    digits, run = small_digits(tmp_path / "digits"), tmp_path / "run"
    argv = [sys.executable, "-m", "p1_ddpm.train", "--data", str(digits), "--domains", "mnistm"]
    argv += ["--out", str(run), "--device", "cpu", "--batch-size", "16", "--base-channels", "8"]
    argv += ["--sample-every", "100000", "--steps", "100000", "--ckpt-every", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log:  # not a pipe: its progress bar would fill one
        first = subprocess.Popen([*argv, "--max-seconds", "25"], cwd=REPO, env=env, stderr=log)
    lock, deadline = run / ".lock", time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        assert first.poll() is None and time.monotonic() < deadline, (
            tmp_path / "first.log"
        ).read_text()
        time.sleep(0.2)
    second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    [line] = second.stderr.strip().splitlines()
    assert line.endswith(
        f"error: {run} is in use by another training run (pid {first.pid}): wait for it to end, "
        "or use another --out"
    )
    assert first.wait(timeout=120) == 0
    _, steps = _log(run)
    result = _result(run)
    assert result["finished"] is False and steps == list(range(1, result["step"] + 1))
    assert [s["from_step"] for s in result["sessions"]] == [0]


def test_preset_shipped_is_the_recipe_the_shipped_files_record():
    """P4's generator records its command (train.py's spelling then: --model was the recipe) and
    its epoch, P5's model its configuration; --preset shipped must resolve to the same values,
    and an option given on the command line still overrides it."""
    shipped = torch.load(REPO / "p4_gan" / "checkpoints" / "p4_gan.pt", weights_only=True)
    argv = shipped["recipe"].split()[3:]
    argv[argv.index("--model")] = "--preset"  # then: the recipe's name
    then, now = p4.parse_args(argv), p4.parse_args(["--preset", "shipped"])
    keys = ["batch_size", "d_steps", "beta1", "beta2", "lr", "precision", "loss", "d_norm"]
    keys += ["diffaug", "ema_decay", "model", "g_channels", "d_channels", "fid_every"]
    assert {k: getattr(now, k) for k in keys} == {k: getattr(then, k) for k in keys}
    assert now.epochs == shipped["epoch"] == 90 and shipped["config"]["arch"] == now.model
    assert p4.parse_args(["--preset", "shipped", "--epochs", "3"]).epochs == 3

    shipped = torch.load(
        REPO / "p5_dann" / "checkpoints" / "mnistm_usps_dann.pt", weights_only=True
    )
    now = p5.parse_args(["--preset", "shipped"])
    assert {k: getattr(now, k) for k in p5.DEFAULTS} == shipped["config"]
    assert now.mode == shipped["mode"] == "dann"


def test_result_json_says_how_far_a_killed_session_got(tmp_path, monkeypatch):
    """Killed after a checkpoint (a GPU call's deadline) and before finish(): result.json holds
    the checkpoint's step, unfinished, not the step the session started from."""
    case = _case("p2", tmp_path)
    due = RunFolder.checkpoint_due

    def killed_after_row_3(self, step, total, since=None):
        if step == 3 * case.unit:
            raise KeyboardInterrupt  # the checkpoint of row 2 was written
        return due(self, step, total, since)

    monkeypatch.setattr(RunFolder, "checkpoint_due", killed_after_row_3)
    with pytest.raises(KeyboardInterrupt):
        case.module.main(case.argv(tmp_path / "run", case.steps))
    result = _result(tmp_path / "run")
    assert (result["finished"], result["step"]) == (False, 2 * case.unit)
