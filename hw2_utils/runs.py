"""One way to run a training run, shared by every train.py: the command-line vocabulary
(add_common_args, parse_with_presets) and the run folder (RunFolder).

A run folder OUT holds
    last.pt      the checkpoint to resume from, with the run's identity (what must match to resume)
    model.pt     the exported model, what the problem's infer.py reads (its format is the problem's)
    result.json  {"finished", "step", "total_steps", "seconds", "recipe", "hardware", "metrics",
                 "sessions"}: the resolved options, and for every session its command, commit,
                 hardware, first step and seconds
    log.csv      a header, then one row per step (or per logged step), first column the step
next to whatever else the problem writes (samples, snapshots). Re-running the same command
resumes from last.pt and trims the log to it, so a crash between checkpoints leaves no duplicated
row; --no-resume starts over, resetting the run's own files and touching nothing else in OUT.
--max-seconds S ends a session cleanly at a step boundary (checkpoint, export, result.json with
"finished": false, exit 0) before the next step would pass S; the same command goes on from there.
One process at a time trains in OUT: a second one on the same folder is refused (OUT/.lock).

What belongs here: what every train.py does the same way. Not here: what one problem trains.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from hw2_utils.cli import (
    CLIError,
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
# The clock of --max-seconds (a module attribute so that a test can drive it step by step).
clock = time.monotonic


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    data: tuple,
    out: tuple,
    presets: dict[str, dict],
    precision: str | None = "fp32",
    ckpt_every: int = 1000,
    image_size: tuple | None = None,
    limit: str | None = None,
    grad_clip: float | None = None,
) -> None:
    """Add the options every train.py spells the same way: --data --out --preset --device --seed
    --ckpt-every --max-seconds --compact-checkpoint --no-resume --force-resume, and where the
    script has them --precision --image-size --limit --grad-clip (None: the script has no such
    option).

    data, out, image_size: (default, help); default REQUIRED makes the option required.
    presets: the script's named recipes ({name: {dest: value}}, "shipped" among them), which
    parse_with_presets applies. limit: the help of --limit N. precision, ckpt_every, grad_clip:
    the default."""
    _add(parser, "data", data, str)
    _add(parser, "out", out, str)
    parser.add_argument(
        "--preset",
        choices=sorted(presets),
        help="a named recipe (PRESETS at the top of the train.py): its values replace the "
        "defaults, options given on the command line override them; 'shipped' remakes the "
        "shipped checkpoint",
    )
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
    parser.add_argument(
        "--max-seconds",
        type=positive_float,
        help="time budget of this session: before the next step would pass it, save "
        "OUT/last.pt, export OUT/model.pt, mark OUT/result.json unfinished and exit 0; the same "
        "command resumes (default: none)",
    )
    parser.add_argument(
        "--compact-checkpoint",
        action="store_true",
        help="store OUT/last.pt's floating-point tensors in bfloat16 (about half the size, e.g. to "
        "bring it back from a GPU call); resuming from it continues the run, not bit for bit",
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
    default, help_ = spec
    parser.add_argument(
        f"--{dest.replace('_', '-')}",
        required=default is REQUIRED,
        type=type_,
        help=help_,
        **({} if default is REQUIRED else {"default": default}),
    )


def parse_with_presets(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, presets: dict[str, dict]
) -> argparse.Namespace:
    """parser.parse_args(argv) with --preset NAME's values as the defaults: an option on the
    command line overrides its preset value, the preset overrides the parser's default."""
    args = parser.parse_args(argv)
    if args.preset is None:
        return args
    # again, from a namespace holding the preset's values: argparse fills in a default only where
    # the namespace has none yet (this also sees --preset under any spelling argparse accepts)
    return parser.parse_args(argv, argparse.Namespace(**presets[args.preset]))


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


class _SavedState(dict):
    """A loaded last.pt: an entry the run needs but the file lacks (edited by hand, or written by
    a train.py that saved less) is a CLIError naming the file, not a KeyError traceback."""

    def __init__(self, state: dict, path: Path):
        super().__init__(state)
        self.path = path

    def __missing__(self, key):
        raise CLIError(
            f"cannot resume from {self.path}: it lacks {key!r} (a damaged or foreign file): "
            "use another --out, or --no-resume to start over"
        )


class RunFolder:
    """OUT as one training run (module docstring), used top to bottom in a train.py main:

        run = RunFolder.from_args(args, main=info.is_main)
        ...                                          # build the model, optimizer, generators
        state = run.load(identity, model=model, optimizer=opt)  # None, or last.pt's once its identity matches
        step = state["step"] if state else 0
        log = run.start(step, total, LOG_FIELDS, command_line("pN_x.train", argv), device)
        while step < total and not run.stopping:
            ...; step += 1
            if log:
                log.writerow([step, ...])
            if run.checkpoint_due(step, total):      # also when --max-seconds is nearly spent
                run.save({"step": step}, model=model, optimizer=opt)
                ...                                  # export run.model (the main rank)
        run.finish(step, metrics)

    Every method may run on every DDP rank; only the main rank writes."""

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        ckpt_every: int,
        resume: bool = True,
        main: bool = True,
        force: bool = False,
        max_seconds: float | None = None,
        compact: bool = False,
        recipe: dict | None = None,
    ):
        self.out = check_output_path(out, folder=True)  # a bad --out fails before any slow work
        self.checkpoint, self.model = self.out / "last.pt", self.out / "model.pt"
        self.ckpt_every, self.resume, self.main, self.force = ckpt_every, resume, main, force
        self.max_seconds, self.compact, self.recipe = max_seconds, compact, recipe or {}
        self.identity: dict = {}
        self.resumed, self.step, self.total, self._files, self._sessions = False, 0, 0, [], []
        self.stopping, self.hardware, self._lock = False, "", None
        self.started = self._mark = clock()
        if self.out.is_dir():  # a second trainer on this folder stops here, before its slow setup
            self._hold_lock()

    @classmethod
    def from_args(cls, args, default_out: str | None = None, main: bool = True) -> "RunFolder":
        """The run folder add_common_args' options name: --out (else `default_out`), --ckpt-every,
        --max-seconds, --compact-checkpoint, --no-resume and --force-resume; every option is
        the recipe result.json records."""
        if not (args.out or default_out):
            raise CLIError("--out is required")
        return cls(
            args.out or default_out,
            ckpt_every=args.ckpt_every,
            resume=not args.no_resume,
            main=main,
            force=args.force_resume,
            max_seconds=args.max_seconds,
            compact=args.compact_checkpoint,
            recipe=json.loads(json.dumps(vars(args), default=str)),
        )

    def _hold_lock(self) -> None:
        """OUT/.lock, held (an fcntl record lock, which the system drops when the process ends)
        for the rest of the run and naming the process that holds it."""
        if self._lock is not None or not self.main:
            return
        file = open(self.out / ".lock", "a+")
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise CLIError(
                f"{self.out} is in use by another training run (pid {holder}): wait for it to "
                "end, or use another --out"
            ) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._lock = file

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
        state = _SavedState(state, self.checkpoint)
        # a compact last.pt's bfloat16 tensors are cast back by each load_state_dict / copy
        for name, obj in stateful.items():
            try:
                # generators keep their state apart from state_dict
                if isinstance(obj, torch.Generator):
                    obj.set_state(state[name])
                else:
                    obj.load_state_dict(state[name])
            except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
                # the run's identity, but an entry missing or of another shape (edited by hand,
                # or written by a train.py whose model has since changed)
                raise CLIError(
                    f"cannot resume from {self.checkpoint}: its {name!r} state does not fit this "
                    f"run ({error_summary(e, 120)}): use another --out, or --no-resume to start over"
                ) from None
        self.resumed = True
        return state

    def start(
        self, step: int, total: int, log_fields: Sequence[str], command: str, device: torch.device
    ):
        """Begin this session at `step` of `total`: record it in OUT/result.json and open
        OUT/log.csv (open_log). Starting over also deletes an earlier run's last.pt, so that a
        crash before the first checkpoint cannot resume the old run under the new log."""
        self.step, self.total, self.hardware = step, total, describe_hardware(device)
        # the budget counts from __init__ (setup is part of the session), but the time of a
        # step is measured from here: the first step's projection must not include the setup
        self._mark, self._due_step = clock(), step
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._hold_lock()
            if self.resumed:
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    self._sessions = json.loads((self.out / "result.json").read_text())["sessions"]
            else:
                self.checkpoint.unlink(missing_ok=True)
            self._sessions.append(
                {
                    "command": command,
                    "commit": git_commit(),
                    "hardware": self.hardware,
                    "from_step": step,
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "seconds": 0.0,
                }
            )
            self._write_result(step, {})
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

    def checkpoint_due(self, step: int, total: int, since: int | None = None) -> bool:
        """Whether last.pt is due after `step`: a multiple of --ckpt-every was reached since the
        step before (or since step `since`, for a loop that checks only at epoch ends), `step`
        is the last one, or the next step would pass --max-seconds, judged by the time since
        the last check. In that last case self.stopping is set (on every DDP rank alike): the
        loop saves, exports and ends, and finish() marks the run unfinished."""
        now = clock()
        step_seconds, self._mark, self._due_step = now - self._mark, now, step
        if self.max_seconds is not None and step < total:
            self.stopping = _on_any_rank(now - self.started + step_seconds > self.max_seconds)
        since = step - 1 if since is None else since
        return step // self.ckpt_every > since // self.ckpt_every or step == total or self.stopping

    def save(self, values: dict, **stateful) -> None:
        """Write OUT/last.pt atomically: `values` (the step and whatever else the loop resumes
        from), the state of each object in `stateful` under its name (what load() restores), and
        the identity; with --compact-checkpoint every floating-point tensor in bfloat16."""
        if self.main:
            states = {
                name: obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
                for name, obj in stateful.items()
            }
            state = {**values, **states, "identity": self.identity}
            with atomic_path(self.checkpoint) as tmp:
                torch.save(_bfloat16(state) if self.compact else state, tmp)
            # a session killed after this (a GPU call's deadline) still says how far it got
            self._write_result(self._due_step, {}, finished=False)

    def finish(self, step: int, metrics: dict | None = None) -> dict:
        """End this session at `step`: close the logs, write OUT/result.json (finished once
        `step` reached the total; `metrics`: the problem's final numbers) and let OUT go."""
        self.close()
        record = self._write_result(step, metrics or {})
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        return record

    def _write_result(self, step: int, metrics: dict, finished: bool | None = None) -> dict:
        if self._sessions:
            self._sessions[-1]["seconds"] = round(clock() - self.started, 1)
        record = {
            "finished": step >= self.total if finished is None else finished,
            "step": step,
            "total_steps": self.total,
            "seconds": round(sum(s.get("seconds", 0.0) for s in self._sessions), 1),
            "recipe": self.recipe,
            "hardware": self.hardware,
            "metrics": metrics,
            "sessions": self._sessions,
        }
        if self.main:
            save_json(self.out / "result.json", record)
        return record

    def close(self) -> None:
        for file in self._files:
            file.close()
        self._files = []


def save_selection(
    out: Path, rows: int, seconds: float, recipe: dict, metrics: dict, command: str, device
) -> dict:
    """OUT/result.json of a command that chooses among runs (P5's sweep, P4's snapshots) instead
    of training one: the run folder's schema, finished, one step per row compared."""
    record = {
        "finished": True,
        "step": rows,
        "total_steps": rows,
        "seconds": round(seconds, 1),
        "recipe": recipe,
        "hardware": describe_hardware(device),
        "command": command,
        "metrics": metrics,
    }
    save_json(out / "result.json", record)
    return record


def _on_any_rank(flag: bool) -> bool:
    """`flag` where any DDP rank raised it (every rank must stop at the same step), else `flag`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    raised = torch.tensor(float(flag), device=device)
    dist.all_reduce(raised, op=dist.ReduceOp.MAX)
    return bool(raised.item())


def _bfloat16(value):
    """`value` with every float32/float64 tensor in it (through dicts, lists, tuples) as bfloat16,
    but a "step" or "lr" entry."""
    if isinstance(value, torch.Tensor):
        return value.bfloat16() if value.dtype in (torch.float32, torch.float64) else value
    if isinstance(value, dict):  # an optimizer's step counts and learning rates stay exact
        return {k: v if k in ("step", "lr") else _bfloat16(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_bfloat16(v) for v in value)
    return value
