"""p7_clip/maskclip.py: the dense value-path features against a reference computed through
open_clip's own blocks and PyTorch's attention, the 1x1-conv classification, the paper's two
refinements, mIoU, and the CLI on real images."""
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


@torch.no_grad()
def test_vit_dense_features_equal_attention_restricted_to_each_token_itself(vit):
    """Reference: open_clip's forward_intermediates gives the input of the last block; that
    block's own nn.MultiheadAttention, masked so that every token attends only to itself,
    returns out_proj(value) per token; then ln_post and proj."""
    visual = vit.model.visual
    pixels = _pixels(vit.image_size)
    n_blocks = len(visual.transformer.resblocks)
    inter = visual.forward_intermediates(pixels, indices=[n_blocks - 2], output_fmt="NLC", output_extra_tokens=True)
    x = torch.cat([inter["image_intermediates_prefix"][0], inter["image_intermediates"][0]], dim=1)
    last = visual.transformer.resblocks[-1]
    y = last.ln_1(x)
    self_only = torch.full((x.shape[1], x.shape[1]), float("-inf")).fill_diagonal_(0)
    attended = last.attn(y, y, y, attn_mask=self_only, need_weights=False)[0]
    reference = (visual.ln_post(attended) @ visual.proj)[:, 1:]

    features, keys = maskclip.vit_dense(visual, pixels)
    grid = vit.image_size // visual.patch_size[0]
    assert features.shape == (2, vit.model.visual.output_dim, grid, grid) and keys.shape[-2:] == (grid, grid)
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), reference, atol=1e-5, rtol=1e-5)
    # ...and it is not what the full attention gives (the q-k mixing really is skipped).
    full = visual.ln_post(last.attn(y, y, y, need_weights=False)[0]) @ visual.proj
    assert not torch.allclose(full[:, 1:], reference, atol=1e-3)


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
        tokens, tokens, tokens, tokens.shape[-1], pool.num_heads, None,
        torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
        pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False,
        attn_mask=torch.full((len(tokens), len(tokens)), float("-inf")).fill_diagonal_(0),
        use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight)
    features, _ = maskclip.resnet_dense(visual, pixels)
    torch.testing.assert_close(features.flatten(2).permute(2, 0, 1), reference, atol=1e-5, rtol=1e-5)


def test_patches_get_the_class_whose_text_embedding_they_match():
    class_emb = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    truth = torch.tensor([[0, 1, 2], [3, 3, 1]])
    features = (3.0 * class_emb[truth]).permute(2, 0, 1)[None]  # (1, D, 2, 3), scale does not matter
    logits = maskclip.patch_logits(features, class_emb, scale=100.0)
    assert logits.shape == (1, 4, 2, 3)
    assert torch.equal(logits[0].argmax(0), truth)
    torch.testing.assert_close(logits[0, truth[0, 0], 0, 0], torch.tensor(100.0))


def test_segment_shape_and_class_count(vit):
    class_emb = F.normalize(torch.randn(7, vit.model.visual.output_dim), dim=-1)
    for smoothing, denoise in ((None, None), (0.3, 0.2)):
        logits = maskclip.segment(vit, _pixels(48, n=1, width=40), class_emb, (50, 61), smoothing, denoise)
        assert logits.shape == (1, 7, 50, 61)
        assert 0 <= int(logits.argmax(1).min()) and int(logits.argmax(1).max()) < 7


def test_key_smoothing_and_prompt_denoising():
    logits = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    keys = torch.eye(4)[:, :, None].reshape(4, 2, 2)[None]  # four orthogonal keys: no neighbour
    torch.testing.assert_close(maskclip.key_smoothing(logits, keys, 0.5), logits)
    same = torch.ones(1, 4, 2, 2)  # one key everywhere: every patch votes with all
    torch.testing.assert_close(maskclip.key_smoothing(logits, same, 0.5), logits.mean((2, 3), keepdim=True).expand_as(logits))

    confident = torch.tensor([[[[9.0, 0.0]], [[0.0, 9.0]], [[1.0, 1.0]]]])  # class 2 never above ~0.5
    out = maskclip.prompt_denoise(confident, threshold=0.6)
    assert torch.isinf(out[0, 2]).all() and torch.equal(out[0, :2], confident[0, :2])
    weak = torch.zeros(1, 3, 1, 2)  # all classes at 1/3: the best one stays
    assert torch.isfinite(maskclip.prompt_denoise(weak, 0.9)).any(dim=1).all()


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
        label = np.zeros((48, 64), dtype=np.uint8)  # reduce-zero-label: 0 -> ignore, 1 -> class 0, 2 -> class 1
        label[:, 32:] = 2
        label[:24, :32] = 1
        Image.fromarray(label).save(masks / f"{name.rsplit('.', 1)[0]}.png")
    out = tmp_path / "out"
    record = maskclip.main(["--clip", "ViT-B-32=tiny", "--images", str(images), "--classes", "sky,grass,person",
                            "--masks", str(masks), "--reduce-zero-label", "--size", "48", "--templates", "single",
                            "--out", str(out)])
    stems = [n.rsplit(".", 1)[0] for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["maskclip.json", *(f"overlay_{s}.png" for s in stems), *(f"pred_{s}.png" for s in stems)])
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
    assert saved["classes"] == ["sky", "grass", "person"] and saved == json.loads(json.dumps(record))
    assert saved["miou"] == pytest.approx(np.mean(tp[union > 0] / union[union > 0]), abs=1e-4)
