"""Shared test fixtures. Every test runs with the network cut: a download attempt fails
at once with a clear error instead of hanging on hub retries."""

from __future__ import annotations

import csv
import ipaddress
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HW2_QUIET", "1")


class NetworkBlocked(RuntimeError):
    pass


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded(real):
    def connect(self, address):
        if not _is_local(address):
            raise NetworkBlocked(f"tests may not use the network (tried to connect to {address!r})")
        return real(self, address)

    return connect


socket.socket.connect = _guarded(_real_connect)
socket.socket.connect_ex = _guarded(_real_connect_ex)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny models, which run faster on one thread than on two contended ones
    (5-8x on a loaded 2-core machine). Subprocesses set OMP_NUM_THREADS themselves."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_data_root() -> Path:
    return Path(os.environ.get("HW2_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real data slices (`../shared/data` unless HW2_SHARED_DATA says)."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set HW2_SHARED_DATA)")
    return root


def require_shared(*parts: str) -> Path:
    """Path below the shared data root, or skip the test naming what is missing."""
    path = shared_data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found: {path} (set HW2_SHARED_DATA)")
    return path


def interrupted_at_call(function, n: int):
    """`function`, but its n-th call raises KeyboardInterrupt (a Ctrl-C in the middle of a run)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapper


def run_torchrun(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """hw2_utils.run_torchrun_cpu with two ranks, failing the test on a non-zero exit with the head
    of stderr (where a rank's own error is) and its tail (torchrun's summary)."""
    from hw2_utils import run_torchrun_cpu

    r = run_torchrun_cpu(args, timeout)
    err = r.stderr if len(r.stderr) <= 4000 else f"{r.stderr[:2000]}\n[...]\n{r.stderr[-2000:]}"
    assert r.returncode == 0, err
    return r


def small_digits(root: Path, n: int = 32, splits: tuple[str, ...] = ("train",)) -> Path:
    """A copy of the first n MNIST-M and USPS images of each split in the course layout, for tiny training runs."""
    src = require_shared("hw2_data", "digits")
    for domain in ("mnistm", "usps"):
        (root / domain / "data").mkdir(parents=True)
        for split in splits:
            with open(src / domain / f"{split}.csv") as f:
                rows = list(csv.reader(f))[: n + 1]
            with open(root / domain / f"{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows)
            for name, _ in rows[1:]:
                shutil.copy(src / domain / "data" / name, root / domain / "data" / name)
    return root


def table_rows(text: str) -> list[dict[str, str]]:
    """Every row of every Markdown pipe table in `text`, as {column header: cell}: report tests
    look a number up by its row and column and compare it with the record it came from, so a
    re-worded sentence or a re-ordered column does not break them."""
    rows, header, lines = [], None, text.splitlines()
    for line, following in zip(lines, lines[1:] + [""]):
        if not line.startswith("|"):
            header = None
        elif following.replace(" ", "").startswith("|---"):
            header = _cells(line)
        elif header and not line.replace(" ", "").startswith("|---"):
            rows.append(dict(zip(header, _cells(line))))
    return rows


def table_row(text: str, value: str, column: str | None = None) -> dict[str, str]:
    """The one table row of `text` whose `column` (default: its first) is `value`."""
    found = [
        row
        for row in table_rows(text)
        if (row.get(column) if column else next(iter(row.values()))) == value
    ]
    assert len(found) == 1, f"{len(found)} rows with {column or 'first cell'} {value!r}"
    return found[0]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def numbers(cell: str) -> list[float]:
    """The numbers a table cell shows, in order ('0.9387 (10000 images)' -> [0.9387, 10000.0])."""
    return [float(n) for n in re.findall(r"[-+]?\d+(?:\.\d+)?", cell.replace(",", ""))]
