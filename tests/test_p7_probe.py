"""p7_clip/train.py and infer.py: the linear probe on constructed features, the choice of C, the
feature cache, a tiny-model probe trained on the real CIFAR-10 slice whose checkpoint predicts
exactly as sklearn does, infer.py's CSV in both modes, and one-line errors on bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import numbers, require_shared, table_row
from PIL import Image

from hw2_utils import CIFAR10_CLASSES, load_cifar10, run_cli
from p7_clip import infer, probe, train, zeroshot
from p7_clip.report import section
from p7_clip.models import encode_images, load_clip


def _clusters(
    n_per_class: int, seed: int, dim: int = 32, n_classes: int = 10, spread: float = 0.15
):
    """Unit features around one random unit mean per class: linearly separable with a margin."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(n_classes, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = means[y] + spread * np.random.default_rng(seed).normal(size=(len(y), dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_probe_separates_separable_features_and_fails_on_shuffled_labels():
    x, y = _clusters(40, seed=1)
    x_test, y_test = _clusters(30, seed=2)
    fit, val = train.split_train_val(y, seed=0)
    assert len(val) == 40 and np.bincount(y[val]).tolist() == [4] * 10  # stratified 10%
    scores = search(lambda c: train.fit_probe(x[fit], y[fit], c).score(x[val], y[val]))
    c = train.best_c(scores)
    clf = train.fit_probe(x, y, c)
    assert clf.score(x_test, y_test) == 1.0 and scores[c] == 1.0
    shuffled = train.fit_probe(x, np.random.default_rng(3).permutation(y), c)
    assert shuffled.score(x_test, y_test) < 0.3  # chance is 0.1: the probe does read the labels


def search(val_accuracy) -> dict:
    """train.py's search loop: try next_c until it is done."""
    scores = {}
    while (c := train.next_c(scores)) is not None:
        scores[c] = val_accuracy(c)
    return scores


def test_search_refines_around_the_best_decade_and_breaks_ties_towards_small_c():
    tried = []

    def peak_at(log_c: float):
        return lambda c: tried.append(c) or -abs(np.log10(c) - log_c)

    scores = search(peak_at(2.4))  # decades pick 100; 10**2.5 is closer still
    assert (
        train.best_c(scores) == pytest.approx(10**2.5)
        and len(tried) == train.SEARCH_STEPS == len(train.C_DECADES) + 2
    )
    assert tried[: len(train.C_DECADES)] == train.C_DECADES and min(scores) == pytest.approx(
        train.C_DECADES[0]
    )
    flat = search(lambda c: 0.5)
    assert train.best_c(flat) == pytest.approx(train.C_DECADES[0] / 10**0.5)


def test_feature_cache_encodes_once_and_keys_on_model_and_images(tmp_path):
    calls = []

    def encode():
        calls.append(1)
        return {"train": np.arange(6, dtype=np.float32).reshape(2, 3)}

    first, hit1 = train.cached_features(tmp_path / "f.npz", encode)
    second, hit2 = train.cached_features(tmp_path / "f.npz", encode)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first["train"], second["train"])
    a, b = np.zeros((2, 32, 32, 3), np.uint8), np.ones((2, 32, 32, 3), np.uint8)
    keys = {
        train.cache_key("ViT-B-32=tiny", a),
        train.cache_key("ViT-B-32=tiny", b),
        train.cache_key("RN50=tiny", a),
    }
    assert len(keys) == 3 and train.cache_key("ViT-B-32=tiny", a) in keys


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One probe trained by train.py on the whole real slice with the tiny ViT."""
    npz = require_shared("cifar10", "cifar10_slice.npz")
    out = tmp_path_factory.mktemp("probe")
    record = train.main(
        ["--clip", "ViT-B-32=tiny", "--data", str(npz), "--out", str(out), "--device", "cpu"]
    )
    return npz, out, record


def test_train_on_real_slice_checkpoint_reproduces_sklearn(trained):
    npz, out, record = trained
    cached = sorted((out / "cache").iterdir())
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "cache",
        "last.pt",
        "log.csv",
        "model.pt",
        "result.json",
    ]
    assert len(cached) == 1
    assert record["images"] == {"fit": 4576, "val": 509, "train": 5085, "test": 1017}
    assert json.loads((out / "result.json").read_text())["metrics"] == record
    assert record["val_accuracy"][f"{record['C']:.4g}"] == max(record["val_accuracy"].values())
    assert set(record["zero_shot_accuracy"]) == {zeroshot.BASELINE, zeroshot.ENSEMBLE}

    state = probe.load_probe(out / "model.pt")
    assert state["clip"] == "ViT-B-32=tiny" and state["classes"] == list(CIFAR10_CLASSES)
    assert state["coef"].shape == (10, 32) and state["intercept"].shape == (10,)
    with np.load(cached[0]) as z:
        x_train, x_test = z["train"], z["test"]
    y_train = load_cifar10(npz, "train")[1]
    y_test = load_cifar10(npz, "test")[1]
    # refit with the chosen C: L-BFGS is deterministic
    clf = train.fit_probe(x_train, y_train, state["C"])
    np.testing.assert_array_equal(state["coef"].numpy(), clf.coef_)
    preds = probe.probe_predict(state, x_test)
    np.testing.assert_array_equal(preds, clf.predict(x_test))
    assert record["test_accuracy"] == round(float((preds == y_test).mean()), 4)
    # Random tiny features still carry some linearly readable signal; labels misaligned with
    # the images would leave the probe at chance (0.1).
    assert record["test_accuracy"] > 0.2


def test_infer_on_cifar_test_set_matches_the_training_record(trained, tmp_path, capsys):
    npz, out, record = trained
    preds = infer.main(
        ["--probe", str(out / "model.pt"), "--data", str(npz), "--out", str(tmp_path / "p.csv")]
    )
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_name", "label"] and len(rows) == 1018
    assert rows[1][0] == "cifar_test_00000" and [int(r[1]) for r in rows[1:]] == preds.tolist()
    assert f"accuracy {record['test_accuracy']:.4f}" in capsys.readouterr().out


def test_infer_folder_one_row_per_image_with_probe_and_zeroshot(trained, tmp_path, capsys):
    npz, out, _ = trained
    images, labels = load_cifar10(npz, "test", limit=5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["b.png", "a.jpg", "c10.png", "c9.bmp", "Z.png"]
    for name, im in zip(names, images):
        Image.fromarray(im).save(folder / name, quality=100)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text(
        "image_name,label\n"
        + "".join(
            f"{n},{CIFAR10_CLASSES[y] if i % 2 else y}\n"
            for i, (n, y) in enumerate(zip(names, labels))
        )
    )
    state = probe.load_probe(out / "model.pt")
    clip = load_clip("ViT-B-32=tiny")
    files = sorted(folder / n for n in names)  # byte order: upper case first, "c10" before "c9"
    features = encode_images(clip, [Image.open(f).convert("RGB") for f in files])
    class_emb = zeroshot.class_embeddings(
        clip, CIFAR10_CLASSES, zeroshot.DESIGNS[zeroshot.BASELINE]
    )
    expected = {
        "probe": probe.probe_predict(state, features.numpy()),
        "zeroshot": zeroshot.predict(features, class_emb).numpy(),
    }
    for mode, args in {
        "probe": ["--probe", str(out / "model.pt"), "--labels", str(tmp_path / "labels.csv")],
        "zeroshot": ["--zeroshot", "--clip", "ViT-B-32=tiny", "--design", zeroshot.BASELINE],
    }.items():
        csv_path = tmp_path / f"{mode}.csv"
        infer.main([*args, "--images", str(folder), "--out", str(csv_path)])
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["image_name"] for r in rows] == ["Z.png", "a.jpg", "b.png", "c10.png", "c9.bmp"]
        assert [int(r["label"]) for r in rows] == expected[mode].tolist()
    truth = dict(zip(names, labels.tolist()))
    correct = sum(int(p == truth[f.name]) for p, f in zip(expected["probe"], files))
    assert f"accuracy {correct / 5:.4f} ({correct}/5)" in capsys.readouterr().out


def test_report_quotes_the_probe_record(trained, tmp_path):
    assert "_No probe record yet: run `python -m p7_clip.train --clip ViT-B-32=" in section(
        tmp_path
    )
    _, out, record = trained
    (tmp_path / "p7" / "probe" / "ViT-B-32_tiny").mkdir(parents=True)
    (tmp_path / "p7" / "probe" / "ViT-B-32_tiny" / "result.json").write_text(
        (out / "result.json").read_text()
    )
    text = section(tmp_path)
    zs = record["zero_shot_accuracy"]
    row = table_row(text, "ViT-B-32 (tiny random)")
    assert numbers(row["train / test images"]) == [5085, 1017]
    assert float(row["C"]) == pytest.approx(record["C"], rel=1e-5)
    shown = [numbers(row[column])[0] for column in ("val", "linear probe")]
    assert shown == pytest.approx(
        [100 * max(record["val_accuracy"].values()), 100 * record["test_accuracy"]], abs=0.005
    )
    for design in (zeroshot.BASELINE, zeroshot.ENSEMBLE):
        assert numbers(row[f"zero-shot `{design}`"]) == pytest.approx([100 * zs[design]], abs=0.005)
    assert "tiny random-weight models" in text and "No probe record" not in text


def _error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys):
    npz, out, _ = trained
    probe, pred = str(out / "model.pt"), tmp_path / "pred.csv"
    (tmp_path / "empty").mkdir()
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "x.png")
    torch.save({"coef": torch.zeros(2)}, tmp_path / "foreign.pt")
    cifar, one = ["--data", str(npz)], ["--images", str(tmp_path / "one")]
    cases = {
        f"probe checkpoint not found: {tmp_path / 'none.pt'}": [
            "--probe",
            str(tmp_path / "none.pt"),
            *one,
        ],
        "holds no images": ["--probe", probe, "--images", str(tmp_path / "empty")],
        "is not a P7 probe checkpoint (torch.load": ["--probe", str(npz), *cifar],
        "lacks clip/coef": ["--probe", str(tmp_path / "foreign.pt"), *cifar],
        "--zeroshot needs --clip": ["--zeroshot", *cifar],
        "not the architecture": ["--probe", probe, "--clip", "RN50=tiny", *cifar],
    }
    for message, argv in cases.items():
        assert message in _error(infer.main, [*argv, "--out", str(pred)], capsys)
    assert not pred.exists()
    train_argv = ["--clip", "ViT-B-32=tiny", "--out", str(tmp_path / "t")]
    assert "lack classes" in _error(
        train.main, [*train_argv, "--data", str(npz), "--limit", "5"], capsys
    )
    assert "CIFAR-10 npz not found" in _error(
        train.main, [*train_argv, "--data", str(tmp_path / "no.npz")], capsys
    )
