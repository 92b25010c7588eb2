"""Tiny stand-ins for the weights that cannot be downloaded here (SD, ControlNet, CLIP), built
from config with fixed seeds, for tests and for running every P8 script at tiny scale:

    python -m p8_controlnet.tiny outputs/p8/tiny_models   # sd/ controlnet-canny/ controlnet-depth/ clip/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hw2_utils import HelpFormatter, output_dir, run_cli, seed_int
from stable_diffusion.tiny import TEXT_DIM, build_tiny_sd, save_diffusers_folder
from stable_diffusion.tokenizer import MAX_LENGTH, VOCAB_SIZE, load_tokenizer

# One stride-2 conv in the control embedding: the tiny VAE downsamples by 2 (SD v1's by 8, 3 convs).
CONTROL_EMBED_CHANNELS = (8, 16)
ZERO_CONV_STD = 0.05  # see build_tiny_controlnet


def build_tiny_controlnet(unet, seed: int):
    """ControlNetModel.from_unet (the encoder copied from the UNet, as in the paper), with the
    zero convolutions filled with small random values: untrained, they would be exactly zero and
    the control could not change the output, so no test could tell a broken control path."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONTROL_EMBED_CHANNELS
    )
    zero_convs = [
        *net.controlnet_down_blocks,
        net.controlnet_mid_block,
        net.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            for p in conv.parameters():
                p.normal_(0, ZERO_CONV_STD)
    return net.eval().requires_grad_(False)


def save_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """A CLIPModel with SD v1's tokenizer and a 32-pixel image processor, loadable by path."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = load_tokenizer()
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=MAX_LENGTH,
            **special,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=TEXT_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)


def save_tiny_models(out: str | Path, seed: int = 0) -> Path:
    with output_dir(out) as tmp:
        sd = build_tiny_sd(seed)
        save_diffusers_folder(sd, tmp / "sd")
        build_tiny_controlnet(sd.unet, seed + 1).save_pretrained(tmp / "controlnet-canny")
        build_tiny_controlnet(sd.unet, seed + 2).save_pretrained(tmp / "controlnet-depth")
        save_tiny_clip(tmp / "clip", seed + 3)
    return Path(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("out", help="folder to create")
    p.add_argument("--seed", type=seed_int, default=0)
    args = p.parse_args(argv)
    print(save_tiny_models(args.out, args.seed))


if __name__ == "__main__":
    run_cli(main)
