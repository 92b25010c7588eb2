"""One way to run a training run, shared by every train.py: the command-line vocabulary
(add_common_args) and the run folder (RunFolder).

A run folder OUT holds
    last.pt    the checkpoint to resume from, with the run's identity (what must match to resume)
    log.csv    a header, then one row per step (or epoch), first column the step
    run.json   the identity and, for every session of the run, its command, git commit and hardware
next to whatever the problem exports (weights, samples). Re-running the same command resumes
from last.pt and trims the log to it, so a crash between checkpoints leaves no duplicated row;
--no-resume starts over, resetting the run's own files and touching nothing else in OUT.

What belongs here: what every train.py does the same way. Not here: what one problem trains.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from hw2_utils.cli import (
    CLIError,
    add_option,
    check_output_path,
    error_summary,
    positive_float,
    positive_int,
    seed_int,
)
from hw2_utils.files import atomic_path, save_json
from hw2_utils.runtime import describe_hardware

REPO = Path(__file__).resolve().parents[1]
REQUIRED = object()  # add_common_args: an option without a default
# One name per kind of state in every last.pt: "optimizer", and "generator" for the run's own seeded
# random draws. The names train.py scripts used before are still read, for one release.
RENAMED_STATES = {"optimizer": ("opt",), "generator": ("gen", "noise_gen", "aug_rng")}

# Spellings train.py scripts used before add_common_args: still accepted, hidden from --help,
# for one release, so README commands and user scripts keep working. Then delete this table.
ALIASES = {
    "data": ("--data-root", "--images", "--cifar"),
    "image_size": ("--resolution", "--size", "--img-size"),
    "limit": ("--subset",),
    "ckpt_every": ("--save-every",),
    "grad_clip": ("--max-grad-norm",),
}


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    data: tuple,
    out: tuple,
    precision: str | None = "fp32",
    ckpt_every: int = 1000,
    image_size: tuple | None = None,
    limit: str | None = None,
    grad_clip: float | None = None,
) -> None:
    """Add the options every train.py spells the same way: --data --out --device --seed
    --ckpt-every --no-resume, and where the script has them --precision --image-size --limit
    --grad-clip (None: the script has no such option).

    data, out, image_size: (default, help); default REQUIRED makes the option required.
    limit: the help of --limit N (use only the first N, or a subset of N, images).
    precision, ckpt_every, grad_clip: the default."""
    _add(parser, "data", data, str)
    _add(parser, "out", out, str)
    if image_size is not None:
        _add(parser, "image_size", image_size, positive_int)
    if limit is not None:
        _add(parser, "limit", (None, limit), positive_int)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--seed", type=seed_int, default=0, help="seed of every random draw (default %(default)s)"
    )
    if precision is not None:
        parser.add_argument(
            "--precision",
            default=precision,
            help="fp32 | bf16 | fp16 | auto: autocast precision "
            "(default %(default)s; fp16 falls back to fp32 on the CPU; auto = bf16 where the hardware has it)",
        )
    _add(
        parser,
        "ckpt_every",
        (ckpt_every, "save OUT/last.pt every N steps and at the end (default %(default)s)"),
        positive_int,
    )
    if grad_clip is not None:
        _add(
            parser,
            "grad_clip",
            (grad_clip, "clip the global gradient norm to this (default %(default)s)"),
            positive_float,
        )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start over although OUT/last.pt exists: its checkpoint "
        "and log are reset, other files are replaced as the new run writes them",
    )
    parser.add_argument(
        "--force-resume",
        action="store_true",
        help="resume from OUT/last.pt although what identifies "
        "the run changed (e.g. the data folder moved); the differences are printed",
    )


def _add(parser: argparse.ArgumentParser, dest: str, spec: tuple, type_) -> None:
    """--DEST with its hidden old spellings (ALIASES). argparse's required=True would refuse an
    old spelling, so a required option and its aliases form a required either-or group."""
    default, help_ = spec
    add_option(
        parser,
        dest.replace("_", "-"),
        aliases=ALIASES.get(dest, ()),
        required=default is REQUIRED,
        type=type_,
        help=help_,
        **({} if default is REQUIRED else {"default": default}),
    )


def git_commit(repo: Path = REPO) -> str | None:
    """The checked-out commit, read from .git without running git; None outside a checkout."""
    git = repo / ".git"
    with contextlib.suppress(OSError, IndexError):
        # a worktree: ".git" names the real folder, whose refs live in its commondir
        if git.is_file():
            git = (repo / git.read_text().split("gitdir:", 1)[1].strip()).resolve()
        refs = (
            (git / (git / "commondir").read_text().strip()).resolve()
            if (git / "commondir").is_file()
            else git
        )
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # detached HEAD
        ref = head[len("ref: ") :]
        if (refs / ref).is_file():
            return (refs / ref).read_text().strip()
        packed = (refs / "packed-refs").read_text().splitlines()
        return next((line.split()[0] for line in packed if line.endswith(f" {ref}")), None)
    return None


class RunFolder:
    """OUT as one training run (module docstring), used top to bottom in a train.py main:

        run = RunFolder(args.out, ckpt_every=args.ckpt_every, resume=not args.no_resume, main=info.is_main)
        ...                                          # build the model, optimizer, generators
        state = run.load(identity, model=model, opt=opt)  # None, or last.pt's once its identity matches
        step = state["step"] if state else 0
        log = run.start(step, LOG_FIELDS, command_line("pN_x.train", argv), device)
        while step < total:
            ...; step += 1
            if log:
                log.writerow([step, ...])
            if run.checkpoint_due(step, total):
                run.save({"step": step}, model=model, opt=opt)
        run.close()

    Every method may run on every DDP rank; only the main rank writes."""

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        ckpt_every: int,
        resume: bool = True,
        main: bool = True,
        force: bool = False,
    ):
        self.out = check_output_path(out, folder=True)  # a bad --out fails before any slow work
        self.checkpoint = self.out / "last.pt"
        self.ckpt_every, self.resume, self.main, self.force = ckpt_every, resume, main, force
        self.identity: dict = {}
        self.resumed, self.step, self._files = False, 0, []

    @classmethod
    def from_args(cls, args, default_out: str | None = None, main: bool = True) -> "RunFolder":
        """The run folder add_common_args' options name: --out (else `default_out`), --ckpt-every,
        --no-resume and --force-resume."""
        if not (args.out or default_out):
            raise CLIError("--out is required")
        return cls(
            args.out or default_out,
            ckpt_every=args.ckpt_every,
            resume=not args.no_resume,
            main=main,
            force=args.force_resume,
        )

    def load(self, identity: dict, **stateful) -> dict | None:
        """The checkpoint to resume from, or None when starting over (no OUT/last.pt, or
        --no-resume). Each object in `stateful` (module, optimizer, grad scaler, torch.Generator)
        gets its state back from the entry that save() wrote under the same name. `identity`:
        what must match for last.pt to be this run's (the data, the model, the recipe; not the
        length of the run, so --steps can grow); a mismatch is a CLIError naming each differing key."""
        self.identity = identity
        if not (self.resume and self.checkpoint.is_file()):
            return None
        # weights_only: a last.pt is tensors and plain values, and one crafted by someone else
        # must not run code on resume (a full unpickle would)
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, empty, text, or holding classes that are not plain data
            raise CLIError(
                f"cannot resume from {self.checkpoint} ({error_summary(e)}): use another --out, "
                "or --no-resume to start over"
            ) from None
        if not isinstance(state, dict) or "identity" not in state:
            raise CLIError(
                f"{self.checkpoint} records no run identity (an older train.py wrote it): "
                "use another --out, or --no-resume to start over"
            )
        saved = state["identity"]
        differ = sorted(
            k for k in saved.keys() | identity.keys() if saved.get(k) != identity.get(k)
        )
        if differ:
            changes = "; ".join(
                f"{k}: {saved.get(k)!r} there, {identity.get(k)!r} now" for k in differ
            )
            if not self.force:
                raise CLIError(
                    f"{self.checkpoint} belongs to another run ({changes}): use another --out, "
                    "--no-resume to start over, or --force-resume if only the data's location changed"
                )
            # the user vouches that it is the same run (e.g. the data folder moved)
            print(
                f"note: --force-resume: resuming {self.checkpoint} although {changes}",
                file=sys.stderr,
            )
        for name, obj in stateful.items():
            saved_as = next(
                (key for key in (name, *RENAMED_STATES.get(name, ())) if key in state), name
            )
            # generators keep their state apart from state_dict
            if isinstance(obj, torch.Generator):
                obj.set_state(state[saved_as])
            else:
                obj.load_state_dict(state[saved_as])
        self.resumed = True
        return state

    def start(self, step: int, log_fields: Sequence[str], command: str, device: torch.device):
        """Begin this session at `step`: record it in OUT/run.json and open OUT/log.csv
        (open_log). Starting over also deletes an earlier run's last.pt, so that a crash before
        the first checkpoint cannot resume the old run under the new log."""
        self.step = step
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            record = {"identity": self.identity, "sessions": []}
            if self.resumed:
                with contextlib.suppress(OSError, ValueError):
                    record["sessions"] = json.loads((self.out / "run.json").read_text())["sessions"]
            else:
                self.checkpoint.unlink(missing_ok=True)
            record["sessions"].append(
                {
                    "command": command,
                    "commit": git_commit(),
                    "hardware": describe_hardware(device),
                    "from_step": step,
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
            save_json(self.out / "run.json", record)
        return self.open_log(log_fields)

    def open_log(self, fields: Sequence[str], name: str = "log.csv"):
        """A csv.writer appending to OUT/NAME (None off the main rank), after the header and the
        rows up to the step this session starts from; rows an interrupted session wrote past its
        checkpoint, and all rows when starting over, are dropped."""
        if not self.main:
            return None
        path, kept = self.out / name, []
        if self.resumed and path.is_file():
            # the header (or an old header) is not a step: rewritten below
            with open(path, newline="") as f:
                kept = [
                    row
                    for row in csv.reader(f)
                    if row and row[0].isdigit() and int(row[0]) <= self.step
                ]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([list(fields), *kept])
        # line-buffered: tail -f works, a crash loses no row
        file = open(path, "a", newline="", buffering=1)
        self._files.append(file)
        return csv.writer(file)

    def checkpoint_due(self, step: int, total: int) -> bool:
        return step % self.ckpt_every == 0 or step == total

    def save(self, values: dict, **stateful) -> None:
        """Write OUT/last.pt atomically: `values` (the step and whatever else the loop resumes
        from), the state of each object in `stateful` under its name (what load() restores), and
        the identity."""
        if self.main:
            states = {
                name: obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
                for name, obj in stateful.items()
            }
            with atomic_path(self.checkpoint) as tmp:
                torch.save({**values, **states, "identity": self.identity}, tmp)

    def close(self) -> None:
        for file in self._files:
            file.close()
        self._files = []
