"""P6 records: the bench writes its throughput record with command and hardware, and the
report section shows recorded numbers verbatim, flags smoke runs, and names the command
for every missing input without inventing a number."""

from __future__ import annotations

import json
import re

import pytest

from bench import p6_classification as bench
from conftest import numbers, require_shared, table_row, table_rows
from p6_classification.report import SMOKE, section


def test_bench_throughput_record(tmp_path):
    data = require_shared("cifar10", "cifar10_slice.npz")
    argv = [
        "--data",
        str(data),
        "--work",
        str(tmp_path),
        "--parts",
        "throughput",
        "--throughput-width",
        "8",
        "--throughput-batch",
        "4",
        "--throughput-steps",
        "1",
        "--device",
        "cpu",
    ]
    bench.main(argv)
    record = json.loads((tmp_path / "bench.json").read_text())
    t = record["throughput"]
    assert [(r["dtype"], r["channels_last"]) for r in t["rows"]] == [
        ("float32", False),
        ("float32", True),
        ("bfloat16", False),
        ("bfloat16", True),
    ]
    # width 8: no twin
    assert all(
        r["ours_images_per_s"] > 0 and "torchvision_images_per_s" not in r for r in t["rows"]
    )
    assert (
        set(t["augmentation_us_per_image"]) == set(bench.PRESETS)
        and t["model_step_us_per_image"] > 0
    )
    assert (
        t["bench_command"] == "python -m bench.p6_classification " + " ".join(argv)
        and "CPU" in t["hardware"]
    )
    assert set(record) == {"throughput"}  # parts not run are not written


def test_torchvision_twin_has_our_parameter_count():
    from p6_classification.models import ResNet18

    count = [
        sum(p.numel() for p in m.parameters()) for m in (ResNet18(), bench.torchvision_resnet18())
    ]
    assert count[0] == count[1] == 11_173_962


def test_section_missing_inputs_name_commands_and_invent_nothing(tmp_path, monkeypatch):
    from p6_classification import report

    monkeypatch.setattr(report, "CHECKPOINTS", tmp_path / "nothing_shipped")
    text = section(tmp_path)
    for part in ("throughput", "full", "tta", "cam"):
        assert f"python -m bench.p6_classification --work {tmp_path}/p6 --parts {part}" in text
    assert f"{report.AUG_STUDY} --out {tmp_path}/p6/aug" in text  # the study trains: not a bench
    assert "python -m p6_classification.vit_finetune" in text
    assert not re.search(r"\d\.\d", text) and "%" not in text  # no accuracy without a record


def test_section_shows_recorded_numbers(tmp_path, monkeypatch):

    d = tmp_path / "p6"
    (d / "aug").mkdir(parents=True)
    run = {
        "command": "python -m p6_classification.train --data X",
        "hardware": "Test CPU",
        "world_size": 1,
        "arch": {"model": "resnet18", "stem": "cifar", "width": 64},
        "preset": "flip_crop_ls",
        "epochs": 18,
        "batch_size": 256,
        "precision": "torch.bfloat16",
        "train_images": 45000,
        "val_images": 5000,
        "test_images": 10000,
        "val_acc": 0.9412,
        "test_acc": 0.9387,
        "train_seconds": 9000.0,
        "also_test": {"data": "slice.npz", "test_images": 1017, "test_acc": 0.9351},
    }
    row = {
        "dtype": "float32",
        "channels_last": True,
        "ours_images_per_s": 12.34,
        "torchvision_images_per_s": 12.5,
        "ours_over_torchvision": 0.987,
    }
    bench_record = {
        "throughput": {
            "bench_command": f"{bench_cmd()} --parts throughput",
            "hardware": "Test CPU",
            "width": 64,
            "batch": 256,
            "steps": 5,
            "rows": [row],
            "cpu_has_bf16": False,
            "auto": {"dtype": "float32", "channels_last": True},
            "auto_is_fastest": True,
            "augmentation_us_per_image": {"flip": 88.0},
            "model_step_us_per_image": 81037.3,
        },
        "full": {**run, "bench_command": f"{bench_cmd()} --parts full --limit 300"},
        "tta": {
            "bench_command": f"{bench_cmd()} --parts tta",
            "hardware": "Test CPU",
            "val_images": 5000,
            "val_acc": {"none": 0.9231, "flip": 0.9254},
            "val_flip_fixes": 60,
            "val_flip_breaks": 48,
            "chosen": "flip",
            "test_images": 10000,
            "test_acc": 0.9253,
            "also_test": {"data": "slice.npz", "test_images": 1017, "test_acc": 0.941},
        },
    }
    (d / "bench.json").write_text(json.dumps(bench_record))
    (d / "aug" / "aug_study.json").write_text(
        json.dumps(
            {
                "command": "python -m p6_classification.aug_study --epochs 4",
                "hardware": "Test CPU",
                "arch": run["arch"],
                "epochs": 4,
                "train_images": 45000,
                "val_images": 5000,
                "test_images": 10000,
                "spread_preset": "flip_crop",
                "seed_runs": [
                    {"val_acc": 0.8, "test_acc": 0.79},
                    {"seed": 1, "val_acc": 0.81, "test_acc": 0.8},
                ],
                "spread": {"val_acc_spread": 0.01, "test_acc_spread": 0.01},
                "rows": [
                    {
                        "preset": "flip",
                        "val_acc": 0.5551,
                        "test_acc": 0.5432,
                        "train_seconds": 100.4,
                    },
                    {"preset": "flip_crop", "val_acc": 0.8, "test_acc": 0.79, "train_seconds": 101},
                ],
            }
        )
    )
    text = section(tmp_path)
    speed = table_row(text, row["dtype"])
    assert speed["memory format"] == "channels_last" and "on Test CPU" in text
    assert [
        numbers(speed[c])[0]
        for c in (
            "ours, images/s",
            "torchvision, images/s",
            "ours / torchvision, median of per-round ratios",
        )
    ] == pytest.approx(
        [row["ours_images_per_s"], row["torchvision_images_per_s"], row["ours_over_torchvision"]],
        abs=0.05,
    )
    full = table_row(text, f"{run['val_acc']:.4f}")
    assert numbers(full["test acc, CIFAR-10 (JPEG copy)"]) == [run["test_acc"], run["test_images"]]
    assert numbers(full["test acc, official pixels"]) == [
        run["also_test"]["test_acc"],
        run["also_test"]["test_images"],
    ]
    assert numbers(full["training time"]) == [run["train_seconds"] / 60]
    # the full record is a smoke run
    assert SMOKE in text.split("### ResNet-18 on the whole")[1].split("###")[0]
    assert SMOKE not in text.split("### Training throughput")[1].split("###")[0]
    tta = bench_record["tta"]
    flipped, plain = table_row(text, "flip (chosen)"), table_row(text, "none")
    assert [numbers(flipped["val acc"]), numbers(plain["val acc"])] == [[0.9254], [0.9231]]
    assert numbers(flipped["test acc, CIFAR-10 (JPEG copy)"]) == [tta["test_acc"], 10000]
    assert numbers(flipped["test acc, official pixels"]) == [0.941, 1017]
    assert (
        plain["test acc, official pixels"] == "not scored here"
    )  # the test sets see the choice only
    # 60 of 108 discordant images: scipy.stats.binomtest(60, 108).pvalue = 0.29
    assert re.search(r"p = 0\.29\b", text)
    study = json.loads((d / "aug" / "aug_study.json").read_text())
    flip, baseline = study["rows"]
    cells = table_row(text, "flip")
    assert [
        numbers(cells[c])[0]
        for c in ("val acc", "test acc", "test vs flip_crop", "train time")
        # train time in whole seconds; the accuracies exact to 4 places below
    ] == pytest.approx(
        [
            flip["val_acc"],
            flip["test_acc"],
            flip["test_acc"] - baseline["test_acc"],
            flip["train_seconds"],
        ],
        abs=0.5,
    )
    assert (
        cells["val acc"] == f"{flip['val_acc']:.4f}"
        and cells["test vs flip_crop"] == f"{flip['test_acc'] - 0.79:+.4f}"
    )
    for run in study["seed_runs"]:
        assert f"{run['test_acc']:.4f}" in text
    assert f"{study['spread']['test_acc_spread']:.4f}" in text


def bench_cmd() -> str:
    return "python -m bench.p6_classification"


def test_section_reads_the_shipped_records_when_the_runs_folder_lacks_them(tmp_path, monkeypatch):
    from p6_classification import report

    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    area = {
        "random": {"auc": 0.5, "auc_ci": 0.02},
        "CAM (ours)": {"auc": 0.3, "auc_ci": 0.02},
        "CAM (ours), another image's map": {"auc": 0.31, "auc_ci": 0.02},
    }
    (shipped / "deletion_resnet18.json").write_text(
        json.dumps(
            {
                "images": 500,
                "fractions": [i / 10 for i in range(11)],
                "command": "python -m p6_classification.cam --deletion 500",
                "deletion": area,
                "insertion": {k: {"auc": 1 - v["auc"], "auc_ci": 0.03} for k, v in area.items()},
                "paired_auc_gap": {
                    mode: {
                        "CAM (ours)": {
                            "random": [sign * 0.2, 0.05],
                            "CAM (ours), another image's map": [sign * 0.01, 0.02],
                        }
                    }
                    for mode, sign in (("deletion", -1), ("insertion", 1))
                },
            }
        )
    )
    (shipped / "cam_resnet18.png").write_bytes(b"png")
    monkeypatch.setattr(report, "CHECKPOINTS", shipped)
    text = section(tmp_path / "runs")
    # the page layout of the shipped figure is not in the runs folder: its command is named
    assert "python -m p6_classification.report --out" in text
    cam = table_row(text, "CAM (ours)", column="pixel order")
    assert numbers(cam["deletion area"]) == [
        area["CAM (ours)"]["auc"],
        area["CAM (ours)"]["auc_ci"],
    ]
    assert numbers(cam["insertion area"]) == [1 - area["CAM (ours)"]["auc"], 0.03]
    gaps = {r["baseline"]: r for r in table_rows(text) if r.get("map") == "CAM (ours)"}
    assert set(gaps) == {"random", "another image's map"}
    for baseline, (gap, ci) in (("random", (-0.2, 0.05)), ("another image's map", (-0.01, 0.02))):
        deletion, insertion = (
            gaps[baseline]["deletion (below 0: map better)"],
            gaps[baseline]["insertion (above 0: map better)"],
        )
        assert numbers(deletion) == [gap, ci] and numbers(insertion) == [-gap, ci]
        # ci: the half-width of a 95% interval
        verdict = "(map better)" if abs(gap) > ci else "(n.s.)"
        assert deletion.endswith(verdict) and insertion.endswith(verdict)
    # not shipped
    assert (
        "python -m p6_classification.aug_study --data ../shared/data/cifar10_full --epochs 30 "
        "--out " + str(tmp_path / "runs" / "p6") + "/aug" in text
    )


def test_page_figures_split_the_cam_rows_and_plot_only_cams_orders(tmp_path, monkeypatch):
    """The shipped CAM figure's ten rows become two columns of five; the deletion figure plots
    CAM's orders only (Grad-CAM's lie on them), so each legend entry is a visible line."""
    from PIL import Image

    from p6_classification import cam, report
    from p6_classification.infer import CHECKPOINTS
    from p6_classification.report import SHIPPED_RECORDS

    plotted = {}
    monkeypatch.setattr(cam, "curve_figure", lambda record, path: plotted.update(record))
    cams, _ = report.make_figures(tmp_path)
    tall = Image.open(CHECKPOINTS / SHIPPED_RECORDS["cam/cam_resnet18.png"])
    assert Image.open(cams).size == (2 * tall.width, tall.height // 2)
    shipped = json.loads((CHECKPOINTS / SHIPPED_RECORDS["cam/deletion_resnet18.json"]).read_text())
    for mode in ("deletion", "insertion"):
        assert set(plotted[mode]) == {k for k in shipped[mode] if "Grad-CAM" not in k}
        assert len(plotted[mode]) == 4
