"""P2 benchmarks: MSE against the course's GT faces, sampling time, and the cost of the
face UNet. Every command prints its numbers and, with --json, saves them (with the
command and hardware) for p2_ddim/report.py.

    # MSE of an existing output folder (e.g. from hw2_2.sh), per image and mean
    python -m bench.p2_ddim mse --pred OUT --gt hw2_data/face/GT
    # sample once, save both pixel maps (OUT/clip, OUT/minmax), MSE of each vs GT
    python -m bench.p2_ddim gt hw2_data/face/noise UNet.pt hw2_data/face/GT --out runs/p2/gt --json runs/p2/mse.json
    # seconds for N images at SIZE (random weights cost the same as the real ones) + peak CUDA memory
    python -m bench.p2_ddim speed --n 10 --size 256 --device cuda --json runs/p2/speed.json
    # FLOPs per forward and a device-free estimate of peak memory (meta tensors, no compute)
    python -m bench.p2_ddim cost --n 10 --size 256 --json runs/p2/cost.json
"""

from __future__ import annotations

import argparse
import json
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from evaluation.ddim_mse import mse_dirs
from hw2_utils import (
    HelpFormatter,
    CLIError,
    command_line,
    describe_hardware,
    ensure_writable_dir,
    positive_int,
    progress,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_images,
    save_json,
)
from p2_ddim.pipeline import PIXEL_MAPS, load_noises, load_unet, sample, to_unit_range
from p2_ddim.unet import FaceUNet

GiB = 2**30


def write_json(path: str | None, result: dict, argv: list[str] | None) -> None:
    if path:
        save_json(path, {"command": command_line("bench.p2_ddim", argv), **result})
        print(f"saved {path}")


def print_mse(label: str, result: dict) -> None:
    for name, value in result["per_image"].items():
        print(f"  {label:7s} {name}: {value:.4f}")
    print(f"{label}: mean MSE = {result['mse']:.4f} over {len(result['per_image'])} images")


def cmd_mse(args) -> dict:
    result = mse_dirs(args.pred, args.gt)
    print_mse("pred", result)
    return {"pred": str(args.pred), "gt": str(args.gt), **result}


def cmd_gt(args) -> dict:
    device = resolve_device(args.device)
    names, noises = load_noises(args.noise_dir)
    unet = load_unet(args.unet, device)
    start = time.perf_counter()
    images = sample(
        unet,
        noises,
        steps=args.steps,
        dtype=resolve_dtype(args.precision, device),
        progress=progress,
    )
    seconds = time.perf_counter() - start
    result = {
        "hardware": describe_hardware(device),
        "dtype": args.precision,
        "steps": args.steps,
        "sampling_seconds": seconds,
        "maps": {},
    }
    for pixel_map in PIXEL_MAPS:
        folder = ensure_writable_dir(Path(args.out) / pixel_map)
        save_images(
            to_unit_range(images, pixel_map),
            [folder / f"{n}.png" for n in names],
            value_range=(0.0, 1.0),
        )
        result["maps"][pixel_map] = mse_dirs(folder, args.gt)
        print_mse(pixel_map, result["maps"][pixel_map])
    print(f"sampling {len(names)} images: {seconds:.1f} s on {result['hardware']}")
    return result


def cmd_speed(args) -> dict:
    device = resolve_device(args.device)
    start = time.perf_counter()
    if args.unet:
        unet = load_unet(args.unet, device)
    else:
        torch.manual_seed(0)
        unet = FaceUNet(args.width).to(device).eval()
    load_seconds = time.perf_counter() - start
    noises = torch.randn(
        args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):  # the first run includes CUDA/cuDNN start-up, as in a grading run
        start = time.perf_counter()
        sample(
            unet,
            noises,
            steps=args.steps,
            dtype=resolve_dtype(args.precision, device),
            progress=progress,
        )
        times.append(time.perf_counter() - start)  # sample() returns on the CPU, so the GPU is done
    result = {
        "hardware": describe_hardware(device),
        "n": args.n,
        "size": args.size,
        "steps": args.steps,
        "width": unet.base_channels,
        "dtype": args.precision,
        "load_seconds": load_seconds,
        "sampling_seconds": times,
    }
    if device.type == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    print(json.dumps(result, indent=2))
    return result


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensors alive at once (the caching allocator's floor). On meta
    tensors it costs no compute, so the peak for a 256x256 batch is known anywhere.
    Outputs that alias an input (views, in-place ops: alias_info in the op's schema) hold
    no new storage and are skipped."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out


def cmd_cost(args) -> dict:
    with torch.device("meta"):
        unet = FaceUNet(args.width).eval()
        x = torch.empty(args.n, 3, args.size, args.size)
        t = torch.full((args.n,), 981, dtype=torch.long)
    weight_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        unet(x, t)
    with torch.no_grad(), LiveTensorBytes() as tracker:
        eps = unet(x, t)
        del eps
    result = {
        "hardware": "meta tensors (no device: counts, not timings)",
        "n": args.n,
        "size": args.size,
        "width": args.width,
        "steps": args.steps,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "gflop_per_image_forward": flops.get_total_flops() / args.n / 1e9,
        "tflop_per_run": flops.get_total_flops() * args.steps / 1e12,
        "weights_gib": weight_bytes / GiB,
        "peak_activations_gib": tracker.peak / GiB,
        "estimate_gib": (weight_bytes + tracker.peak) / GiB,
    }
    print(json.dumps(result, indent=2))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("mse", help="MSE of an existing folder against GT")
    s.add_argument("--pred", required=True)
    s.add_argument("--gt", required=True)
    s = sub.add_parser("gt", help="sample once, both pixel maps, MSE of each against GT")
    s.add_argument("noise_dir")
    s.add_argument("unet")
    s.add_argument("gt")
    s.add_argument("--out", default="runs/p2/gt", help="where OUT/clip and OUT/minmax go")
    s = sub.add_parser("speed", help="sampling time and peak CUDA memory")
    s.add_argument("--unet", help="real weights (default: random weights of the same size)")
    s.add_argument("--n", type=positive_int, default=10)
    s.add_argument("--size", type=positive_int, default=256)
    s.add_argument("--repeats", type=positive_int, default=2, help="timed runs; the first is cold")
    s = sub.add_parser("cost", help="FLOPs and a peak-memory estimate on meta tensors")
    s.add_argument("--n", type=positive_int, default=10)
    s.add_argument("--size", type=positive_int, default=256)
    for s in sub.choices.values():
        s.add_argument(
            "--json", help="also save the numbers here (p2_ddim/report.py reads runs/p2/*.json)"
        )
    for name in ("gt", "speed", "cost"):
        sub.choices[name].add_argument("--steps", type=positive_int, default=50, help="DDIM steps")
    for name in ("gt", "speed"):
        sub.choices[name].add_argument("--device", default="auto")
        sub.choices[name].add_argument(
            "--precision",
            default="fp32",
            help="fp32 | bf16 | fp16",
        )
    for name in ("speed", "cost"):
        sub.choices[name].add_argument(
            "--width", type=positive_int, default=128, help="base channels (128 = the real UNet)"
        )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # the types check the lower bounds
    if getattr(args, "size", 32) % 32 or getattr(args, "steps", 50) > 1000:
        raise CLIError("--size must be a multiple of 32 and --steps at most 1000")
    result = {"mse": cmd_mse, "gt": cmd_gt, "speed": cmd_speed, "cost": cmd_cost}[args.command](
        args
    )
    write_json(args.json, result, argv)
    return result


if __name__ == "__main__":
    run_cli(main)
