"""Every numeric option of every command is checked while parsing (issue 32): the test walks
each entry point's parser by introspection, so a new option cannot skip it.

An option is numeric when its type is int or float, or its default is a number. It must use
a hw2_utils.cli.Number type, whose range is finite. The type itself is tested once: NaN,
infinity, a huge value and values below its range end a command with exit status 2, one
`error:` line, no traceback and nothing written in the working folder."""

from __future__ import annotations

import argparse
import importlib
import os

import pytest

from conftest import REPO
from hw2_utils import run_cli
from hw2_utils.cli import Number

FOLDERS = [
    "bench",
    "evaluation",
    "report",
    "stable_diffusion",
    *sorted(p.name for p in REPO.glob("p[1-8]_*")),
]


def _cli_modules() -> list[str]:
    names = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).glob("*.py")):
            text = path.read_text()
            if "ArgumentParser(" in text and "\ndef main(" in text:
                names.append(f"{folder}.{path.stem}")
    return names


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser main() builds: parsing is intercepted before any work."""

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    module = importlib.import_module(module_name)
    with pytest.raises(_Captured) as caught:
        module.main([])
    monkeypatch.undo()
    return caught.value.parser


def _numeric_options(parser, prefix=()):
    """(command prefix, option string, action) of every numeric option, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _numeric_options(sub, (*prefix, name))
            continue
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue  # positionals are paths here; hidden aliases share their option's type
        default = (
            action.default[0]
            if isinstance(action.default, list) and action.default
            else action.default
        )
        numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        if isinstance(action, argparse._StoreAction) and (
            action.type in (int, float, Number)
            or numeric_default
            or isinstance(action.type, Number)
        ):
            yield prefix, action.option_strings[-1], action


MODULES = _cli_modules()


def test_the_walk_finds_every_command():
    assert len(MODULES) >= 50
    assert {
        "p1_ddpm.train",
        "p5_dann.train",
        "p8_controlnet.txt2img",
        "bench.p4_gan",
        "report.build",
    } <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_every_numeric_option_has_a_checked_type(module_name, monkeypatch):
    parser = _parser_of(module_name, monkeypatch)
    untyped = [
        o for _, o, action in _numeric_options(parser) if not isinstance(action.type, Number)
    ]
    assert not untyped, f"{module_name}: numeric options without a hw2_utils Number type: {untyped}"


@pytest.mark.parametrize("value", ["nan", "inf", "1e30", "99999999999999999999999", "-1", "0"])
def test_the_checked_type_refuses_bad_numbers_in_one_line(value, tmp_path, monkeypatch, capsys):
    """The type, once, through a real command: NaN, infinity, a huge value and values below its
    range end it with exit 2, one `error:` line, no traceback, nothing written."""
    module = importlib.import_module("p1_ddpm.train")  # --lr: a positive float
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main(["--lr", value, "--out", "run"]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert sum("error:" in line for line in err.splitlines()) == 1 and "Traceback" not in err
    assert "--lr" in err and not os.listdir(tmp_path)
