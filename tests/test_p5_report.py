"""P5 report section and t-SNE figures: numbers come only from the bench JSON, figures
from analysis.py, and a missing input names the command that makes it."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from conftest import require_shared
from p5_dann import analysis, report
from p5_dann.model import DANN


def _bench_record():
    row = {"what": "DANN", "args": ["--mode", "dann"], "seconds": 123.4,
           "selected": {"epoch": 7, "source_val_acc": 0.9123, "target_val_acc": 0.9031, "target_val_acc_adabn": 0.9456},
           "final": {"epoch": 20, "source_val_acc": 0.9, "target_val_acc": 0.8987}}
    return {"command": "python -m bench.p5_dann --ship", "hardware": "x86_64 CPU, 2 torch thread(s)",
            "source": "mnistm", "target": "usps", "epochs": 20, "rows": {"dann": row},
            "inference": {"row": "dann", "images": 2007, "accuracy": 0.9031, "seconds": 1.5}}


def test_section_reads_every_number_from_the_bench_json(tmp_path):
    (tmp_path / "p5").mkdir()
    (tmp_path / "p5" / "p5_bench.json").write_text(json.dumps(_bench_record()))
    text = report.section(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| dann |"))
    assert "| 0.9031 (epoch 7) | 0.9456 | 0.8987 | 0.9123 | 123 s |" in row
    assert "python -m bench.p5_dann --ship" in text and "2007 val images: CSV accuracy 0.9031" in text
    assert "python -m p5_dann.analysis" in text  # no figures yet: the command that makes them


def test_section_without_any_bench_output_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SHIPPED_BENCH", tmp_path / "absent.json")
    text = report.section(tmp_path)
    assert "Run `python -m bench.p5_dann" in text and "| dann |" not in text


def test_tsne_writes_a_class_and_a_domain_figure(tmp_path, monkeypatch):
    require_shared("hw2_data", "digits", "usps")
    torch.manual_seed(0)
    model = DANN().eval()
    monkeypatch.setattr(analysis, "POINTS_PER_DOMAIN", 60)  # keep t-SNE to a second or two
    paths = analysis.tsne_plots(model, "dann", str(require_shared("hw2_data", "digits")), "mnistm", "usps",
                                tmp_path / "p5", torch.device("cpu"))
    assert [p.name for p in paths] == ["tsne_usps_dann_class.png", "tsne_usps_dann_domain.png"]
    assert all(Image.open(p).size[0] > 300 for p in paths)
    assert "tsne_usps_dann_domain" in report.section(tmp_path)


def test_tsne_files_are_named_by_the_checkpoints_row():
    """The shipped model is the dann_fixmatch row: its t-SNE files say so, not just its mode."""
    shipped = torch.load(Path(report.__file__).parent / "checkpoints" / "mnistm_usps_dann.pt", weights_only=True)
    assert analysis.row_name(shipped) == "dann_fixmatch"
    assert analysis.row_name({"mode": "dann", "config": {"entropy_weight": 0.1, "consistency_weight": 0.0}}) == "dann_entropy"
    assert analysis.row_name({"mode": "source_only", "config": {"entropy_weight": 0.0}}) == "source_only"
