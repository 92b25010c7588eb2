"""Where and how the code runs: seeding, devices and dtypes, the hardware a number was
measured on, autocast, progress bars, and the torchrun/accelerate glue (ranks, samplers,
unwrapping DDP, EMA).

What belongs here: anything about the process, its device and its ranks. Not here: files
(files.py), command lines (cli.py), run folders (runs.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch

from hw2_utils.cli import CLIError

T = TypeVar("T")

# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch. Under DDP each rank gets `seed + rank` so data
    augmentation differs between ranks while a run stays reproducible as a whole."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def derived_seed(*key) -> int:
    """A seed that is a pure function of `key` (e.g. (seed, "noise", rank, step)): the one way a
    train.py derives the seed of a generator from --seed, so that resuming at any step redraws
    exactly what the uninterrupted run drew there and no two streams share a seed by accident."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:7], "little")


def warmup_cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """The learning rate of (0-based) `step` of `total`: a linear warmup over `warmup` steps to
    `peak`, then a cosine decay to `floor` x peak at the end (floor 1: warmup, then constant)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress_)))


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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` (on the CPU) on `device` without blocking the host. A copy from ordinary
    (pageable) memory to a GPU waits for the GPU to finish all queued work first, so a training
    step that moves CPU-drawn random numbers this way runs its Python and its kernels in
    series; from pinned memory the copy is queued like a kernel. Random draws stay on the CPU
    (a seeded CPU generator gives the same numbers on every device); only the copy changes."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic units (Intel AMX, or AVX512-BF16 on Intel and AMD
    Zen 4): there bf16 autocast runs faster than fp32 (measured: 1.6x and more on the P1 and P6
    benches, 2.1x on P6's ResNet-18 step); without them PyTorch emulates bf16 and it runs several
    times slower."""
    with contextlib.suppress(OSError):
        flags = next(
            (
                line
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            "",
        )
        return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))
    return False


def describe_hardware(device: torch.device) -> str:
    """The GPU, or the CPU model and torch's thread count, for every record of a measurement."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    import platform

    cpu = platform.processor() or platform.machine()
    # Linux names the CPU model here; platform.processor() often does not
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(
            (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu
        )
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


def autocast(device: torch.device, dtype: torch.dtype, cache: bool = True):
    """Mixed-precision context; a no-op for fp32. cache=False recasts the weights at every use
    instead of once per context: PyTorch's CUDA graph notes ask for it in a captured region."""
    if dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


# --------------------------------------------------------------------------- progress


def quiet() -> bool:
    """HW2_QUIET=1 (set by the tests) turns progress bars off."""
    return os.environ.get("HW2_QUIET", "") not in ("", "0")


# the loading bars of transformers / huggingface_hub too; they read this when first imported
if quiet():
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def progress(
    iterable: Iterable[T] | None = None, *, disable: bool | None = None, **kwargs
) -> Iterator[T]:
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
    return DistInfo(
        int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))
    )


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


# Seconds to hold the GIL released after leaving the process group: ample for gloo's worker
# threads to drop their last finished work (see cleanup_distributed), tiny beside any run.
_GLOO_DRAIN_SECONDS = 0.2


def cleanup_distributed() -> None:
    """Leave the process group at the end of a run: a barrier, so no rank tears down while
    another still talks to it, then destroy it.

    The pause after that works around a torch 2.14 + gloo crash at interpreter exit. Every
    backward stashes a Python object (a contextvars.Context) in thread-local state; the
    allreduce works DDP launches during backward capture that state, and a gloo worker thread
    drops a work only after the collective has returned. If the interpreter is already
    finalizing when a worker drops the last one, the worker cannot take the GIL and the process
    aborts ("terminate called without an active exception"; gdb: ~AsyncAllreduceWork ->
    ~ThreadLocalState -> SafePyObject decref in pt_gloo_runloop; pytorch/pytorch#179291 describes
    the same race). Sleeping releases the GIL so the workers finish first. Measured on this
    project's 2-core CPU (80 `torchrun --nproc_per_node=2` runs of tests/ddp_tiny_train.py each,
    2026-12): destroy_process_group alone aborted 3 of 80, this teardown 0 of 80, and 0 of 80
    beside a busy core.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gloo = dist.get_backend() == "gloo"
        dist.barrier()
        dist.destroy_process_group()
        if gloo:
            time.sleep(_GLOO_DRAIN_SECONDS)


def run_torchrun_cpu(
    args: list[str], timeout: float, nproc: int = 2
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=NPROC ARGS` on the CPU (gloo, one thread per rank)
    from the repository root, with the root on PYTHONPATH so that a script run by path imports
    hw2_utils without an install of the repo; output captured. The tests and benches that check
    DDP on a CPU machine launch through this."""
    repo = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else shutil.which("torchrun"),
        "--standalone",
        f"--nproc_per_node={nproc}",
        *args,
    ]
    path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "HW2_QUIET": "1",
        "PYTHONPATH": path,
    }
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=repo)


def make_train_sampler(dataset, seed: int, shuffle: bool = True):
    """A DistributedSampler under DDP (each rank a disjoint shard), else None so the
    DataLoader shuffles with its own seeded generator."""
    info = dist_info()
    if not info.enabled:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(
        dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=True,
    )


def log_main(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if dist_info().is_main:
        print(*args, **kwargs, flush=True)


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
