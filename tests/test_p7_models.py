"""p7_clip/models.py and similarity.py: weight-loading errors, the folder form of real weights,
and the similarity matrix against independently computed cosines."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hw2_utils import CLIError, run_cli
from p7_clip import similarity, zeroshot
from p7_clip.models import encode_images, encode_texts, load_clip, tiny_config


@pytest.fixture(scope="module")
def vit():
    return load_clip("ViT-B-32=tiny")


def _images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)
    ]


def test_missing_weight_file_is_one_line_naming_file_and_source(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            lambda: zeroshot.main(
                [
                    "--clip",
                    f"ViT-B-32={missing}",
                    "--data",
                    str(tmp_path / "x.npz"),
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        str(missing) in err
        and "huggingface-cli download timm/vit_base_patch32_clip_224.openai" in err
    )
    with pytest.raises(CLIError, match="timm/resnet50_clip.openai"):
        load_clip(f"RN50={missing}")
    with pytest.raises(CLIError, match="open_clip_config.json"):
        load_clip(f"ViT-B-32={tmp_path}")  # a folder, but not a model folder
    with pytest.raises(CLIError, match="ARCH=WEIGHTS"):
        load_clip("ViT-B-32")


def test_real_weights_load_from_an_open_clip_folder(tmp_path, vit):
    """The offline route for real weights (a hub snapshot: config + state dict) rebuilds the
    same network: identical embeddings."""
    cfg = {"model_cfg": tiny_config("ViT-B-32"), "preprocess_cfg": vit.model.visual.preprocess_cfg}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save(vit.model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    loaded = load_clip(f"ViT-B-32={tmp_path}")
    images, texts = _images(2), ["a photo of a cat.", "a dog"]
    torch.testing.assert_close(encode_images(loaded, images), encode_images(vit, images))
    torch.testing.assert_close(encode_texts(loaded, texts), encode_texts(vit, texts))
    assert not torch.allclose(*encode_texts(loaded, texts))  # the embeddings do depend on the input


def test_tiny_models_are_seeded_whatever_the_global_rng(vit):
    torch.manual_seed(123)
    assert torch.equal(load_clip("ViT-B-32=tiny").model.visual.proj, vit.model.visual.proj)


def test_similarity_matrix_bounds_and_diagonal_equals_independent_cosines(vit):
    images, texts = (
        _images(4),
        ["a red car", "two cats on a sofa", "snowy mountain", "a bowl of soup"],
    )
    sim = similarity.similarity_matrix(encode_images(vit, images), encode_texts(vit, texts))
    assert sim.shape == (4, 4)
    assert sim.min() >= -1 - 1e-6 and sim.max() <= 1 + 1e-6
    with torch.no_grad():
        for i, (im, text) in enumerate(zip(images, texts)):
            a = vit.model.encode_image(vit.preprocess(im)[None])  # unnormalised, one pair at a time
            b = vit.model.encode_text(vit.tokenizer([text]))
            assert abs(float(F.cosine_similarity(a, b)) - float(sim[i, i])) < 1e-5
    assert not torch.allclose(sim, sim.T)  # rows are images, columns texts: not a symmetric matrix


def test_similarity_cli_writes_csv_figure_and_record(tmp_path):
    names = []
    for i, im in enumerate(_images(3)):
        names.append(f"im{i}.png")
        im.save(tmp_path / names[-1])
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["image", "text"], *[[n, f"text number {i}"] for i, n in enumerate(names)]]
        )
    out = tmp_path / "out"
    record = similarity.main(
        ["--clip", "ViT-B-32=tiny", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out)]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "similarity.json",
        "similarity_ViT-B-32_tiny.csv",
        "similarity_ViT-B-32_tiny.png",
    ]
    with open(out / "similarity_ViT-B-32_tiny.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert (
        rows[0] == ["image", "text number 0", "text number 1", "text number 2"]
        and [r[0] for r in rows[1:]] == names
    )
    matrix = record["models"]["ViT-B-32 (tiny random)"]["matrix"]
    assert [float(v) for r in rows[1:] for v in r[1:]] == pytest.approx(
        [v for r in matrix for v in r], abs=1e-4
    )
    assert json.loads((out / "similarity.json").read_text())["texts"] == [
        "text number 0",
        "text number 1",
        "text number 2",
    ]
