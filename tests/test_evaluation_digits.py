"""evaluation/digit_accuracy.py: the course's MNIST-M grader on real digits, label parsing,
the optional SVHN half, and in-memory scoring that agrees with scoring saved PNGs."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import require_shared
from evaluation.digit_accuracy import (
    LeNet,
    digit_accuracy,
    load_mnistm_classifier,
    main,
    score_folder,
    score_images,
)


def constant_logits(model: nn.Module, head: nn.Linear, digit: int) -> nn.Module:
    """`model` made to predict `digit` for every input (zero weights, one-hot bias on `head`)."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(10 * torch.nn.functional.one_hot(torch.tensor(digit), 10).float())
    return model.eval()


def write_digits(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / name)


def test_course_classifier_scores_real_mnistm_val(tmp_path):
    """The official weights on the 1001 real MNIST-M val digits, named {label}_{name}."""
    data = require_shared("hw2_data", "digits", "mnistm")
    checkpoint = require_shared("grader", "Classifier.pth")
    out = tmp_path / "out" / "mnistm"
    out.mkdir(parents=True)
    with open(data / "val.csv", newline="") as f:
        for row in csv.DictReader(f):
            shutil.copy(
                data / "data" / row["image_name"], out / f"{row['label']}_{row['image_name']}"
            )
    result = digit_accuracy(tmp_path / "out", checkpoint, device="cpu")
    assert result["mnistm"]["total"] == 1001
    assert result["mnistm"]["acc"] == pytest.approx(0.9471, abs=0.002)
    assert result["svhn"] is None and result["acc"] is None


def test_labels_come_from_first_character_and_svhn_half_is_averaged(tmp_path, capsys):
    lenet = LeNet()
    torch.save(
        {"state_dict": constant_logits(lenet, lenet.fc3, 3).state_dict()},
        tmp_path / "Classifier.pth",
    )
    svhn = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10))
    program = torch.export.export(
        constant_logits(svhn, svhn[1], 5),
        (torch.zeros(2, 3, 28, 28),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, tmp_path / "svhn.pt2")
    write_digits(
        tmp_path / "out" / "mnistm",
        [f"3_{k:03d}.png" for k in range(4)] + [f"5_{k:03d}.png" for k in range(6)],
    )
    write_digits(
        tmp_path / "out" / "svhn",
        [f"5_{k:03d}.png" for k in range(3)] + [f"9_{k:03d}.png" for k in range(1)],
    )

    result = main(
        [
            "--folder",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tmp_path / "Classifier.pth"),
            "--svhn-checkpoint",
            str(tmp_path / "svhn.pt2"),
            "--device",
            "cpu",
        ]
    )

    assert result["mnistm"] == {"acc": 0.4, "correct": 4, "total": 10}
    assert result["svhn"] == {"acc": 0.75, "correct": 3, "total": 4}
    assert result["acc"] == pytest.approx((0.4 + 0.75) / 2)
    assert capsys.readouterr().out.splitlines() == [
        "MNIST-M acc = 0.4 (correct/total = 4/10)",
        "SVHN acc = 0.75 (correct/total = 3/4)",
        "acc = 0.575",
    ]


def test_shipped_usps_grader_scores_real_usps_val_and_grades_the_second_folder(tmp_path, capsys):
    """The shipped USPS LeNet (P1's second-domain grader) on the 2,007 real USPS val digits
    (0.9621 when trained by bench/p1_ddpm.py), and --usps-checkpoint prints its line."""
    from evaluation.digit_accuracy import USPS_GRADER

    data = require_shared("hw2_data", "digits", "usps")
    lenet = LeNet()
    torch.save(
        {"state_dict": constant_logits(lenet, lenet.fc3, 3).state_dict()},
        tmp_path / "Classifier.pth",
    )
    write_digits(tmp_path / "out" / "mnistm", ["3_001.png"])
    out = tmp_path / "out" / "svhn"
    out.mkdir()
    with open(data / "val.csv", newline="") as f:
        for row in csv.DictReader(f):
            shutil.copy(
                data / "data" / row["image_name"], out / f"{row['label']}_{row['image_name']}"
            )
    result = main(
        [
            "--folder",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tmp_path / "Classifier.pth"),
            "--usps-checkpoint",
            str(USPS_GRADER),
            "--device",
            "cpu",
        ]
    )
    assert result["usps"]["total"] == 2007 and result["usps"]["acc"] == pytest.approx(
        0.9621, abs=0.002
    )
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith("USPS acc (svhn/ folder, second domain USPS) = 0.96")
    )


def test_in_memory_uint8_batch_scores_like_the_saved_folder(tmp_path):
    torch.manual_seed(0)
    torch.save({"state_dict": LeNet().state_dict()}, tmp_path / "Classifier.pth")
    model = load_mnistm_classifier(tmp_path / "Classifier.pth")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 28, 28, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 40).tolist()
    for k, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(tmp_path / f"{label}_{k:03d}.png")
    from_disk = score_folder(model, tmp_path)
    in_memory = score_images(model, images, labels, batch_size=16)
    assert in_memory == from_disk
    # a random network is right on some images and wrong on others, so the counts mean something
    assert 0 < from_disk["correct"] < 40
