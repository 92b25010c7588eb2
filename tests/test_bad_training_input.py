"""Training commands refuse input they cannot train on, at once and in one line (issue 32):
data smaller than one batch (drop_last would leave an empty loader: P1 used to wait forever)
and network widths the model cannot be built with."""

from __future__ import annotations

import pytest

from conftest import small_digits
from hw2_utils import CLIError
from p1_ddpm import train as p1
from p5_dann import train as p5


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return small_digits(tmp_path_factory.mktemp("digits") / "digits", n=8, splits=("train", "val"))


def _p1(digits, tmp_path, extra: str) -> None:
    argv = ["--data", str(digits), "--domains", "mnistm", "--out", str(tmp_path / "run")]
    p1.main([*argv, *f"--device cpu {extra} --steps 2".split()])


def test_p1_with_fewer_images_than_a_batch_fails_at_once(digits, tmp_path):
    with pytest.raises(CLIError, match="fewer than one batch of 64"):
        _p1(digits, tmp_path, "--base-channels 8")


def test_p1_width_that_builds_no_unet_is_refused(digits, tmp_path):
    with pytest.raises(CLIError, match="--base-channels 7 builds no UNet"):
        _p1(digits, tmp_path, "--base-channels 7 --batch-size 4")


def test_p5_with_fewer_images_than_a_batch_fails_at_once(digits, tmp_path):
    with pytest.raises(CLIError, match="fewer than one batch of 128"):
        p5.main(
            [
                "--data",
                str(digits),
                "--source",
                "mnistm",
                "--out",
                str(tmp_path / "run"),
                "--device",
                "cpu",
            ]
        )


@pytest.mark.parametrize(
    "row, message",
    [
        ("x.png,cat", "label 'cat' of x.png is not an integer"),
        ("x.png", "expected image_name,label"),
        ("x.png,12", "label 12 of x.png is not a digit 0-9"),
        ("unreadable.png,3", "cannot read image"),
    ],
)
@pytest.mark.parametrize("load", ["p1", "p5"])
def test_a_bad_row_of_the_course_csv_is_one_error_naming_it(tmp_path, row, message, load):
    from p1_ddpm.data import load_split as p1_split
    from p5_dann.data import load_split as p5_split

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "unreadable.png").write_text("not a png")
    (tmp_path / "train.csv").write_text(f"image_name,label\n{row}\n")
    with pytest.raises(CLIError, match=message):
        (p1_split if load == "p1" else p5_split)(tmp_path, "train")


@pytest.mark.parametrize("key", ["a\u0000b", "..", "x/y", "k" * 300])
def test_p3_concept_keys_that_cannot_be_folders_are_refused_before_sampling(tmp_path, key):
    import json
    from p3_textual_inversion.infer import read_concepts

    path = tmp_path / "input.json"
    path.write_text(json.dumps({key: {"prompt": ["a photo of <new1>"]}}))
    with pytest.raises(CLIError, match="cannot be a folder name"):
        read_concepts(path)
