"""evaluation/ddim_mse.py, csv_accuracy.py and face_rate.py: values computed by hand, pairing
rules, the course's handling of unreadable files, and dlib's detector on real faces."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from hw2_utils import CLIError
from evaluation.csv_accuracy import csv_accuracy
from evaluation.ddim_mse import mse_dirs
from evaluation.face_rate import face_rate


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------- DDIM MSE


def test_mse_is_the_mean_of_per_image_uint8_mse(tmp_path):
    zeros = np.zeros((4, 4, 3))
    save(tmp_path / "gt" / "00.png", zeros)
    save(tmp_path / "gt" / "01.png", zeros)
    save(tmp_path / "pred" / "00.png", zeros + 10)  # MSE 100
    one_pixel = zeros.copy()
    one_pixel[0, 0] = 255  # (3 * 255^2) / 48
    save(tmp_path / "pred" / "01.png", one_pixel)
    result = mse_dirs(tmp_path / "pred", tmp_path / "gt")
    assert result["per_image"] == pytest.approx({"00.png": 100.0, "01.png": 3 * 255**2 / 48})
    assert result["mse"] == pytest.approx((100 + 3 * 255**2 / 48) / 2)


def test_mse_rejects_missing_pairs_and_size_mismatch(tmp_path):
    save(tmp_path / "gt" / "00.png", np.zeros((4, 4, 3)))
    save(tmp_path / "gt" / "01.png", np.zeros((4, 4, 3)))
    save(tmp_path / "pred" / "00.png", np.zeros((4, 4, 3)))
    with pytest.raises(CLIError, match="01.png: in ground-truth folder"):
        mse_dirs(tmp_path / "pred", tmp_path / "gt")
    save(tmp_path / "pred" / "01.png", np.zeros((5, 4, 3)))
    with pytest.raises(CLIError, match="01.png: prediction is 4x5 but ground truth is 4x4"):
        mse_dirs(tmp_path / "pred", tmp_path / "gt")


# --------------------------------------------------------------------------- CSV accuracy


def test_csv_accuracy_joins_on_name_regardless_of_order(tmp_path):
    (tmp_path / "gt.csv").write_text("image_name,label\na.png,1\nb.png,2\nc.png,3\nd.png,4\n")
    (tmp_path / "pred.csv").write_text("image_name,label\nd.png,4\nc.png,0\nb.png,2\na.png,1\n")
    assert csv_accuracy(tmp_path / "pred.csv", tmp_path / "gt.csv") == {
        "acc": 0.75,
        "correct": 3,
        "total": 4,
        "ignored": 0,
    }


def test_csv_accuracy_can_score_the_ground_truths_rows_only(tmp_path):
    """Predictions for a whole folder (the shared USPS folder holds train and val images) scored
    against val.csv: the extra rows are counted, not scored; a val image left unpredicted is
    still an error."""
    (tmp_path / "gt.csv").write_text("image_name,label\na.png,1\nb.png,2\n")
    (tmp_path / "pred.csv").write_text("image_name,label\nx.png,9\nb.png,2\na.png,0\ny.png,1\n")
    assert csv_accuracy(tmp_path / "pred.csv", tmp_path / "gt.csv", gt_rows_only=True) == {
        "acc": 0.5,
        "correct": 1,
        "total": 2,
        "ignored": 2,
    }
    (tmp_path / "pred.csv").write_text("image_name,label\nx.png,9\nb.png,2\n")
    with pytest.raises(CLIError, match="a.png: in .*gt.csv but not in .*pred.csv"):
        csv_accuracy(tmp_path / "pred.csv", tmp_path / "gt.csv", gt_rows_only=True)


@pytest.mark.parametrize(
    "pred, message",
    [
        ("image_name,label\na.png,1\n", "b.png: in .*gt.csv but not in .*pred.csv"),
        (
            "image_name,label\na.png,1\nb.png,2\nz.png,1\n",
            "z.png: in .*pred.csv but not in .*gt.csv",
        ),
        ("image_name,label\na.png,1\na.png,1\nb.png,2\n", "pred.csv:3: a.png appears twice"),
        ("image_name,label\na.png,cat\nb.png,2\n", "label 'cat' of a.png is not an integer"),
        ("filename,label\na.png,1\nb.png,2\n", "header is filename,label"),
    ],
)
def test_csv_accuracy_errors_name_the_row(tmp_path, pred, message):
    (tmp_path / "gt.csv").write_text("image_name,label\na.png,1\nb.png,2\n")
    (tmp_path / "pred.csv").write_text(pred)
    with pytest.raises(CLIError, match=message):
        csv_accuracy(tmp_path / "pred.csv", tmp_path / "gt.csv")


# --------------------------------------------------------------------------- face rate


def test_face_rate_on_real_celeba_faces(tmp_path):
    faces = require_shared("hw2_data", "face")
    for split in ("train", "val"):
        for path in (faces / split).glob("*.png"):
            shutil.copy(path, tmp_path / f"{split}_{path.name}")
    result = face_rate(tmp_path)
    print(
        f"face rate on the 32 real faces: {result['rate']:.4f} ({result['one_face']}/{result['total']})"
    )
    assert result["total"] == 32
    assert result["rate"] >= 0.8


def test_face_rate_drops_unreadable_entries_from_the_total(tmp_path):
    save(tmp_path / "a.png", np.zeros((8, 8, 3)))
    save(tmp_path / "b.png", np.full((8, 8, 3), 255))
    save(tmp_path / "c.png", np.zeros((8, 8, 3)))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "subfolder").mkdir()
    faces_in = {0: 1, 255: 2}  # a stand-in detector: one "face" in black images, two in white ones
    result = face_rate(tmp_path, count_faces=lambda image: faces_in[int(image[0, 0, 0])])
    assert result == {
        "rate": 2 / 3,
        "one_face": 2,
        "total": 3,
        "unreadable": ["broken.png", "subfolder"],
    }


def test_face_rate_of_blank_images_is_zero_with_dlib(tmp_path):
    for k in range(3):
        save(tmp_path / f"{k}.png", np.full((64, 64, 3), 40 * k))
    assert face_rate(tmp_path)["rate"] == 0.0
