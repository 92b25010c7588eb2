"""CompVis (original LDM) single-file state dicts <-> diffusers/transformers state dicts.

Reading uses diffusers' own converters (the code path diffusers' `from_single_file` runs on
sd-v1-4.ckpt), fed with our local configs so nothing is fetched. Writing is the inverse
mapping, used to save tiny test models as CompVis files; tests/test_sd_loader.py checks that
writing then reading gives back every tensor bit for bit.
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# resnet sub-module names: diffusers -> LDM (UNet); the VAE only renames the shortcut.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# --------------------------------------------------------------------------- CompVis -> diffusers


def unet_from_ldm(checkpoint: dict, unet_config: dict) -> dict:
    # EMA weights when a file holds both (the "full-ema" releases); sd-v1-4.ckpt holds one set.
    return convert_ldm_unet_checkpoint(checkpoint, unet_config, extract_ema=True)


def vae_from_ldm(checkpoint: dict, vae_config: dict) -> dict:
    return convert_ldm_vae_checkpoint(checkpoint, vae_config)


def text_encoder_from_ldm(checkpoint: dict, flat: bool) -> dict:
    """CLIPTextModel keys. transformers >= 5.6 dropped the `text_model.` level (`flat`);
    `position_ids` is a non-persistent buffer there, so it is not loaded."""
    out = {}
    for key, value in checkpoint.items():
        if not key.startswith(CLIP_PREFIX) or key.endswith("position_ids"):
            continue
        key = key[len(CLIP_PREFIX) :]
        out[key.removeprefix("text_model.") if flat else key] = value
    return out


# --------------------------------------------------------------------------- diffusers -> CompVis


def _resnet(rest: str, names: dict) -> str:
    head, _, tail = rest.partition(".")
    return f"{names.get(head, head)}.{tail}"


def _unet_key_to_ldm(key: str, per_block: int, cross_up: list[bool]) -> str:
    """One diffusers UNet key -> its LDM name. LDM numbers the layers of all blocks in one
    sequence (input_blocks / output_blocks), with the down/up-sampler as a block's last layer."""
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        side, b, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        i = (1 if side == "down" else 0) + b * per_block + j  # input_blocks.0 is conv_in
        seq = "input_blocks" if side == "down" else "output_blocks"
        return (
            f"{seq}.{i}.0.{_resnet(rest, _UNET_RESNET)}"
            if kind == "resnets"
            else f"{seq}.{i}.1.{rest}"
        )
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(?:down|up)samplers\.0\.conv\.(.*)", key)
    if m:
        b, rest = int(m[2]), m[3]
        if m[1] == "down":
            return f"input_blocks.{1 + b * per_block + per_block - 1}.0.op.{rest}"
        # after the block's last resnet, and after its attention if it has one
        return (
            f"output_blocks.{b * per_block + per_block - 1}.{2 if cross_up[b] else 1}.conv.{rest}"
        )
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        return (
            f"middle_block.{2 * int(m[2])}.{_resnet(m[3], _UNET_RESNET)}"
            if m[1] == "resnets"
            else f"middle_block.1.{m[3]}"
        )
    raise KeyError(f"no CompVis name for UNet key {key}")


def unet_to_ldm(state: dict, unet_config: dict) -> dict:
    per_block = unet_config["layers_per_block"] + 1
    cross_up = ["CrossAttn" in t for t in unet_config["up_block_types"]]
    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    return {
        UNET_PREFIX + (fixed[k] if k in fixed else _unet_key_to_ldm(k, per_block, cross_up)): v
        for k, v in state.items()
    }


def vae_to_ldm(state: dict, vae_config: dict) -> dict:
    n_up = len(vae_config["up_block_types"])
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        part, block, rest = key.split(".", 2)
        if block == "mid_block":
            m = re.match(r"(resnets|attentions)\.(\d+)\.(.*)", rest)
            if m[1] == "resnets":
                new = f"mid.block_{int(m[2]) + 1}.{_resnet(m[3], _VAE_RESNET)}"
            else:
                name, _, param = m[3].rpartition(".")
                new = f"mid.attn_1.{_VAE_ATTN[name]}.{param}"
                if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                    value = value[:, :, None, None]
        else:
            i, kind, j, sub = re.match(
                r"(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", rest
            ).groups()
            # LDM's decoder counts upwards
            ldm_block = int(i) if part == "encoder" else n_up - 1 - int(i)
            stage = "down" if part == "encoder" else "up"
            if kind == "resnets":
                new = f"{stage}.{ldm_block}.block.{j}.{_resnet(sub, _VAE_RESNET)}"
            else:
                new = f"{stage}.{ldm_block}.{'downsample' if kind == 'downsamplers' else 'upsample'}.{sub}"
        out[f"{part}.{new}"] = value
    return {VAE_PREFIX + k: v for k, v in out.items()}


def text_encoder_to_ldm(state: dict) -> dict:
    """Always writes the `text_model.` level, as the CompVis releases (transformers 4.x) have it."""
    return {
        CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state.items()
    }


def to_ldm(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
) -> dict:
    """One CompVis state dict, including the schedule buffer LDM checkpoints carry."""
    state = {}
    state.update(unet_to_ldm(unet.state_dict(), dict(unet.config)))
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    state.update(text_encoder_to_ldm(text_encoder.state_dict()))
    state["alphas_cumprod"] = alphas_cumprod.float()
    return {k: v.contiguous() for k, v in state.items()}
