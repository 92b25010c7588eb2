"""Loading SD v1 offline: a tiny model saved as a diffusers folder and as CompVis single files
must come back bit for bit; the committed SD v1 configs must describe sd-v1-4.ckpt exactly."""

from __future__ import annotations

import json

import pytest
import torch

from hw2_utils import CLIError
from stable_diffusion import compvis
from stable_diffusion.loader import V1_CONFIG_DIR, from_compvis_state, load_stable_diffusion
from stable_diffusion.tiny import build_tiny_sd, save_compvis_file, save_diffusers_folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    sd = build_tiny_sd(seed=0)
    folder = save_diffusers_folder(sd, root / "diffusers")
    return (
        sd,
        folder,
        save_compvis_file(sd, root / "tiny.ckpt"),
        save_compvis_file(sd, root / "tiny.safetensors"),
    )


def _assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, f"{name}: {different[:3]}"


@pytest.mark.parametrize("which", ["diffusers", "ckpt", "safetensors"])
def test_every_format_loads_bit_identical(tiny, which):
    sd, folder, ckpt, safetensors = tiny
    path = {"diffusers": folder, "ckpt": ckpt, "safetensors": safetensors}[which]
    loaded = load_stable_diffusion(path, config_dir=folder)
    _assert_same_weights(sd, loaded)
    assert loaded.resolution == 32 and loaded.latent_scale == pytest.approx(0.18215)
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    # same weights must also mean the same text features through the tokenizer
    assert torch.equal(
        loaded.encode_text(["a photo of a dog"]), sd.encode_text(["a photo of a dog"])
    )


def test_committed_configs_describe_sd_v1_4():
    """Full-size SD v1 on the meta device: the parameter counts of SD v1.4 and the CompVis
    key names/shapes of sd-v1-4.ckpt, read back through the single-file path."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {
        sub: json.loads((V1_CONFIG_DIR / sub / "config.json").read_text())
        for sub in ("unet", "vae", "text_encoder")
    }
    with init_empty_weights():
        unet, vae = (
            UNet2DConditionModel.from_config(cfg["unet"]),
            AutoencoderKL.from_config(cfg["vae"]),
        )
        text = CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"]))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]

    sd = build_tiny_sd()  # only for its schedule
    state = compvis.to_ldm(unet, vae, text, sd.schedule.alphas_cumprod)
    assert [
        sum(k.startswith(p) for k in state)
        for p in (compvis.UNET_PREFIX, compvis.VAE_PREFIX, compvis.CLIP_PREFIX)
    ] == [686, 248, 196]
    known = {  # names and shapes as in sd-v1-4.ckpt
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }
    assert {k: tuple(state[k].shape) for k in known} == known
    # as in the file
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[
        None
    ]
    loaded = from_compvis_state(state, V1_CONFIG_DIR, V1_CONFIG_DIR / "sd-v1-4.ckpt")
    assert loaded.resolution == 512 and loaded.unet.config.cross_attention_dim == 768


class LightningCallback:  # stands for pytorch_lightning objects pickled beside the weights
    def __init__(self):
        self.best_model_score = 0.5


def test_ckpt_with_training_objects_loads_without_unpickling_code(tiny, tmp_path):
    sd, folder, ckpt, _ = tiny
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    with_objects = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": state,
            "callbacks": {LightningCallback: {"best": 1}},
            "cb": LightningCallback(),
            "global_step": 470000,
        },
        with_objects,
    )
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(with_objects, weights_only=True)
    _assert_same_weights(sd, load_stable_diffusion(with_objects, config_dir=folder))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CLIError, match="checkpoint not found.*hw2_download_ckpt"):
        load_stable_diffusion(tmp_path / "sd-v1-4.ckpt")


def test_wrong_files_are_clear_errors(tiny, tmp_path):
    sd, folder, ckpt, _ = tiny
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CLIError, match="cannot read"):
        load_stable_diffusion(junk, config_dir=folder)
    # tiny weights, SD v1 configs
    with pytest.raises(CLIError, match="does not match the UNet config"):
        load_stable_diffusion(ckpt)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    state["alphas_cumprod"] = state["alphas_cumprod"] ** 2
    other = tmp_path / "other_schedule.ckpt"
    torch.save({"state_dict": state}, other)
    with pytest.raises(CLIError, match="noise schedule"):
        load_stable_diffusion(other, config_dir=folder)
