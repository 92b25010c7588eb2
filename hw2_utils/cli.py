"""The command-line side every entry point shares: one-line errors for bad input (CLIError,
run_cli), argparse types that fail while parsing, checks of the files and folders a user
names, and the `python -m ...` command line that records cite.

What belongs here: anything about reading the user's command line and refusing bad input
before work starts. Not here: writing outputs (files.py), devices and ranks (runtime.py).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Callable, Iterable

import torch


class CLIError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def run_cli(main: Callable[[], object]) -> None:
    """Run `main` and turn user-facing failures into `error: ...` plus a non-zero exit.

    Bugs (anything that is not a CLIError or an OS-level file problem) still show a
    traceback, because hiding those would make the code impossible to debug.
    """
    try:
        main()
    except CLIError as e:
        _fail(str(e), 2)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, status: int) -> None:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "hw2"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)


def error_summary(e: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message` for a CLIError's parenthesis; safe when the
    message is empty (torch.load on a 0-byte file raises one)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__


def command_line(module: str, argv: Iterable[str] | None = None) -> str:
    """The command a record cites, in the README's spelling: `python -m MODULE ARGS`
    (ARGS: this process's arguments unless given)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def positive_int(text: str) -> int:
    """argparse type for counts and sizes (batch size, steps, intervals): an integer >= 1.
    Checked while parsing, so a bad value fails before anything is read or written."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type for a real number; NaN and infinities would silently give NaN outputs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for rates, weights and durations that may be zero but not negative."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def require_file(path: str | os.PathLike, what: str, how_to_get: str = "") -> Path:
    """Return `path` as a Path or raise a CLIError naming the file and how to obtain it."""
    p = Path(path)
    if not p.is_file():
        hint = f" ({how_to_get})" if how_to_get else ""
        raise CLIError(f"{what} not found: {p}{hint}")
    return p


def require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CLIError(f"{what} is not a directory: {p}")
    return p


def load_torch_file(path: str | os.PathLike, what: str, how_to_get: str = ""):
    """torch.load(weights_only=True) of a file the user named; a missing or unreadable file
    is a CLIError naming `path`."""
    path = require_file(path, what, how_to_get)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises nearly anything on a foreign file (KeyError, IndexError, ...)
        raise CLIError(f"{what} {path} is not a readable PyTorch file ({error_summary(e)})") from None


def require_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """`x`, or a CLIError: NaN or infinite values would silently turn into black pixels."""
    if not torch.isfinite(x).all():
        raise CLIError(f"NaN or infinite values in {what}")
    return x


def check_output_path(path: str | os.PathLike, folder: bool) -> Path:
    """Fail before any work, and without creating anything, when `path` cannot become the
    output folder (folder=True) or file: it exists as the other kind, or its nearest
    existing parent is not a writable folder."""
    p = Path(path)
    kind = "folder" if folder else "file"
    if p.exists() and p.is_dir() != folder:
        raise CLIError(f"output {kind} {p} exists and is not a {kind}")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"output {kind} {p} cannot be created: {parent} is not a writable folder")
    return p
