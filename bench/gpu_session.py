r"""One call on a lent GPU machine (../shared/device/README.md): the training that needs a GPU
(P6's ResNet-18 and its augmentation study, P4's recipe variants) and the TA's entry points
timed, prepared here, run there in one command, brought back in one archive.

Here, before the call (from the repository root, everything committed):
    python -m bench.gpu_session pack                  # the data sets, xz-compressed, into .device/data; the commit
    bash ../shared/device/stage.sh wheels pytorch-fid==0.3.0
    bash ../shared/device/stage.sh stash               # tracked checkpoints out of the tree (64 MiB limit)
    cp /tmp/hw2-device-stash/p1_ddpm/checkpoints/ddpm_ema.pt p1_ddpm/checkpoints/   # hw2_1.sh is timed
    bash ../shared/device/stage.sh size               # must say <= 64
There (the device tool's command, carry [".device"], timeout 600 s):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl && \
    export PYTHONPATH=$PWD:/tmp/site && PYTHONUNBUFFERED=1 python3 -m bench.gpu_session run --out $OUT
Here, after:
    bash ../shared/device/stage.sh restore
    python -m bench.gpu_session unpack FILES_AT --work outputs/gpu

`run` unpacks the data, times the entry points, measures one ResNet-18 training step to size
the P6 runs to the time left, starts every training job at once (they share the GPU) and
watches them: if the main P6 run would miss the deadline, the study and then the P4 runs are
stopped to give it the GPU. The main run is train.py's recipe; when the shipped model already
is that recipe (its bench record says so), a rerun would only make it again, so by default
(--p6-main auto) there is none and the augmentation study is first in line (P4 runs yield to
it); after such a call, `python -m bench.p6_classification --work outputs/gpu/p6 --parts aug
--trained-elsewhere --ship` takes the study. At the deadline the P4 runs (they have no fixed end: a constant
learning rate, so stopping after epoch N equals `--epochs N`) are stopped, and the results go
to OUT as one tar split into parts: logs, records, the P6 model, P4 generator snapshots (fp16)
for FID here (the Inception weights cannot travel with the data). OUT/session.json says what
ran, what was stopped and when. `run --device cpu --tiny` rehearses the whole call here.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import lzma
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from bench.p6_classification import STUDY_ARGS, STUDY_PRESETS, recipe_differences
from hw2_utils import (
    CLIError,
    command_line,
    describe_hardware,
    positive_float,
    resolve_device,
    read_record,
    run_cli,
)
from p6_classification.infer import CHECKPOINTS, SHIPPED_RECORDS
from p6_classification.train import DEFAULTS

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
STAGED_DATA = REPO / ".device" / "data"
# The data sets as they travel: xz keeps the archives' bytes exactly and shrinks the JPEG ones
# ~3x (every small JPEG repeats the same headers), so CIFAR-10 and the faces fit one call
# (raw 82 MiB; the call carries 64 MiB in all).
DATA_FILES = ("cifar10_full/train.npz", "cifar10_full/test.npz", "celeba10k/train.npz")
RETURN_BYTES = 60 * 2**20  # what the call brings back: at most 64 MiB in 8 files
PART_BYTES = 15 * 2**20
COLLECT_SECONDS = 25  # kept free at the end for stopping jobs and packing

# ---- the plan: every run of the call, with why ----
# P6's main run is train.py's default recipe (DEFAULTS["resnet18"]); the probe may shorten it.
P6_MAIN_EPOCHS = (DEFAULTS["resnet18"]["epochs"], 120, 100, 80, 60)
# The study is bench/p6_classification.py's (STUDY_ARGS: its runs all at once), 30 epochs each.
STUDY_EPOCHS = 30
STUDY_RUNS = [*STUDY_PRESETS, "flip_crop_seed1"]
# GPU share the main run keeps while the P4 runs train beside it (a guess the watcher corrects).
CONTENTION = 1.3
# P4: the shipped recipe run longer, and the ResNet (SNGAN-style) networks, one change at a time.
# All train until the deadline; a snapshot every 10 epochs is what FID later chooses from.
P4_COMMON = [
    "--epochs",
    "5000",
    "--precision",
    "bf16",
    "--fid-every",
    "0",
    "--sample-every",
    "10",
    "--snapshot-every",
    "10",
    "--ckpt-every",
    "20000",
    "--beta1",
    "0",
    "--beta2",
    "0.9",
]
P4_VARIANTS = {
    "improved_b64": ["--model", "improved", "--batch-size", "64", "--d-steps", "2"],
    "resnet32_b64": [
        "--model",
        "improved",
        "--arch",
        "resnet",
        "--g-channels",
        "32",
        "--d-channels",
        "32",
        "--batch-size",
        "64",
        "--d-steps",
        "2",
    ],
}
# --tiny: the same call in a few minutes on a CPU, to rehearse it (numbers meaningless).
# on the slice
TINY_P6 = ["--limit", "400", "--width", "8", "--batch-size", "40", "--precision", "fp32"]
# on the 24 faces of hw2_data/face
TINY_P4 = [
    "--g-channels",
    "8",
    "--d-channels",
    "8",
    "--snapshot-every",
    "1",
    "--sample-every",
    "1",
    "--batch-size",
    "8",
]


def pack(args) -> None:
    """xz-compress DATA_FILES from ../shared/data into .device/data (the call's extra path), and
    note the commit in .device/commit (the device's copy of .git may not be this checkout's)."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (REPO / ".device").mkdir(exist_ok=True)
    (REPO / ".device" / "commit").write_text(
        head + (" (with uncommitted changes)" if dirty else "") + "\n"
    )
    for name in DATA_FILES:
        source, target = Path(args.shared) / name, STAGED_DATA / f"{name}.xz"
        if not source.is_file():
            raise CLIError(f"no {source}: the shared data sets are read from {args.shared}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as f, lzma.open(target.with_suffix(".tmp"), "wb", preset=9) as out:
            shutil.copyfileobj(f, out, 2**22)
        target.with_suffix(".tmp").replace(target)
        print(
            f"{source} ({source.stat().st_size / 2**20:.1f} MiB) -> {target} ({target.stat().st_size / 2**20:.1f} MiB)"
        )


def unpack_data(root: Path) -> None:
    """Each ROOT/**/NAME.xz beside itself as NAME (once)."""
    for packed in sorted(root.rglob("*.xz")):
        target = packed.with_suffix("")
        if not target.is_file():
            with lzma.open(packed) as f, open(target.with_suffix(".tmp"), "wb") as out:
                shutil.copyfileobj(f, out, 2**22)
            target.with_suffix(".tmp").replace(target)


class Job:
    """One training process of the call, its log under the work folder."""

    def __init__(self, name: str, argv: list[str], work: Path, env: dict):
        self.name, self.argv = name, argv
        self.log = work / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, *argv],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        self.started, self.ended, self.stopped = time.time(), None, None

    def running(self) -> bool:
        if self.proc.poll() is None:
            return True
        self.ended = self.ended or time.time()
        return False

    def stop(self, why: str) -> None:
        if self.running():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.stopped = why
        self.running()

    def record(self) -> dict:
        return {
            "argv": self.argv,
            "returncode": self.proc.returncode,
            "seconds": round(self.ended - self.started, 1),
            "stopped": self.stopped,
        }


def epochs_done(log_csv: Path) -> int:
    """Rows of a P6 run's log.csv (one per finished epoch)."""
    if not log_csv.is_file():
        return 0
    with open(log_csv, newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def time_entry_points(work: Path, env: dict, device: str, tiny: bool) -> dict:
    """Wall seconds of the TA's GPU entry points as a user runs them (the first run includes
    CUDA's start), and the benches that time the rest with random weights."""
    p1 = ["--per-digit", "1", "--steps", "2"] if tiny else []
    p2 = (
        ["--n", "1", "--size", "32", "--steps", "2", "--width", "32"]
        if tiny
        else ["--n", "10", "--size", "256"]
    )
    p4 = ["--batch-size", "8", "--repeats", "1"] if tiny else []
    runs = {
        "hw2_1.sh (1000 digits)": ["bash", "hw2_1.sh", str(work / "timing" / "hw2_1"), *p1],
        "bench.p2_ddim speed (10 faces 256x256, 50 DDIM steps, one cold run)": [
            sys.executable,
            "-m",
            "bench.p2_ddim",
            "speed",
            *p2,
            "--repeats",
            "1",
            "--device",
            device,
            "--json",
            str(work / "timing" / "p2_speed.json"),
        ],
        "bench.p4_gan cost (training step, run.sh's 1000 faces)": [
            sys.executable,
            "-m",
            "bench.p4_gan",
            "cost",
            *p4,
            "--device",
            device,
            "--json",
            str(work / "timing" / "p4_cost.json"),
        ],
    }
    result = {}
    for what, cmd in runs.items():
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        result[what] = {
            "seconds": round(time.perf_counter() - start, 2),
            "returncode": proc.returncode,
            "output_tail": (proc.stdout + proc.stderr)[-600:],
        }
        print(f"timed {what}: {result[what]['seconds']} s (exit {proc.returncode})", flush=True)
    return result


def probe_p6_epoch(device: torch.device, batch_size: int, train_images: int, steps: int) -> float:
    """Seconds of one epoch of the main P6 run alone on the GPU: `steps` timed training steps of
    ResNet-18 (width 64, bf16, channels_last, the cutout BatchAugment) after a warm-up."""
    from p6_classification.augment import build_preset
    from p6_classification.data import CIFAR_MEAN, CIFAR_STD
    from p6_classification.models import ResNet18
    from hw2_utils import autocast, resolve_dtype

    torch.backends.cudnn.benchmark = device.type == "cuda"
    dtype = resolve_dtype("auto", device)
    model = ResNet18(10, width=64).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    augment = build_preset("cutout", CIFAR_MEAN, CIFAR_STD).device_train
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator
    ).to(device)
    labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)

    def step():
        x = augment(images, generator).contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps * (train_images // batch_size)
    # release the GPU memory for empty_cache (step() is not called again)
    model = opt = images = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


def shipped_p6_is_the_recipe() -> bool:
    """Whether the shipped P6 model was trained with train.py's current defaults, as its bench
    record (which travels: the model file is stashed for a call) says: then a main run would
    only make it again, and the study gets the GPU."""
    record = read_record(CHECKPOINTS / SHIPPED_RECORDS["bench.json"]) or {}
    return "full" in record and not recipe_differences(record["full"])


def plan_p6(epoch_seconds: float, window: float) -> tuple[int, bool]:
    """(main epochs, whether the study runs): the longest main run that fits beside the study,
    else the longest alone."""
    capacity = window / (epoch_seconds * CONTENTION)
    for epochs in P6_MAIN_EPOCHS:
        if epochs + STUDY_EPOCHS * len(STUDY_RUNS) <= capacity:
            return epochs, True
    return next((e for e in P6_MAIN_EPOCHS if e <= capacity), P6_MAIN_EPOCHS[-1]), False


def next_to_stop(jobs: dict, first, p4_names: list[str]):
    """The job to stop when `first` (the main P6 run, or the study when there is none) would
    miss the deadline: the study if it is not first, then the P4 runs, the last named first."""
    line = [jobs.get("p6_study"), *(jobs.get(f"p4_{n}") for n in reversed(p4_names))]
    return next((j for j in line if j is not None and j is not first and j.running()), None)


def fp16_generator(path: Path, target: Path) -> None:
    """A P4 generator file with its floating-point tensors in fp16: half the bytes to bring back;
    pipeline.load_generator loads it as it is (FID is measured on exactly this file)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in state["state_dict"].items()
    }
    torch.save(state, target)


def collect(work: Path, out: Path, p4_names: list[str], session: dict) -> dict:
    """Pack what to bring back into OUT/session.tar.part-*, most important first, within
    RETURN_BYTES: records and logs, the P6 model, each P4 run's last snapshot, then the one at
    ~60% of each run (fp16 copies, so ~half the bytes)."""
    files: list[Path] = []
    for pattern in (
        "timing/*.json",
        "logs/*.log",
        "p6/resnet18/*.json",
        "p6/resnet18/*.csv",
        "p6/resnet18/*.png",
        "p6/aug/*.json",
        "p6/aug/*.md",
        "p6/aug/*.png",
        "p6/aug/runs/*/*.json",
        "p6/aug/runs/*/*.csv",
        "p6/aug/runs/*.log",
        "p4/*/*.csv",
        "p4/*/run.json",
        "p6/resnet18/final.pt",
    ):
        files += sorted(work.glob(pattern))
    for name in p4_names:  # the last sample grid of each P4 run
        files += sorted((work / "p4" / name / "samples").glob("*.png"))[-1:]
    snapshots = {
        name: sorted((work / "p4" / name / "snapshots").glob("generator_epoch*.pt"))
        for name in p4_names
    }
    chosen = [s[-1] for s in snapshots.values() if s]
    chosen += [s[math.floor(0.6 * (len(s) - 1))] for s in snapshots.values() if len(s) > 2]
    total, kept, left = 64 * 1024, [], []  # session.json and tar headers
    for path in files + chosen:
        size = (path.stat().st_size // 2 if path in chosen else path.stat().st_size) + 1024
        if total + size > RETURN_BYTES:
            left.append(str(path.relative_to(work)))
            continue
        if path in chosen:
            small = work / "p4_fp16" / path.relative_to(work / "p4")
            small.parent.mkdir(parents=True, exist_ok=True)
            fp16_generator(path, small)
            path = small
        total += size
        kept.append(path)
    session["returned"] = [str(p.relative_to(work)) for p in kept]
    session["not_returned"] = left
    (work / "session.json").write_text(json.dumps(session, indent=2))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in [work / "session.json", *kept]:
            tar.add(path, arcname=str(path.relative_to(work)))
    data = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), PART_BYTES):
        (out / f"session.tar.part-{i // PART_BYTES:02d}").write_bytes(data[i : i + PART_BYTES])
    print(
        f"packed {len(kept)} files ({len(data) / 2**20:.1f} MiB) into {out}; left behind {len(left)}",
        flush=True,
    )
    return session


def run(args, argv: list[str]) -> dict:
    started = time.time()
    deadline = started + args.budget - COLLECT_SECONDS
    device = resolve_device(args.device)
    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    data = Path(args.data).resolve()
    unpack_data(data)
    env = {
        **os.environ,
        "HW2_QUIET": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    commit_file = REPO / ".device" / "commit"
    session = {
        "command": command_line("bench.gpu_session", argv),
        "hardware": describe_hardware(device),
        "commit": commit_file.read_text().strip() if commit_file.is_file() else None,
        "budget_seconds": args.budget,
        "tiny": args.tiny,
        "events": [],
        "jobs": {},
    }

    def event(text: str) -> None:
        session["events"].append({"second": round(time.time() - started, 1), "event": text})
        print(f"[{time.time() - started:6.1f} s] {text}", flush=True)

    event(f"data unpacked; {session['hardware']}")
    if device.type == "cuda":
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        session["nvidia_smi"] = smi.stdout.strip()
    if args.timings:
        session["timings"] = time_entry_points(work, env, str(device), args.tiny)
        event("entry points timed")

    cifar, faces = data / "cifar10_full", data / "celeba10k"
    if args.tiny:  # small sets that load in a second
        cifar, faces = SHARED / "cifar10" / "cifar10_slice.npz", SHARED / "hw2_data" / "face"
    tiny_p6 = TINY_P6 if args.tiny else []
    batch_size = 40 if args.tiny else DEFAULTS["resnet18"]["batch_size"]
    # the rehearsal trains every job, so "auto" trains the main run there
    train_main = args.p6_main == "yes" or (
        args.p6_main == "auto" and (args.tiny or not shipped_p6_is_the_recipe())
    )
    fallback = []
    try:
        epoch_seconds = probe_p6_epoch(
            device, batch_size, 360 if args.tiny else 45_000, 3 if args.tiny else 30
        )
    except Exception as e:  # noqa: BLE001 - one call, no second chance: train anyway on the loader path
        # ../shared/device/README.md
        fallback, epoch_seconds = ["--preset", "flip_crop_ls", "--workers", "12"], 3.1
        event(f"P6 probe failed ({type(e).__name__}: {e}); main falls back to {' '.join(fallback)}")
    window = deadline - time.time()
    if not train_main:  # the study alone, first in line for the GPU
        main_epochs, study = 0, True
    else:
        main_epochs, study = (2, True) if args.tiny else plan_p6(epoch_seconds, window)
    study = study and not fallback
    # what the study needs if it shares the GPU as the 2026-12-04 runs did (P4 runs yield to it)
    study_needs = STUDY_EPOCHS * len(STUDY_RUNS) * epoch_seconds * CONTENTION
    session["p6_plan"] = {
        "main": f"auto: {'yes' if train_main else 'no'}"
        if args.p6_main == "auto"
        else args.p6_main,
        "probe_epoch_seconds": round(epoch_seconds, 2),
        "window_seconds": round(window),
        "main_epochs": main_epochs,
        "study": study,
        "study_projected_seconds": round(study_needs),
        "fallback": fallback,
    }
    event(
        f"P6 probe: {epoch_seconds:.2f} s/epoch alone -> main {main_epochs} epochs, study {'yes' if study else 'no'}"
        if train_main
        else f"P6: no main run (the shipped model is train.py's recipe); the study first in line, "
        f"projected {study_needs:.0f} s of a {window:.0f} s window"
        + ("" if study_needs <= window else " (it may not finish: its runs write no record then)")
    )

    # The bench's layout (WORK/p6/resnet18, WORK/p6/aug): bench/p6_classification.py --trained-elsewhere reads it.
    jobs: dict[str, Job] = {}
    main_out = work / "p6" / "resnet18"
    shorter = (
        [] if main_epochs == DEFAULTS["resnet18"]["epochs"] else ["--epochs", str(main_epochs)]
    )
    if train_main:
        jobs["p6_main"] = Job(
            "p6_main",
            [
                "-m",
                "p6_classification.train",
                "--data",
                str(cifar),
                "--out",
                str(main_out),
                *shorter,
                *fallback,
                *tiny_p6,
            ],
            work,
            env,
        )
    study_epochs = 1 if args.tiny else STUDY_EPOCHS
    if study:
        jobs["p6_study"] = Job(
            "p6_study",
            [
                "-m",
                "p6_classification.aug_study",
                "--data",
                str(cifar),
                "--out",
                str(work / "p6" / "aug"),
                *STUDY_ARGS,
                "--epochs",
                str(study_epochs),
                *tiny_p6,
            ],
            work,
            env,
        )
    p4_names = list(P4_VARIANTS)[:2] if args.tiny else list(P4_VARIANTS)
    for name in p4_names:
        extra = [*TINY_P4, "--epochs", "3", "--precision", "fp32"] if args.tiny else []
        jobs[f"p4_{name}"] = Job(
            f"p4_{name}",
            [
                "-m",
                "p4_gan.train",
                "--data",
                str(faces),
                "--out",
                str(work / "p4" / name),
                *P4_VARIANTS[name],
                *P4_COMMON,
                *extra,
            ],
            work,
            env,
        )
    event(f"started {', '.join(jobs)}")

    # Watch the P6 runs' epochs (all of them share the GPU, so the work left over the recent rate
    # of finished epochs says when the first P6 job in line, the main run or else the study, ends);
    # if it would miss the deadline, stop the study (when it is not first), then P4 runs one by
    # one. Report every 30 s.
    study_runs = [work / "p6" / "aug" / "runs" / name for name in STUDY_RUNS]
    try:  # whatever happens here, the jobs are stopped and what exists is brought back
        marks, last_report, was_studying = [], 0.0, None
        while time.time() < deadline and any(job.running() for job in jobs.values()):
            time.sleep(2)
            main = jobs.get("p6_main")
            # one retry, on the loader path
            if main and not main.running() and main.proc.returncode != 0 and not fallback:
                fallback = ["--preset", "flip_crop_ls", "--workers", "12", "--no-resume"]
                main_epochs = max(10, int((deadline - time.time()) / (3.1 * CONTENTION)))
                event(
                    f"p6_main failed ({main.log.read_text().strip().splitlines()[-1:]}); "
                    f"again with {' '.join(fallback)} for {main_epochs} epochs"
                )
                jobs["p6_main_failed"], marks = main, []
                jobs["p6_main"] = Job(
                    "p6_main_retry",
                    [*main.argv, *fallback, "--epochs", str(main_epochs)],
                    work,
                    env,
                )
                session["p6_plan"].update(fallback=fallback, main_epochs=main_epochs)
            main_done = epochs_done(main_out / "log.csv")
            studying = "p6_study" in jobs and jobs["p6_study"].running()
            if studying != was_studying:  # the count below changes meaning: measure the rate afresh
                marks, was_studying = [], studying
            done = main_done + (
                sum(epochs_done(r / "log.csv") for r in study_runs) if studying else 0
            )
            left = (
                main_epochs
                - main_done
                + (len(study_runs) * study_epochs + main_done - done if studying else 0)
            )
            # from the first job's epoch 1: past the start-up
            if (main_done if main else done) >= 1 and (not marks or marks[-1][1] != done):
                marks.append((time.time(), done))
            # a rate over 40 s at least: over 20 s, one 2026-12-04 run projected its end 50 s late and
            # stopped a P4 run it did not need to
            first = jobs.get("p6_main") or jobs.get("p6_study")
            if first and first.running() and len(marks) >= 2 and marks[-1][0] - marks[0][0] >= 40:
                (t0, d0), (t1, d1) = marks[0], marks[-1]
                finish = t1 + left * (t1 - t0) / max(1, d1 - d0)
                victim = next_to_stop(jobs, first, p4_names)
                if finish > deadline and victim is not None:
                    victim.stop(
                        f"to give {first.name} the GPU (its projected end: {finish - started:.0f} s)"
                    )
                    event(f"stopped {victim.name}: {victim.stopped}")
                    marks = []
                marks = marks[-45:]  # the rate of about the last 90 s
            if time.time() - last_report > 30:
                last_report = time.time()
                progress = (
                    f"P6 main epoch {main_done}/{main_epochs}"
                    if main
                    else f"P6 study epochs {done}/{len(study_runs) * study_epochs}"
                )
                event(
                    f"{progress}, P6 epochs left {left}; "
                    f"running: {', '.join(n for n, j in jobs.items() if j.running())}"
                )
    except Exception as e:  # noqa: BLE001
        event(f"watching failed ({type(e).__name__}: {e}); stopping and collecting")
    for name, job in jobs.items():
        if job.running():
            job.stop("the session's deadline")
            event(f"stopped {name} at the deadline")
        session["jobs"][name] = job.record()
        if job.proc.returncode not in (0, None) and job.stopped is None:
            event(f"{name} failed: {job.log.read_text().strip().splitlines()[-1:]}")
    event("collecting")
    session = collect(work, Path(args.out), p4_names, session)
    print(json.dumps({k: session[k] for k in ("p6_plan", "jobs")}, indent=1))
    return session


def unpack(args) -> None:
    """Join OUT/session.tar.part-* (as the device tool brought them back) and unpack into WORK."""
    parts = sorted(Path(args.files_at).rglob("session.tar.part-*"))
    if not parts:
        raise CLIError(f"no session.tar.part-* under {args.files_at}")
    data = b"".join(p.read_bytes() for p in parts)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(work, filter="data")
    print(f"unpacked {len(parts)} parts ({len(data) / 2**20:.1f} MiB) into {work}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("pack", help="xz-compress the data sets into .device/data")
    s.add_argument("--shared", default=str(SHARED))
    s = sub.add_parser("run", help="the call itself (on the GPU machine)")
    s.add_argument("--out", required=True, help="what comes back ($OUT there)")
    s.add_argument(
        "--data", default=str(STAGED_DATA), help="the staged data (xz files are unpacked in place)"
    )
    s.add_argument("--work", default="outputs/gpu_session", help="the runs' folders (replaced)")
    s.add_argument(
        "--budget",
        type=positive_float,
        default=570,
        help="seconds for the whole command (a call allows 600, or the session's device time left)",
    )
    s.add_argument("--device", default="cuda")
    s.add_argument(
        "--no-timings", dest="timings", action="store_false", help="skip timing the entry points"
    )
    s.add_argument(
        "--p6-main",
        choices=("auto", "yes", "no"),
        default="auto",
        help="train P6's main run (train.py's recipe); auto: only when the shipped model was not "
        "trained with the current recipe (its bench record says), else the study is first in line",
    )
    s.add_argument(
        "--tiny", action="store_true", help="rehearsal on a CPU: tiny models and data, minutes"
    )
    s = sub.add_parser("unpack", help="join and unpack what the call brought back")
    s.add_argument("files_at", help="the folder the device tool put OUT's files in")
    s.add_argument("--work", default="outputs/gpu")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.command == "run":
        run(args, argv)
    else:
        {"pack": pack, "unpack": unpack}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
