"""The exported generator: freezing its batch-norm statistics, saving and loading the
checkpoint file, and seeded generation of numbered PNGs; shared by train.py, infer.py,
figures.py and bench/p4_gan.py."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn as nn

from hw2_utils import (
    CLIError,
    error_summary,
    load_torch_file,
    make_generator,
    output_dir,
    require_file,
    save_images,
)
from p4_gan.models import GANConfig, Generator

REPO = Path(__file__).resolve().parents[1]
# shipped: README "P4"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "p4_gan.pt"
TRAIN_COMMAND = (
    "python -m p4_gan.train --preset improved --data ../shared/data/celeba10k --out runs/p4/improved, "
    "then pass --checkpoint runs/p4/improved/generator_best.pt"
)
FORMAT = "hw2-p4-gan-generator/1"
STANDING_STATS = (8, 128)  # batches x size of z used to measure BN statistics: 1024 samples


@torch.no_grad()
def with_standing_stats(generator: Generator, seed: int = 0) -> Generator:
    """An eval-mode copy of `generator` whose BN layers normalise with the mean and
    variance that its training-mode batches have, averaged over 1024 fresh z.

    During training G only ever sees batch statistics; the running averages lag behind
    weights that keep moving (and are meaningless for the EMA average of weights). With
    these "standing" statistics an image depends on its own z alone, not on the batch."""
    frozen = copy.deepcopy(generator).train()
    norms = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calls below
    device = next(frozen.parameters()).device
    draws = make_generator(seed)
    batches, size = STANDING_STATS
    for _ in range(batches):
        frozen(torch.randn(size, frozen.config.z_dim, generator=draws).to(device))
    for m, original in zip(
        norms, (m for m in generator.modules() if isinstance(m, nn.BatchNorm2d))
    ):
        m.momentum = original.momentum
    return frozen.eval().requires_grad_(False)


def save_generator(
    path: str | os.PathLike, generator: Generator, meta: dict, half: bool = False
) -> None:
    """Write the eval-ready generator (standing statistics already in its buffers); `half`:
    its floating-point tensors in fp16 (half the size, as p4_gan.pt ships)."""

    def stored(value: torch.Tensor) -> torch.Tensor:
        value = value.detach().cpu()
        return value.half() if half and value.is_floating_point() else value

    torch.save(
        {
            "format": FORMAT,
            "config": generator.config.to_dict(),
            "state_dict": {k: stored(v) for k, v in generator.state_dict().items()},
            **meta,
        },
        path,
    )


def load_generator(
    path: str | os.PathLike, device: torch.device = torch.device("cpu")
) -> tuple[Generator, dict]:
    """The generator saved by save_generator, in eval mode on `device`, and its metadata.
    A missing, unreadable or foreign file is a one-line CLIError."""
    path = require_file(path, "GAN generator checkpoint", f"train one: {TRAIN_COMMAND}")
    state = load_torch_file(path, "GAN generator checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CLIError(
            f"{path} is not a P4 generator checkpoint (expected format {FORMAT!r}; "
            "train.py writes OUT/model.pt, OUT/last.pt is the training state)"
        )
    try:
        model = Generator(GANConfig(**state["config"]))
        model.load_state_dict(state["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CLIError(
            f"{path}: weights do not fit the generator ({error_summary(e, 160)})"
        ) from None
    meta = {k: v for k, v in state.items() if k not in ("state_dict",)}
    return model.to(device).eval().requires_grad_(False), meta


def sample_z(n: int, z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """n latent vectors drawn on the CPU from `seed`: standard normal, or with `truncation` t
    the truncation trick of BigGAN (Brock et al. 2019): every entry outside [-t, t] is drawn
    again (from the same generator, so the result is still a function of the seed) until none
    is, which samples the normal truncated to [-t, t]."""
    draws = make_generator(seed)
    z = torch.randn(n, z_dim, generator=draws)
    if truncation is not None:
        while (outside := z.abs() > truncation).any():
            z[outside] = torch.randn(int(outside.sum()), generator=draws)
    return z


@torch.no_grad()
def generate(
    generator: Generator, n: int, seed: int, batch_size: int = 500, truncation: float | None = None
) -> torch.Tensor:
    """n images (N, 3, 64, 64) in [-1, 1] on the CPU. All z are drawn at once on the CPU
    from `seed` (sample_z), so image k has the same z on any device and with any batch size
    (the batch size can still move the last floating-point bit, so infer.py fixes it)."""
    device = next(generator.parameters()).device
    z = sample_z(n, generator.config.z_dim, seed, truncation)
    return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(batch_size)])


def image_names(n: int) -> list[str]:
    return [f"{k:04d}.png" for k in range(n)]


def write_images(
    images: torch.Tensor, out_dir: str | os.PathLike, overwrite: bool = False
) -> list[Path]:
    """Save images as OUT/0000.png, 0001.png, ... as one set (hw2_utils.output_dir): the new
    set appears whole, and other files in OUT are left alone."""
    names = image_names(len(images))
    with output_dir(out_dir, names, overwrite=overwrite) as stage:
        save_images(images, [stage / name for name in names])
    return [Path(out_dir) / name for name in names]
