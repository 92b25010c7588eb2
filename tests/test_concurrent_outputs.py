"""Two commands writing one output folder at the same time never leave a mix of both sets
(issue 32): publishing holds output_lock, so one whole set replaces the other. The writers are
real processes, slowed down while publishing so that without the lock they would interleave."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import REPO

import hw2_utils.files as files

WRITER = r"""
import os, sys, time
from pathlib import Path
import hw2_utils.files as files
out, tag, signals, no_lock = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"
real_replace = os.replace
def slow_replace(a, b):  # publishing takes ~0.5 s, so two unlocked writers overlap
    time.sleep(0.002)
    real_replace(a, b)
files.os.replace = slow_replace
if no_lock:
    import contextlib
    files.output_lock = lambda folder: contextlib.nullcontext()
with files.output_dir(out, [f"{i:03d}.txt" for i in range(200)]) as stage:
    for i in range(200):
        (stage / f"{i:03d}.txt").write_text(tag)
    (signals / tag).touch()  # staged: ready to publish
    while not (signals / "go").exists():
        time.sleep(0.01)
"""


def _race(out, no_lock: bool) -> tuple[set[str], list[int]]:
    """The tags found in the folder's files, and the writers' exit codes."""
    signals = out.parent / "signals"
    signals.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(out), tag, str(signals), "1" if no_lock else "0"],
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )
        for tag in ("A", "B")
    ]
    deadline = time.time() + 120
    while not ((signals / "A").exists() and (signals / "B").exists()) and time.time() < deadline:
        time.sleep(0.01)
    (signals / "go").touch()  # both publish at once
    codes = [p.wait(timeout=120) for p in procs]
    written = sorted(out.glob("*.txt"))
    assert len(written) == 200
    return {f.read_text() for f in written}, codes


def _earlier_run(out):
    """An earlier set in the folder, written by this project (so the writers may replace it)."""
    with files.output_dir(out, ["000.txt"]) as stage:
        (stage / "000.txt").write_text("old")


def test_two_writers_into_one_folder_leave_one_whole_set(tmp_path):
    _earlier_run(tmp_path / "out")
    tags, codes = _race(tmp_path / "out", no_lock=False)
    # the second replaces the first's set, which the record says this project wrote
    assert codes == [0, 0] and len(tags) == 1


def test_without_the_lock_the_same_race_mixes_the_sets(tmp_path):
    """The control: proof that the race above is real, so its pass means something. Unlocked,
    the writers interleave (a mix), or one finds the other's half-published files in its way
    and refuses them as not recorded: never both done with one whole set."""
    _earlier_run(tmp_path / "out")
    tags, codes = _race(tmp_path / "out", no_lock=True)
    assert tags == {"A", "B"} or codes != [0, 0]
