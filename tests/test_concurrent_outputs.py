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
# A renames a file every 4 ms, B every 2 ms: publishing takes about a second
pace = 0.004 if tag == "A" else 0.002
def slow_replace(a, b):
    marker = signals / f"{tag}.publishing"
    if no_lock and not marker.exists():
        # The control: both wait until the other has begun too (so both checked the folder
        # first), then B starts 0.2 s late: B's renames come last for the first ~100 names
        # and A's for the rest, a mix that cannot depend on scheduling jitter.
        marker.touch()
        other, deadline = signals / f"{'B' if tag == 'A' else 'A'}.publishing", time.time() + 60
        while not other.exists() and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(0.2 if tag == "B" else 0)
    time.sleep(pace)
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
    with both writers held until each has begun to publish (both have checked the folder
    before either replaced a file), their renames interleave: a mix (WRITER's pacing)."""
    _earlier_run(tmp_path / "out")
    tags, codes = _race(tmp_path / "out", no_lock=True)
    assert codes == [0, 0] and tags == {"A", "B"}
