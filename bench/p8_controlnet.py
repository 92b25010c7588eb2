"""P8 speed: seconds per denoising step of every scheduler, and on a GPU it/s and peak memory at 512².

    OMP_NUM_THREADS=1 python -m bench.p8_controlnet                  # tiny model on the CPU (always)
    python -m bench.p8_controlnet --device cuda                      # + SD v1 at 512², random weights
    python -m bench.p8_controlnet --device cuda --pretrained sd-v1-5/ --controlnet sd-controlnet-canny/

The tiny part times the test model (32 px) through the diffusers pipeline for each scheduler:
a step is the time between two step-end callbacks (UNet on the CFG batch of 2 + scheduler step),
median over --steps steps of --repeats images, as this process's CPU time and as wall time.
The GPU part times SD v1 at 512² in fp16, batch 1 with CFG (diffusers' anchor: 21.7 it/s on an
A100, 44 it/s compiled), plain and with a ControlNet, then the peak memory with each memory option.
Without --pretrained the weights are random, built from the committed SD v1 configs: the time per step
does not depend on the weight values.
Writes --json (default outputs/p8/p8_bench.json) and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


import torch

from hw2_utils import HelpFormatter, command_line, positive_int, resolve_device, run_cli, save_json
from p8_controlnet.pipelines import (
    SCHEDULERS,
    apply_memory_options,
    build_pipeline,
    load_controlnet,
    make_scheduler,
)
from p8_controlnet.records import environment
from stable_diffusion.loader import V1_CONFIG_DIR, load_stable_diffusion

PROMPT = "a photograph of an astronaut riding a horse"
SCHEDULER_CONFIG = json.loads((V1_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())


def step_times(pipe, steps: int, repeats: int, **kwargs) -> tuple[list[float], list[float]]:
    """Wall and CPU (this process) seconds between consecutive step-end callbacks, i.e. per denoising
    step, over `repeats` images. CPU time is what a shared, loaded machine cannot inflate."""
    stamps: list[tuple[float, float]] = []

    def stamp(pipe, i, t, kw):
        if torch.cuda.is_available():  # not pipe.device: under CPU offload that reports the CPU
            torch.cuda.synchronize()
        stamps.append((time.perf_counter(), time.process_time()))
        return kw

    wall, cpu = [], []
    for r in range(repeats):
        stamps.clear()
        pipe(
            PROMPT,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(r),
            output_type="latent",
            callback_on_step_end=stamp,
            **kwargs,
        )
        wall += [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
        cpu += [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    return wall, cpu


def medians(wall: list[float], cpu: list[float]) -> dict:
    return {
        "cpu_s_per_step": round(statistics.median(cpu), 5),
        "wall_s_per_step": round(statistics.median(wall), 5),
    }


def tiny_cpu(steps: int, repeats: int) -> dict:
    from p8_controlnet.tiny import build_tiny_controlnet
    from stable_diffusion.tiny import build_tiny_sd

    sd = build_tiny_sd(0)
    pipe = build_pipeline(sd, make_scheduler("ddim", SCHEDULER_CONFIG))
    step_times(pipe, 3, 1)  # warm-up
    per_scheduler = {}
    for name in SCHEDULERS:
        pipe.scheduler = make_scheduler(name, SCHEDULER_CONFIG)
        per_scheduler[name] = medians(*step_times(pipe, steps, repeats))
    control = torch.zeros(1, 3, sd.resolution, sd.resolution)
    cpipe = build_pipeline(
        sd, make_scheduler("ddim", SCHEDULER_CONFIG), [build_tiny_controlnet(sd.unet, 1)]
    )
    with_controlnet = medians(*step_times(cpipe, steps, repeats, image=control))
    return {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "size": sd.resolution,
        "steps": steps,
        "repeats": repeats,
        "per_scheduler": per_scheduler,
        "ddim_with_controlnet": with_controlnet,
    }


def random_sd_v1(dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stable_diffusion.ddim import NoiseSchedule
    from stable_diffusion.model import StableDiffusion
    from stable_diffusion.tokenizer import load_tokenizer

    cfg = {
        sub: json.loads((V1_CONFIG_DIR / sub / "config.json").read_text())
        for sub in ("unet", "vae", "text_encoder")
    }
    torch.manual_seed(0)
    sd = StableDiffusion(
        UNet2DConditionModel.from_config(cfg["unet"]),
        AutoencoderKL.from_config(cfg["vae"]),
        CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"])),
        load_tokenizer(),
        NoiseSchedule.from_config(V1_CONFIG_DIR / "scheduler" / "scheduler_config.json"),
    )
    return sd.to(dtype=dtype).eval_frozen()


def gpu_512(
    device: torch.device, model: str | None, controlnet: str | None, steps: int, repeats: int
) -> dict:
    from diffusers import ControlNetModel

    sd = load_stable_diffusion(model, dtype=torch.float16) if model else random_sd_v1(torch.float16)
    net = (
        load_controlnet(controlnet, torch.float16)
        if controlnet
        else torch.nn.Module.to(ControlNetModel.from_unet(sd.unet), dtype=torch.float16)
    )
    control = torch.zeros(1, 3, 512, 512)
    result = {
        "weights": model or "random SD v1",
        "dtype": "float16",  # the GPU: the record's environment
        "size": 512,
        "steps": steps,
        "scheduler": "dpm++2m",
        "batch": 1,
        "cfg": True,
    }
    # cpu_offload last: its hooks stay on the shared modules.
    for name in ("plain", "controlnet", "attention_slicing", "vae_tiling", "cpu_offload"):
        kwargs, nets = ({"image": control}, [net]) if name == "controlnet" else ({}, [])
        pipe = build_pipeline(sd, make_scheduler("dpm++2m", SCHEDULER_CONFIG), nets)
        apply_memory_options(
            pipe, device, name == "attention_slicing", name == "vae_tiling", name == "cpu_offload"
        )
        # warm-up (cuDNN autotuning, allocator)
        step_times(pipe, 3, 1, height=512, width=512, **kwargs)
        torch.cuda.reset_peak_memory_stats(device)
        gaps, _ = step_times(pipe, steps, repeats, height=512, width=512, **kwargs)
        # the VAE decode counts in the peak
        pipe(PROMPT, num_inference_steps=1, height=512, width=512, **kwargs)
        result[name] = {
            "it_per_s": round(1 / statistics.median(gaps), 2),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
        }
        if name == "controlnet":
            torch.nn.Module.to(net, "cpu")  # off the GPU, so later peaks are SD's alone
            torch.cuda.empty_cache()
        pipe.disable_attention_slicing()
        pipe.vae.disable_tiling()
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--device", default="cpu", help="cpu (tiny part only) | cuda | cuda:N (both parts)"
    )
    p.add_argument("--pretrained", help="real SD v1.x weights for the GPU part (default: random)")
    p.add_argument(
        "--controlnet",
        help="real ControlNet folder for the GPU part (default: random, from the UNet)",
    )
    p.add_argument("--steps", type=positive_int, default=20, help="denoising steps per image")
    p.add_argument("--repeats", type=positive_int, default=3, help="images per measurement")
    p.add_argument("--json", default="outputs/p8/p8_bench.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    gpu = (
        gpu_512(device, args.pretrained, args.controlnet, args.steps, args.repeats)
        if device.type == "cuda"
        else None
    )
    record = {
        "tiny_cpu": tiny_cpu(args.steps, args.repeats),
        "gpu_512": gpu,
        "command": command_line("bench.p8_controlnet", argv),
        "environment": environment(device),
    }
    save_json(args.json, record)
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    run_cli(main)
