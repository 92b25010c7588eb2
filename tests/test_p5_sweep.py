"""P5's sweep (p5_dann/sweep.py) and its measurement (bench/p5_dann.py): the sweep chooses the
row by SND among the rows that SND selected, reads no target label, and writes the choice's run
folder; the bench then reads target val once per row and its numbers agree with infer.py's."""

from __future__ import annotations

import json

import pytest

from conftest import small_digits
from p5_dann import sweep
from p5_dann.selection import best_epoch


def _row(select: str, snd: float) -> dict:
    return {"select": select, "selected": {"epoch": 1, "snd": snd, "source_val_acc": 0.5}}


def test_choose_takes_the_highest_snd_among_the_rows_snd_selected():
    rows = {
        "source_only": _row("snd", 6.1),
        "dann": _row("snd", 6.5),
        "dann_entropy": _row("snd", 6.3),
        "target_only": _row("source_val_acc", 9.9),  # an upper bound, never a candidate
    }
    assert sweep.choose(rows) == "dann"
    rows["dann_entropy"] = _row("snd", 6.5)
    assert sweep.choose(rows) == "dann_entropy"  # a tie goes to the later row
    assert sweep.choose({"target_only": rows["target_only"]}) is None


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("p5_sweep")
    root = small_digits(tmp / "digits", n=96, splits=("train", "val"))
    labels = root / "usps" / "val.csv"
    hidden = labels.rename(root / "usps_val.csv")  # the sweep may not read the target's labels
    out = tmp / "sweep"
    argv = ["--data", str(root), "--source", f"mnistm={root / 'mnistm'}", "--out", str(out)]
    argv += ["--rows", "source_only", "dann", "target_only"]
    result = sweep.main([*argv, "--epochs", "2", "--batch-size", "32", "--device", "cpu"])
    hidden.rename(labels)
    return root, out, result


def test_sweep_selects_each_rows_epoch_and_the_row_by_snd(swept):
    _, out, result = swept
    rows, chosen = result["metrics"]["rows"], result["metrics"]["chosen"]
    assert list(rows) == ["source_only", "dann", "target_only"]
    for row in rows.values():
        assert [h["epoch"] for h in row["history"]] == [1, 2]
        assert row["selected"] == best_epoch(row["history"], row["select"])
    assert rows["target_only"]["select"] == "source_val_acc"
    assert chosen == {"row": sweep.choose(rows), **rows[chosen["row"]]["selected"]}
    chosen_model = sweep.row_folder(out, "usps", chosen["row"]) / "model.pt"
    assert (out / "model.pt").read_bytes() == chosen_model.read_bytes()
    assert json.loads((out / "result.json").read_text()) == result and result["finished"]


def test_bench_scores_every_epoch_on_target_val_and_infer_agrees(swept, tmp_path):
    from bench import p5_dann as bench

    root, out, result = swept
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    record = bench.main(["--sweep", str(out), "--work", str(tmp_path)])
    chosen = result["metrics"]["chosen"]["row"]
    assert record["shipped"]["row"] == chosen and set(record["rows"]) == set(
        result["metrics"]["rows"]
    )
    for row in record["rows"].values():
        by = row["selected_by"]
        assert by[row["select"]]["epoch"] == row["selected"]["epoch"]
        oracle = max((by[c]["target_val_acc"] for c in ("snd", "dev", "source_val_acc") if c in by))
        assert by["oracle"]["target_val_acc"] >= oracle  # the oracle is the best epoch by val
        assert 0 <= row["target_val_acc_adabn"] <= 1
    # infer.py's CSV of the chosen model on the val images scores what the bench measured
    inference = record["inference"]
    assert inference["images"] == 96 and inference["row"] == chosen
    assert inference["accuracy"] == pytest.approx(record["shipped"]["target_val_acc"])
    assert json.loads((tmp_path / "p5_bench.json").read_text()) == record
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_time_budget_is_refused_before_any_row_trains(tmp_path):
    """Each row would get the whole budget and the choice would be among unfinished rows."""
    from hw2_utils import CLIError

    with pytest.raises(CLIError, match="without --max-seconds"):
        sweep.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--max-seconds", "60"])
    assert not (tmp_path / "out").exists()
