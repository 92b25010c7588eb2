"""p4_gan/report.py: without inputs every part names the command that produces it and
shows no number; with them, the numbers are the files' own."""

from __future__ import annotations

import csv
import json
import re

import pytest

from conftest import numbers, table_row, table_rows
from p4_gan.report import SHIPPED, section


def _section(runs):
    """The section with nothing shipped: only what `runs` holds."""
    return section(runs, shipped=runs / "nothing_shipped", session=runs / "no_session.json")


def test_empty_runs_dir_names_commands_and_invents_no_numbers(tmp_path):
    text = _section(tmp_path)
    for command in (
        "python -m bench.p4_gan final",
        "python -m p4_gan.report",
        "python -m p4_gan.train",
        "python -m bench.p4_gan cost",
        "python -m bench.p4_gan truncation",
    ):
        assert command in text
    assert not re.search(r"\|\s*\d", text)  # no table of values


def test_measured_values_come_from_the_json_file(tmp_path):
    d = tmp_path / "p4"
    d.mkdir()
    models = {
        model: {
            "steps": 5000,
            "epochs": 40.0,
            "train_seconds": 7200.0,
            "command": f"python -m p4_gan.train --model {model}",
            "best_step": 4000,
            "best_epoch": 32,
            "best_train_fid": best,
            "fid": fid,
            "feature_spread": spread,
            "face_rate": rate,
            "one_face": int(rate * 1000),
            "total": 1000,
        }
        for model, best, fid, spread, rate in (
            ("dcgan", 40.1, 31.234, 0.71, 0.871),
            ("improved", 30.2, 24.5, 0.93, 0.962),
        )
    }
    (d / "final.json").write_text(
        json.dumps(
            {
                "command": "python -m bench.p4_gan final --runs X",
                "hardware": "CPU-X",
                "n": 1000,
                "seed": 2022,
                "reference": "2000 val faces",
                "models": models,
                "real_train": {
                    "fid": 17.25,
                    "feature_spread": 1.01,
                    "face_rate": 0.94,
                    "one_face": 940,
                    "total": 1000,
                },
            }
        )
    )
    text = _section(tmp_path)
    for name, model in (("(A) DCGAN", models["dcgan"]), ("(B) improved GAN", models["improved"])):
        row = table_row(text, name)
        assert numbers(row["trained"]) == [
            model["steps"],
            model["epochs"],
            model["train_seconds"] / 3600,
        ]
        assert numbers(row["chosen checkpoint"]) == [model["best_epoch"], model["best_train_fid"]]
        assert numbers(row["FID vs val"]) == [round(model["fid"], 2)]
        assert numbers(row["face rate"]) == pytest.approx([model["face_rate"] * 100], abs=0.05)
        assert numbers(row["feature spread"]) == [model["feature_spread"]]
    real = json.loads((d / "final.json").read_text())["real_train"]
    floor = next(row for row in table_rows(text) if "real training faces" in row["model"])
    assert [
        numbers(floor[c])[0] for c in ("FID vs val", "face rate", "feature spread")
    ] == pytest.approx([real["fid"], real["face_rate"] * 100, real["feature_spread"]], abs=0.005)
    assert "CPU-X" in text and "`python -m p4_gan.train --model improved`" in text


def test_a_fresh_clone_reports_the_shipped_record_and_logs(tmp_path):
    """With no run folders, the FID table and the D/G lessons come from p4_gan/checkpoints/."""
    shipped = json.loads((SHIPPED / "p4_bench_final.json").read_text())
    text = section(tmp_path)
    assert (
        table_row(text, "(B) improved GAN")["FID vs val"]
        == f"{shipped['models']['improved']['fid']:.2f}"
    )
    # each logged FID, from the shipped log, in (B)'s line of the lessons
    with open(SHIPPED / "improved_fid_train_faces.csv", newline="") as f:
        logged = [float(r["fid"]) for r in csv.DictReader(f)]
    expected = [round(f) for f in logged]
    shown = [numbers(line) for line in text.splitlines() if line.startswith("- (B) improved GAN")]
    assert any([n for n in ns if n in expected] == expected for ns in shown)


def test_truncation_table_shows_each_rows_numbers_and_the_choice(tmp_path):
    d = tmp_path / "p4"
    d.mkdir()
    rows = [
        {"truncation": t, "train_fid": fid, "feature_spread": sp, "face_rate": rate}
        for t, fid, sp, rate in (
            (None, 60.1234, 0.81, 0.93),
            (1.0, 55.5, 0.7, 0.961),
            (0.5, 70.25, 0.5, 0.99),
        )
    ]
    record = {
        "command": "python -m bench.p4_gan truncation G",
        "hardware": "CPU-X",
        "n": 1000,
        "seed": 2022,
    }
    record |= {"generator": "G", "fid_ref_n": 2000, "rows": rows, "chosen": 1.0}
    (d / "truncation.json").write_text(json.dumps(record))
    text = _section(tmp_path)
    for row in rows:
        cells = table_row(
            text, "none" if row["truncation"] is None else f"{row['truncation']:g}", column="T"
        )
        assert numbers(cells["train-face FID"]) == [round(row["train_fid"], 2)]
        assert numbers(cells["face rate"]) == pytest.approx([100 * row["face_rate"]], abs=0.05)
        assert numbers(cells["feature spread"]) == [row["feature_spread"]]
        assert (cells[""] == "**chosen**") == (row["truncation"] == record["chosen"])
    assert "CPU-X" in text and "`python -m bench.p4_gan truncation G`" in text


def test_networks_table_is_each_runs_logged_fid_by_epoch(tmp_path):
    from p4_gan import report

    d = tmp_path / "p4"
    curves = {"improved_cpu": [(5, 362.1054), (10, 145.5378)], "resnet32_cpu": [(5, 349.3214)]}
    (d / "improved_cpu").mkdir(parents=True)
    (d / "improved_cpu" / "fid.csv").write_text(
        "step,epoch,fid\n" + "".join(f"{e * 125},{e},{f}\n" for e, f in curves["improved_cpu"])
    )
    text = _section(tmp_path)
    networks = text.split("### Networks at equal steps")[1].split("###")[0]
    assert report.NETWORK_RUNS["resnet32_cpu"][1] in networks and "|" not in networks

    (d / "resnet32_cpu").mkdir()
    (d / "resnet32_cpu" / "fid.csv").write_text("step,epoch,fid\n625,5,349.3214\n")
    text = _section(tmp_path)
    dcgan, resnet = (title for title, _ in report.NETWORK_RUNS.values())
    assert numbers(table_row(text, "5", "epoch")[dcgan]) == [362.1]
    assert numbers(table_row(text, "5", "epoch")[resnet]) == [349.3]
    assert table_row(text, "10", "epoch")[resnet] == "–"  # not logged: no number


def test_figures_come_from_the_shipped_generator_and_logs(tmp_path):
    """python -m p4_gan.report: run.sh's first 32 faces as a 4x8 grid, both networks printed,
    and one curves figure per shipped log, which the section then links."""
    from PIL import Image

    from p4_gan import report

    written = report.make_figures(tmp_path / "p4", "cpu")
    assert all(p.is_file() for p in written)
    for figure in ("first32.png", "first32_dcgan.png"):  # (B) and (A)
        assert Image.open(tmp_path / "p4" / figure).size == (8 * 66 + 2, 4 * 66 + 2)
    assert {p.parent.name for p in written if p.name == "curves.png"} == set(report.CURVES)
    text = section(tmp_path)
    assert all(f"]({p.as_posix()})" in text for p in written if p.suffix == ".png")
