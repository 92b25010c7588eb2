"""p1_ddpm/report.py: the fresh-seed and speed tables show the records' numbers, and a column
no record fills is not shown."""

from __future__ import annotations

import json

import pytest
from conftest import numbers, table_row

from p1_ddpm import report

FRESH = {
    "seed": 7,
    "chosen_on_seed": 2024,
    "commands": ["python -m p1_ddpm.infer OUT --seed 7", "python -m evaluation.digit_accuracy"],
    "made_by": "python -m p1_ddpm.report --out X --fresh-seed 7",
    "hardware": "CPU-X",
    "mnistm_acc": 0.982,
    "mnistm_correct": 491,
    "mnistm_total": 500,
    "usps_acc": 0.994,
    "usps_correct": 497,
    "usps_total": 500,
    "seconds": 101.2,
}


def _speed(first_call: bool) -> dict:
    calls = [
        {"dtype": "float32", "channels_last": False, "mode": "no_grad", "s_per_unet_call": 7.1},
        {"dtype": "float32", "channels_last": True, "mode": "compile", "s_per_unet_call": 3.8},
    ]
    if first_call:
        calls[1]["first_call_s"] = 41.25
    loops = {"ddim": {"ours_s_per_step": 7.0, "diffusers_s_per_step": 7.2, "ratio": 0.972}}
    return {"batch": 500, "hardware": "CPU-X", "command": "c", "loops": loops, "unet_calls": calls}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SHIPPED_RECORDS", tmp_path / "nothing_shipped")
    monkeypatch.setattr(report, "GPU_SESSION", tmp_path / "nothing_shipped" / "gpu.json")
    (tmp_path / "p1").mkdir()
    return tmp_path


def test_fresh_seed_row_is_the_records(runs):
    (runs / "p1" / "p1_fresh_seed.json").write_text(json.dumps(FRESH))
    row = table_row(report.section(runs), "7", column="seed")
    assert numbers(row["MNIST-M acc (correct/total)"]) == [0.982, 491, 500]
    assert numbers(row["USPS acc (correct/total)"]) == [0.994, 497, 500]
    assert numbers(row["seconds to generate"]) == [101]


@pytest.mark.parametrize("first_call", [False, True])
def test_compile_column_only_when_a_record_has_it(runs, first_call):
    (runs / "p1" / "p1_speed.json").write_text(json.dumps(_speed(first_call)))
    text = report.section(runs)
    row = table_row(text, "compile", column="mode")
    assert numbers(row["s per UNet call"]) == [3.8]
    assert ("first call (compiles), s" in row) == first_call
    if first_call:
        assert numbers(row["first call (compiles), s"]) == [41.2]  # one decimal
