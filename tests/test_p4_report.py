"""p4_gan/report.py: without inputs every part names the command that produces it and
shows no number; with them, the numbers are the files' own."""
from __future__ import annotations

import json
import re

from p4_gan.report import section


def test_empty_runs_dir_names_commands_and_invents_no_numbers(tmp_path):
    text = section(tmp_path)
    assert text.count("not produced yet") == 11  # 2 evals, 2 x 3 figures, smoke, real faces, cost
    for command in ("bench/p4_gan.py eval", "p4_gan/figures.py", "bench/p4_gan.py smoke", "bench/p4_gan.py cost"):
        assert command in text
    assert not re.search(r"\|\s*\d", text)  # no table of values


def test_measured_values_come_from_the_json_files(tmp_path):
    d = tmp_path / "p4"
    d.mkdir()
    for model, fid, rate in (("dcgan", 31.234, 0.871), ("improved", 17.5, 0.962)):
        (d / f"eval_{model}.json").write_text(json.dumps(
            {"command": f"python bench/p4_gan.py eval --images out_{model}", "images": "x", "face_rate": rate,
             "one_face": int(rate * 1000), "total": 1000, "ref": "val", "fid": fid, "hardware": "GPU-X"}))
    text = section(tmp_path)
    assert "| (A) DCGAN | 31.23 | 87.1% | 1000 |" in text
    assert "| (B) improved GAN | 17.50 | 96.2% | 1000 |" in text
    assert "FID of (B) 17.50 against (A) 31.23: lower" in text
    assert "on GPU-X" in text and text.count("not produced yet") == 9
