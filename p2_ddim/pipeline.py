"""Loading the face UNet and the noise files, batched DDIM sampling and the pixel
mappings; shared by infer.py, analysis.py and bench/p2_ddim.py."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from hw2_utils import CLIError, autocast, load_torch_file, require_dir, require_finite
from p2_ddim.ddim import ddim_sample, uniform_timesteps
from p2_ddim.unet import DOWNSAMPLE_FACTOR, FaceUNet

PIXEL_MAPS = {
    # The final x0 clipped to [-1, 1] and mapped linearly to 0..255 (rounded).
    "clip": "clip to [-1, 1], then (x + 1) / 2 * 255",
    # Per image, min -> 0 and max -> 255: torchvision's save_image(x, normalize=True)
    # without a value_range, which some public submissions used.
    "minmax": "per-image min-max stretch to 0..255 (save_image(normalize=True))",
}


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def tensor_problem(x: torch.Tensor) -> str | None:
    """Why `x` cannot be a dense floating-point input (noise or a weight), or None. Sparse and
    meta tensors load under weights_only but fail deep inside the sampler; integer or complex
    ones would be cast silently."""
    if x.layout != torch.strided:
        return f"is a {str(x.layout).removeprefix('torch.')} tensor, not a dense one"
    if x.is_meta:
        return "is a meta tensor (a shape without data)"
    if not x.is_floating_point():
        return f"has dtype {x.dtype}, not a floating-point one"
    return None


def load_tensors(path: Path, what: str, how_to_get: str = ""):
    """load_torch_file without torch's warnings about sparse tensors (it validates them while
    loading): tensor_problem refuses those in one line, and the warning would add a second."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_torch_file(path, what, how_to_get)


# The course's noise is standard normal, so no value comes near this many standard deviations;
# larger finite values overflow inside the UNet and would surface as NaN images.
NOISE_LIMIT = 100.0


def load_unet(path: str | Path, device: torch.device) -> FaceUNet:
    """The course's UNet.pt (a plain state dict) in eval mode. The width is read from
    `down1.weight`, so narrow test copies load too; a mismatch with the architecture is one
    CLIError naming the first missing, unexpected and mis-shaped keys and their counts, and a
    weight that is not a dense, finite floating-point tensor is one naming its key."""
    path = Path(path)
    state = load_tensors(
        path, "UNet weights", "the course's UNet.pt, a state dict for p2_ddim/unet.py"
    )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIError(f"{path} is not a state dict of tensors (got {type(state).__name__})")
    first = state.get("down1.weight")
    # guessing a width from anything else would report every key of the model as mis-shaped
    if first is None or first.ndim != 4 or first.shape[1:] != (3, 3, 3):
        found = "is missing" if first is None else f"has shape {tuple(first.shape)}"
        raise CLIError(
            f"{path} does not match the face UNet: down1.weight (its first convolution) {found}, "
            "expected (width, 3, 3, 3), width 128 in the course's UNet.pt"
        )
    width = first.shape[0]
    try:
        model = FaceUNet(base_channels=width)
    except ValueError as e:
        raise CLIError(f"{path}: down1.weight has {width} output channels: {e}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        found = [
            f"{len(keys)} {what} [{_listing(keys)}]"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mis_shaped),
            )
            if keys
        ]
        raise CLIError(
            f"{path} does not match the face UNet (base width {width}): {'; '.join(found)}"
        )
    for key, value in state.items():
        problem = tensor_problem(value)
        if problem:
            raise CLIError(f"UNet weights {path}: {key} {problem}")
        require_finite(value, f"UNet weights {path} ({key})")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def noise_files(noise_dir: Path) -> list[Path]:
    """The NN.pt files of `noise_dir`, sorted by name. The suffix is matched in any case: the
    course names the files NN.pt and grades NN.png by the same stem, and a copy that passed
    through a case-insensitive file system (a TA's zip from Windows or macOS) may say 00.PT for
    the same noise. Two files with one stem would write one image, so they are refused."""
    files = sorted(f for f in noise_dir.iterdir() if f.suffix.lower() == ".pt")
    stems = [f.stem for f in files]
    twice = next((f for f in files if stems.count(f.stem) > 1), None)
    if twice is not None:
        others = ", ".join(f.name for f in files if f.stem == twice.stem)
        raise CLIError(f"noise files {others} in {noise_dir} would both become {twice.stem}.png")
    return files


def load_noises(noise_dir: str | Path) -> tuple[list[str], torch.Tensor]:
    """Every NN.pt in `noise_dir` (noise_files), sorted by name, as one (N, 3, H, W) float32
    batch. Each file holds a dense, finite floating-point (1, 3, H, W) or (3, H, W) tensor with
    values within NOISE_LIMIT; all must share H and W."""
    noise_dir = require_dir(noise_dir, "noise directory")
    files = noise_files(noise_dir)
    if not files:
        raise CLIError(f"no .pt noise files in {noise_dir}")
    noises = []
    for f in files:
        x = load_tensors(f, "noise file")
        if not isinstance(x, torch.Tensor):
            raise CLIError(f"noise file {f} holds a {type(x).__name__}, not a tensor")
        problem = tensor_problem(x)
        if problem:
            raise CLIError(f"noise file {f} {problem}")
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if (
            x.ndim != 3
            or x.shape[0] != 3
            or min(x.shape[1:]) < DOWNSAMPLE_FACTOR
            or x.shape[1] % DOWNSAMPLE_FACTOR
            or x.shape[2] % DOWNSAMPLE_FACTOR
        ):
            raise CLIError(
                f"noise file {f} has shape {tuple(x.shape)}: expected (1, 3, H, W) or (3, H, W) "
                f"with H and W positive multiples of {DOWNSAMPLE_FACTOR}"
            )
        require_finite(x, f"noise file {f}")
        largest = float(x.abs().max())
        if largest > NOISE_LIMIT:
            raise CLIError(
                f"noise file {f} holds values up to {largest:.3g} in magnitude: DDIM starts "
                f"from standard normal noise, refused beyond {NOISE_LIMIT:g}"
            )
        if noises and x.shape != noises[0].shape:
            raise CLIError(
                f"noise file {f} has shape {tuple(x.shape)} but {files[0].name} has {tuple(noises[0].shape)}"
            )
        noises.append(x.float())
    return [f.stem for f in files], torch.stack(noises)


def eps_model(
    unet: FaceUNet, dtype: torch.dtype
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The UNet under autocast; the DDIM arithmetic itself stays in float32."""
    device = next(unet.parameters()).device

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return unet(x, t).float()

    return eps


def sample(
    unet: FaceUNet,
    noises: torch.Tensor,
    *,
    eta: float = 0.0,
    steps: int = 50,
    clip_x0: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: Callable = lambda it, **kw: it,
) -> torch.Tensor:
    """DDIM from `noises` (N, 3, H, W) as one batch; returns the final x0 on the CPU
    (float32, not yet clipped). `seed` matters only for eta > 0."""
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(seed) if eta > 0 else None
    x = ddim_sample(
        eps_model(unet, dtype),
        noises.to(device),
        timesteps=uniform_timesteps(steps),
        eta=eta,
        clip_x0=clip_x0,
        generator=generator,
        progress=progress,
    )
    return x.cpu()


def to_unit_range(images: torch.Tensor, pixel_map: str) -> torch.Tensor:
    """(N, C, H, W) sampler output -> [0, 1], ready for hw2_utils.save_images(value_range=(0, 1))."""
    if pixel_map == "clip":
        return (images.clamp(-1, 1) + 1) / 2
    if pixel_map == "minmax":
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
        return (images - lo) / (hi - lo).clamp_min(1e-5)  # torchvision's guard for flat images
    raise ValueError(f"unknown pixel map {pixel_map!r}: use {' or '.join(PIXEL_MAPS)}")
