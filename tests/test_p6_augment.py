"""P6 data and augmentation: every preset on a real CIFAR-10 batch (shape, dtype, value
range, determinism under a seed), MixUp/CutMix targets, and the honest train/val split."""

from __future__ import annotations

import pytest
import torch

from conftest import require_shared
from p6_classification.augment import PRESETS, build_preset
from p6_classification.data import CIFAR_MEAN, CIFAR_STD, load_cifar, split_train_val

UNNORMALISED = {"none", "flip", "crop", "rotation", "center_crop"}
DETERMINISTIC = {"none", "normalize", "center_crop"}


@pytest.fixture(scope="module")
def batch():
    cifar = load_cifar(require_shared("cifar10", "cifar10_slice.npz"))
    return cifar.train_images[:16], cifar.train_labels[:16]


def _apply(preset, images, seed):
    torch.manual_seed(seed)
    return torch.stack([preset.train(img) for img in images])


@pytest.mark.parametrize("name", PRESETS)
def test_preset_on_real_images(batch, name):
    images, _ = batch
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32)
    preset = build_preset(name, CIFAR_MEAN, CIFAR_STD)
    a, b = _apply(preset, images, 0), _apply(preset, images, 0)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)  # same seed, same augmented batch
    assert torch.equal(_apply(preset, images, 1), a) == (name in DETERMINISTIC)
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    expected_eval = (
        images.float() / 255 if name in UNNORMALISED else (images.float() / 255 - mean) / std
    )
    torch.testing.assert_close(preset.eval(images), expected_eval)  # evaluation never augments
    if name in UNNORMALISED:
        assert a.min() >= 0 and a.max() <= 1
    else:  # normalised pixels (0 where cutout erased)
        low, high = (-mean / std), ((1 - mean) / std)
        assert (a >= low - 1e-5).all() and (a <= high + 1e-5).all()
    if name in ("cutout", "trivialaugment", "autoaugment"):  # one 16x16 zero square per image
        assert ((a == 0).all(dim=1).sum(dim=(1, 2)) >= 256).all()


def test_mixup_cutmix_give_soft_labels_and_label_smoothing(batch):
    images, labels = batch
    preset = build_preset("label_smoothing", CIFAR_MEAN, CIFAR_STD)
    x = _apply(preset, images, 0)
    torch.manual_seed(3)
    mixed, soft = preset.batch(x, labels)
    assert mixed.shape == x.shape and soft.shape == (16, 10)
    # torchvision mixes each image with its neighbour in the batch, with one weight per batch.
    onehot, partner = torch.eye(10)[labels], torch.eye(10)[labels.roll(1)]
    differ = labels != labels.roll(1)
    lam = soft[differ.nonzero()[0, 0], labels[differ][0]]
    assert 0 < lam < 1
    torch.testing.assert_close(soft, lam * onehot + (1 - lam) * partner)
    assert (
        preset.label_smoothing == 0.1
        and build_preset("mixup_cutmix", CIFAR_MEAN, CIFAR_STD).label_smoothing == 0
    )


def test_split_holds_out_ten_percent_fixed_and_disjoint():
    images = torch.arange(50_000).view(-1, 1, 1, 1).expand(-1, 3, 1, 1)
    labels = torch.arange(50_000)
    tx, ty, vx, vy = split_train_val(images, labels)
    assert len(vy) == 5000 and len(ty) == 45_000  # CIFAR-10: 5,000 held out
    assert not set(ty.tolist()) & set(vy.tolist())
    # images follow labels
    assert torch.equal(tx[:, 0, 0, 0], ty) and torch.equal(vx[:, 0, 0, 0], vy)
    assert torch.equal(split_train_val(images, labels)[3], vy)  # the same split every time
    # the slice: same proportion
    assert len(split_train_val(images[:5085], labels[:5085])[3]) == 508


@pytest.mark.parametrize("name", ["none", "flip_crop", "cutout", "normalize"])
def test_batch_augment_equals_torchvision_per_image(batch, name):
    """The whole-batch path train.py uses (BatchAugment) gives, for the same random draws,
    exactly what torchvision's per-image ops give: flip, crop of the zero-padded image, scale,
    normalise, erase a square."""
    from torchvision.transforms.v2 import functional as TF

    images, _ = batch
    preset = build_preset(name, CIFAR_MEAN, CIFAR_STD)
    augment = preset.device_train
    draws = augment.draws(len(images), 32, torch.Generator().manual_seed(5))
    out = augment.apply(images, draws)
    for image, (flip, top, left, cut_top, cut_left), got in zip(images, draws.tolist(), out):
        x = TF.horizontal_flip(image) if augment.flip and flip else image
        if augment.padding:
            x = TF.crop(TF.pad(x, [augment.padding]), top, left, 32, 32)
        x = TF.to_dtype(x, torch.float32, scale=True)
        if augment.mean is not None:
            x = TF.normalize(x, list(CIFAR_MEAN), list(CIFAR_STD))
        if augment.cutout:
            x = TF.erase(x, cut_top, cut_left, augment.cutout, augment.cutout, torch.tensor(0.0))
        assert torch.equal(got, x)
    # The draws cover every allowed value and nothing else: offsets 0..8, cutout corners 0..16.
    many = augment.draws(4000, 32, torch.Generator().manual_seed(0))
    assert set(many[:, 0].tolist()) == {0, 1}
    if augment.padding:
        assert set(many[:, 1].tolist()) == set(range(2 * augment.padding + 1))
    if augment.cutout:
        assert set(many[:, 3].tolist()) == set(range(32 - augment.cutout + 1))


def test_batch_augment_only_where_the_preset_is_flips_crops_cutout():
    batched = {
        name
        for name in PRESETS
        if build_preset(name, CIFAR_MEAN, CIFAR_STD).device_train is not None
    }
    assert batched == {"none", "flip", "crop", "normalize", "flip_crop", "flip_crop_ls", "cutout"}
    cutout = build_preset("cutout", CIFAR_MEAN, CIFAR_STD).device_train
    assert (cutout.flip, cutout.padding, cutout.cutout, cutout.mean) == (True, 4, 16, CIFAR_MEAN)
    # unnormalised, as per image
    assert build_preset("crop", CIFAR_MEAN, CIFAR_STD).device_train.mean is None
