"""The SD v1 components as one object: text encoding, VAE encoding/decoding, device and dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stable_diffusion.ddim import NoiseSchedule


@dataclass
class StableDiffusion:
    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    vae: torch.nn.Module  # diffusers AutoencoderKL
    text_encoder: torch.nn.Module  # transformers CLIPTextModel
    tokenizer: object  # transformers CLIPTokenizer
    schedule: NoiseSchedule

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        parts: tuple[str, ...] = ("unet", "vae", "text_encoder"),
    ) -> "StableDiffusion":
        for m in (getattr(self, name) for name in parts):
            # nn.Module.to, not diffusers' override: that one warns on every dtype cast
            # ("modules that should be kept in float32: []") even when there are none.
            torch.nn.Module.to(m, device=device, dtype=dtype)
        return self

    def eval_frozen(self) -> "StableDiffusion":
        for m in (self.unet, self.vae, self.text_encoder):
            m.eval().requires_grad_(False)
        return self

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)  # 0.18215 for SD v1

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The image size the UNet was trained at (512 for SD v1)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """(N, 77) ids, padded with <|endoftext|> and truncated, as SD v1 was trained."""
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """The CLIP encoder's last hidden state, (N, 77, D): SD v1's cross-attention context."""
        ids = self.token_ids(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    def encode_images(self, images: torch.Tensor):
        """The VAE posterior of images in [-1, 1]; sample() * latent_scale gives UNet latents."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(self.vae.device, vae_dtype)).latent_dist

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet latents -> float32 images in [-1, 1] (not clamped, so NaNs stay visible)."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latents.to(vae_dtype) / self.latent_scale).sample.float()
