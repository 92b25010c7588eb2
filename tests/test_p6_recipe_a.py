"""P6 recipe A (issue 41): the preset resolves to the recipe and a flag still overrides it; the
weight EMA follows its formula; the reflect-padded crop equals torchvision's; the slice's 5,085
official-pixel training images match their JPEG copies one to one; and a tiny run with every
mechanism of the recipe writes model.pt (the EMA weights) and result.json."""

from __future__ import annotations

import argparse
import json
from copy import deepcopy

import numpy as np
import pytest
import torch

from conftest import interrupted_at_call, require_shared
from hw2_utils import CLIError
from p6_classification import train
from p6_classification.augment import build_preset
from p6_classification.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    MAX_COPY_MAD,
    load_cifar,
    load_train_split,
    match_copies,
    replace_with_official,
)


@pytest.fixture(scope="module")
def slice_cifar():
    return load_cifar(require_shared("cifar10", "cifar10_slice.npz"))


def test_recipe_a_preset_resolves_and_a_flag_overrides_it():
    args = train.parse_args(["--preset", "recipe_a"])
    recipe = {k: getattr(args, k) for k in train.RECIPE if k not in ("limit", "seed")}
    assert recipe == {
        "aug": "cutout",
        "epochs": 200,
        "batch_size": 500,
        "lr": 0.2,
        "weight_decay": 5e-4,
        "warmup_epochs": 3.0,
        "label_smoothing": 0.1,
        "padding_mode": "reflect",
        "ema_decay": 0.999,
        "val_fraction": 0.0,
        "official_pixels": "../shared/data/cifar10/cifar10_slice.npz",
    }
    flags = ["--preset", "recipe_a", "--lr", "0.1", "--val-fraction", "0.1", "--ema-decay", "0"]
    overridden = train.parse_args(flags)
    assert (overridden.lr, overridden.val_fraction, overridden.ema_decay) == (0.1, 0.1, 0.0)
    assert overridden.padding_mode == "reflect"  # the rest stays the preset's
    shipped = train.parse_args(["--preset", "shipped"])  # the shipped recipe is unchanged
    assert (shipped.lr, shipped.batch_size, shipped.val_fraction, shipped.ema_decay) == (
        0.4,
        512,
        0.1,
        0.0,
    )
    assert (shipped.padding_mode, shipped.label_smoothing, shipped.official_pixels) == (
        "constant",
        None,
        None,
    )


def test_ema_follows_the_formula_after_every_step():
    """train_epoch's EMA: after each SGD step, ema = d * ema + (1 - d) * weights for every
    parameter, and the BatchNorm statistics are the model's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    ema = deepcopy(model).requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    preset = argparse.Namespace(batch=None, label_smoothing=0.1)
    args = argparse.Namespace(epochs=3, lr=0.5, ema_decay=0.8)
    for epoch in range(3):
        before = [e.clone() for e in ema.parameters()]
        x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
        common = (preset, opt, epoch, args, torch.device("cpu"), torch.float32, False)
        train.train_epoch(model, [(x, y)], 1, 0, *common, ema)
        for old, new, weight in zip(before, ema.parameters(), model.parameters()):
            assert torch.allclose(new, 0.8 * old + 0.2 * weight.detach(), atol=1e-6)
            assert not torch.equal(new, weight)
        assert all(torch.equal(e, b) for e, b in zip(ema.buffers(), model.buffers()))


def test_reflect_padding_equals_torchvision_per_image(slice_cifar):
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    images = slice_cifar.train_images[:16]
    preset = build_preset("cutout", CIFAR_MEAN, CIFAR_STD, padding_mode="reflect")
    crops = [t for t in preset.train.transforms if isinstance(t, v2.RandomCrop)]
    assert [c.padding_mode for c in crops] == ["reflect"]
    augment = preset.device_train
    assert (augment.padding, augment.padding_mode, augment.cutout) == (4, "reflect", 16)
    draws = augment.draws(len(images), 32, torch.Generator().manual_seed(3))
    zero_padded = build_preset("cutout", CIFAR_MEAN, CIFAR_STD).device_train.apply(images, draws)
    out = augment.apply(images, draws)
    for image, (flip, top, left, cut_top, cut_left), got in zip(images, draws.tolist(), out):
        x = TF.horizontal_flip(image) if flip else image
        x = TF.crop(TF.pad(x, [4], padding_mode="reflect"), top, left, 32, 32)
        x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), CIFAR_MEAN, CIFAR_STD)
        assert torch.equal(got, TF.erase(x, cut_top, cut_left, 16, 16, torch.tensor(0.0)))
    shifted = (draws[:, 1] != 4) | (draws[:, 2] != 4)
    assert not torch.equal(out[shifted], zero_padded[shifted])  # the border is not zeros


def test_official_pixels_match_their_jpeg_copies_one_to_one(slice_cifar):
    """All 5,085 official-pixel training images of the slice against the 50,000 JPEG copies
    (each within its class): distinct indices, each copy within MAX_COPY_MAD (13 of 255 at
    most, measured), the best at least 1.4x closer than the runner-up (the runner-up among the
    squared-distance candidates) and 3 levels apart, and the order CIFAR-10's: in slice order
    the copies of a class are consecutive, but for the four jumps between data batches."""
    jpeg = load_cifar(require_shared("cifar10_full"))
    jpeg_x, jpeg_y = jpeg.train_images, jpeg.train_labels
    official_x, official_y = slice_cifar.train_images, slice_cifar.train_labels
    match = match_copies(official_x, official_y, jpeg_x, jpeg_y)
    assert len(match.index.unique()) == len(official_y) == 5085
    assert torch.equal(jpeg_y[match.index], official_y)
    assert match.mad.max() < 13.5 < MAX_COPY_MAD and match.mad.mean() < 6.5
    assert (match.runner_up_mad >= 1.4 * match.mad).all()
    assert (match.runner_up_mad - match.mad).min() > 3.0
    for label in range(10):
        index = match.index[official_y == label]
        assert index[0] == (jpeg_y == label).nonzero()[0]  # data_batch_1's first of the class
        steps = index.diff()
        assert (steps > 0).all() and (steps != 1).sum() == 4
    # The squared-distance shortlist loses nothing (checked on a class-restricted subset: the
    # full exact MAD would take minutes): for the 60 frogs (the class of the smallest margin)
    # with the smallest margins, the exact MAD to all 5,000 frog copies ranks the same best and
    # runner-up.
    frogs = (official_y == 6).nonzero()[:, 0]
    rows = frogs[(match.runner_up_mad[frogs] / match.mad[frogs]).argsort()[:60]]
    pool = (jpeg_y == 6).nonzero()[:, 0]
    copies = jpeg_x[pool].flatten(1).float()
    exact = torch.stack([(copies - x.flatten().float()).abs().mean(1) for x in official_x[rows]])
    best = exact.topk(2, dim=1, largest=False)
    assert torch.equal(pool[best.indices[:, 0]], match.index[rows])
    assert torch.allclose(best.values[:, 0], match.mad[rows])
    assert torch.allclose(best.values[:, 1], match.runner_up_mad[rows])
    # Against the wrong images (the test split) nothing is a copy: refused.
    with pytest.raises(CLIError, match="no copy within MAD"):
        replace_with_official(
            slice_cifar.test_images, slice_cifar.test_labels, official_x[:50], official_y[:50]
        )


PER_CLASS, OFFICIAL_PER_CLASS = 40, 15


def _jpeg_archive(source, path, keep) -> None:
    """The images `keep` of the shared JPEG archive `source`, their JPEG files as they are."""
    with np.load(source) as z:
        jpeg, offsets, labels = z["jpeg"], z["offsets"], z["labels"]
    blobs = [jpeg[offsets[i] : offsets[i + 1]] for i in keep]
    starts = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(path, jpeg=np.concatenate(blobs), offsets=starts, labels=labels[keep])


@pytest.fixture(scope="module")
def small_copy(tmp_path_factory, slice_cifar):
    """data/: the first PER_CLASS JPEG copies of each class and 100 test images; official.npz:
    the first OFFICIAL_PER_CLASS official-pixel images of each class, which are data_batch_1's
    and so the first copies of their class (the matching test shows the order)."""
    root, full = tmp_path_factory.mktemp("recipe_a"), require_shared("cifar10_full")
    with np.load(full / "train.npz") as z:
        labels = z["labels"]
    keep = np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(10)])
    (root / "data").mkdir()
    _jpeg_archive(full / "train.npz", root / "data" / "train.npz", keep)
    _jpeg_archive(full / "test.npz", root / "data" / "test.npz", np.arange(100))
    official = torch.cat(
        [(slice_cifar.train_labels == c).nonzero()[:OFFICIAL_PER_CLASS, 0] for c in range(10)]
    )
    np.savez(
        root / "official.npz",
        train_images=slice_cifar.train_images[official].permute(0, 2, 3, 1).numpy(),
        train_labels=slice_cifar.train_labels[official].numpy(),
    )
    return root


def test_tiny_recipe_a_run_trains_on_the_official_pixels_with_its_mechanics(
    small_copy, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    argv = ["--preset", "recipe_a", "--data", str(small_copy / "data"), "--limit", "300"]
    argv += ["--official-pixels", str(small_copy / "official.npz"), "--width", "8"]
    argv += ["--batch-size", "50", "--epochs", "2", "--device", "cpu", "--out", str(out)]
    seen = {"smoothing": set()}
    real_hold_out, real_batches, real_loss = (
        train.hold_out,
        train.device_batches,
        train.F.cross_entropy,
    )

    def hold_out(cifar, limit, val_fraction):
        seen["train_images"] = cifar.train_images
        return real_hold_out(cifar, limit, val_fraction)

    def device_batches(images, labels, augment, *rest):
        seen["augment"] = augment
        return real_batches(images, labels, augment, *rest)

    def cross_entropy(logits, y, label_smoothing=0.0):
        seen["smoothing"].add(label_smoothing)
        return real_loss(logits, y, label_smoothing=label_smoothing)

    monkeypatch.setattr(train, "hold_out", hold_out)
    monkeypatch.setattr(train, "device_batches", device_batches)
    monkeypatch.setattr(train.F, "cross_entropy", cross_entropy)
    result = train.main(argv)

    # The first OFFICIAL_PER_CLASS copies of each class now hold the official pixels, no other image.
    official = load_train_split(small_copy / "official.npz")[0]
    jpeg = load_cifar(small_copy / "data").train_images
    replaced = torch.cat([torch.arange(OFFICIAL_PER_CLASS) + PER_CLASS * c for c in range(10)])
    assert torch.equal(seen["train_images"][replaced], official)
    rest = torch.ones(len(jpeg), dtype=torch.bool)
    rest[replaced] = False
    assert torch.equal(seen["train_images"][rest], jpeg[rest])
    assert not torch.equal(jpeg[replaced], official)
    assert seen["augment"].padding_mode == "reflect" and seen["smoothing"] == {0.1}
    # No val split: all 300 (limited) images train, 6 steps an epoch; the test set scored once.
    assert (result["train_images"], result["val_images"], result["test_images"]) == (300, 0, 60)
    assert result["val_acc"] is None and 0.0 <= result["test_acc"] <= 1.0
    record = json.loads((out / "result.json").read_text())
    assert (record["finished"], record["step"], record["total_steps"]) == (True, 12, 12)
    assert record["metrics"]["recipe"]["ema_decay"] == 0.999
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["nesterov"] is True
    # model.pt is the EMA's weights (in fp16), not the trained ones
    exported = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(
        torch.equal(exported[k], v.half() if v.is_floating_point() else v)
        for k, v in last["ema"].items()
    )
    assert any(not torch.equal(last["ema"][k], v) for k, v in last["model"].items())
    assert (out / "curves.png").is_file()
    with pytest.raises(CLIError, match="not found"):
        train.main([*argv[:-1], str(tmp_path / "other"), "--official-pixels", "missing.npz"])


def test_an_interrupted_recipe_a_run_resumes_to_the_same_ema_weights(
    small_copy, tmp_path, monkeypatch
):
    """last.pt carries the EMA: a run stopped after epoch 1 and resumed exports the same
    model.pt as an uninterrupted one."""

    def argv(out):
        return [
            *("--preset", "recipe_a", "--data", str(small_copy / "data"), "--limit", "200"),
            *("--official-pixels", str(small_copy / "official.npz"), "--width", "8"),
            *("--batch-size", "50", "--epochs", "2", "--device", "cpu", "--out", str(out)),
        ]

    train.main(argv(tmp_path / "a"))
    real = train.train_epoch
    monkeypatch.setattr(train, "train_epoch", interrupted_at_call(real, 2))  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train, "train_epoch", real)
    train.main(argv(tmp_path / "b"))
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in "ab")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_travel_set_is_the_official_pixel_training_set_in_a_gpu_calls_room(tmp_path, slice_cifar):
    """p6_classification/travel_set.py: what a GPU call trains recipe A on decodes to exactly
    the images --official-pixels builds, its test split is the slice's official pixels, and it
    leaves room for the code in the call's 64 MiB."""
    from p6_classification import travel_set

    full, official = require_shared("cifar10_full"), require_shared("cifar10", "cifar10_slice.npz")
    out = tmp_path / "travel"
    written = travel_set.main(
        ["--data", str(full), "--official-pixels", str(official), "--out", str(out)]
    )
    got, jpeg = load_cifar(out), load_cifar(full)
    expected, _ = replace_with_official(
        jpeg.train_images, jpeg.train_labels, *load_train_split(official)
    )
    assert torch.equal(got.train_images, expected) and torch.equal(
        got.train_labels, jpeg.train_labels
    )
    assert torch.equal(got.test_images, slice_cifar.test_images)
    assert torch.equal(got.test_labels, slice_cifar.test_labels)
    assert written["official_train"] == 5085
    assert (written["train.npz"] + written["test.npz"]) / 2**20 < 56
