"""P5 report section and t-SNE figures: numbers come only from the bench JSON, figures
from analysis.py, and a missing input names the command that makes it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from conftest import require_shared, table_row
from p5_dann import analysis, report
from p5_dann.model import DANN


def _bench_record():
    dann = {
        "what": "DANN",
        "args": ["--mode", "dann"],
        "seconds": 123.4,
        "select": "snd",
        "history": [
            {"epoch": 1, "snd": 6.1, "dev": 0.5, "dev_ess": 0.0012, "source_val_acc": 0.81},
            {"epoch": 2, "snd": 6.3, "dev": 0.4, "dev_ess": 0.0034, "source_val_acc": 0.80},
        ],
        "selected_by": {
            "snd": {"epoch": 2, "score": 6.3, "target_val_acc": 0.9031},
            "dev": {"epoch": 2, "score": 0.4, "target_val_acc": 0.9031},
            "source_val_acc": {"epoch": 1, "score": 0.81, "target_val_acc": 0.8876},
            "oracle": {"epoch": 2, "target_val_acc": 0.9031},
        },
        "target_val_acc_adabn": 0.9456,
    }
    bound = {
        "what": "upper bound",
        "args": ["--mode", "target_only"],
        "seconds": 45.0,
        "select": "source_val_acc",
        "history": [{"epoch": 1, "source_val_acc": 0.95}],
        "selected_by": {
            "source_val_acc": {"epoch": 1, "score": 0.95, "target_val_acc": 0.9701},
            "oracle": {"epoch": 1, "target_val_acc": 0.9701},
        },
        "target_val_acc_adabn": 0.9688,
    }
    return {
        "command": "python -m bench.p5_dann --ship",
        "hardware": "x86_64 CPU, 2 torch thread(s)",
        "source": "mnistm",
        "target": "usps",
        "epochs": 20,
        "criterion": "snd",
        "rows": {"dann": dann, "target_only": bound},
        "shipped": {
            "row": "dann",
            "selected_by": "snd",
            "epoch": 2,
            "score": 6.3,
            "target_val_acc": 0.9031,
        },
        "inference": {"row": "dann", "images": 2007, "accuracy": 0.9031, "seconds": 1.5},
    }


def test_section_reads_every_number_from_the_bench_json(tmp_path):
    record = _bench_record()
    (tmp_path / "p5").mkdir()
    (tmp_path / "p5" / "p5_bench.json").write_text(json.dumps(record))
    text = report.section(tmp_path)
    by = record["rows"]["dann"]["selected_by"]
    row = table_row(text, "`dann` **shipped**")
    assert [
        row[c] for c in ("chosen by SND (used)", "by DEV", "by source val", "oracle (never used)")
    ] == [
        f"{by[k]['target_val_acc']:.4f} ({by[k]['epoch']})"
        for k in ("snd", "dev", "source_val_acc", "oracle")
    ]
    assert float(row["with AdaBN"]) == record["rows"]["dann"]["target_val_acc_adabn"]
    # at DEV's epoch
    assert float(row["DEV weights' ESS"]) == record["rows"]["dann"]["history"][1]["dev_ess"]
    bound = table_row(text, "`target_only`")
    assert bound["chosen by SND (used)"] == bound["by DEV"] == "–"
    assert bound["by source val"] == "0.9701 (1) held-out"
    assert record["command"] in text and f"{record['inference']['images']} val images" in text
    assert "python -m p5_dann.analysis" in text  # no figures yet: the command that makes them


def test_section_without_any_bench_output_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SHIPPED_BENCH", tmp_path / "absent.json")
    text = report.section(tmp_path)
    assert "Run `python -m bench.p5_dann" in text and "| `dann`" not in text


def test_tsne_writes_a_class_and_a_domain_figure(tmp_path, monkeypatch):
    require_shared("hw2_data", "digits", "usps")
    torch.manual_seed(0)
    model = DANN().eval()
    monkeypatch.setattr(analysis, "POINTS_PER_DOMAIN", 60)  # keep t-SNE to a second or two
    paths = analysis.tsne_plots(
        model,
        "dann",
        str(require_shared("hw2_data", "digits")),
        "mnistm",
        "usps",
        tmp_path / "p5",
        torch.device("cpu"),
    )
    assert [p.name for p in paths] == ["tsne_usps_dann_class.png", "tsne_usps_dann_domain.png"]
    assert all(Image.open(p).size[0] > 300 for p in paths)
    assert "tsne_usps_dann_domain" in report.section(tmp_path)


def test_tsne_files_are_named_by_the_checkpoints_row():
    """The shipped model's t-SNE files name the bench row it came from, not just its mode."""
    shipped = torch.load(
        Path(report.__file__).parent / "checkpoints" / "mnistm_usps_dann.pt", weights_only=True
    )
    assert (
        analysis.row_name(shipped) == json.loads(report.SHIPPED_BENCH.read_text())["shipped"]["row"]
    )
    assert (
        analysis.row_name(
            {"mode": "dann", "config": {"consistency_weight": 1.0, "lambda_max": 0.5}}
        )
        == "dann_fixmatch_lambda0.5"
    )
    assert (
        analysis.row_name(
            {"mode": "dann", "config": {"entropy_weight": 0.1, "consistency_weight": 0.0}}
        )
        == "dann_entropy"
    )
    assert (
        analysis.row_name({"mode": "source_only", "config": {"entropy_weight": 0.0}})
        == "source_only"
    )
