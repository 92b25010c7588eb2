"""The one module every problem folder shares: seeding, devices, dtypes, image I/O,
atomic outputs, one-line CLI errors and checked argument types, progress bars and the
torchrun/accelerate glue.

Anything problem-specific belongs in that problem's folder, not here.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")

# --------------------------------------------------------------------------- CLI errors


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


def _fail(message: str, status: int) -> None:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "hw2"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)


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


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch. Under DDP each rank gets `seed + rank` so data
    augmentation differs between ranks while a run stays reproducible as a whole."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A private generator: every random draw in sampling code takes one explicitly, so
    outputs do not depend on what else touched the global RNG."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


# --------------------------------------------------------------------------- device / dtype


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> torch.device; anything else is a CLIError."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {spec} requested but CUDA is not available")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise CLIError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise CLIError(f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N")


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic units (Intel AMX, or AVX512-BF16 on Intel and AMD
    Zen 4): there bf16 autocast runs ~1.6-1.9x faster than fp32 (bench/p6, bench/p1); without
    them PyTorch emulates bf16 and it runs several times slower."""
    with contextlib.suppress(OSError):
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
        return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))
    return False


def describe_hardware(device: torch.device) -> str:
    """The GPU, or the CPU model and torch's thread count, for every record of a measurement."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # Linux names the CPU model here; platform.processor() often does not
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    bf16 = ", bf16 units" if cpu_has_bf16() else ""
    return f"{cpu} CPU{bf16}, {torch.get_num_threads()} thread(s) (torch {torch.__version__})"


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Parse auto|fp32|bf16|fp16 and fall back to fp32 where the device cannot run it well
    (fp16 on the CPU; bf16 on a GPU without bf16 support). auto = bf16 on GPUs that support it
    and on CPUs with bf16 units, fp32 elsewhere."""
    if spec.lower() == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
        return torch.bfloat16 if bf16 else torch.float32
    try:
        dtype = _DTYPES[spec.lower()]
    except KeyError:
        raise CLIError(f"invalid dtype {spec!r}: use auto, fp32, bf16 or fp16") from None
    if dtype is torch.float16 and device.type != "cuda":
        return torch.float32
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float32
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context; a no-op for fp32."""
    if dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- images

# Extensions counted as images when reading a folder (the course's CLIP scripts accept these).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def list_images(folder: str | os.PathLike, what: str = "image folder", extensions=IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; a CLIError if there are none."""
    root = require_dir(folder, what)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise CLIError(f"{what} {root} holds no images ({', '.join(extensions)})")
    return files


def open_rgb(path: str | os.PathLike):
    """The image at `path` decoded and converted to RGB (a PIL image), or a CLIError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CLIError(f"cannot read image {path}: {e}") from None



def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """(N,C,H,W) float in `value_range` -> (N,H,W,C) uint8, rounding to nearest."""
    lo, hi = value_range
    x = (images.detach().float().cpu() - lo) / (hi - lo)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_images(images: torch.Tensor, paths: Iterable[str | os.PathLike],
                value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Save each image of a (N,C,H,W) batch as PNG (RGB, or L for one channel); a CLIError
    before any file is written if an image holds NaN or infinite values."""
    from PIL import Image

    paths = [Path(p) for p in paths]
    if len(paths) != len(images):
        raise ValueError(f"{len(images)} images but {len(paths)} paths")
    finite = torch.isfinite(images.detach()).flatten(1).all(1).cpu()
    if not finite.all():  # NaN would become black pixels and the run would look like a success
        first = paths[int((~finite).nonzero()[0])].name
        raise CLIError(f"{int((~finite).sum())} of {len(paths)} images (first: {first}) hold NaN or infinite values, "
                       "e.g. from a checkpoint with non-finite weights; nothing was written")
    arrays = to_uint8(images, value_range).numpy()
    for array, path in zip(arrays, paths):
        mode = "L" if array.shape[-1] == 1 else "RGB"
        Image.fromarray(array.squeeze(-1) if mode == "L" else array, mode=mode).save(path)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int,
              value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 2) -> None:
    """Tile a (N,C,H,W) batch into one PNG with `nrow` images per row, written atomically."""
    from torchvision.utils import make_grid

    lo, hi = value_range
    grid = make_grid((images.detach().float().cpu() - lo) / (hi - lo), nrow=nrow,
                     padding=padding, pad_value=1.0)
    with atomic_path(path) as tmp:
        save_images(grid.unsqueeze(0), [tmp], value_range=(0.0, 1.0))



def save_figure(fig, path: str | os.PathLike, dpi: int = 110, tight: bool = False) -> None:
    """Write a matplotlib figure as PNG atomically, then close it (figures pile up otherwise)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(path: str | os.PathLike, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 split ("train" or "test") as (N, 32, 32, 3) uint8 RGB and (N,) int64 labels
    in CIFAR-10's class order, the first `limit` in file order. `path` is any of:
      torchvision's `cifar-10-batches-py/` (or the folder holding it): the official pickles;
      an .npz with SPLIT_images / SPLIT_labels: the shared 5,085/1,017 official-pixel slice;
      a folder with SPLIT.npz holding `jpeg`, `offsets`, `labels`: the shared whole CIFAR-10,
      a lossy JPEG copy (quote its accuracies as "CIFAR-10 (JPEG copy)")."""
    import pickle
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
                with open(require_file(batches / name, f"CIFAR-10 {split} batch",
                                       "unpack cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html"), "rb") as f:
                    parts.append(pickle.load(f, encoding="bytes"))
            images = np.concatenate([b[b"data"] for b in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.concatenate([np.asarray(b[b"labels"]) for b in parts])
        elif path.is_dir():
            images, labels = _cifar10_jpeg_archive(require_file(path / f"{split}.npz", f"CIFAR-10 {split} archive"), limit)
        else:
            with np.load(require_file(path, "CIFAR-10 npz")) as z:
                if f"{split}_images" not in z or f"{split}_labels" not in z:
                    raise CLIError(f"{path} must hold {split}_images and {split}_labels arrays")
                images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise CLIError(f"{path} is not readable CIFAR-10 ({error_summary(e, 120)})") from None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise CLIError(f"{path}: expected (N, 32, 32, 3) {split} images and N labels, got {images.shape} and {labels.shape}")
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
        with Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())) as image:
            images[i] = np.asarray(image.convert("RGB"))
    return images, labels[:n]


# --------------------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block
    succeeds, so readers never see a half-written file."""
    final = check_output_path(path, folder=False)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix or ".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the final file normal permissions
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        raise _user_path(e, final) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Stage a command's output files and publish them into the folder `path` on success.

    Yields an empty staging folder (a hidden sibling of `path`). When the block succeeds,
    every entry of the staging folder replaces its namesake in `path`, and entries of `path`
    that match a glob of `owned` but were not written this time (stale outputs of an
    earlier, larger run) are removed. Nothing else in `path` is touched, so a folder that
    holds other results keeps them. A `path` that does not exist yet appears in one rename,
    complete. Publishing defers Ctrl-C, so an interrupt leaves the old set or the new one,
    never a mix. When the block fails, the staging folder is deleted and `path` is as it was.
    `path` existing as anything but a folder is a CLIError, raised before any work.
    Errors name `path`, never the hidden staging folder.
    """
    final = check_output_path(path, folder=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = trash = None
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial.", dir=final.parent))
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield stage
        with _deferred_interrupt():
            if not final.exists():
                os.replace(stage, final)
                return
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            written = {entry.name for entry in stage.iterdir()}
            stale = {hit.name for pattern in owned for hit in final.glob(pattern)} - written
            for name in stale:
                os.replace(final / name, trash / name)
            for name in written:
                target = final / name
                if target.is_dir() and not target.is_symlink():  # os.replace cannot replace a folder
                    os.replace(target, trash / name)
                os.replace(stage / name, target)
    except OSError as e:
        raise _user_path(e, final) from None
    finally:
        for leftover in (stage, trash):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold SIGINT back for the duration of the block, then deliver it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _user_path(e: OSError, final: Path) -> OSError | CLIError:
    """The error to raise for `e`: one about a hidden temporary sibling of `final` (all are
    named `.NAME.*`) is reported as a failure to write `final`, the path the user gave."""
    if str(e.filename or "").startswith(str(final.parent / f".{final.name}.")):
        return CLIError(f"cannot write {final} ({e.strerror or e})")
    return e


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


# --------------------------------------------------------------------------- progress


def quiet() -> bool:
    """HW2_QUIET=1 (set by the tests) turns progress bars off."""
    return os.environ.get("HW2_QUIET", "") not in ("", "0")


if quiet():  # the loading bars of transformers / huggingface_hub too; they read this when first imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def progress(iterable: Iterable[T] | None = None, *, disable: bool | None = None, **kwargs) -> Iterator[T]:
    """tqdm that stays quiet under HW2_QUIET=1, off the main rank, or when told to."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = quiet() or not dist_info().is_main
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank, local rank and world size as set by torchrun / accelerate launch."""
    env = os.environ
    return DistInfo(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)),
                    int(env.get("WORLD_SIZE", 1)))


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched with several processes and return this
    rank's device (cuda:LOCAL_RANK on GPUs, NCCL; the CPU with gloo otherwise)."""
    info = dist_info()
    if not info.enabled:
        return info, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def make_train_sampler(dataset, seed: int, shuffle: bool = True):
    """A DistributedSampler under DDP (each rank a disjoint shard), else None so the
    DataLoader shuffles with its own seeded generator."""
    info = dist_info()
    if not info.enabled:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                              shuffle=shuffle, seed=seed, drop_last=True)


def log_main(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if dist_info().is_main:
        print(*args, **kwargs, flush=True)


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run `fn` on rank 0 only (checkpoint saving, figures)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if dist_info().is_main else None
    return wrapper


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module behind DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
