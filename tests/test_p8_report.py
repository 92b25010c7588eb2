"""P8 report section: numbers come only from p8_bench.json, figures only from files that
exist, and every missing input names the command that produces it."""

from __future__ import annotations

import json

import pytest

from conftest import numbers, table_row
from p8_controlnet.report import FIGURES, section

COMMANDS = {command for *_, command in FIGURES}  # a missing command is named once

BENCH = {
    "tiny_cpu": {
        "device": "cpu",
        "threads": 1,
        "size": 32,
        "steps": 20,
        "repeats": 3,
        "per_scheduler": {
            "ddim": {"cpu_s_per_step": 0.0401, "wall_s_per_step": 0.0404},
            "unipc": {"cpu_s_per_step": 0.0427, "wall_s_per_step": 0.1311},
        },
        "ddim_with_controlnet": {"cpu_s_per_step": 0.0606, "wall_s_per_step": 0.184},
    },
    "gpu_512": None,
    "command": "python -m bench.p8_controlnet",
    "environment": {"hardware": "x86_64 CPU, 1 thread(s)"},
}


def test_section_without_inputs_names_every_command(tmp_path):
    text = section(tmp_path)
    assert "python -m bench.p8_controlnet --json" in text
    assert text.count("not produced yet") == len(COMMANDS) + 1
    assert "![" not in text and "0.0" not in text  # no figure and no number without a file


def test_section_quotes_the_bench_and_links_existing_figures(tmp_path):
    d = tmp_path / "p8"
    (d / "controlnet").mkdir(parents=True)
    (d / "p8_bench.json").write_text(json.dumps(BENCH))
    (d / "controlnet" / "grid.png").write_bytes(b"png")
    text = section(tmp_path)
    tiny = BENCH["tiny_cpu"]
    for name, measured in (
        *tiny["per_scheduler"].items(),
        ("ddim + ControlNet", tiny["ddim_with_controlnet"]),
    ):
        row = table_row(text, name)
        # shown to 3 places
        assert [numbers(row["CPU s/step"])[0], numbers(row["wall s/step"])[0]] == pytest.approx(
            [measured["cpu_s_per_step"], measured["wall_s_per_step"]], abs=0.0005
        )
    assert "not measured" in text
    assert f"]({(d / 'controlnet' / 'grid.png').as_posix()})" in text
    assert text.count("not produced yet") == len(COMMANDS) - 1  # controlnet's figure exists


def test_section_quotes_each_runs_command_once(tmp_path):
    d = tmp_path / "p8" / "edit"
    d.mkdir(parents=True)
    for name in ("edit.png", "edit_scores.png"):
        (d / name).write_bytes(b"png")
    command = (
        "python -m p8_controlnet.edit --pretrained tiny/sd --clip tiny/clip --out outputs/p8/edit"
    )
    (d / "edit.json").write_text(json.dumps({"command": command}))
    text = section(tmp_path)
    assert text.count(f"`{command}`") == 1 and "stand-ins" in text
    assert text.index(command) < text.index("edit.png") < text.index("edit_scores.png")
