r"""One call on a lent GPU machine (../shared/device/README.md): the train.py runs it is given,
side by side, each ending itself with --max-seconds; their run folders come back in the device
tool's return limits and are restored here, so the next call (or a CPU session) resumes them.

Here, before the call (from the repository root; what an earlier call left in .device would travel too):
    rm -rf .device/data .device/runs
    python -m bench.gpu_call pack cifar10_full/train.npz cifar10_full/test.npz   # -> .device/data
    python -m bench.gpu_call pack celeba10k/train.npz --resume p4=p4_gan/checkpoints/gpu_run   # + a run to go on with
    bash ../shared/device/stage.sh stash && bash ../shared/device/stage.sh size  # <= 64 MiB
JOBS is a JSON object {name: [module, arguments...]} without --out, e.g.
    {"p6": ["p6_classification.train", "--preset", "shipped", "--data", ".device/data/cifar10_full"],
     "p4": ["p4_gan.train", "--preset", "shipped", "--data", ".device/data/celeba10k"]}
There (carry [".device"]; a run that came back from an earlier call resumes from .device/runs):
    python3 -m bench.gpu_call run JOBS --max-seconds 420 --work .device/runs --out $OUT
Here, after (into a folder outside .device, which the next call would carry):
    bash ../shared/device/stage.sh restore
    python -m bench.gpu_call unpack FILES_AT --work runs/gpu --keep p4=p4_gan/checkpoints/gpu_run
The jobs of the planned calls, and the command of each, are in bench/gpu_jobs/README.md.

`run` starts `python -m MODULE ARGS --out WORK/NAME --max-seconds S --compact-checkpoint` for
every job at once (logs in WORK/logs/), stops one still running --grace seconds after its budget,
then writes WORK as one tar in parts of 15 MiB to OUT (at most 4, the tool's 64 MB in all: each
run's last.pt, result.json, log.csv and model.pt first, then the newest files; left_out.txt names
what did not fit, and unpack warns of a lost last.pt). A run resumed elsewhere: --force-resume
(its data path moved). A run that needs more calls lives in the repository between them (the
next GPU may be sessions away, on a new machine): unpack --keep NAME=DIR copies its last.pt,
result.json and log.csv to DIR (commit them), and the next pack --resume NAME=DIR puts them in
.device/runs/NAME, where the call's job resumes.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from hw2_utils import CLIError, HelpFormatter, positive_float, require_file, run_cli

REPO = Path(__file__).resolve().parents[1]
PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
MAX_PARTS = 4  # ... at most 8 of them, but 64 MB together: 4 parts of 15 MiB
FIRST = ("last.pt", "result.json", "log.csv", "model.pt")  # what resuming and reporting need


def pack(args) -> None:
    """xz-compress each shared data file into .device/data (the call's extra path)."""
    for name in args.files:
        source = require_file(Path(args.shared) / name, "shared data file")
        target = Path(args.device_dir) / "data" / f"{name}.xz"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as f, lzma.open(target.with_suffix(".tmp"), "wb") as out:
            shutil.copyfileobj(f, out, 2**22)
        target.with_suffix(".tmp").replace(target)
        print(f"{source} ({source.stat().st_size / 2**20:.1f} MiB) -> {target}")
    for name, folder in named_dirs(args.resume, "--resume").items():
        copy_state(folder, Path(args.device_dir) / "runs" / name)


RUN_STATE = ("last.pt", "result.json", "log.csv")  # what a run needs to go on, and its history


def named_dirs(pairs: list[str], option: str) -> dict[str, Path]:
    """NAME=DIR options as {NAME: DIR}."""
    named = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not (sep and name and folder) or "/" in name:
            raise CLIError(f"{option} takes NAME=DIR (a job's name, a folder), got {pair!r}")
        named[name] = Path(folder)
    return named


def copy_state(source: Path, target: Path) -> None:
    """The run files RUN_STATE of `source` into `target` (made if needed; last.pt is required)."""
    require_file(source / "last.pt", "run state")
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_STATE:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    print(f"{source} -> {target}: {', '.join(n for n in RUN_STATE if (target / n).is_file())}")


def unpack_data(root: Path) -> None:
    """Each ROOT/**/NAME.xz beside itself as NAME (once)."""
    for packed in sorted(root.rglob("*.xz")):
        target = packed.with_suffix("")
        if not target.is_file():
            with lzma.open(packed) as f, open(target.with_suffix(".tmp"), "wb") as out:
                shutil.copyfileobj(f, out, 2**22)
            target.with_suffix(".tmp").replace(target)


def read_jobs(path: str) -> dict[str, list[str]]:
    try:
        jobs = json.loads(require_file(path, "jobs file").read_text())
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is not JSON ({e})") from None
    ok = isinstance(jobs, dict) and jobs and all(isinstance(a, list) and a for a in jobs.values())
    if not ok or not all(isinstance(x, str) for argv in jobs.values() for x in argv):
        raise CLIError(f"{path} must be a JSON object {{name: [module, arguments...]}}")
    if any(a.startswith(("--out", "--max-s")) for argv in jobs.values() for a in argv):
        raise CLIError(f"{path}: the launcher sets --out and --max-seconds of every job")
    return jobs


def train_side_by_side(jobs: dict, work: Path, max_seconds: float, grace: float) -> dict:
    """Start every job at once; wait for each, stopping one still running `grace` seconds after
    its budget. Returns each job's exit status and seconds."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    started, running = time.monotonic(), {}
    for name, (module, *argv) in jobs.items():
        # bf16 checkpoints: every run's last.pt must fit the return limits beside the others
        ours = [
            "--out",
            str(work / name),
            "--max-seconds",
            str(max_seconds),
            "--compact-checkpoint",
        ]
        with open(work / "logs" / f"{name}.log", "a") as log:
            running[name] = subprocess.Popen(
                [sys.executable, "-m", module, *argv, *ours], cwd=REPO, stdout=log, stderr=log
            )
    status = {}
    for name, process in running.items():
        try:
            process.wait(timeout=max(0.0, started + max_seconds + grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.terminate()  # the run saves nothing more: its last checkpoint stands
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # stuck in a collective or a data worker
                process.kill()
                process.wait()
        seconds = round(time.monotonic() - started, 1)
        status[name] = {"returncode": process.returncode, "seconds": seconds}
        print(f"{name}: exit {process.returncode} after {status[name]['seconds']} s")
    return status


def write_parts(work: Path, out: Path, note: dict) -> list[Path]:
    """WORK as one tar split into OUT/call.tar.part-NN, the run files first, within MAX_PARTS."""
    files = [p for p in work.rglob("*") if p.is_file() and p.name != ".lock"]
    # last.pt first, since without it nothing resumes; then the other run files, then the newest
    # (a run's later snapshots), ties in folder order
    files.sort(
        key=lambda p: (
            FIRST.index(p.name) if p.name in FIRST else len(FIRST),
            -p.stat().st_mtime,
            str(p),
        )
    )
    budget, kept, left_out = MAX_PARTS * PART_BYTES - 2**20, [], []  # 1 MiB for tar headers
    for path in files:
        size = path.stat().st_size + 1024
        (kept if size <= budget else left_out).append(path)
        budget -= size if size <= budget else 0
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in kept:
            tar.add(path, arcname=path.relative_to(work).as_posix())
        lines = [p.relative_to(work).as_posix() for p in left_out]
        for name, text in (
            ("call.json", json.dumps(note, indent=2)),
            ("left_out.txt", "\n".join(lines)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    data, parts = buffer.getvalue(), []
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), PART_BYTES):
        parts.append(out / f"call.tar.part-{i // PART_BYTES:02d}")
        parts[-1].write_bytes(data[i : i + PART_BYTES])
    if left_out:
        print(f"left out (over the return limit): {', '.join(lines)}", file=sys.stderr)
    return parts


def run(args) -> dict:
    jobs, work = read_jobs(args.jobs), Path(args.work)
    unpack_data(REPO / ".device")
    status = train_side_by_side(jobs, work, args.max_seconds, args.grace)
    note = {"jobs": jobs, "max_seconds": args.max_seconds, "status": status}
    parts = write_parts(work, Path(args.out), note)
    print(f"{len(parts)} part(s) in {args.out}")
    return note


def unpack(args) -> Path:
    """Join FILES_AT/call.tar.part-* and extract them into --work (the runs' folders)."""
    parts = sorted(Path(args.files_at).rglob("call.tar.part-*"))
    if not parts:
        raise CLIError(f"no call.tar.part-* under {args.files_at}")
    data = b"".join(p.read_bytes() for p in parts)
    work = Path(args.work)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(work, filter="data")  # "data": no absolute paths, links out or devices
    print(f"{len(parts)} part(s) -> {work}: {json.loads((work / 'call.json').read_text())}")
    lost = [p for p in (work / "left_out.txt").read_text().split() if p.endswith("last.pt")]
    if lost:  # such a run starts over when its command runs again
        print(f"warning: no resumable state came back for {', '.join(lost)}", file=sys.stderr)
    for name, folder in named_dirs(args.keep, "--keep").items():
        copy_state(work / name, folder)
    return work


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("pack", help="shared data files into .device/data, xz-compressed")
    s.add_argument("files", nargs="+", help="paths under --shared, e.g. cifar10_full/train.npz")
    s.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    s.add_argument(
        "--device-dir", default=str(REPO / ".device"), help="the call's extra path (carry)"
    )
    s.add_argument(
        "--resume",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also copy the run state kept in DIR (unpack --keep) to .device/runs/NAME, where job "
        "NAME of the call resumes it; repeatable",
    )
    s = sub.add_parser("run", help="on the GPU machine: train the jobs, pack their folders")
    s.add_argument("jobs", help="JSON file {name: [module, arguments...]}")
    s.add_argument("--max-seconds", type=positive_float, required=True, help="each job's budget")
    s.add_argument(
        "--grace",
        type=positive_float,
        default=60.0,
        help="seconds after the budget before a job still running is stopped (default %(default)s)",
    )
    s.add_argument("--work", default=".device/runs", help="the runs' folders (default %(default)s)")
    s.add_argument("--out", required=True, help="the device tool's $OUT")
    s = sub.add_parser("unpack", help="here: restore the runs' folders from the parts")
    s.add_argument("files_at", help="the device tool's files_at folder")
    s.add_argument("--work", required=True, help="where the runs' folders go")
    s.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="copy job NAME's last.pt, result.json and log.csv to DIR, where the repository keeps "
        "them for the next call; repeatable",
    )
    args = p.parse_args(argv)
    return {"pack": pack, "run": run, "unpack": unpack}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
