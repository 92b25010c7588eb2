"""The shipped ResNet-18 (p6_classification/checkpoints/resnet18_cifar10.pt, its provenance in
checkpoints/README.md, its bench record p6_bench.json beside it): it loads with the current code, is an
fp16 state dict of at most 25 MB, classifies the official-pixel test images through infer.py's
CLI with the accuracy its bench record states, and its CAMs point at the evidence (deletion and
insertion curves)."""

from __future__ import annotations

import csv
import json

import torch

from conftest import require_shared
from p6_classification import cam, infer


def bench_record() -> dict:
    return json.loads((infer.CHECKPOINTS / "p6_bench.json").read_text())


def test_shipped_checkpoint_is_fp16_within_25_mb_and_loads():
    assert infer.SHIPPED.stat().st_size <= 25 * 2**20
    blob = torch.load(infer.SHIPPED, weights_only=True)
    assert all(
        v.dtype == torch.float16 for v in blob["state_dict"].values() if v.is_floating_point()
    )
    model, meta = infer.load_checkpoint(infer.SHIPPED, torch.device("cpu"))
    assert meta["arch"] == {"model": "resnet18", "stem": "cifar", "width": 64}
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert meta["epochs"] == bench_record()["full"]["epochs"]


def test_infer_cli_on_the_official_pixel_test_images_matches_the_record(tmp_path):
    """infer.py's default is the test-time augmentation the bench's tta part chose on val (its
    record); --tta none is the plain model the training run scored."""
    data = require_shared("cifar10", "cifar10_slice.npz")
    accuracy = infer.main([str(data), str(tmp_path / "pred.csv"), "--device", "cpu"])
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1017 and rows[0]["image_name"] == "00000.png"
    assert {int(r["label"]) for r in rows} == set(range(10))
    record = bench_record()
    full, tta = record["full"], record["tta"]
    assert infer.TTA_DEFAULT == tta["chosen"]
    # the same file and computation as the bench's (a thread count may flip a near tie) ...
    assert abs(accuracy - tta["also_test"]["test_acc"]) <= 2 / 1017
    plain = infer.main([str(data), str(tmp_path / "plain.csv"), "--device", "cpu", "--tta", "none"])
    assert abs(plain - full["exported_fp16_test_acc"]["also_test"]) <= 2 / 1017
    # ... and the plain file within a point of the model in training (bf16 autocast, fp32 weights)
    assert abs(plain - full["also_test"]["test_acc"]) <= 0.01


def test_cam_curves_with_the_shipped_model_point_at_the_evidence(tmp_path):
    """On 60 official-pixel test images and 3-point curves (the bench's record has 500 images and
    11 points): deleting pixels most salient first lowers the predicted class's probability faster
    than least salient first (on this run -0.109 +- 0.056, 95%), and restoring them raises it far
    faster than restoring random pixels (+0.343 +- 0.049). Grad-CAM on layer4 of a GAP+FC network
    is CAM up to normalisation: the same areas. (Against another image's map the maps win by
    less than this sample resolves, so that is left to the record, README "P6".)"""
    data = require_shared("cifar10", "cifar10_slice.npz")
    cam.main(
        [
            "--data",
            str(data),
            "--n",
            "2",
            "--deletion",
            "60",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    record = json.loads((tmp_path / "deletion_resnet18.json").read_text())
    assert record["images"] == 60 and record["fractions"] == [0.0, 0.5, 1.0]
    assert (tmp_path / "cam_resnet18.png").is_file() and (
        tmp_path / "deletion_resnet18.png"
    ).is_file()
    for name in ("CAM (ours)", "Grad-CAM"):
        gap, half_width = record["paired_auc_gap"]["deletion"][name][name + cam.LEAST]
        assert gap + half_width < 0
        gap, half_width = record["paired_auc_gap"]["insertion"][name]["random"]
        assert gap - half_width > 0
    for mode in ("deletion", "insertion"):
        assert abs(record[mode]["CAM (ours)"]["auc"] - record[mode]["Grad-CAM"]["auc"]) < 0.01
