"""Every documented command works as written: each `--flag` that README.md or CONTRIBUTING.md
passes to a `python -m MODULE [SUBCOMMAND]` is an option that command's --help lists (a renamed
flag, such as --model becoming --pretrained, fails here instead of on a user's machine)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO

# this repository's modules (not the documents' generic `python -m package.module`)
MODULE = r"python3? -m ((?:bench|evaluation|report|stable_diffusion|p\d_[a-z_]+)\.[a-z0-9_]+)"
# commands whose first argument picks a sub-command with options of its own
SUBCOMMANDS = {"p8_controlnet.infer", "bench.p4_gan", "bench.p2_ddim", "bench.gpu_call"}

HELP_OF_EACH = """
import contextlib, io, json, runpy, sys
sys.path.insert(0, ".")
texts = {}
for module, sub in json.loads(sys.argv[1]):
    out, sys.argv = io.StringIO(), [module, *([sub] if sub else []), "--help"]
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(out):
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    texts[f"{module} {sub or ''}"] = out.getvalue()
print(json.dumps(texts))
"""


def documented_commands() -> list[tuple[str, str | None, list[str]]]:
    """(module, sub-command or None, the --flags it is given) for each documented command."""
    commands = []
    for doc in ("README.md", "CONTRIBUTING.md"):
        text = (REPO / doc).read_text().replace("\\\n", " ")  # continued shell lines
        for line in text.splitlines():
            for m in re.finditer(MODULE + r"([^`#|]*)", line):
                module, rest = m.group(1), m.group(2).split()
                sub = rest[0] if module in SUBCOMMANDS and rest and rest[0][0] != "-" else None
                flags = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", " ".join(rest))
                commands.append((module, sub, flags))
    return commands


def test_every_documented_flag_is_an_option_of_its_command():
    commands = documented_commands()
    assert len(commands) >= 30  # the pattern still finds the documents' commands
    keys = sorted({(module, sub) for module, sub, _ in commands}, key=str)
    r = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", HELP_OF_EACH, json.dumps(keys)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    helps = json.loads(r.stdout.strip().splitlines()[-1])
    unknown = {
        f"{module} {sub or ''}".strip(): missing
        for module, sub, flags in commands
        if (missing := [f for f in flags if f not in helps[f"{module} {sub or ''}"]])
    }
    assert unknown == {}
