"""Every image reader maps 16-bit and float pixels to 8 bits by scaling, never by clipping
(issue 43's H2: Pillow's convert("RGB") saturates 16-bit samples at 255, which changed 12 of
40 USPS labels with exit status 0), and refuses what it cannot map or decode with one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, require_shared
from hw2_utils import CLIError, open_rgb, read_label_csv


def usps_digits(n: int = 40) -> list[tuple[str, int]]:
    usps = require_shared("hw2_data", "digits", "usps")
    labels = read_label_csv(usps / "val.csv", "USPS val")
    return [(usps / "data" / name, label) for name, label in list(labels.items())[:n]]


def save_16bit(array8: np.ndarray, path) -> None:
    """The same picture at 16 bits a sample: x * 257 maps 0..255 onto 0..65535 exactly."""
    Image.fromarray(array8.astype(np.uint16) * 257).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"


def test_16_bit_and_float_images_read_as_their_8_bit_originals(tmp_path):
    for k, (path, _) in enumerate(usps_digits(10)):
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"))
        save_16bit(gray, tmp_path / f"{k}.png")
        Image.fromarray(gray.astype(np.float32) / 255).save(tmp_path / f"{k}.tif")  # mode F
        expected = np.repeat(gray[..., None], 3, axis=2)
        assert np.array_equal(np.asarray(open_rgb(tmp_path / f"{k}.png")), expected)
        assert np.array_equal(np.asarray(open_rgb(tmp_path / f"{k}.tif")), expected)
    # the control: Pillow's own conversion clips, so the check above can fail
    with Image.open(tmp_path / "0.png") as image:
        assert not np.array_equal(np.asarray(image.convert("RGB")), expected)


@pytest.mark.parametrize(
    "mode, values, message",
    [
        ("I", [[-5, 70000]], r"16-bit \(I\) pixels outside 0..65535"),
        ("F", [[0.5, 3.0]], r"float \(F\) pixels outside 0..1"),
        ("F", [[0.5, float("nan")]], r"float \(F\) pixels outside 0..1"),
    ],
)
def test_pixels_outside_the_depths_full_scale_are_refused(tmp_path, mode, values, message):
    dtype = np.int32 if mode == "I" else np.float32
    Image.fromarray(np.array(values, dtype=dtype)).save(tmp_path / "x.tif")
    with pytest.raises(CLIError, match=message):
        open_rgb(tmp_path / "x.tif")


def grade(folder) -> subprocess.CompletedProcess:
    classifier = require_shared("grader", "Classifier.pth")
    return subprocess.run(
        [sys.executable, "-m", "evaluation.digit_accuracy", "--folder", folder]
        + ["--checkpoint", classifier],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )


def test_the_digit_grader_gives_16_bit_digits_their_8_bit_grade(tmp_path):
    """The issue's 40 USPS digits, once as 8-bit and once as 16-bit PNGs, graded from outside."""
    for depth in ("8", "16"):
        (tmp_path / depth / "mnistm").mkdir(parents=True)
    for k, (path, label) in enumerate(usps_digits(40)):
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"))
        Image.fromarray(gray).save(tmp_path / "8" / "mnistm" / f"{label}_{k:03d}.png")
        save_16bit(gray, tmp_path / "16" / "mnistm" / f"{label}_{k:03d}.png")
    eight, sixteen = grade(tmp_path / "8"), grade(tmp_path / "16")
    assert eight.returncode == 0 and sixteen.returncode == 0, eight.stderr + sixteen.stderr
    assert "MNIST-M acc" in eight.stdout and sixteen.stdout == eight.stdout


def test_a_decompression_bomb_is_one_error_line(tmp_path):
    """A 14000x14000 PNG (a few kB at one bit a pixel): Pillow refuses to decode it; a grader
    says so in one line instead of a DecompressionBombError traceback."""
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        Image.new("1", (14000, 14000)).save(tmp_path / folder / "00.png")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation.ddim_mse",
            "--pred",
            tmp_path / "pred",
            "--gt",
            tmp_path / "gt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert "error: cannot read image" in line and "decompression bomb" in line
