"""Load SD v1.x offline: a CompVis single file (`sd-v1-4.ckpt`, `.safetensors`) or a diffusers folder.

A single file carries only weights; the architecture comes from `config_dir`, by default the
SD v1 configs committed in configs/sd-v1/ (unet/, vae/, text_encoder/, scheduler/, tokenizer/).
Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from hw2_utils import CLIError, error_summary
from stable_diffusion import CONFIG_ROOT
from stable_diffusion.ddim import NoiseSchedule
from stable_diffusion.model import StableDiffusion
from stable_diffusion.tokenizer import load_tokenizer

V1_CONFIG_DIR = CONFIG_ROOT / "sd-v1"
HOW_TO_GET = (
    "bash hw2_download_ckpt.sh sd-v1-4.ckpt writes checkpoints/sd-v1-4.ckpt; "
    "or pass a diffusers folder of SD v1.x"
)


def load_stable_diffusion(
    path: str | Path,
    config_dir: str | Path = V1_CONFIG_DIR,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StableDiffusion:
    """Frozen SD components in eval mode on `device` / `dtype`; CLIError on any bad input."""
    path, config_dir = Path(path), Path(config_dir)
    if path.is_dir():
        sd = _load_diffusers_folder(path, config_dir)
    elif path.is_file():
        sd = _load_single_file(path, config_dir)
    else:
        raise CLIError(f"Stable Diffusion checkpoint not found: {path} ({HOW_TO_GET})")
    return sd.to(device, dtype).eval_frozen()


def text_width(path: str | Path, config_dir: str | Path = V1_CONFIG_DIR) -> int:
    """The text encoder's embedding width for the model at `path`, read from its config
    without loading any weights (so learned embeddings can be checked first)."""
    folder = Path(path) if Path(path).is_dir() else Path(config_dir)
    return int(_read_config(folder, "text_encoder")["hidden_size"])


# --------------------------------------------------------------------------- CompVis single file


class _Inert:
    """Stands in for training-state classes pickled next to the weights (e.g. Lightning's
    ModelCheckpoint callback): accepted by the weights-only unpickler, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _torch_load(path: Path):
    """torch.load with weights_only (no code from the file runs) and memory-mapped, so a 4 GB
    checkpoint is not copied into RAM before it goes to the GPU. Classes other than tensors
    (training metadata) are replaced by _Inert, one per retry."""
    inert: list[str] = []
    for _ in range(50):
        try:
            with torch.serialization.safe_globals([(_Inert, name) for name in inert]):
                return torch.load(
                    path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
                )
        except pickle.UnpicklingError as e:
            unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            if not unsupported or unsupported[1] in inert:
                raise
            inert.append(unsupported[1])
    raise pickle.UnpicklingError(f"more than 50 non-tensor classes: {', '.join(inert[:5])} ...")


def read_state_dict(path: Path) -> dict:
    """All tensors of a single file (`.safetensors`, or a torch pickle such as sd-v1-4.ckpt)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = _torch_load(path)
    except Exception as e:
        # a foreign file makes the readers raise nearly anything (SafetensorError, KeyError, ...)
        raise CLIError(f"cannot read {path} as a checkpoint ({error_summary(e)})") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CLIError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _read_config(config_dir: Path, sub: str, name: str = "config.json") -> dict:
    f = config_dir / sub / name
    if not f.is_file():
        raise CLIError(f"model config not found: {f} (configs for SD v1 live in {V1_CONFIG_DIR})")
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"model config {f} is not valid JSON ({e})") from None


def _build(cls, config: dict, state: dict, what: str, path: Path):
    """Instantiate without allocating weights, then take the checkpoint's tensors (strict)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls(config) if not isinstance(config, dict) else cls.from_config(config)
    missing, unexpected = (
        model.state_dict().keys() - state.keys(),
        state.keys() - model.state_dict().keys(),
    )
    if missing or unexpected:
        raise CLIError(
            f"{path} does not match the {what} config: {len(missing)} missing "
            f"(e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]}); "
            f"is it an SD v1.x checkpoint?"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CLIError(
            f"{path}: {what} weights do not fit the config ({str(e).splitlines()[-1].strip()[:200]})"
        ) from None
    return model


def _load_single_file(path: Path, config_dir: Path) -> StableDiffusion:
    return from_compvis_state(read_state_dict(path), config_dir, path)


def from_compvis_state(checkpoint: dict, config_dir: Path, path: Path) -> StableDiffusion:
    """Components from a CompVis state dict (`path` only names it in errors)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stable_diffusion import compvis  # imports diffusers: only when a checkpoint is read

    if not any(k.startswith(compvis.UNET_PREFIX) for k in checkpoint):
        raise CLIError(
            f"{path} has no '{compvis.UNET_PREFIX}*' weights: not a CompVis Stable Diffusion checkpoint"
        )
    unet_cfg, vae_cfg = _read_config(config_dir, "unet"), _read_config(config_dir, "vae")
    text_cfg = CLIPTextConfig.from_dict(_read_config(config_dir, "text_encoder"))
    schedule = NoiseSchedule.from_config(config_dir / "scheduler" / "scheduler_config.json")
    if "alphas_cumprod" in checkpoint:  # LDM checkpoints carry their training schedule: cross-check
        gap = (checkpoint["alphas_cumprod"].double() - schedule.alphas_cumprod).abs().max().item()
        if gap > 1e-5:
            raise CLIError(
                f"{path} was trained with another noise schedule than {config_dir}/scheduler (max gap {gap:.2g})"
            )

    unet = _build(
        UNet2DConditionModel, unet_cfg, compvis.unet_from_ldm(checkpoint, unet_cfg), "UNet", path
    )
    vae = _build(AutoencoderKL, vae_cfg, compvis.vae_from_ldm(checkpoint, vae_cfg), "VAE", path)
    with torch.device("meta"):
        flat = not hasattr(CLIPTextModel(text_cfg), "text_model")
    text_encoder = _build(
        CLIPTextModel,
        text_cfg,
        compvis.text_encoder_from_ldm(checkpoint, flat),
        "text encoder",
        path,
    )
    return StableDiffusion(
        unet, vae, text_encoder, load_tokenizer(config_dir / "tokenizer"), schedule
    )


# --------------------------------------------------------------------------- diffusers folder


def _load_diffusers_folder(folder: Path, config_dir: Path) -> StableDiffusion:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise CLIError(
                f"{folder} is not a diffusers Stable Diffusion folder: {folder / sub / 'config.json'} missing"
            )
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CLIError(f"cannot load the diffusers folder {folder} ({error_summary(e)})") from None
    # A folder may lack its tokenizer or scheduler; SD v1's are the same for every v1.x model.
    tokenizer_dir = (
        folder / "tokenizer"
        if (folder / "tokenizer" / "vocab.json").is_file()
        else config_dir / "tokenizer"
    )
    scheduler = folder / "scheduler" / "scheduler_config.json"
    schedule = NoiseSchedule.from_config(
        scheduler if scheduler.is_file() else config_dir / "scheduler" / "scheduler_config.json"
    )
    return StableDiffusion(unet, vae, text_encoder, load_tokenizer(tokenizer_dir), schedule)
