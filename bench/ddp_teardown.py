"""How often a two-rank CPU (gloo) DDP run dies at exit under each teardown.

Each run is `torchrun --standalone --nproc_per_node=2` of tests/ddp_tiny_train.py (3 DDP steps
of a tiny model, then the teardown). The torch 2.14 failure is an abort at interpreter exit
("terminate called without an active exception"), see hw2_utils.cleanup_distributed.
--teardown destroy is what cleanup_distributed did before (destroy_process_group alone);
--teardown shipped is cleanup_distributed as it is (barrier, destroy, a pause of --drain
seconds on gloo). --busy keeps one core spinning meanwhile, to make the race likelier.

    python -m bench.ddp_teardown --runs 80 --teardown destroy   # writes outputs/bench/ddp_teardown_destroy.json
    python -m bench.ddp_teardown --runs 80                      # the shipped teardown
    python -m bench.ddp_teardown --runs 80 --busy               # the same beside a busy core
"""

from __future__ import annotations

import argparse
import json
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import hw2_utils
from hw2_utils import (
    atomic_path,
    command_line,
    describe_hardware,
    non_negative_float,
    positive_int,
    run_cli,
    run_torchrun_cpu,
)
from hw2_utils import runtime

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_tiny_train.py"


def destroy_only() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()


def worker(out: str, teardown: str, drain: float) -> None:
    """One rank: the test's training script with the chosen teardown."""
    runtime._GLOO_DRAIN_SECONDS = drain
    if teardown == "destroy":
        # the name the script calls (U.cleanup_distributed)
        hw2_utils.cleanup_distributed = destroy_only
    sys.argv = [str(WORKER), out]
    runpy.run_path(str(WORKER), run_name="__main__")


def launch(teardown: str, drain: float, out: Path) -> subprocess.CompletedProcess:
    return run_torchrun_cpu(
        [
            "-m",
            "bench.ddp_teardown",
            "--worker",
            str(out),
            "--teardown",
            teardown,
            "--drain",
            str(drain),
        ],
        timeout=120,
    )


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=positive_int, default=40)
    p.add_argument(
        "--teardown",
        choices=("shipped", "destroy"),
        default="shipped",
        help="shipped: cleanup_distributed; destroy: destroy_process_group alone (the old teardown)",
    )
    p.add_argument(
        "--drain",
        type=non_negative_float,
        default=runtime._GLOO_DRAIN_SECONDS,
        help="seconds cleanup_distributed pauses after destroy (default: the shipped value)",
    )
    p.add_argument("--busy", action="store_true", help="keep one core spinning during the runs")
    p.add_argument(
        "--out",
        help="JSON record (default: outputs/bench/ddp_teardown_{destroy|drainD}[_busy].json)",
    )
    # set by launch() for each rank
    p.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.teardown, args.drain)
    suffix = ("destroy" if args.teardown == "destroy" else f"drain{args.drain:g}") + (
        "_busy" if args.busy else ""
    )
    out = Path(args.out or f"outputs/bench/ddp_teardown_{suffix}.json")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    failures, aborts, start = 0, 0, time.perf_counter()
    try:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                r = launch(args.teardown, args.drain, Path(tmp))
            failures += r.returncode != 0
            aborts += "terminate called without an active exception" in r.stderr
            print(
                f"run {i + 1}/{args.runs}: exit {r.returncode} ({failures} failed so far)",
                flush=True,
            )
    finally:
        if spinner:
            spinner.kill()
    record = {
        "command": command_line("bench.ddp_teardown", argv),
        "hardware": describe_hardware(torch.device("cpu")),
        "runs": args.runs,
        "teardown": args.teardown,
        "drain_seconds": args.drain,
        "busy_core": args.busy,
        "failed_runs": failures,
        "runs_with_abort_message": aborts,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    run_cli(main)
