"""Time hw2_3.sh's workload: N images at SD v1's 512 px with our DDIM + CFG loop.

    python -m bench.p3_textual_inversion --device cuda                       # 100 images, 50 steps, fp16, batch 5
    python -m bench.p3_textual_inversion --device cuda --pretrained sd-v1-4.ckpt  # + checkpoint load time
    python -m bench.p3_textual_inversion --tiny --n 10 --steps 5                 # the CPU smoke version

Without --pretrained the weights are random (built from the committed SD v1 configs): the time
per image does not depend on the weight values, so the budget can be checked without the
4 GB checkpoint. Prints one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hw2_utils import (
    HelpFormatter,
    describe_hardware,
    positive_int,
    resolve_device,
    resolve_dtype,
    run_cli,
)
from stable_diffusion.loader import V1_CONFIG_DIR, load_stable_diffusion
from stable_diffusion.pipeline import text_to_image

PROMPT = "A <new1> shepherd posing proudly on a hilltop with Mount Fuji in the background."


def random_sd_v1(device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stable_diffusion.ddim import NoiseSchedule
    from stable_diffusion.model import StableDiffusion
    from stable_diffusion.tokenizer import load_tokenizer

    torch.manual_seed(0)
    cfg = {
        sub: json.loads((V1_CONFIG_DIR / sub / "config.json").read_text())
        for sub in ("unet", "vae", "text_encoder")
    }
    sd = StableDiffusion(
        UNet2DConditionModel.from_config(cfg["unet"]),
        AutoencoderKL.from_config(cfg["vae"]),
        CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"])),
        load_tokenizer(),
        NoiseSchedule.from_config(V1_CONFIG_DIR / "scheduler" / "scheduler_config.json"),
    )
    return sd.to(device, dtype).eval_frozen()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--pretrained", default=None, help="real SD v1.x checkpoint (default: random weights)"
    )
    p.add_argument(
        "--tiny", action="store_true", help="the tiny test model instead (CPU smoke test)"
    )
    p.add_argument(
        "--n",
        type=positive_int,
        default=100,
        help="images to generate (the public json: 2 concepts x 2 prompts x 25)",
    )
    p.add_argument("--batch-size", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)

    t0 = time.perf_counter()
    if args.tiny:
        from stable_diffusion.tiny import build_tiny_sd

        sd = build_tiny_sd().to(device, dtype)
    elif args.pretrained:
        sd = load_stable_diffusion(args.pretrained, device=device, dtype=dtype)
    else:
        sd = random_sd_v1(device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    load_s = time.perf_counter() - t0

    # warm-up
    text_to_image(sd, PROMPT, args.batch_size, seed=0, steps=2, batch_size=args.batch_size)
    t0 = time.perf_counter()
    images = text_to_image(sd, PROMPT, args.n, seed=0, steps=args.steps, batch_size=args.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "hardware": describe_hardware(device),
                "weights": "tiny" if args.tiny else (args.pretrained or "random SD v1"),
                "dtype": str(dtype).replace("torch.", ""),
                "images": len(images),
                "size": sd.resolution,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "load_s": round(load_s, 1),
                "generate_s": round(gen_s, 1),
                "s_per_image": round(gen_s / len(images), 3),
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                if device.type == "cuda"
                else None,
            }
        )
    )


if __name__ == "__main__":
    run_cli(main)
