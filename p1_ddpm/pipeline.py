"""Checkpoint I/O and batched, seeded generation, shared by train.py, infer.py and report.py."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hw2_utils import CLIError, autocast, error_summary, load_torch_file
from p1_ddpm.diffusion import GaussianDiffusion, guided_eps
from p1_ddpm.model import ConditionalUNet, UNetConfig

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "ddpm_ema.pt"


def export_weights(model: torch.nn.Module, domains: list[str], step: int, recipe: str) -> dict:
    """The shipped format: config + domain names + EMA weights; loadable with weights_only."""
    return {
        "config": model.config.to_dict(),
        "domains": list(domains),
        "step": int(step),
        "recipe": recipe,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_model(path: str | Path, device: torch.device) -> tuple[ConditionalUNet, list[str]]:
    """Load a shipped/exported checkpoint; any problem with the file is a CLIError."""
    blob = load_torch_file(
        path,
        "P1 checkpoint",
        f"the shipped one is {SHIPPED_CHECKPOINT}; python -m p1_ddpm.train writes OUT/model.pt",
    )
    if not isinstance(blob, dict) or not {"config", "state_dict", "domains"} <= blob.keys():
        found = f"keys {sorted(blob)[:5]}" if isinstance(blob, dict) else f"a {type(blob).__name__}"
        raise CLIError(
            f"{path} is not a P1 checkpoint: expected a dict with config, state_dict and domains, found {found}"
        )
    try:
        config = UNetConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items()}
        )
        model = ConditionalUNet(config)
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CLIError(f"{path} is not a valid P1 checkpoint ({error_summary(e)})") from None
    return model.to(device).eval(), [str(d) for d in blob["domains"]]


def fastest_memory_format(device: torch.device, dtype: torch.dtype) -> torch.memory_format:
    """channels_last, except for bf16 on the CPU, where oneDNN runs this UNet faster in NCHW
    (python -m bench.p1_ddpm --speed, README "P1")."""
    if device.type == "cpu" and dtype is torch.bfloat16:
        return torch.contiguous_format
    return torch.channels_last


@torch.inference_mode()
def generate(
    model: ConditionalUNet,
    digits: torch.Tensor,
    domains: torch.Tensor,
    *,
    seed: int,
    guidance: float,
    sampler: str,
    steps: int | None,
    device: torch.device,
    batch_size: int = 500,
    record_at: tuple[int, ...] = (),
    dtype: torch.dtype = torch.float32,
    progress: Callable = lambda it, **kw: it,
):
    """Images in [-1, 1] for each (digit, domain) pair, (N,3,28,28) on the CPU.

    Image i's noise depends only on (seed, i // batch_size), so a seed reproduces the
    same files; batching is fixed by `batch_size`, not by the device. `dtype` is the UNet's
    autocast precision; the sampler's arithmetic stays in fp32."""
    diffusion = GaussianDiffusion()
    outputs, frames = [], {}
    for start in progress(range(0, len(digits), batch_size), desc="batches"):
        d = digits[start : start + batch_size].to(device)
        m = domains[start : start + batch_size].to(device)
        guided = guided_eps(model, d, m, model.null_digit, model.null_domain, guidance)

        def eps_fn(x: torch.Tensor, t: torch.Tensor, guided=guided) -> torch.Tensor:
            with autocast(device, dtype):
                return guided(x, t).float()

        generator = torch.Generator().manual_seed(seed + start)
        x, f = diffusion.sample(
            eps_fn,
            (len(d), 3, 28, 28),
            generator,
            device,
            sampler=sampler,
            steps=steps,
            record_at=record_at,
            progress=progress,
        )
        outputs.append(x.clamp(-1, 1).cpu())
        for t, v in f.items():
            frames.setdefault(t, []).append(v)
    return torch.cat(outputs), {t: torch.cat(v) for t, v in frames.items()}
