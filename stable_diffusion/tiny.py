"""A tiny SD v1-shaped model for tests: the same block types as SD v1 (so both checkpoint
formats and every code path apply) with a few thousand channels in all, the real CLIP
tokenizer, and fixed seeds. 32x32 images, 16x16x4 latents.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from stable_diffusion import compvis
from stable_diffusion.ddim import NoiseSchedule
from stable_diffusion.loader import V1_CONFIG_DIR
from stable_diffusion.model import StableDiffusion
from stable_diffusion.tokenizer import MAX_LENGTH, VOCAB_SIZE, load_tokenizer

TEXT_DIM = 32
UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=4,
    cross_attention_dim=TEXT_DIM,
    norm_num_groups=8,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8,
    sample_size=32,
    scaling_factor=0.18215,
)
TEXT = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=TEXT_DIM,
    intermediate_size=64,
    projection_dim=TEXT_DIM,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    bos_token_id=VOCAB_SIZE - 2,
    eos_token_id=VOCAB_SIZE - 1,
    pad_token_id=VOCAB_SIZE - 1,
)


def build_tiny_sd(seed: int = 0) -> StableDiffusion:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet, vae = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT))
    schedule = NoiseSchedule.from_config(V1_CONFIG_DIR / "scheduler" / "scheduler_config.json")
    return StableDiffusion(unet, vae, text_encoder, load_tokenizer(), schedule).eval_frozen()


def save_diffusers_folder(sd: StableDiffusion, folder: str | Path) -> Path:
    """The diffusers layout (also usable as `config_dir` for a single file of this model)."""
    folder = Path(folder)
    sd.unet.save_pretrained(folder / "unet")
    sd.vae.save_pretrained(folder / "vae")
    sd.text_encoder.save_pretrained(folder / "text_encoder")
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(V1_CONFIG_DIR / sub, folder / sub, dirs_exist_ok=True)
    return folder


def save_compvis_file(sd: StableDiffusion, path: str | Path) -> Path:
    """`.ckpt` like sd-v1-4.ckpt ({"state_dict": ...}), or `.safetensors`."""
    path = Path(path)
    state = compvis.to_ldm(sd.unet, sd.vae, sd.text_encoder, sd.schedule.alphas_cumprod)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 0}, path)
    return path
