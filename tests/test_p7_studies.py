"""p7_clip zero-shot, retrieval and robustness: the prompt ensemble against open_clip's own
classifier builder, decisions on constructed embeddings, Recall@k on a hand-made ranking,
the COCO loader on the real slice, and the CLIs' outputs on real images with a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_shared
from sklearn.metrics import confusion_matrix as sk_confusion

from hw2_utils import CLIError, make_generator
from p7_clip import retrieval, robustness, zeroshot
from p7_clip.data import load_coco
from p7_clip.models import load_clip


@pytest.fixture(scope="module")
def vit():
    return load_clip("ViT-B-32=tiny")


def test_ensemble_matches_open_clip_zero_shot_classifier(vit):
    from open_clip import build_zero_shot_classifier

    names = ["cat", "dog", "truck"]
    ours = zeroshot.class_embeddings(vit, names, zeroshot.CIFAR_TEMPLATES)
    with torch.no_grad():
        reference = build_zero_shot_classifier(
            vit.model, vit.tokenizer, names, zeroshot.CIFAR_TEMPLATES
        ).T
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert len(set(zeroshot.CIFAR_TEMPLATES)) == 18 and all(
        t.count("{}") == 1 for t in zeroshot.CIFAR_TEMPLATES
    )


def test_zero_shot_picks_the_class_whose_text_matches():
    """Images of class c lie along e_c. Template t describes class c as e_c + 1.5 e_(c+1+t):
    each template alone confuses every class with another one, and each with a different one,
    so only their ensemble points every class text at its own images."""
    n_classes = 5
    basis = torch.eye(n_classes)
    per_template = F.normalize(
        torch.stack([basis + 1.5 * basis.roll(-(1 + t), dims=0) for t in range(n_classes - 1)]),
        dim=-1,
    )
    labels = torch.arange(n_classes).repeat(3)
    images = basis[labels]
    assert torch.equal(zeroshot.predict(images, zeroshot.ensemble(per_template)), labels)
    for single in per_template:
        assert (zeroshot.predict(images, single) == labels).sum() == 0


def test_confusion_matrix_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 10, 300), rng.integers(0, 10, 300)
    np.testing.assert_array_equal(
        zeroshot.confusion_matrix(labels, preds, 10), sk_confusion(labels, preds, labels=range(10))
    )


def test_zeroshot_cli_on_real_cifar_slice(tmp_path):
    npz = require_shared("cifar10", "cifar10_slice.npz")
    record = zeroshot.main(
        ["--clip", "ViT-B-32=tiny", "--data", str(npz), "--limit", "40", "--out", str(tmp_path)]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_ViT-B-32_tiny.png",
        "zeroshot.json",
        "zeroshot.md",
    ]
    acc = record["accuracy"]["ViT-B-32 (tiny random)"]
    assert list(acc) == list(zeroshot.DESIGNS)
    matrix = np.array(record["confusion"]["ViT-B-32 (tiny random)"]["matrix"])
    assert matrix.sum() == 40 and np.trace(matrix) / 40 == pytest.approx(
        acc[zeroshot.ENSEMBLE], abs=1e-4
    )
    # rows of the confusion matrix are the true class counts of the first 40
    with np.load(npz) as z:
        np.testing.assert_array_equal(
            matrix.sum(1), np.bincount(z["test_labels"][:40], minlength=10)
        )
    # header, separator, rows
    assert (tmp_path / "zeroshot.md").read_text().count("\n| ") == 2 + len(zeroshot.DESIGNS)


def test_recall_at_k_on_a_hand_made_ranking():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3],  # ranking 0, 2, 3, 1
            [0.2, 0.8, 0.7, 0.1],  # ranking 1, 2, 0, 3
            [0.4, 0.3, 0.2, 0.1],  # ranking 0, 1, 2, 3
        ]
    )
    positives = torch.tensor(
        [
            [False, False, True, False],  # right answer at rank 2
            [True, False, False, True],  # best right answer at rank 3
            [False, False, False, True],  # right answer at rank 4
        ]
    )
    assert retrieval.recall_at_k(scores, positives, ks=(1, 2, 3, 4)) == pytest.approx(
        {1: 0, 2: 1 / 3, 3: 2 / 3, 4: 1}
    )


def test_both_directions_count_any_own_caption_for_images():
    # Two images; image 0 owns captions 0, 1, image 1 owns caption 2. Caption 1 points at image 1.
    image_emb = torch.eye(3)[:2]
    text_emb = F.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [0.2, 1.0, 0.0], [0.0, 1.0, 0.1]]), dim=-1
    )
    r = retrieval.both_directions(image_emb, text_emb, torch.tensor([0, 0, 1]))
    assert r["text_to_image"][1] == pytest.approx(2 / 3) and r["text_to_image"][5] == 1.0
    # image 0 finds caption 0, image 1 finds caption 2 first
    assert r["image_to_text"][1] == pytest.approx(1.0)


def test_coco_loader_on_the_shared_slice():
    root = require_shared("coco")
    images = load_coco(root, limit=100)
    assert len(images) == 79 and all(len(im.captions) == 5 for im in images)
    assert images[0].path.name == "000000397133.jpg" and images[0].path.is_file()
    assert "A man is in a kitchen making pizzas." in images[0].captions
    assert [im.image_id for im in load_coco(root, limit=10)] == [im.image_id for im in images[:10]]
    with pytest.raises(CLIError, match="COCO captions json not found"):
        load_coco(root / "val2017")


def test_retrieval_cli_on_real_coco(tmp_path):
    root = require_shared("coco")
    record = retrieval.main(
        [
            "--clip",
            "ViT-B-32=tiny",
            "--data",
            str(root),
            "--n",
            "6",
            "--top-k",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "query_ViT-B-32_tiny.png",
        "retrieval.json",
        "retrieval.md",
    ]
    assert (
        record["images"] == 6
        and record["captions"] == 30
        and len(record["top"]["ViT-B-32 (tiny random)"]) == 3
    )
    saved = json.loads((tmp_path / "retrieval.json").read_text())["recall"][
        "ViT-B-32 (tiny random)"
    ]
    assert saved["text_to_image"]["10"] == 1.0  # 6 images: every caption's image is in the top 10
    for k in ("1", "5"):  # recall counts whole captions (of 30) and whole images (of 6)
        assert (
            round(saved["text_to_image"][k] * 30, 6).is_integer()
            and round(saved["image_to_text"][k] * 6, 6).is_integer()
        )


def test_perturbations():
    g = make_generator(0)
    images = torch.rand(4, 3, 32, 32, generator=g)
    assert robustness.perturb(images, "rotation", 0, g) is images
    torch.testing.assert_close(
        robustness.perturb(images, "rotation", 180, g), images.flip(-1, -2), atol=1e-5, rtol=0
    )
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(robustness.perturb(flat, "gaussian_blur", 2.0, g), flat)
    a = robustness.perturb(images, "gaussian_noise", 0.2, make_generator(5))
    assert torch.equal(a, robustness.perturb(images, "gaussian_noise", 0.2, make_generator(5)))
    # clamping shrinks it below 0.2
    assert a.min() >= 0 and a.max() <= 1 and 0.1 < (a - images).std() < 0.2


def test_robustness_scores_and_cli(tmp_path):
    emb = torch.eye(3)
    s = robustness.scores(emb, torch.eye(3), torch.tensor([0, 1, 0]), scale=100.0)
    assert s["accuracy"] == pytest.approx(2 / 3, abs=1e-4) and s[
        "true_class_probability"
    ] == pytest.approx(2 / 3, abs=1e-3)
    npz = require_shared("cifar10", "cifar10_slice.npz")
    record = robustness.main(
        ["--clip", "ViT-B-32=tiny", "--data", str(npz), "--limit", "12", "--out", str(tmp_path)]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["robustness.json", "robustness.png"]
    by_kind = record["results"]["ViT-B-32 (tiny random)"]
    assert {k: len(v) for k, v in by_kind.items()} == {
        k: len(v) for k, v in robustness.LEVELS.items()
    }
    # level 0: clean
    assert by_kind["gaussian_noise"][0] == by_kind["rotation"][0] == by_kind["gaussian_blur"][0]
