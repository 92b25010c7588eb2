"""P5 DANN: the gradient reversal layer, its effect on the feature extractor, the lambda
schedule, training/resume on real digits, and the run.sh CSV contract."""
from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import REPO, require_shared
from hw2_utils import run_cli
from p5_dann import infer, train
from p5_dann.model import DANN, GradientReversal, grl_lambda


def test_grl_is_identity_forward_and_minus_lambda_backward():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    y = GradientReversal.apply(x, 0.3)
    assert torch.equal(y, x)
    upstream = torch.randn_like(x)
    y.backward(upstream)
    assert torch.equal(x.grad, -0.3 * upstream)


def test_grl_flips_the_feature_gradient_of_the_domain_loss_only():
    torch.manual_seed(0)
    model = DANN().eval()  # eval: no dropout, BN uses running stats -> two identical passes
    x, domain = torch.randn(8, 3, 28, 28), torch.tensor([0, 1] * 4)

    def grads(reverse: bool):
        model.zero_grad()
        if reverse:
            _, logits = model(x, lambda_=1.0)
        else:
            logits = model.domain_head(model.features(x))
        F.cross_entropy(logits, domain).backward()
        return ({n: p.grad.clone() for n, p in model.features.named_parameters()},
                {n: p.grad.clone() for n, p in model.domain_head.named_parameters()})

    (feat_rev, head_rev), (feat_plain, head_plain) = grads(True), grads(False)
    for name in feat_rev:
        assert torch.allclose(feat_rev[name], -feat_plain[name], atol=1e-7), name
        assert feat_rev[name].abs().sum() > 0
    for name in head_rev:  # the domain classifier itself still descends its loss
        assert torch.allclose(head_rev[name], head_plain[name], atol=1e-7)


def test_lambda_schedule():
    values = [grl_lambda(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0.0 and abs(values[-1] - (2 / (1 + np.exp(-10)) - 1)) < 1e-12
    assert all(a < b for a, b in zip(values, values[1:]))


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.randn(5, 3, 28, 28)
    a = train.random_affine(x, torch.Generator().manual_seed(1))
    b = train.random_affine(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def _small_course_copy(tmp_path, n=96):
    src = require_shared("hw2_data", "digits")
    root = tmp_path / "digits"
    for domain in ("mnistm", "usps"):
        (root / domain / "data").mkdir(parents=True)
        for split in ("train", "val"):
            with open(src / domain / f"{split}.csv") as f:
                rows = list(csv.reader(f))[:n + 1]
            with open(root / domain / f"{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows)
            for name, _ in rows[1:]:
                shutil.copy(src / domain / "data" / name, root / domain / "data" / name)
    return root


def test_dann_trains_on_real_digits_selects_by_source_val_and_resumes(tmp_path):
    root = _small_course_copy(tmp_path)
    common = ["--mode", "dann", "--data-root", str(root), "--out", str(tmp_path / "run"), "--batch-size", "32",
              "--device", "cpu"]
    first = train.main([*common, "--epochs", "2"])
    result = train.main([*common, "--epochs", "3"])  # resumes after epoch 2
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["domain_loss"]) > 0 for r in rows)  # the adversarial branch trained
    best_row = max(rows, key=lambda r: float(r["source_val_acc"]))  # first maximum, as the trainer keeps it
    assert result["selected"]["epoch"] == int(best_row["epoch"])
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert saved["epoch"] == result["selected"]["epoch"] and saved["mode"] == "dann"
    assert first["selected"]["epoch"] in (1, 2)


def _image_dir(tmp_path):
    folder = tmp_path / "usps_imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(folder / "b.png")    # grayscale
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB").save(folder / "a.png")  # RGB, other size
    Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8), "RGB").save(folder / "c.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": DANN().state_dict(), "mode": "dann", "gray": True}, path)
    return path


def test_csv_contract_with_mixed_grayscale_and_rgb(tmp_path, tiny_checkpoint):
    out = tmp_path / "pred" / "out.csv"
    infer.main([str(_image_dir(tmp_path)), str(out), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"])
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_name", "label"]
    assert [r[0] for r in rows[1:]] == ["a.png", "b.png", "c.jpg"]
    assert all(r[1].isdigit() and 0 <= int(r[1]) <= 9 for r in rows[1:])


@pytest.mark.parametrize("case", ["empty", "missing_dir", "missing_ckpt", "ambiguous_target"])
def test_bad_input_is_one_line_error(case, tmp_path, tiny_checkpoint, capsys):
    img_dir, extra = _image_dir(tmp_path), ["--checkpoint", str(tiny_checkpoint)]
    if case == "empty":
        img_dir = tmp_path / "usps_empty"
        img_dir.mkdir()
    elif case == "missing_dir":
        img_dir = tmp_path / "nope"
    elif case == "missing_ckpt":
        extra = ["--checkpoint", str(tmp_path / "none.pt")]
    else:
        img_dir = tmp_path / "digits"  # names neither usps nor svhn
        (tmp_path / "x").mkdir()
        shutil.copytree(_image_dir(tmp_path / "x"), img_dir)
        extra = []
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: infer.main([str(img_dir), str(tmp_path / "out.csv"), *extra]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err
    assert not (tmp_path / "out.csv").exists()


def test_run_sh_with_the_shipped_usps_model(tmp_path):
    if not (infer.CHECKPOINTS / "mnistm_usps_dann.pt").is_file():
        pytest.skip("no shipped checkpoint yet (python bench/p5_dann.py --ship)")
    img_dir = tmp_path / "usps"
    shutil.copytree(_image_dir(tmp_path), img_dir)
    r = subprocess.run(["bash", str(REPO / "p5_dann" / "run.sh"), str(img_dir), str(tmp_path / "pred.csv")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert (tmp_path / "pred.csv").read_text().splitlines()[0] == "image_name,label"
