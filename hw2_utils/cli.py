"""The command-line side every entry point shares: one-line errors for bad input (CLIError,
run_cli), argparse types that fail while parsing, checks of the files and folders a user
names, and the `python -m ...` command line that records cite.

What belongs here: anything about reading the user's command line and refusing bad input
before work starts. Not here: writing outputs (files.py), devices and ranks (runtime.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Callable, Iterable

import torch


class CLIError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP (what `timeout` and a closed terminal send) as an exception, so that
    `finally` blocks run: staging folders are removed and nothing half-written is published.
    A BaseException, like KeyboardInterrupt, so that `except Exception` does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def run_cli(main: Callable[[], object]) -> None:
    """Run `main` and turn user-facing failures into `error: ...` plus a non-zero exit.

    Bugs (anything that is not a CLIError or an OS-level failure) still show a traceback,
    because hiding those would make the code impossible to debug. SIGTERM and SIGHUP end the
    command like Ctrl-C does (status 128 + the signal's number), after its clean-up.
    """
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:  # nohup's SIG_IGN stays
            signal.signal(sig, _raise_terminated)
    _set_prog()
    try:
        main()
    except CLIError as e:
        _fail(str(e), 2)
    except OSError as e:  # a full disk, a file-size limit, a read-only or vanished folder, ...
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Terminated as e:
        _fail(f"terminated by {signal.Signals(e.signum).name}", 128 + e.signum)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every command's --help: the description as written (its usage lines), and every option
    with a default shows it, so `--help` tells what a run will do without reading the code."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "%(default)" in help_ or "default" in help_ or not _shows_default(action):
            return help_
        return f"{help_} (default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):  # argparse prints nothing for these
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def _shows_default(action: argparse.Action) -> bool:
    # flags (False/True), required or unset options (None) and positionals have nothing to show
    # by identity: 0 and 0.0 compare equal to False but are defaults worth showing
    unset = (None, False, True, argparse.SUPPRESS)
    return bool(action.option_strings) and not any(action.default is x for x in unset)


def _set_prog() -> None:
    """Name the command in `usage:` and `error:` lines as the README spells it: HW2_PROG when an
    entry script sets it (`bash hw2_2.sh`), else `python -m PACKAGE.MODULE` for a module of this
    repository (argparse would say `infer.py`)."""
    spelled = os.environ.pop("HW2_PROG", "")  # popped: it names this process, not its children
    if not spelled and sys.argv and sys.argv[0]:
        script = Path(sys.argv[0]).resolve()
        root = Path(__file__).resolve().parents[1]
        parts = (
            script.relative_to(root).with_suffix("").parts if script.is_relative_to(root) else ()
        )
        # a module of one of this repository's packages (not, say, pytest inside .venv)
        if (
            script.suffix == ".py"
            and len(parts) > 1
            and (root / parts[0] / "__init__.py").is_file()
        ):
            spelled = f"python -m {'.'.join(parts)}"
    if spelled:
        sys.argv[0] = spelled  # argparse's default prog is the last path part of argv[0]


def _fail(message: str, status: int) -> None:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "hw2"
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


class Number:
    """An argparse type for one numeric option: an int or a float between `low` and `high`
    (each inclusive unless `open_low` / `open_high`), never NaN or infinite. A bad value fails
    while parsing, before anything is read or written, with one `error:` line. Every numeric
    option of every command uses one (tests/test_cli_numbers.py walks all parsers), so a new
    option cannot silently accept -1, NaN or 1e30."""

    def __init__(
        self,
        kind: type,
        low: float,
        high: float,
        *,
        name: str,
        phrase: str = "",
        open_low: bool = False,
        open_high: bool = False,
    ):
        self.kind, self.low, self.high, self.__name__ = kind, low, high, name
        self.open_low, self.open_high = open_low, open_high
        self.phrase = phrase or (
            f"{'an integer' if kind is int else 'a number'} {'above' if open_low else 'from'} "
            f"{low:g} {'and below' if open_high else 'to'} {high:g}"
        )

    def __repr__(self) -> str:
        return self.__name__

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if self.kind is int else 'a number'}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (value <= self.low if self.open_low else value < self.low) or (
            value >= self.high if self.open_high else value > self.high
        ):
            raise argparse.ArgumentTypeError(f"must be {self.phrase}, got {text}")
        return value


# counts, sizes, steps: past this a value is a typo, and some libraries take int32
MAX_INT = 2**31 - 1
MAX_FLOAT = 1e6  # rates, weights, scales, seconds: no option here means anything larger
# batch sizes, steps, counts, intervals
positive_int = Number(
    int, 1, MAX_INT, name="positive_int", phrase=f"a positive integer (at most {MAX_INT})"
)
# counts where 0 means none (workers, intervals with 0 = never)
non_negative_int = Number(
    int, 0, MAX_INT, name="non_negative_int", phrase=f"an integer from 0 to {MAX_INT}"
)
# numpy's seed range
seed_int = Number(int, 0, 2**32 - 1, name="seed_int", phrase=f"an integer from 0 to {2**32 - 1}")
# learning rates, temperatures, seconds
positive_float = Number(
    float,
    0,
    MAX_FLOAT,
    open_low=True,
    name="positive_float",
    phrase=f"a number above 0 (at most {MAX_FLOAT:g})",
)
# weights and scales where 0 turns a term off
non_negative_float = Number(
    float, 0, MAX_FLOAT, name="non_negative_float", phrase=f"a number from 0 to {MAX_FLOAT:g}"
)
# also fractions, thresholds
probability = Number(float, 0, 1, name="probability", phrase="a probability, from 0 to 1")
# 100 x cosine
clip_score = Number(float, -100, 100, name="clip_score", phrase="a CLIP score, from -100 to 100")
# EMA decays, Adam betas, dropout: 1 would freeze the average or drop everything
fraction_below_one = Number(
    float, 0, 1, open_high=True, name="fraction_below_one", phrase="a number from 0 to below 1"
)


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
    except Exception as e:
        # the unpickler raises nearly anything on a foreign file (KeyError, IndexError, ...)
        raise CLIError(
            f"{what} {path} is not a readable PyTorch file ({error_summary(e)})"
        ) from None


def require_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """`x`, or a CLIError: NaN or infinite values would silently turn into black pixels."""
    if not torch.isfinite(x).all():
        raise CLIError(f"NaN or infinite values in {what}")
    return x


STAGING_NAME_EXTRA = 24  # the longest sibling hw2_utils.files makes: .NAME.hw2-partial-XXXXXXXX


def check_output_path(path: str | os.PathLike, folder: bool) -> Path:
    """Fail before any work, and without creating anything, when `path` cannot become the
    output folder (folder=True) or file: it exists as the other kind or as a folder that is
    not writable, or its nearest existing parent is not a writable folder. Names too long for
    the file system are refused here too, not after the work."""
    p = Path(path)
    kind = "folder" if folder else "file"
    # 255 bytes a name on Linux file systems, less what the hidden staging sibling adds (.NAME.partial.XXXXXXXX)
    if (
        any(len(part.encode()) > 255 for part in p.parts)
        or len(p.name.encode()) > 255 - STAGING_NAME_EXTRA
    ):
        raise CLIError(
            f"output {kind} name too long (at most {255 - STAGING_NAME_EXTRA} bytes a name): {str(p)[:80]}..."
        )
    # a link to nothing (dangling, or a loop) would fail only after the work, with "File exists"
    for link in (p, *p.parents):
        if link.is_symlink() and not link.exists():
            raise CLIError(
                f"output {kind} {p}: {link} is a symbolic link to nothing (dangling or looping)"
            )
    if p.exists() and p.is_dir() != folder:
        raise CLIError(f"output {kind} {p} exists and is not a {kind}")
    # its entries are replaced in place
    if folder and p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
        raise CLIError(f"output folder {p} is not writable")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"output {kind} {p} cannot be created: {parent} is not a writable folder")
    return p


def check_not_input(
    outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None]
) -> None:
    """A CLIError, before any work, when a path the command will write is one of the files it
    reads, also under another name (a symbolic or hard link): writing it would destroy that
    input. An output that does not exist yet is no input; an input that cannot be reached is
    left to its loader."""
    found = {}
    for path in inputs:
        with contextlib.suppress(OSError, TypeError):
            st = os.stat(path)
            found.setdefault((st.st_dev, st.st_ino), path)
    for out in outputs:
        with contextlib.suppress(OSError):
            st = os.stat(out)
            hit = found.get((st.st_dev, st.st_ino))
            if hit is not None:
                raise CLIError(f"output {out} is an input ({hit}): writing it would destroy it")


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """--overwrite, the same on every command that writes an output folder (files.output_dir)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in the output folder that no earlier run of this project wrote "
        "(refused by default; nothing else in the folder is ever touched)",
    )
