"""Stable Diffusion (+ ControlNets) as diffusers pipelines built from local weights, the eight
schedulers by name, the memory options, and seeded batched generation with an fp32 redo.

The SD components come from `stable_diffusion.loader` (a diffusers folder or a CompVis single
file, offline); diffusers only assembles them, so P3 and P8 load weights the same way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hw2_utils import (
    CLIError,
    error_summary,
    non_negative_float,
    positive_int,
    probability,
    resolve_device,
    resolve_dtype,
    seed_int,
)
from stable_diffusion.loader import V1_CONFIG_DIR, load_stable_diffusion
from stable_diffusion.model import StableDiffusion

# CLI name -> (diffusers class, settings on top of the model's scheduler config).
SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    # SD v1 ships PNDM with the PRK warm-up skipped (PLMS); with PRK it needs >= 4 steps.
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
}
CONTROLNET_HOW_TO_GET = (
    "a diffusers ControlNet folder, e.g. `huggingface-cli download lllyasviel/sd-controlnet-canny "
    "--local-dir DIR` (SD v1.5 ControlNets also fit SD v1.4)"
)


def scheduler_config(model: str | Path, sd_config: str | Path = V1_CONFIG_DIR) -> dict:
    """The training noise schedule's config: the model folder's own, else SD v1's."""
    own = Path(model) / "scheduler" / "scheduler_config.json"
    return json.loads(
        (
            own if own.is_file() else Path(sd_config) / "scheduler" / "scheduler_config.json"
        ).read_text()
    )


def make_scheduler(name: str, config: dict, betas: torch.Tensor | None = None):
    """A diffusers scheduler by CLI name; `betas` replaces the training schedule (custom-schedule study)."""
    import diffusers

    if name not in SCHEDULERS:
        raise CLIError(f"unknown scheduler {name!r}: choose from {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    if betas is not None:
        extra = {**extra, "trained_betas": betas.tolist()}
    return getattr(diffusers, cls_name).from_config(config, **extra)


def load_controlnet(path: str | Path, dtype: torch.dtype = torch.float32):
    """A diffusers ControlNet folder, or the OUT/model.pt that p8_controlnet/train.py exports
    (its config and state dict), in eval mode and frozen."""
    folder = Path(path)
    if folder.is_file():
        return _exported_controlnet(folder, dtype)
    if not (folder / "config.json").is_file():
        raise CLIError(
            f"ControlNet weights not found: {folder / 'config.json'} (pass {CONTROLNET_HOW_TO_GET})"
        )
    from diffusers import ControlNetModel  # a few seconds: only once the path is known to be good

    try:
        model = ControlNetModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise CLIError(f"cannot load the ControlNet folder {folder} ({error_summary(e)})") from None
    return model.eval().requires_grad_(False)


def _exported_controlnet(path: Path, dtype: torch.dtype):
    from diffusers import ControlNetModel

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = ControlNetModel.from_config(json.loads(blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as e:  # not a train.py export: any of pickle's, KeyError, a shape mismatch
        raise CLIError(f"cannot load the ControlNet {path} ({error_summary(e)})") from None
    return torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)


def check_controlnet_fits(net, unet, path: str | Path) -> None:
    """A ControlNet adds residuals to this UNet's blocks and reads its text context: the channels and
    the cross-attention width must match (an SD 2.x ControlNet on SD v1 would fail deep inside)."""

    def shape(config) -> tuple:
        return config.cross_attention_dim, tuple(config.block_out_channels)

    if shape(net.config) != shape(unet.config):
        raise CLIError(
            f"the ControlNet {path} does not fit this Stable Diffusion: (cross-attention dim, channels) "
            f"{shape(net.config)} vs the UNet's {shape(unet.config)}; SD v1.x needs an SD 1.x ControlNet"
        )


def build_pipeline(sd: StableDiffusion, scheduler, controlnets: list | None = None):
    """StableDiffusionPipeline, or StableDiffusionControlNetPipeline when ControlNets are given
    (a list of several becomes diffusers' MultiControlNetModel). No safety checker: offline
    research use, and it would need another downloaded model."""
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    parts = dict(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if controlnets:
        pipe = StableDiffusionControlNetPipeline(
            controlnet=controlnets[0] if len(controlnets) == 1 else list(controlnets), **parts
        )
    else:
        pipe = StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)  # our own bars count images, not steps
    return pipe


def apply_memory_options(
    pipe,
    device: torch.device,
    attention_slicing: bool = False,
    vae_tiling: bool = False,
    cpu_offload: bool = False,
):
    """For 11-20 GB cards: sliced attention, tiled VAE decoding and model CPU offload (each
    module moves to the GPU only while it runs). Without offload the pipeline goes to `device`."""
    if attention_slicing:
        pipe.enable_attention_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if cpu_offload:
        if device.type != "cuda":
            raise CLIError(
                "--cpu-offload moves modules between the CPU and a GPU: it needs --device cuda"
            )
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


@torch.no_grad()
def generate(
    pipe, seeds: list[int], per_image: dict, batch_size: int = 4, **shared
) -> torch.Tensor:
    """Image i from the i-th entry of every `per_image` list/tensor (prompt, negative_prompt or
    their embeddings) and a CPU generator seeded with seeds[i], so it depends neither on the
    batching nor on the device. Returns float32 (N,3,H,W) in [0,1] on the CPU.

    A batch whose pixels are not finite (fp16 overflow) is redone after switching the pipeline to
    fp32 for the rest of the run; non-finite pixels in fp32 are an error."""
    out = []
    for start in range(0, len(seeds), batch_size):
        batch = {k: v[start : start + batch_size] for k, v in per_image.items()}
        for _ in range(2):
            generators = [
                torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]
            ]
            images = (
                pipe(**batch, **shared, generator=generators, output_type="pt").images.float().cpu()
            )
            if torch.isfinite(images).all():
                break
            if pipe.unet.dtype == torch.float32:
                raise CLIError("non-finite pixels in float32: the weights are broken")
            print(f"warning: {pipe.unet.dtype} overflow (NaN pixels); redoing in float32")
            pipe.to(dtype=torch.float32)
        out.append(images)
    return torch.cat(out)


# --------------------------------------------------------------------------- CLI glue


def add_pipeline_args(
    p: argparse.ArgumentParser,
    steps: int = 30,
    guidance: float = 7.5,
    pretrained_required: bool = True,
) -> None:
    g = p.add_argument_group("model and sampler")
    g.add_argument(
        "--pretrained",
        required=pretrained_required,
        help="SD v1.x weights: a diffusers folder or a CompVis single file (sd-v1-4.ckpt / .safetensors)",
    )
    g.add_argument(
        "--sd-config",
        default=str(V1_CONFIG_DIR),
        help="configs for a single-file model (default: the committed SD v1 configs)",
    )
    g.add_argument(
        "--scheduler",
        default="dpm++2m",
        choices=list(SCHEDULERS),
        help="sampler (default: %(default)s)",
    )
    g.add_argument(
        "--steps", type=positive_int, default=steps, help="denoising steps (default: %(default)s)"
    )
    g.add_argument(
        "--guidance",
        type=non_negative_float,
        default=guidance,
        help="classifier-free guidance scale (default: %(default)s)",
    )
    g.add_argument("--negative-prompt", default="", help="text the guidance steers away from")
    g.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="image side in pixels (default: the model's, 512 for SD v1)",
    )
    g.add_argument("--batch-size", type=positive_int, default=4, help="images per pipeline call")
    g.add_argument("--seed", type=seed_int, default=0, help="image i uses seed + i")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument(
        "--precision",
        default="fp16",
        choices=["fp16", "bf16", "fp32"],
        help="weights' dtype; fp16 falls back to fp32 on the CPU and for NaN batches (default: %(default)s)",
    )
    m = p.add_argument_group("memory options (11-20 GB cards)")
    m.add_argument("--attention-slicing", action="store_true", help="compute attention in slices")
    m.add_argument(
        "--vae-tiling", action="store_true", help="decode the VAE in tiles (large images)"
    )
    m.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep each model on the CPU until it runs (CUDA only)",
    )


def add_control_guidance_args(p: argparse.ArgumentParser, nets: str = "ControlNet") -> None:
    """--guidance-start / --guidance-end, the fraction of the steps a ControlNet acts on, checked
    by check_sampling_args: one spelling and one check for every ControlNet command."""
    p.add_argument(
        "--guidance-start",
        type=probability,
        default=0.0,
        help=f"fraction of steps before the {nets} start",
    )
    p.add_argument(
        "--guidance-end",
        type=probability,
        default=1.0,
        help=f"fraction of steps after which the {nets} stop",
    )


def check_sampling_args(args: argparse.Namespace) -> None:
    """What argparse's types cannot see: options that depend on each other."""
    if hasattr(args, "guidance_start") and not args.guidance_start < args.guidance_end:
        raise CLIError(
            f"--guidance-start {args.guidance_start:g} must be below --guidance-end {args.guidance_end:g}"
        )
    if args.size is not None and args.size % 8:
        raise CLIError(f"--size must be a multiple of 8, got {args.size}")


def pipeline_from_args(args: argparse.Namespace, controlnet_paths: list[str] = ()):
    """(pipeline on its device, the SD it wraps, device): every script's model set-up."""
    check_sampling_args(args)
    device = resolve_device(args.device)
    # fail on a bad path before the big load
    controlnets = [load_controlnet(path) for path in controlnet_paths]
    sd = load_stable_diffusion(
        args.pretrained, args.sd_config, device="cpu", dtype=resolve_dtype(args.precision, device)
    )
    for path, net in zip(controlnet_paths, controlnets):
        check_controlnet_fits(net, sd.unet, path)
        torch.nn.Module.to(net, dtype=sd.dtype)
    pipe = build_pipeline(
        sd,
        make_scheduler(args.scheduler, scheduler_config(args.pretrained, args.sd_config)),
        controlnets,
    )
    apply_memory_options(pipe, device, args.attention_slicing, args.vae_tiling, args.cpu_offload)
    return pipe, sd, device


def call_size(args: argparse.Namespace, sd: StableDiffusion) -> dict:
    side = args.size or sd.resolution
    return {"height": side, "width": side}
