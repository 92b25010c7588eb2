"""report/build.py: every problem gets a section in order, numbers come only from run
outputs, missing inputs name their command, and the PDF opens with the same headings."""

import json

import pypdf
from PIL import Image

from report.build import PROBLEMS, build


def _runs_with_p1_outputs(tmp_path):
    runs = tmp_path / "runs"
    (runs / "p1").mkdir(parents=True)
    for name in ("grid_mnistm", "reverse_mnistm"):
        Image.new("RGB", (60, 30), (200, 10, 10)).save(runs / "p1" / f"{name}.png")
    record = {
        "per_digit": 50,
        "sampler": "ddim",
        "steps": 50,
        "checkpoint_step": 1234,
        "hardware": "test-cpu",
        "usps_grader_val_acc": 0.961,
        "results": [
            {"guidance": 2.0, "mnistm_acc": 0.9876, "second_domain_acc": 0.9512, "seconds": 321.0}
        ],
    }
    (runs / "p1" / "p1_bench.json").write_text(json.dumps(record))
    return runs


def test_report_structure_numbers_and_pdf(tmp_path, monkeypatch):
    from p6_classification import report as p6_report

    # only P1's figures below
    monkeypatch.setattr(p6_report, "CHECKPOINTS", tmp_path / "nothing_shipped")
    out = build(_runs_with_p1_outputs(tmp_path), tmp_path / "report")
    md = (out / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert len(headings) == len(PROBLEMS)
    assert headings[0].startswith("## P1") and headings[1].startswith("## P2")
    assert "| ddim | 50 | 2 | 0.9876 | 0.9512 | 321 |" in md  # the bench's numbers, verbatim
    assert "checkpoint step 1234" in md and "test-cpu" in md
    # Figures are copied next to the report and linked relatively.
    links = [line for line in md.splitlines() if line.startswith("![")]
    assert len(links) == 2 and all("](figures/" in link for link in links)
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "000_grid_mnistm.png",
        "001_reverse_mnistm.png",
    ]

    pdf = pypdf.PdfReader(out / "report.pdf")
    text = "".join(page.extract_text() for page in pdf.pages)
    assert len(pdf.pages) >= 2
    assert "P1: conditional DDPM" in text and "0.9876" in text


def test_missing_inputs_name_their_command_and_invent_nothing(tmp_path, monkeypatch):
    from p1_ddpm import report as p1_report

    monkeypatch.setattr(p1_report, "SHIPPED_RECORDS", tmp_path / "nothing_shipped")
    (tmp_path / "runs").mkdir()
    md = (build(tmp_path / "runs", tmp_path / "report") / "report.md").read_text()
    p1 = md.split("## P1", 1)[1].split("\n## ", 1)[0]
    assert "python -m p1_ddpm.report --out" in p1 and "python -m bench.p1_ddpm --work" in p1
    # no accuracy figure without a bench record
    assert "0." not in p1.split("Accuracy: not produced yet", 1)[1]
