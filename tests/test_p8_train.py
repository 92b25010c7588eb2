"""P8 ControlNet fine-tuning on real COCO (Canny, caption) pairs with a tiny SD: only the
ControlNet learns, the loss on a fixed batch falls, and the script's outputs load back."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from conftest import require_shared
from p8_controlnet import train
from p8_controlnet.data import CannyCaptions, read_captions
from p8_controlnet.pipelines import load_controlnet
from stable_diffusion.tiny import build_tiny_sd, save_diffusers_folder


@pytest.fixture(scope="module")
def coco():
    return require_shared("coco", "val2017"), require_shared(
        "coco", "annotations", "captions_val2017.json"
    )


def test_coco_pairs_have_their_captions(coco):
    pairs = read_captions(coco[1], coco[0])
    assert len(pairs) == 79 and all(len(captions) == 5 for _, captions in pairs)
    item = CannyCaptions(pairs[:1], 32, seed=0)[0]
    assert (
        item["pixels"].shape == (3, 32, 32)
        and -1 <= item["pixels"].min() < item["pixels"].max() <= 1
    )
    assert set(item["control"].unique().tolist()) == {0.0, 1.0} and item["caption"] in pairs[0][1]


def test_training_moves_only_the_controlnet_and_lowers_the_loss(coco):
    from diffusers import ControlNetModel

    sd = build_tiny_sd(0)
    frozen = {
        name: p.clone()
        for m in (sd.unet, sd.vae, sd.text_encoder)
        for name, p in m.state_dict().items()
    }
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(16, 32))
    start = {name: p.clone() for name, p in net.state_dict().items()}
    dataset = CannyCaptions(read_captions(coco[1], coco[0])[:4], 32, seed=0)
    batch = train.step_batch(dataset, 1, 4, seed=0)
    before = train.fixed_batch_loss(sd, net, batch, 0, torch.float32)
    args = argparse.Namespace(drop_caption=0.5, grad_clip=1.0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(0)
    losses = [
        train.train_step(
            sd,
            net,
            optimizer,
            scaler,
            train.step_batch(dataset, step, 4, seed=0),
            args,
            generator,
            torch.float32,
        )
        for step in range(1, 16)
    ]
    after = train.fixed_batch_loss(sd, net, batch, 0, torch.float32)
    assert len(losses) == 15 and all(map(torch.isfinite, torch.tensor(losses)))
    assert after < 0.9 * before, (before, after)
    assert all(
        torch.equal(frozen[name], p)
        for m in (sd.unet, sd.vae, sd.text_encoder)
        for name, p in m.state_dict().items()
    )
    zero_conv = "controlnet_down_blocks.0.weight"
    # the zero convs learned
    assert start[zero_conv].abs().max() == 0 and net.state_dict()[zero_conv].abs().max() > 0


def test_batches_and_captions_are_a_function_of_seed_and_step(coco):
    """What makes resuming exact: step k's batch does not depend on the steps before it."""
    pairs = read_captions(coco[1], coco[0])[:6]
    fresh = CannyCaptions(pairs, 32, seed=0)
    used = CannyCaptions(pairs, 32, seed=0)
    for step in range(1, 5):  # epochs of 3 steps: crosses into epoch 1
        train.step_batch(used, step, 2, seed=0)
    a, b = train.step_batch(fresh, 5, 2, seed=0), train.step_batch(used, 5, 2, seed=0)
    assert a["caption"] == b["caption"] and torch.equal(a["pixels"], b["pixels"])
    epoch0, epoch1 = train.step_batch(fresh, 1, 6, seed=0), train.step_batch(fresh, 2, 6, seed=0)
    assert epoch0["caption"] != epoch1["caption"]  # another epoch, other captions (5 per image)


def test_train_script_writes_a_loadable_controlnet(coco, tmp_path):
    save_diffusers_folder(build_tiny_sd(0), tmp_path / "sd")
    summary = train.main(
        [
            "--pretrained",
            str(tmp_path / "sd"),
            "--data",
            str(coco[0]),
            "--captions",
            str(coco[1]),
            "--limit",
            "2",
            "--image-size",
            "32",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    with open(tmp_path / "run" / "log.csv") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2", "3"]
    net = load_controlnet(tmp_path / "run" / "model.pt")
    # one stride-2 conv for the tiny VAE's 2x
    assert net.config.conditioning_embedding_out_channels == [16, 32]
    assert (
        json.loads((tmp_path / "run" / "result.json").read_text())["metrics"]["images"]
        == summary["images"]
        == 2
    )
