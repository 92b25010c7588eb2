"""report/build.py: the committed results document is what the records render today, it links
only files of the repository and no machine path, its PDF lays out every table without
splitting a word and has every glyph, the README's headline numbers are the records', and
`make report` on a clone runs no bench (its inputs are committed under the names the commands
write)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pypdf
import pytest
from conftest import REPO, numbers, table_row

from hw2_utils import CLIError
from report.build import (
    IMAGE,
    MARKDOWN,
    PROBLEMS,
    column_widths,
    missing_glyphs,
    render_markdown,
    render_pdf,
)

MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|usr|mnt)/")


def _record(path: str) -> dict:
    return json.loads((REPO / path).read_text())


def test_committed_results_document_is_current():
    """Stale means a record changed without `python -m report.build` (make report) being run."""
    assert render_markdown() == MARKDOWN.read_text(), "report/RESULTS.md is stale: run make report"


def test_results_document_has_every_problem_and_no_machine_path():
    text = MARKDOWN.read_text()
    starts = [text.index(f"\n## P{i}:") for i in range(1, len(PROBLEMS) + 1)]  # in order
    assert starts == sorted(starts)
    assert not MACHINE_PATH.findall(text), MACHINE_PATH.findall(text)[:5]
    for _, link in IMAGE.findall(text):
        target = (MARKDOWN.parent / link).resolve()
        assert target.is_file() and REPO in target.parents, link


def test_pdf_of_the_committed_document(tmp_path):
    """render_pdf refuses a table that cannot fit its longest word and a missing glyph, so a
    build that succeeds has neither; the PDF holds the numbers of the Markdown."""
    text = MARKDOWN.read_text()
    render_pdf(text, MARKDOWN.parent, tmp_path / "report.pdf")
    pdf = "".join(page.extract_text() for page in pypdf.PdfReader(tmp_path / "report.pdf").pages)
    shipped = _record("p5_dann/checkpoints/mnistm_usps_bench.json")["shipped"]
    assert f"{shipped['target_val_acc']:.4f}" in pdf
    assert "P4: GANs" in pdf and not MACHINE_PATH.findall(pdf)


def test_table_columns_hold_their_longest_word_or_the_table_is_refused(tmp_path):
    rows = [["row", "value"], ["`dann_fixmatch_lambda0.05`", "0.9228 (5) and more words here"]]
    widths = column_widths(rows, 300, 8, 8)
    from reportlab.pdfbase.pdfmetrics import stringWidth

    from report.build import _register_fonts

    _register_fonts()
    assert widths[0] >= stringWidth("dann_fixmatch_lambda0.05", "Mono", 8) + 8
    assert sum(widths) <= 300
    assert column_widths(rows, 100, 8, 8) is None  # the words alone are wider than 100 pt
    wide = "| " + " | ".join(["a_very_long_unbreakable_cell_value"] * 12) + " |"
    with pytest.raises(CLIError, match="wider than the page"):
        render_pdf(f"{wide}\n|{' --- |' * 12}\n{wide}\n", tmp_path, tmp_path / "wide.pdf")


def test_missing_glyphs_are_found():
    assert missing_glyphs("η ᾱ ² ± × − ‖ ₀ → ≈ ≥ µ ε") == set()
    assert missing_glyphs("a漢") == {"漢"}  # DejaVu has no CJK


def test_missing_inputs_name_their_command_and_invent_nothing(tmp_path, monkeypatch):
    from p1_ddpm import report as p1_report

    monkeypatch.setattr(p1_report, "SHIPPED_RECORDS", tmp_path / "nothing_shipped")
    monkeypatch.setattr(p1_report, "GPU_SESSION", tmp_path / "nothing_shipped" / "gpu.json")
    (tmp_path / "runs").mkdir()
    p1 = p1_report.section(tmp_path / "runs")
    assert "python -m p1_ddpm.report --out" in p1 and "python -m bench.p1_ddpm --work" in p1
    assert not re.findall(r"\d\.\d", p1.split("## P1", 1)[1].split("not produced yet", 1)[1])


def test_readme_headline_numbers_are_the_records():
    readme = (REPO / "README.md").read_text()

    def shown(record: str) -> list[float]:
        return numbers(table_row(readme, f"`{record}`", column="record")["result"])

    bench = _record("report/runs/p1/p1_bench.json")["results"][0]
    assert shown("report/runs/p1/p1_bench.json") == [
        round(bench["mnistm_acc"], 3),
        round(bench["second_domain_acc"], 3),
    ]
    fresh = _record("report/runs/p1/p1_fresh_seed.json")
    assert shown("report/runs/p1/p1_fresh_seed.json") == [
        round(fresh["mnistm_acc"], 3),
        round(fresh["usps_acc"], 3),
    ]
    gan = _record("p4_gan/checkpoints/p4_bench_final.json")["models"]["improved"]
    assert shown("p4_gan/checkpoints/p4_bench_final.json") == [
        round(gan["fid"], 2),
        round(100 * gan["face_rate"], 1),
    ]
    dann = _record("p5_dann/checkpoints/mnistm_usps_bench.json")["shipped"]
    assert shown("p5_dann/checkpoints/mnistm_usps_bench.json") == [round(dann["target_val_acc"], 4)]
    tta = _record("p6_classification/checkpoints/p6_bench.json")["tta"]
    assert shown("p6_classification/checkpoints/p6_bench.json") == [
        round(tta["test_acc"], 4),
        round(tta["also_test"]["test_acc"], 4),
    ]


def test_make_report_on_a_clone_runs_no_bench():
    """Every input `make report` would make exists under the name its command writes (the
    Makefile once waited for a t-SNE file the analysis never wrote, so it re-ran every time)."""
    dry = subprocess.run(
        ["make", "-n", "report", "PY=python"], cwd=REPO, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    benches = [line for line in dry.stdout.splitlines() if re.search(r"-m (bench|p\d_\w+)\.", line)]
    assert benches == []


def test_links_resolve_from_a_document_written_elsewhere(tmp_path):
    """A build into another folder links the same repository files, relative to that folder."""
    out = tmp_path / "not_yet" / "RESULTS.md"
    text = render_markdown(markdown_path=out)
    links = [link for _, link in IMAGE.findall(text)]
    assert links and all(Path(os.path.normpath(out.parent / link)).is_file() for link in links), (
        links
    )
    assert not MACHINE_PATH.findall(text)
