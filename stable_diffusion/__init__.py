"""Stable Diffusion v1 loaded offline and sampled: the package P3 and P8 share
(`from stable_diffusion.loader import load_stable_diffusion`). Its committed model configs and
tokenizer files, the course's files, live in the design card's `stable-diffusion/configs/`
(CONFIG_ROOT)."""

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "stable-diffusion" / "configs"
