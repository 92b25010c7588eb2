"""p7_clip/report.py: without inputs every part names the command that produces it and shows
no number; with them, the numbers are the records' own."""

from __future__ import annotations

import json
import re

import pytest

from conftest import numbers, table_row
from p7_clip.report import section


def test_empty_runs_dir_names_commands_and_invents_no_numbers(tmp_path):
    text = section(tmp_path)
    assert text.count("not produced yet") == 6
    for command in (
        "-m p7_clip.similarity",
        "-m p7_clip.zeroshot",
        "-m p7_clip.retrieval",
        "-m p7_clip.maskclip",
        "-m p7_clip.robustness",
        "-m bench.p7_clip",
    ):
        assert f"python {command}" in text
    assert not re.search(r"\|\s*\d", text) and "%" not in text


def test_numbers_come_from_the_records(tmp_path):
    d = tmp_path / "p7"
    (d / "zeroshot").mkdir(parents=True)
    (d / "retrieval").mkdir()
    designs = {"a photo of a {}.": ["a photo of a {}."], "ensemble of 18 templates": ["x {}"] * 18}
    (d / "zeroshot" / "zeroshot.json").write_text(
        json.dumps(
            {
                "command": "python -m p7_clip.zeroshot --clip ViT-B-32=w",
                "hardware": "GPU-X",
                "images": 10000,
                "data": "c10",
                "designs": designs,
                "accuracy": {
                    "ViT-B-32": {"a photo of a {}.": 0.8812, "ensemble of 18 templates": 0.8991}
                },
                "confusion": {
                    "ViT-B-32": {
                        "design": "ensemble of 18 templates",
                        "tag": "ViT-B-32",
                        "matrix": [],
                    }
                },
            }
        )
    )
    (d / "retrieval" / "retrieval.json").write_text(
        json.dumps(
            {
                "command": "python -m p7_clip.retrieval",
                "hardware": "GPU-X",
                "images": 100,
                "captions": 500,
                "query": "q",
                "tags": {"RN50": "RN50"},
                "top": {},
                "recall": {
                    "RN50": {
                        "text_to_image": {"1": 0.3, "5": 0.55, "10": 0.7},
                        "image_to_text": {"1": 0.42, "5": 0.7, "10": 0.81},
                    }
                },
            }
        )
    )
    text = section(tmp_path)
    for design, accuracy in json.loads((d / "zeroshot" / "zeroshot.json").read_text())["accuracy"][
        "ViT-B-32"
    ].items():
        assert numbers(table_row(text, f"`{design}`")["ViT-B-32"]) == pytest.approx(
            [accuracy * 100], abs=0.005
        )
    # the quoted anchor only for models shown
    assert "ViT-B-32 89.8%" in text and "RN50 71.6%" not in text
    recall, row = (
        json.loads((d / "retrieval" / "retrieval.json").read_text())["recall"]["RN50"],
        table_row(text, "RN50"),
    )
    assert [
        numbers(row[f"{short} R@{k}"])[0] for short in ("T2I", "I2T") for k in (1, 5, 10)
    ] == pytest.approx(
        [
            recall[way][str(k)] * 100
            for way in ("text_to_image", "image_to_text")
            for k in (1, 5, 10)
        ],
        abs=0.05,
    )
    assert "on GPU-X" in text and "tiny random" not in text and text.count("not produced yet") == 4
