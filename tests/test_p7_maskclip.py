"""p7_clip/maskclip.py: the dense features against references written from the official code
(chongzhou96/MaskCLIP) and through open_clip's own blocks and PyTorch's attention, the 1x1-conv
classification, the paper's two refinements against hand computations, mIoU, and the CLI on
real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_shared
from PIL import Image

from p7_clip import maskclip
from p7_clip.models import load_clip


@pytest.fixture(scope="module")
def vit():
    return load_clip("ViT-B-32=tiny")


@pytest.fixture(scope="module")
def rn50():
    return load_clip("RN50=tiny")


def _pixels(size: int, n: int = 2, width: int | None = None) -> torch.Tensor:
    return torch.randn(n, 3, size, width or size, generator=torch.Generator().manual_seed(0))


def _last_block_input(visual, pixels: torch.Tensor) -> torch.Tensor:
    """The tokens entering the last block, class token first, from open_clip's own forward."""
    n_blocks = len(visual.transformer.resblocks)
    inter = visual.forward_intermediates(
        pixels, indices=[n_blocks - 2], output_fmt="NLC", output_extra_tokens=True
    )
    return torch.cat(
        [inter["image_intermediates_prefix"][0], inter["image_intermediates"][0]], dim=1
    )


@torch.no_grad()
def test_vit_dense_features_and_keys_equal_the_official_value_path(vit):
    """Reference written from the official backbone (mmseg/models/backbones/vit.py, return_qkv):
    LN_1, the packed in-projection split into q, k, v, each sent through out_proj; then
    v += x, v += MLP(LN_2 v); ln_post (final_norm) and the head's 1x1 proj."""
    visual = vit.model.visual
    pixels = _pixels(vit.image_size)
    x = _last_block_input(visual, pixels)
    last = visual.transformer.resblocks[-1]
    b, n, width = x.shape
    qkv = F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias)
    _, k, value = last.attn.out_proj(qkv.view(b, n, 3, width).permute(2, 0, 1, 3)).unbind(0)
    v = value + x
    v = v + last.mlp(last.ln_2(v))
    reference = (visual.ln_post(v) @ visual.proj)[:, 1:]

    features, keys = maskclip.vit_dense(visual, pixels)
    grid = vit.image_size // visual.patch_size[0]
    assert features.shape == (2, visual.output_dim, grid, grid) and keys.shape == (
        2,
        width,
        grid,
        grid,
    )
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keys.flatten(2).transpose(1, 2), k[:, 1:], atol=1e-5, rtol=1e-5)
    # The same as open_clip's own last block with every token attending only to itself...
    self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0)
    block = visual.ln_post(last(x, attn_mask=self_only)) @ visual.proj
    torch.testing.assert_close(block[:, 1:], reference, atol=1e-5, rtol=1e-5)
    # ...and neither the full attention nor the residual-free value path (ClearCLIP's).
    full = visual.ln_post(last(x)) @ visual.proj
    bare = visual.ln_post(value) @ visual.proj
    assert not torch.allclose(full[:, 1:], reference, atol=1e-3)
    assert not torch.allclose(bare[:, 1:], reference, atol=1e-3)


@torch.no_grad()
def test_vit_tokens_match_open_clip_and_resize_the_positional_grid(vit):
    visual = vit.model.visual
    pixels = _pixels(vit.image_size)
    torch.testing.assert_close(maskclip._vit_tokens(visual, pixels), visual._embeds(pixels))
    features, _ = maskclip.vit_dense(visual, _pixels(48, width=64))  # not the training size
    assert features.shape[-2:] == (48 // 8, 64 // 8)


@torch.no_grad()
def test_resnet_dense_features_equal_self_only_attention_pool(rn50):
    visual = rn50.model.visual
    pixels = _pixels(rn50.image_size)
    x = visual.stem(pixels)
    for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = stage(x)
    tokens = x.flatten(2).permute(2, 0, 1)  # (HW, B, C), no positional embedding
    pool = visual.attnpool
    reference, _ = F.multi_head_attention_forward(
        tokens,
        tokens,
        tokens,
        tokens.shape[-1],
        pool.num_heads,
        None,
        torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        None,
        None,
        False,
        0.0,
        pool.c_proj.weight,
        pool.c_proj.bias,
        training=False,
        need_weights=False,
        attn_mask=torch.full((len(tokens), len(tokens)), float("-inf")).fill_diagonal_(0),
        use_separate_proj_weight=True,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
    )
    features, _ = maskclip.resnet_dense(visual, pixels)
    torch.testing.assert_close(
        features.flatten(2).permute(2, 0, 1), reference, atol=1e-5, rtol=1e-5
    )


def test_patches_get_the_class_whose_text_embedding_they_match():
    class_emb = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    truth = torch.tensor([[0, 1, 2], [3, 3, 1]])
    # (1, D, 2, 3), scale does not matter
    features = (3.0 * class_emb[truth]).permute(2, 0, 1)[None]
    cosines = maskclip.patch_cosines(features, class_emb)
    assert cosines.shape == (1, 4, 2, 3)
    assert torch.equal(cosines[0].argmax(0), truth)
    torch.testing.assert_close(cosines[0, truth[0, 0], 0, 0], torch.tensor(1.0))


def test_segment_shape_and_class_count(vit):
    class_emb = F.normalize(torch.randn(7, vit.model.visual.output_dim), dim=-1)
    for smoothing, denoise in ((None, None), (0.3, 0.2), (1.0, 0.5)):
        logits = maskclip.segment(
            vit, _pixels(48, n=1, width=40), class_emb, (50, 61), smoothing, denoise
        )
        assert logits.shape == (1, 7, 50, 61) and not logits.isnan().any()
        assert 0 <= int(logits.argmax(1).min()) and int(logits.argmax(1).max()) < 7


def test_key_smoothing_equals_a_hand_computation_on_a_1x3_grid():
    """Official refine_output: p = softmax(100 cos); each patch whose top p is below T gets
    sum_j w_ij p_j, w = k k^T with every key channel unit over the patches."""
    # (C, N): patch 0 sure, 1 and 2 not
    cos = torch.tensor([[0.10, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.01, 0.0]])
    # (width, N): both channels have norm sqrt(2)
    keys = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    e10, e1 = torch.exp(torch.tensor(10.0)), torch.exp(torch.tensor(1.0))
    p0 = torch.stack([e10, torch.tensor(1.0), torch.tensor(1.0)]) / (e10 + 2)
    p1 = torch.stack([torch.tensor(1.0), torch.tensor(1.0), e1]) / (e1 + 2)  # top 0.58
    p2 = torch.full((3,), 1 / 3)
    # k / sqrt(2) per channel: w = [[1/2, 1/2, 0], [1/2, 1, 1/2], [0, 1/2, 1/2]]
    expected = torch.stack([p0, p0 / 2 + p1 + p2 / 2, p1 / 2 + p2 / 2], dim=1)
    out = maskclip.key_smoothing(cos.reshape(1, 3, 1, 3), keys.reshape(1, 2, 1, 3), threshold=0.9)
    torch.testing.assert_close(out.reshape(3, 3), expected, atol=1e-6, rtol=1e-6)
    # T = 1: every patch (p0 tops out at 0.99991) is smoothed; T = 0: none, the probabilities stay.
    everywhere = maskclip.key_smoothing(
        cos.reshape(1, 3, 1, 3), keys.reshape(1, 2, 1, 3), threshold=1.0
    )
    torch.testing.assert_close(
        everywhere.reshape(3, 3)[:, 0], p0 / 2 + p1 / 2, atol=1e-6, rtol=1e-6
    )
    nowhere = maskclip.key_smoothing(
        cos.reshape(1, 3, 1, 3), keys.reshape(1, 2, 1, 3), threshold=0.0
    )
    torch.testing.assert_close(
        nowhere.reshape(3, 3), torch.stack([p0, p1, p2], dim=1), atol=1e-6, rtol=1e-6
    )


def test_key_smoothing_is_finite_at_threshold_one_and_pools_identical_keys():
    # no probability rounds to 1
    cos = 0.02 * torch.randn(2, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    keys = torch.randn(2, 8, 4, 6, generator=torch.Generator().manual_seed(1))
    keys[:, 3] = 0  # a dead channel: F.normalize's eps keeps it at 0, not 0/0
    out = maskclip.key_smoothing(cos, keys, threshold=1.0)
    assert torch.isfinite(out).all()
    # One key everywhere: each channel becomes sign/sqrt(N), w = width/N, so every unsure patch
    # gets width/N times the sum of all probabilities.
    same = torch.randn(1, 8, 1, 1).expand(1, 8, 4, 6)
    probs = (100 * cos[:1]).softmax(dim=1)
    torch.testing.assert_close(
        maskclip.key_smoothing(cos[:1], same, 1.0),
        (8 / 24 * probs.sum((2, 3), keepdim=True)).expand_as(probs),
        atol=1e-5,
        rtol=1e-5,
    )


def test_prompt_denoising_keeps_the_classes_confident_somewhere():
    # softmax(100 cos): class 2 <= e/(e^9+e+1)
    cos = torch.tensor([[[[0.09, 0.0]], [[0.0, 0.09]], [[0.01, 0.01]]]])
    assert maskclip.kept_classes(cos, threshold=0.6).tolist() == [[True, True, False]]
    # the best always stays
    assert maskclip.kept_classes(cos, threshold=1.0).tolist() == [[True, False, False]]
    weak = torch.zeros(1, 3, 1, 2)  # all classes at 1/3
    assert maskclip.kept_classes(weak, 0.9).sum() == 1


@pytest.mark.parametrize("model", ["vit", "rn50"])
@torch.no_grad()
def test_segment_never_labels_a_removed_class_at_any_output_size(model, request):
    """The kept classes, recomputed here from the patch cosines, are the only labels, with or
    without key smoothing, at upsampled, same and downsampled sizes; no score is NaN."""
    clip = request.getfixturevalue(model)
    visual = clip.model.visual
    class_emb = F.normalize(
        torch.randn(6, visual.output_dim, generator=torch.Generator().manual_seed(2)), dim=-1
    )
    pixels = _pixels(64, n=1, width=96)
    features, _ = maskclip.dense_features(visual, pixels)
    probs = (
        (100 * torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), class_emb))
        .softmax(1)
        .amax((2, 3))[0]
    )
    removed_somewhere = False
    for denoise in (0.5, 0.99, 1.0):
        keep = (probs >= denoise) | (torch.arange(6) == probs.argmax())
        removed_somewhere |= bool((~keep).any())
        for smoothing in (None, 0.5, 1.0):
            for size in ((100, 150), (64, 96), (7, 5), (333, 41)):
                scores = maskclip.segment(clip, pixels, class_emb, size, smoothing, denoise)
                assert not scores.isnan().any()
                assert set(scores[0].argmax(0).unique().tolist()) <= set(
                    keep.nonzero().flatten().tolist()
                )
    assert removed_somewhere


def test_templates_are_the_official_85():
    t = maskclip.templates("maskclip85")
    assert (
        len(t) == len(set(t)) == 85
        and maskclip.parse_args(
            ["--clip", "x", "--data", "i", "--classes", "a,b", "--out", "o"]
        ).templates
        == "maskclip85"
    )
    assert t[:80] == maskclip.templates("imagenet80") and t[0] == "a bad photo of a {}."
    assert t[80:] == [
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {} in the scene.",
        "this is the {} in the scene.",
        "this is one {} in the scene.",
    ]


@pytest.mark.parametrize("flag", ["--key-smoothing", "--denoise"])
def test_thresholds_outside_0_1_are_cli_errors(flag, tmp_path):
    with pytest.raises(maskclip.CLIError, match=flag):
        maskclip.main(
            [
                "--clip",
                "ViT-B-32=tiny",
                "--data",
                str(tmp_path),
                "--classes",
                "a,b",
                flag,
                "1.5",
                "--out",
                str(tmp_path / "out"),
            ]
        )


def test_mean_iou_on_a_hand_made_example():
    mask = np.array([[0, 0, 1, 1], [2, 2, maskclip.IGNORE, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion = np.zeros((4, 4), dtype=np.int64)
    maskclip.update_confusion(confusion, mask, pred)
    miou, iou = maskclip.mean_iou(confusion)
    # class 0: tp 1, union 3; class 1: tp 3, union 4; class 2: tp 1, union 2; class 3 absent
    np.testing.assert_allclose(iou[:3], [1 / 3, 3 / 4, 1 / 2])
    assert np.isnan(iou[3]) and miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_maskclip_cli_on_real_images_with_masks(tmp_path):
    val = require_shared("coco", "val2017")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    names = sorted(p.name for p in val.iterdir())[:2]
    for name in names:
        with Image.open(val / name) as im:
            small = im.convert("RGB").resize((64, 48))
        small.save(images / name)
        # reduce-zero-label: 0 -> ignore, 1 -> class 0, 2 -> class 1
        label = np.zeros((48, 64), dtype=np.uint8)
        label[:, 32:] = 2
        label[:24, :32] = 1
        Image.fromarray(label).save(masks / f"{name.rsplit('.', 1)[0]}.png")
    out = tmp_path / "out"
    record = maskclip.main(
        [
            "--clip",
            "ViT-B-32=tiny",
            "--data",
            str(images),
            "--classes",
            "sky,grass,person",
            "--masks",
            str(masks),
            "--reduce-zero-label",
            "--size",
            "48",
            "--templates",
            "single",
            "--key-smoothing",
            "1.0",
            "--denoise",
            "0.5",
            "--out",
            str(out),
        ]
    )
    stems = [n.rsplit(".", 1)[0] for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["maskclip.json", *(f"overlay_{s}.png" for s in stems), *(f"pred_{s}.png" for s in stems)]
    )
    tp, union = np.zeros(3), np.zeros(3)  # mIoU recomputed from the saved label maps
    for s in stems:
        pred = np.asarray(Image.open(out / f"pred_{s}.png"))
        assert pred.shape == (48, 64) and pred.max() < 3
        truth = np.asarray(Image.open(masks / f"{s}.png")).astype(int) - 1  # -1: ignored
        for c in range(3):
            p_c, t_c = (pred == c) & (truth >= 0), truth == c
            tp[c] += (p_c & t_c).sum()
            union[c] += (p_c | t_c).sum()
    saved = json.loads((out / "maskclip.json").read_text())
    assert saved["classes"] == ["sky", "grass", "person"] and saved == json.loads(
        json.dumps(record)
    )
    assert saved["miou"] == pytest.approx(np.mean(tp[union > 0] / union[union > 0]), abs=1e-4)
