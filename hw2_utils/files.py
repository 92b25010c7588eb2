"""Reading inputs and writing outputs so that readers never see half a result: image
folders and PNGs, matplotlib figures and JSON records written atomically, output folders
published as a whole, and the CIFAR-10 layouts the problems read.

What belongs here: anything that touches a file the user reads or names. Not here: checks
of the command line (cli.py), devices and ranks (runtime.py), run folders (runs.py).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import pickle
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from hw2_utils.cli import (
    CLIError,
    check_output_path,
    error_summary,
    require_dir,
    require_file,
)

# --------------------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block
    succeeds, so readers never see a half-written file."""
    final = check_output_path(path, folder=False)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{final.name}.", suffix=final.suffix or ".tmp", dir=final.parent
        )
        os.close(fd)
        tmp = Path(name)
        # mkstemp makes 0600; give the final file normal permissions
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        raise _user_path(e, final) from None
    except RuntimeError as e:
        raise _torch_write_error(e, final) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_dir(
    path: str | os.PathLike, names: Iterable[str] | None = None, *, overwrite: bool = False
) -> Iterator[Path]:
    """Stage a command's output files and publish them into the folder `path` on success.

    Yields an empty staging folder (a hidden sibling of `path`). When the block succeeds, every
    entry of the staging folder replaces its namesake in `path`; nothing else in `path` is
    touched or deleted, so a folder that holds other results (or the user's files) keeps them.
    A `path` that does not exist yet appears in one rename, complete.

    Ownership: the names published are recorded in a hidden sibling, `.NAME.hw2-outputs.json`
    (not inside `path`, whose listing graders read). An existing entry is replaced only if that
    record says a run of this project wrote it and it is unchanged since (same inode, size and
    modification time); anything else in the way is a CLIError unless `overwrite` (a file), and
    always for a folder the project did not make (folders of the user's are never deleted).
    `names`, the entries the block will write, lets that check run before the work, not after.
    Earlier outputs that this run does not write are left in place, with a note saying so.

    Publishing defers SIGINT, SIGTERM and SIGHUP, so a signal leaves the old set or the new
    one, never a mix; a run killed outright (SIGKILL) leaves its staging folder, which the next
    run into `path` removes once no live process holds it. When the block fails, the staging
    folder is deleted and `path` is as it was. `path` existing as anything but a folder is a
    CLIError, raised before any work. Errors name `path`, never the hidden staging folder.

    Two commands writing into one folder at once never mix their sets: publishing holds a lock
    on the folder's parent (output_lock), so one set replaces the other whole. A command that
    writes several folders holds output_lock on their common parent around all its output_dir
    blocks, so another command's sets cannot land between them (the lock is re-entrant).
    """
    final = check_output_path(path, folder=True)
    names = None if names is None else sorted(set(names))
    if names is not None:
        check_replaceable(final, names, overwrite)  # before the work
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = trash = None
    held = []  # descriptors holding the staging folders' locks: they mark this process alive
    try:
        # under the lock: a cleanup must not see another run's staging folder before it is locked
        with output_lock(final.parent):
            _remove_dead_staging(final)
            stage = _locked_temp_dir(final, "hw2-partial", held)
        yield stage
        with output_lock(final.parent), deferred_signals():
            written = sorted(entry.name for entry in stage.iterdir())
            if names is not None and not set(written) <= set(names):
                raise ValueError(f"wrote {sorted(set(written) - set(names))} beyond `names`")
            existed = final.exists()
            if not existed:
                os.replace(stage, final)
            else:
                check_replaceable(
                    final, written, overwrite
                )  # again: another run may have been quicker
                trash = _locked_temp_dir(final, "hw2-old", held)
                for name in written:
                    target = final / name
                    # os.replace cannot replace a folder: the old one (the project's) goes first
                    if target.is_dir() and not target.is_symlink():
                        os.replace(target, trash / name)
                    os.replace(stage / name, target)
            _record_outputs(final, written, keep_earlier=existed)
    except OSError as e:
        raise _user_path(e, final) from None
    except RuntimeError as e:
        raise _torch_write_error(e, final) from None
    finally:
        for leftover in (stage, trash):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        for fd in held:
            os.close(fd)


RECORD_SUFFIX = ".hw2-outputs.json"


def _manifest(final: Path) -> Path:
    return final.parent / f".{final.name}{RECORD_SUFFIX}"


def published_folders(parent: str | os.PathLike) -> list[str]:
    """The folders in `parent` that a run of this project published (output_dir recorded them),
    sorted: what a command that writes several folders can name when it leaves earlier ones."""
    parent = Path(parent)
    names = (m.name[1 : -len(RECORD_SUFFIX)] for m in parent.glob(f".*{RECORD_SUFFIX}"))
    return sorted(name for name in names if (parent / name).is_dir())


def _signature(path: Path) -> list[int]:
    """What must be unchanged for an output to still be the one this project wrote."""
    st = path.lstat()
    return [stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns]


def _recorded_outputs(final: Path) -> dict[str, list[int]]:
    """{name: signature} of the outputs earlier runs published into `final` and that are
    still as written; a missing or unreadable record means none."""
    try:
        recorded = json.loads(_manifest(final).read_text(encoding="utf-8"))["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    unchanged = {}
    for name, signature in recorded.items():
        with contextlib.suppress(OSError):
            if _signature(final / name) == signature:
                unchanged[name] = signature
    return unchanged


def check_replaceable(folder: str | os.PathLike, names: Iterable[str], overwrite: bool) -> None:
    """CLIError when publishing `names` into `folder` would replace something this project did
    not write: a file (allowed with `overwrite`) or a folder (never). output_dir checks this
    itself; a command calls it first when it knows its names before slow work."""
    final = Path(folder)
    if not final.is_dir():
        return
    ours = _recorded_outputs(final)
    foreign = [n for n in names if os.path.lexists(final / n) and n not in ours]
    folders = [n for n in foreign if (final / n).is_dir() and not (final / n).is_symlink()]
    if folders:
        raise CLIError(
            f"{final / folders[0]} is a folder this project did not write and would be replaced "
            f"({len(folders)} such folder{'s' if len(folders) > 1 else ''}): move it away, or write "
            "into another output folder"
        )
    if foreign and not overwrite:
        raise CLIError(
            f"{len(foreign)} file{'s' if len(foreign) > 1 else ''} in {final} that no earlier run of "
            f"this project wrote would be replaced (first: {foreign[0]}): use --overwrite to replace "
            "them, or write into another output folder"
        )


def _record_outputs(final: Path, written: list[str], keep_earlier: bool) -> None:
    """Record what was just published (and, when `final` existed, the earlier outputs still as
    written); say so when earlier outputs that this run did not write remain beside the new set."""
    import sys

    outputs = _recorded_outputs(final) if keep_earlier else {}
    earlier = sorted(set(outputs) - set(written))
    outputs.update({name: _signature(final / name) for name in written})
    text = json.dumps({"outputs": dict(sorted(outputs.items()))}, indent=1)
    # a short temporary name: the record's own name is already NAME + 18 bytes
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.m", dir=final.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, _manifest(final))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if earlier:
        print(
            f"note: {final} also holds {len(earlier)} output{'s' if len(earlier) > 1 else ''} of an "
            f"earlier run that this run did not write (first: {earlier[0]}): left in place",
            file=sys.stderr,
        )


# The staging and trash folders' names: .NAME.hw2-partial-XXXXXXXX and .NAME.hw2-old-XXXXXXXX
# (mkdtemp's 8 characters), distinct enough that a folder of the user's is never taken for one.
STAGING_KINDS = ("hw2-partial", "hw2-old")


def _locked_temp_dir(final: Path, kind: str, held: list[int]) -> Path:
    """A new hidden sibling `.NAME.KIND-XXXXXXXX` of `final`, locked (flock) for as long as this
    process lives, so that _remove_dead_staging leaves it alone."""
    import fcntl

    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.{kind}-", dir=final.parent))
    os.chmod(folder, 0o777 & ~_umask())  # mkdtemp makes 0700
    fd = os.open(folder, os.O_RDONLY)
    held.append(fd)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return folder


def _remove_dead_staging(final: Path) -> None:
    """Remove the staging and trash folders that a killed run into `final` left behind: those
    whose lock no live process holds (a run in progress keeps its own)."""
    import fcntl
    import re

    pattern = re.compile(
        rf"\.{re.escape(final.name)}\.(?:{'|'.join(STAGING_KINDS)})-[a-z0-9_]{{8}}"
    )
    for leftover in final.parent.iterdir():
        if pattern.fullmatch(leftover.name):
            if leftover.is_symlink() or not leftover.is_dir():
                continue
            try:
                fd = os.open(leftover, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run's
            finally:
                os.close(fd)
            shutil.rmtree(leftover, ignore_errors=True)


# folder -> [open descriptor, depth]: output_lock is re-entrant in a process
_HELD_LOCKS: dict[str, list] = {}


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `folder` (flock on the folder itself, so no lock file is left
    behind), held by one command at a time; a second waits, saying so once on stderr."""
    import fcntl
    import sys

    key = str(Path(folder).resolve())
    held = _HELD_LOCKS.get(key)
    if held is None:
        fd = os.open(key, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"note: another command is writing into {folder}: waiting for it to finish",
                file=sys.stderr,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        held = _HELD_LOCKS[key] = [fd, 0]
    held[1] += 1
    try:
        yield
    finally:
        held[1] -= 1
        if held[1] == 0:
            del _HELD_LOCKS[key]
            os.close(held[0])  # closing the descriptor releases the lock


# Signals whose default is to end the process; publishing holds them back (not SIGKILL: it cannot)
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


_DEFERRING: list[bool] = []  # deferred_signals is re-entrant: the outermost block delivers


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back for the duration of the block, then deliver the
    first that came to the handler that was in place (a signal being ignored stays ignored).
    A command publishing several output_dir blocks as one set wraps them all in one."""
    if threading.current_thread() is not threading.main_thread() or _DEFERRING:
        yield
        return
    _DEFERRING.append(True)
    received: list[int] = []
    previous = {}
    for sig in DEFERRED_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        _DEFERRING.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        signal.raise_signal(received[0])


def _user_path(e: OSError, final: Path) -> OSError | CLIError:
    """The error to raise for `e`: one about a hidden temporary sibling of `final` (all are
    named `.NAME.*`), or a write that ran out of room with no file named (a writer such as
    Pillow's on an open file), is reported as a failure to write `final`, the path the user gave."""
    staged = str(e.filename or "").startswith(str(final.parent / f".{final.name}."))
    if staged or (e.filename is None and e.errno in OUT_OF_ROOM):
        return CLIError(f"cannot write {final} ({e.strerror or e})")
    return e


def _torch_write_error(e: RuntimeError, final: Path) -> RuntimeError | CLIError:
    """torch.save reports a write that stopped short (a full disk, `ulimit -f`) as a RuntimeError
    from its zip writer, not an OSError: that one is the user's disk, anything else a bug."""
    if "inline_container" in str(e) or "PytorchStreamWriter" in str(e):
        return CLIError(f"cannot write {final} (the write stopped short: is the disk full?)")
    return e


# a full disk, a file-size limit (ulimit -f), a quota
OUT_OF_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check we can write into it; CLIError otherwise."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".write-test.", delete=True)
        probe.close()
    except OSError as e:
        raise CLIError(f"output directory {p} is not writable ({e.strerror or e})") from None
    return p


def save_json(path: str | os.PathLike, record: dict) -> None:
    """Every JSON record a script writes (results, sidecars, run.json): atomic, indent 2, and
    valid JSON: a NaN or infinity (which json.dumps would write as a bare NaN) is a bug to see."""
    text = json.dumps(record, indent=2, allow_nan=False)  # before the file is touched
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_record(path: str | os.PathLike) -> dict | None:
    """The JSON record another command wrote (the reports' input): None when `path` is not a
    file, so the report can name the command that writes it; a CLIError naming `path` when
    it holds anything but a JSON object, so a broken record is not shown as "not produced yet"."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CLIError(
            f"record {path} is not readable JSON ({error_summary(e)}): re-run the command that writes it, "
            "or delete it"
        ) from None
    if not isinstance(record, dict):
        raise CLIError(
            f"record {path} holds a JSON {type(record).__name__}, not an object: re-run the command that "
            "writes it, or delete it"
        )
    return record


@contextlib.contextmanager
def record_errors(path: str | os.PathLike) -> Iterator[None]:
    """Around the code that renders a record: a field it lacks or of the wrong type (KeyError,
    TypeError, ValueError, ...) becomes one CLIError naming the record's file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise CLIError(
            f"record {path} lacks a field or holds a wrong type ({error_summary(e)}): re-run the command "
            "that writes it, or delete it"
        ) from None


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a Markdown pipe table: every report and every study's .md file."""
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def missing(what: str, command: str) -> str:
    """A report's line for an input not produced yet, naming the command that produces it."""
    return f"_{what}: not produced yet. Run `{command}`._"


def save_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on a grading machine); every
    figure goes through save_figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110, tight: bool = False) -> None:
    """Write a matplotlib figure as PNG atomically, then close it (figures pile up otherwise)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)


# --------------------------------------------------------------------------- images

# Extensions counted as images when reading a folder (the course's CLIP scripts accept these).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def list_images(
    folder: str | os.PathLike, what: str = "image folder", extensions=IMAGE_EXTENSIONS
) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; a CLIError if there are none, or if
    an entry named like an image is no regular file (a dangling symlink, a symlink loop, a folder
    named x.png): skipping it would leave it out of a CSV or a score without a word."""
    root = require_dir(folder, what)
    named = sorted(p for p in root.iterdir() if p.suffix.lower() in extensions)
    bad = [(p, _not_a_file(p)) for p in named if _not_a_file(p)]
    if bad:
        raise CLIError(
            f"{bad[0][0]} is {bad[0][1]}, not an image file ({len(bad)} such "
            f"entr{'ies' if len(bad) > 1 else 'y'} in {root})"
        )
    files = named
    if not files:
        raise CLIError(f"{what} {root} holds no images ({', '.join(extensions)})")
    return files


def _not_a_file(path: Path) -> str | None:
    """What `path` is when it is not a regular file one can open (symlinks followed), or None."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        found = {errno.ENOENT: "a dangling symlink", errno.ELOOP: "a symlink loop"}
        return found.get(e.errno, f"unreadable ({e.strerror})")
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


LABEL_CSV_HEADER = ("image_name", "label")


def read_label_csv(path: str | os.PathLike, what: str) -> dict[str, int]:
    """{image_name: label}, in file order, from an `image_name,label` CSV (the course's
    train.csv / val.csv and every prediction CSV); a bad header, a short row, a repeated name
    or a label that is not an integer is a CLIError naming the file and line."""
    path = require_file(path, what)
    labels: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate an Excel BOM
            reader = csv.reader(f)
            header = tuple(cell.strip() for cell in next(reader, ()))
            if header[:2] != LABEL_CSV_HEADER:
                raise CLIError(
                    f"{path}: header is {','.join(header) or 'missing'}, expected {','.join(LABEL_CSV_HEADER)}"
                )
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < 2:
                    raise CLIError(f"{path}:{line}: expected image_name,label, got {','.join(row)}")
                name, label = row[0].strip(), row[1].strip()
                if name in labels:
                    raise CLIError(f"{path}:{line}: {name} appears twice")
                try:
                    labels[name] = int(label)
                except ValueError:
                    raise CLIError(
                        f"{path}:{line}: label {label!r} of {name} is not an integer"
                    ) from None
    except UnicodeDecodeError as e:
        raise CLIError(f"{path} is not a text CSV ({e.reason})") from None
    if not labels:
        raise CLIError(f"{path} has no rows")
    return labels


def open_rgb(path: str | os.PathLike):
    """The image at `path` decoded and converted to 8-bit RGB (a PIL image), or a CLIError
    naming the file: unreadable, larger than Pillow's decompression-bomb limit, or of a pixel
    depth that cannot be mapped (to_8bit)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return to_8bit(image, path).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise CLIError(f"cannot read image {path}: {e}") from None


# 16-bit samples (PNG, TIFF): Pillow's convert() would clip them at 255 instead of scaling
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(image, path: str | os.PathLike = "image"):
    """`image` with 16-bit and float greyscale samples scaled to 8 bits ("L"): 16-bit full scale
    is 65535 (x / 257, rounded), float full scale 1.0. Pillow's convert("RGB") clips them
    instead (a 16-bit digit turns almost white), which changed labels with exit status 0. Other
    modes come back unchanged; values outside the full scale are a CLIError, not a guess."""
    from PIL import Image

    if image.mode not in SIXTEEN_BIT_MODES and image.mode != "F":
        return image
    values = np.asarray(image, dtype=np.float64)
    top, depth = (65535.0, "16-bit") if image.mode != "F" else (1.0, "float")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > top:
        raise CLIError(
            f"cannot read image {path}: {depth} ({image.mode}) pixels outside 0..{top:g}; "
            "save it as 8-bit"
        )
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8))  # 2-D uint8: "L"


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """(N,C,H,W) float in `value_range` -> (N,H,W,C) uint8, rounding to nearest."""
    lo, hi = value_range
    x = (images.detach().float().cpu() - lo) / (hi - lo)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_images(
    images: torch.Tensor,
    paths: Iterable[str | os.PathLike],
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> None:
    """Save each image of a (N,C,H,W) batch as PNG (RGB, or L for one channel); a CLIError
    before any file is written if an image holds NaN or infinite values."""
    from PIL import Image

    paths = [Path(p) for p in paths]
    if len(paths) != len(images):
        raise ValueError(f"{len(images)} images but {len(paths)} paths")
    finite = torch.isfinite(images.detach()).flatten(1).all(1).cpu()
    if not finite.all():  # NaN would become black pixels and the run would look like a success
        first = paths[int((~finite).nonzero()[0])].name
        raise CLIError(
            f"{int((~finite).sum())} of {len(paths)} images (first: {first}) hold NaN or infinite values, "
            "e.g. from a checkpoint with non-finite weights; nothing was written"
        )
    arrays = to_uint8(images, value_range).numpy()
    for array, path in zip(arrays, paths):
        mode = "L" if array.shape[-1] == 1 else "RGB"
        Image.fromarray(array.squeeze(-1) if mode == "L" else array, mode=mode).save(path)


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: int,
    value_range: tuple[float, float] = (-1.0, 1.0),
    padding: int = 2,
) -> None:
    """Tile a (N,C,H,W) batch into one PNG with `nrow` images per row, written atomically."""
    from torchvision.utils import make_grid

    lo, hi = value_range
    grid = make_grid(
        (images.detach().float().cpu() - lo) / (hi - lo), nrow=nrow, padding=padding, pad_value=1.0
    )
    with atomic_path(path) as tmp:
        save_images(grid.unsqueeze(0), [tmp], value_range=(0.0, 1.0))


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR-10 batches (dicts of bytes, lists and numpy arrays) and
    nothing else: any other class in the file is refused, so a crafted batch cannot run code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def load_cifar10(
    path: str | os.PathLike, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 split ("train" or "test") as (N, 32, 32, 3) uint8 RGB and (N,) int64 labels
    in CIFAR-10's class order, the first `limit` in file order. `path` is any of:
      torchvision's `cifar-10-batches-py/` (or the folder holding it): the official pickles;
      an .npz with SPLIT_images / SPLIT_labels: the shared 5,085/1,017 official-pixel slice;
      a folder with SPLIT.npz holding `jpeg`, `offsets`, `labels`: the shared whole CIFAR-10,
      a lossy JPEG copy (quote its accuracies as "CIFAR-10 (JPEG copy)")."""
    import zipfile

    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if limit is not None and limit < 1:
        raise CLIError(f"limit {limit}: need at least one image")
    path = Path(path)
    batches = path if path.name == "cifar-10-batches-py" else path / "cifar-10-batches-py"
    try:
        if batches.is_dir():
            names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
            parts = []
            for name in names:
                with open(
                    require_file(
                        batches / name,
                        f"CIFAR-10 {split} batch",
                        "unpack cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html",
                    ),
                    "rb",
                ) as f:
                    parts.append(_ArrayUnpickler(f, encoding="bytes").load())
            images = (
                np.concatenate([b[b"data"] for b in parts])
                .reshape(-1, 3, 32, 32)
                .transpose(0, 2, 3, 1)
            )
            labels = np.concatenate([np.asarray(b[b"labels"]) for b in parts])
        elif path.is_dir():
            images, labels = _cifar10_jpeg_archive(
                require_file(path / f"{split}.npz", f"CIFAR-10 {split} archive"), limit
            )
        else:
            with np.load(require_file(path, "CIFAR-10 npz")) as z:
                if f"{split}_images" not in z or f"{split}_labels" not in z:
                    raise CLIError(f"{path} must hold {split}_images and {split}_labels arrays")
                images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        TypeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise CLIError(f"{path} is not readable CIFAR-10 ({error_summary(e, 120)})") from None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise CLIError(
            f"{path}: expected (N, 32, 32, 3) {split} images and N labels, got {images.shape} and {labels.shape}"
        )
    return np.ascontiguousarray(images[:limit], dtype=np.uint8), labels[:limit].astype(np.int64)


def _cifar10_jpeg_archive(path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with np.load(path) as z:
        jpeg, offsets, labels = z["jpeg"], z["offsets"], z["labels"]
        if "classes" in z and tuple(z["classes"]) != CIFAR10_CLASSES:
            raise ValueError(f"class order {tuple(z['classes'])} is not CIFAR-10's")
    n = len(labels) if limit is None else min(limit, len(labels))
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        with Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())) as image:
            images[i] = np.asarray(image.convert("RGB"))
    return images, labels[:n]
