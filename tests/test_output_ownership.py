"""Commands touch only what they write (issue 43), tried from the outside on real files: the
TA's entry scripts never delete or replace a file this project did not write (unless
--overwrite), never remove a folder of the user's, publish whole sets even when SIGTERM or
SIGHUP arrives while publishing, and a killed run's staging folders are cleaned by the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from p2_ddim.unet import FaceUNet

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HW2_QUIET": "1"}


def run(*args, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        **kwargs,
    )


def snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def one_error_line(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def p2_inputs(tmp_path_factory):
    """A narrow random-weight course UNet and two 32x32 noise files (hw2_2.sh's inputs)."""
    root = tmp_path_factory.mktemp("p2")
    torch.manual_seed(0)
    torch.save(FaceUNet(32).state_dict(), root / "UNet.pt")
    (root / "noise").mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        torch.save(torch.randn(1, 3, 32, 32, generator=g), root / "noise" / f"{i:02d}.pt")
    return root


def test_hw2_2_never_destroys_the_ground_truth_it_is_pointed_at(p2_inputs, tmp_path):
    """The issue's H1: `bash hw2_2.sh face/noise face/GT UNet.pt` with the course layout."""
    gt = tmp_path / "GT"
    gt.mkdir()
    for i in range(6):
        (gt / f"{i:02d}.png").write_bytes(f"ground truth {i}".encode())
    before = snapshot(tmp_path)
    args = ("hw2_2.sh", p2_inputs / "noise", gt, p2_inputs / "UNet.pt", "--steps", "2")
    result = run(REPO / args[0], *args[1:])
    one_error_line(result, "2 files in")
    assert "--overwrite" in result.stderr and "(first: 00.png)" in result.stderr
    assert snapshot(tmp_path) == before  # nothing written, nothing deleted, no staging left

    result = run(REPO / args[0], *args[1:], "--overwrite")
    assert result.returncode == 0, result.stderr
    after = snapshot(gt)
    assert after["00.png"] != before["GT/00.png"] and after["01.png"] != before["GT/01.png"]
    for i in range(2, 6):  # not written by this run: the user's, untouched
        assert after[f"{i:02d}.png"] == before[f"GT/{i:02d}.png"]


def test_p4_reruns_replace_their_own_images_and_say_what_they_left(tmp_path):
    out = tmp_path / "faces"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(REPO / "p4_gan/run.sh", out, "--n", "4").returncode == 0
    first = snapshot(out)
    assert sorted(first) == ["0000.png", "0001.png", "0002.png", "0003.png", "notes.txt"]

    result = run(REPO / "p4_gan/run.sh", out, "--n", "2", "--seed", "7")  # no --overwrite needed
    assert result.returncode == 0, result.stderr
    assert "also holds 2 outputs of an earlier run" in result.stderr
    assert "(first: 0002.png)" in result.stderr
    second = snapshot(out)
    assert second["0000.png"] != first["0000.png"]  # a new seed: replaced
    assert second["0002.png"] == first["0002.png"] and second["notes.txt"] == b"mine"

    # a file changed since the project wrote it is the user's now
    (out / "0001.png").write_bytes(b"edited")
    one_error_line(run(REPO / "p4_gan/run.sh", out, "--n", "2"), "(first: 0001.png)")
    assert (out / "0001.png").read_bytes() == b"edited"


def test_a_folder_named_like_an_output_is_never_removed(tmp_path):
    out = tmp_path / "faces"
    (out / "0001.png").mkdir(parents=True)
    (out / "0001.png" / "precious.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        result = run(REPO / "p4_gan/run.sh", out, "--n", "2", *extra)
        one_error_line(result, "is a folder this project did not write")
    assert snapshot(out) == {"0001.png/precious.txt": b"mine"}


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_symlinked_output_that_leads_nowhere_is_refused_before_any_work(tmp_path, kind):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "missing" if kind == "dangling" else out)
    started = time.monotonic()
    one_error_line(run(REPO / "p4_gan/run.sh", out, "--n", "2"), "symbolic link to nothing")
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_size_limit_is_one_error_line_and_publishes_nothing(tmp_path):
    """`ulimit -f` (EFBIG, what a full disk looks like to a writer) while the faces are saved."""
    out = tmp_path / "faces"
    script = f"ulimit -f 4; exec bash {REPO / 'p4_gan/run.sh'} {out} --n 8"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=180, env=ENV
    )
    one_error_line(result, f"cannot write {out}")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- signals

# What both writers below share: their arguments, and renames slowed to 20 ms once publishing
# starts (`publishing` appears then), so a signal can arrive in the middle.
SLOW_PUBLISH = r"""
import contextlib, os, sys, time
from pathlib import Path
import hw2_utils.files as files
from hw2_utils import run_cli
out, tag, signals = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
real_replace = os.replace
def slow_replace(a, b):
    (signals / "publishing").touch()
    time.sleep(0.02)
    real_replace(a, b)
"""

# A command that stages 50 files and publishes them slowly (each rename 20 ms), so a signal
# can arrive in the middle; `staged` appears before publishing, `publishing` once it starts.
SLOW_WRITER = (
    SLOW_PUBLISH
    + r"""
def main():
    with files.output_dir(out, [f"{i:02d}.txt" for i in range(50)]) as stage:
        for i in range(50):
            (stage / f"{i:02d}.txt").write_text(tag)
        (signals / "staged").touch()
        while not (signals / "publish").exists():
            time.sleep(0.01)
        files.os.replace = slow_replace
run_cli(main)
"""
)


def start_writer(out, tag, signals):
    signals.mkdir(exist_ok=True)
    for name in ("staged", "publishing", "publish"):
        (signals / name).unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(out), tag, str(signals)],
        cwd=REPO,
        env={**ENV, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
        # under nohup SIGHUP is ignored, and the command rightly keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )


def wait_for(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def tags(out) -> set[str]:
    return {p.read_text() for p in out.glob("*.txt")}


def leftovers(parent) -> list[str]:
    return sorted(
        p.name for p in parent.iterdir() if ".hw2-partial-" in p.name or ".hw2-old-" in p.name
    )


def earlier_set(out, signals):
    writer = start_writer(out, "old", signals)
    wait_for(signals / "staged")
    (signals / "publish").touch()
    assert writer.wait(timeout=60) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_publishing_waits_for_the_whole_set(tmp_path, sig):
    out, signals = tmp_path / "work" / "out", tmp_path / "signals"
    earlier_set(out, signals)
    writer = start_writer(out, "new", signals)
    wait_for(signals / "staged")
    (signals / "publish").touch()
    wait_for(signals / "publishing")
    writer.send_signal(sig)
    assert writer.wait(timeout=60) == 128 + sig
    assert f"error: terminated by {signal.Signals(sig).name}" in writer.stderr.read()
    assert tags(out) == {"new"} and len(list(out.glob("*.txt"))) == 50
    assert leftovers(out.parent) == []


def test_a_signal_before_publishing_leaves_the_old_set_and_no_staging(tmp_path):
    out, signals = tmp_path / "work" / "out", tmp_path / "signals"
    earlier_set(out, signals)
    writer = start_writer(out, "new", signals)
    wait_for(signals / "staged")
    writer.send_signal(signal.SIGTERM)
    assert writer.wait(timeout=60) == 128 + signal.SIGTERM
    assert tags(out) == {"old"} and leftovers(out.parent) == []


def test_a_killed_runs_staging_is_removed_by_the_next_run_but_a_live_ones_is_kept(tmp_path):
    out, signals, live_signals = tmp_path / "work" / "out", tmp_path / "s1", tmp_path / "s2"
    killed = start_writer(out, "killed", signals)
    wait_for(signals / "staged")
    killed.kill()  # SIGKILL: no clean-up can run
    killed.wait(timeout=60)
    assert [name.split(".")[2][:-9] for name in leftovers(out.parent)] == ["hw2-partial"]

    live = start_writer(out, "live", live_signals)  # staged, waiting to publish
    wait_for(live_signals / "staged")
    earlier_set(out, signals)  # the next run: removes the dead staging, not the live one
    assert len(leftovers(out.parent)) == 1 and tags(out) == {"old"}
    (live_signals / "publish").touch()
    assert live.wait(timeout=60) == 0
    assert tags(out) == {"live"} and leftovers(out.parent) == []


# Two folders published as one set (P1's mnistm/ and svhn/, P3's prompt folders), slowly.
TWO_FOLDERS = (
    SLOW_PUBLISH
    + r"""
wrapped = sys.argv[4] == "1"
def main():
    out.mkdir(parents=True, exist_ok=True)
    whole = files.deferred_signals() if wrapped else contextlib.nullcontext()
    with files.output_lock(out), whole, contextlib.ExitStack() as folders:
        for folder in ("mnistm", "svhn"):
            stage = folders.enter_context(files.output_dir(out / folder, [f"{i:02d}.txt" for i in range(20)]))
            for i in range(20):
                (stage / f"{i:02d}.txt").write_text(tag)
        files.os.replace = slow_replace
run_cli(main)
"""
)


@pytest.mark.parametrize("wrapped", [True, False])
def test_a_signal_while_publishing_several_folders_leaves_one_whole_set(tmp_path, wrapped):
    """With the folders' publishing wrapped in one deferred_signals block, SIGTERM during the
    first folder's publish waits for the last; the control (unwrapped) shows the mix it prevents."""
    out, signals = tmp_path / "out", tmp_path / "signals"
    signals.mkdir()
    for tag in ("old", "new"):
        (signals / "publishing").unlink(missing_ok=True)
        writer = subprocess.Popen(
            [sys.executable, "-c", TWO_FOLDERS, str(out), tag, str(signals), str(int(wrapped))],
            cwd=REPO,
            env={**ENV, "PYTHONPATH": str(REPO)},
            stderr=subprocess.PIPE,
            text=True,
        )
        if tag == "new":
            wait_for(signals / "publishing")
            writer.send_signal(signal.SIGTERM)
        writer.wait(timeout=60)
    found = {folder: tags(out / folder) for folder in ("mnistm", "svhn")}
    if wrapped:
        assert found == {"mnistm": {"new"}, "svhn": {"new"}}
    else:
        assert found["mnistm"] != found["svhn"]
    assert leftovers(out) == []


def test_a_checkpoint_write_that_stops_short_is_one_error_line(tmp_path):
    """torch.save under `ulimit -f` (a full disk) raises a RuntimeError from its zip writer."""
    script = (
        "import torch; from hw2_utils import atomic_path, run_cli\n"
        "def main():\n"
        f"    with atomic_path({str(tmp_path / 'last.pt')!r}) as tmp:\n"
        "        torch.save({'w': torch.zeros(1_000_000)}, tmp)\n"
        "run_cli(main)\n"
    )
    result = subprocess.run(
        ["bash", "-c", f'ulimit -f 100; exec "{sys.executable}" -c "$0"', script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**ENV, "PYTHONPATH": str(REPO)},
    )
    one_error_line(result, f"cannot write {tmp_path / 'last.pt'} (the write stopped short")
    assert list(tmp_path.iterdir()) == []
