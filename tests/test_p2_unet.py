"""P2 face UNet: the exact state-dict layout of the course's UNet.pt (from the shared spec),
the spec's block formulas, skip wiring, and the loader's errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from hw2_utils import CLIError
from p2_ddim.pipeline import load_unet
from p2_ddim.unet import FaceUNet, ResBlock, SelfAttention

SPECS = Path(os.environ.get("HW2_SHARED_SPECS", REPO.parent / "shared" / "specs"))


@pytest.fixture(scope="module")
def tiny_unet() -> FaceUNet:
    torch.manual_seed(0)
    return FaceUNet(base_channels=32).eval()


def test_state_dict_keys_and_shapes_match_the_spec_exactly():
    path = SPECS / "face_unet_state_dict_shapes.json"
    if not path.is_file():
        pytest.skip(f"spec not found: {path} (set HW2_SHARED_SPECS)")
    spec = json.loads(path.read_text())
    with torch.device("meta"):  # 113.7 M parameters: shapes only, no memory
        model = FaceUNet()
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(spec.items())  # same keys, same shapes, same order
    assert len(ours) == 427
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 113.7


def test_time_embedding_is_sin_then_cos_with_the_spec_frequencies(tiny_unet):
    t = torch.tensor([0, 1, 500, 999])
    freqs = torch.exp(torch.arange(0, 32, 2).float() * (-math.log(10000.0) / 32))
    expected = torch.cat(
        [torch.sin(t[:, None].float() * freqs), torch.cos(t[:, None].float() * freqs)], dim=1
    )
    assert torch.allclose(tiny_unet.time[0](t), expected, atol=1e-6)
    # stored in UNet.pt, so it must be a persistent buffer
    assert "time.0.inv_freq" in tiny_unet.state_dict()


def test_resblock_adds_time_before_norm2_and_attention_is_single_head_softmax():
    torch.manual_seed(1)
    block, attn = ResBlock(32, 64, 16, dropout=0.0).eval(), SelfAttention(64).eval()
    x, temb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    h = block.conv1(F.silu(block.norm1(x))) + block.time[1](F.silu(temb))[:, :, None, None]
    expected = block.conv2(F.silu(block.norm2(h))) + block.skip(x)
    assert torch.allclose(block(x, temb), expected, atol=1e-5)

    y = expected
    q, k, v = attn.qkv(attn.norm(y)).reshape(2, 3, 64, 64).unbind(1)  # channels split q | k | v
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(64), dim=-1)  # (B, HW query, HW key)
    o = (weights @ v.transpose(1, 2)).transpose(1, 2).reshape(2, 64, 8, 8)
    assert torch.allclose(attn(y), attn.out(o) + y, atol=1e-5)


def test_any_size_divisible_by_32_and_skips_concatenate_h_first(tiny_unet):
    seen = {}
    hooks = [
        getattr(tiny_unet, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (i, o))
        )
        for name in ("down18", "mid2", "up1", "up23", "down1")
    ]
    try:
        with torch.no_grad():
            out = tiny_unet(torch.randn(2, 3, 64, 32), torch.tensor([981, 1]))
    finally:
        for hook in hooks:
            hook.remove()
    assert out.shape == (2, 3, 64, 32)
    up1_in = seen["up1"][0][0]
    assert torch.equal(up1_in[:, :128], seen["mid2"][1])  # [h, stack.pop()]: h first ...
    assert torch.equal(up1_in[:, 128:], seen["down18"][1])  # ... then the last down output
    # the first skip is consumed last
    assert torch.equal(seen["up23"][0][0][:, 32:], seen["down1"][1])
    with pytest.raises(ValueError, match="divisible by 32"):
        tiny_unet(torch.randn(1, 3, 48, 32), torch.tensor([1]))


def test_loader_infers_width_and_round_trips(tiny_unet, tmp_path):
    path = tmp_path / "unet.pt"
    torch.save(tiny_unet.state_dict(), path)
    loaded = load_unet(path, torch.device("cpu"))
    assert loaded.base_channels == 32 and not loaded.training
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), tiny_unet(x, t))


def test_loader_names_missing_unexpected_and_misshaped_keys(tiny_unet, tmp_path):
    state = dict(tiny_unet.state_dict())
    del state["up7.attention.qkv.weight"], state["out.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["mid1.resblocks.conv1.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CLIError) as err:
        load_unet(tmp_path / "partial.pt", torch.device("cpu"))
    message = str(err.value)
    assert "2 missing keys [up7.attention.qkv.weight, out.2.bias]" in message
    assert "1 unexpected keys [extra.weight]" in message
    assert "mid1.resblocks.conv1.bias (7,) != (128,)" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "content, match",
    [
        (torch.randn(3), "not a state dict"),
        ({"down1.weight": "not a tensor"}, "not a state dict"),
        (b"garbage", "not a readable PyTorch file"),
    ],
)
def test_loader_rejects_files_that_are_not_unet_state_dicts(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CLIError, match=match):
        load_unet(path, torch.device("cpu"))
    with pytest.raises(CLIError, match="UNet weights not found"):
        load_unet(tmp_path / "absent.pt", torch.device("cpu"))
