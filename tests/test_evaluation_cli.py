"""The six graders as command lines: --help explains each, and bad input ends in one
`error:` line with exit status 2, never a traceback."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from conftest import REPO
from hw2_utils import run_cli

GRADERS = ["digit_accuracy", "ddim_mse", "clip_scores", "fid", "face_rate", "csv_accuracy"]


@pytest.mark.parametrize("name", GRADERS)
def test_help_shows_the_docstring_usage(name, capsys):
    module = importlib.import_module(f"evaluation.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m evaluation.{name}" in out  # the usage examples of the module docstring
    assert module.__doc__.splitlines()[0] in out


def fails_with(capsys, name, argv) -> str:
    module = importlib.import_module(f"evaluation.{name}")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: " in err
    return err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    assert "MNIST-M classifier checkpoint not found" in fails_with(
        capsys,
        "digit_accuracy",
        ["--folder", str(tmp_path), "--checkpoint", str(tmp_path / "none.pth")],
    )
    assert "holds no images" in fails_with(
        capsys, "ddim_mse", ["--pred", str(tmp_path / "empty"), "--gt", str(tmp_path)]
    )
    assert "is not valid JSON" in fails_with(
        capsys,
        "clip_scores",
        ["--json_path", str(tmp_path / "bad.json"), "--input_dir", ".", "--output_dir", "."],
    )
    assert "FID Inception weights not found" in fails_with(
        capsys, "fid", [str(tmp_path), str(tmp_path), "--weights", str(tmp_path / "none.pth")]
    )
    assert "holds no readable images" in fails_with(
        capsys, "face_rate", ["--image_dir", str(tmp_path / "empty")]
    )
    assert "prediction CSV not found" in fails_with(
        capsys, "csv_accuracy", [str(tmp_path / "p.csv"), str(tmp_path / "g.csv")]
    )


def test_digit_label_must_lead_the_file_name(tmp_path, capsys):
    import torch
    from evaluation.digit_accuracy import LeNet

    torch.save({"state_dict": LeNet().state_dict()}, tmp_path / "Classifier.pth")
    (tmp_path / "out" / "mnistm").mkdir(parents=True)
    (tmp_path / "out" / "mnistm" / "seven.png").write_bytes(b"")
    err = fails_with(
        capsys,
        "digit_accuracy",
        ["--folder", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "Classifier.pth")],
    )
    assert "cannot read a digit label from" in err and "seven.png" in err


def test_script_runs_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation.ddim_mse",
            "--pred",
            str(tmp_path / "missing"),
            "--gt",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"python -m evaluation.ddim_mse: error: prediction folder is not a directory: {tmp_path / 'missing'}"
    )
