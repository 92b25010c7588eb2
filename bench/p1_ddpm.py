"""P1 benchmark: generate the 1000 graded digits with a checkpoint, time it, and grade.

    python -m bench.p1_ddpm                      # shipped checkpoint, grading setup
    python -m bench.p1_ddpm --guidance 0 1 2 3 5 --per-digit 10   # CFG sweep (+ cfg_sweep.png)
    python -m bench.p1_ddpm --samplers ddim dpm++ --steps 10 15 20 25 50   # accuracy and time against steps
    python -m bench.p1_ddpm --speed              # seconds per step: our loop vs diffusers', and the knobs

- OUT/mnistm is graded by the course's Classifier.pth (evaluation/digit_accuracy.py).
- OUT/svhn holds the checkpoint's second domain (USPS here, no SVHN on these machines); it
  is graded by the course LeNet architecture trained on USPS train, accepted only if it
  scores >= 0.95 on USPS val (printed); the shipped p1_ddpm/checkpoints/usps_grader_lenet.pt
  is that training's result, else it is trained and cached in --work.
Results go to WORK/p1_bench.json, WORK/p1_cfg_sweep.json with several --guidance values,
WORK/p1_steps.json with several samplers or step counts (all read by p1_ddpm/report.py);
images to WORK/<sampler>_s<steps>_w<w>_n<per-digit>/. --speed writes WORK/p1_speed.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from evaluation.digit_accuracy import (
    PREPROCESS,
    USPS_GRADER,
    LeNet,
    load_mnistm_classifier,
    score_folder,
)
from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    autocast,
    command_line,
    describe_hardware,
    make_generator,
    non_negative_float,
    open_rgb,
    positive_int,
    progress,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_grid,
    seed_everything,
)
from p1_ddpm import infer
from p1_ddpm.data import load_split
from p1_ddpm.diffusion import SAMPLERS, GaussianDiffusion, guided_eps
from p1_ddpm.pipeline import SHIPPED_CHECKPOINT, load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
USPS_MIN_VAL_ACC = 0.95
TARGET_ACC = 0.99  # both graders, for the fewest-steps choice (issue: >= 0.99 on each)


def _per_step(run, steps: int, repeats: int = 2, warmup: dict | None = None) -> float:
    """Seconds per step of run(steps) (one warm-up call first, its seconds stored in
    warmup["seconds"] when given: the compile time of a compiled model), best of `repeats`."""
    start = time.perf_counter()
    run(1)
    if warmup is not None:
        warmup["seconds"] = round(time.perf_counter() - start, 1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - start) / steps)
    return min(times)


def speed(checkpoint: str, batch: int, device: torch.device, steps: int = 4) -> dict:
    """Seconds per sampling step of `batch` images (a CFG step runs the UNet on 2 x batch):
    our loop against diffusers' scheduler loop on the same UNet and batch, and the UNet
    forward under each throughput knob (precision, memory format, inference_mode, compile)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    model, _ = load_model(checkpoint, device)
    diffusion = GaussianDiffusion()
    digits, domains = torch.arange(batch) % 10, torch.zeros(batch, dtype=torch.long)
    eps_fn = guided_eps(
        model,
        digits.to(device),
        domains.to(device),
        model.null_digit,
        model.null_domain,
        infer.GUIDANCE,
    )
    shape = (batch, 3, 28, 28)
    schedulers = {
        "ddim": DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=1e-4,
            beta_end=0.02,
            clip_sample=True,
            set_alpha_to_one=True,
            timestep_spacing="leading",
        ),
        "dpm++": DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            beta_start=1e-4,
            beta_end=0.02,
            algorithm_type="dpmsolver++",
            thresholding=True,
            sample_max_value=1.0,
        ),
    }
    loops = {}
    with torch.inference_mode():
        for name, scheduler in schedulers.items():

            def ours(n, name=name):
                diffusion.sample(
                    eps_fn, shape, torch.Generator().manual_seed(0), device, sampler=name, steps=n
                )

            def theirs(n, scheduler=scheduler):
                scheduler.set_timesteps(n)
                x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
                for t in scheduler.timesteps:
                    x = scheduler.step(
                        eps_fn(x, torch.full((batch,), int(t), device=device)), t, x
                    ).prev_sample

            loops[name] = {
                "ours_s_per_step": _per_step(ours, steps),
                "diffusers_s_per_step": _per_step(theirs, steps),
            }
            loops[name]["ratio"] = (
                loops[name]["ours_s_per_step"] / loops[name]["diffusers_s_per_step"]
            )
            print(f"{name}: {loops[name]}", flush=True)

    x = torch.randn(2 * batch, 3, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((2 * batch,), 500, device=device)
    d, m = torch.cat([digits, digits]).to(device), torch.cat([domains, domains]).to(device)
    knobs = []
    for dtype, channels_last, mode in itertools.product(
        (torch.float32, torch.bfloat16),
        (False, True),
        ("no_grad", "inference_mode", "no_grad+compile"),
    ):
        net = model.to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        if mode.endswith("compile"):  # inductor; _per_step's untimed first call compiles
            torch._dynamo.reset()
            net = torch.compile(net)
        xi = x.contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        context = torch.inference_mode if mode == "inference_mode" else torch.no_grad

        def forward(n, net=net, xi=xi, dtype=dtype, context=context):
            with context(), autocast(device, dtype):
                for _ in range(n):
                    net(xi, t, d, m)

        warmup = {}
        knobs.append(
            {
                "dtype": str(dtype).removeprefix("torch."),
                "channels_last": channels_last,
                "mode": mode,
                "s_per_unet_call": _per_step(forward, 2, warmup=warmup),
                "first_call_s": warmup["seconds"],
            }
        )
        print(knobs[-1], flush=True)
    return {"batch": batch, "guidance": infer.GUIDANCE, "loops": loops, "unet_calls": knobs}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument(
        "--data",
        default=str(SHARED / "hw2_data" / "digits"),
        help="course layout holding usps/",
    )
    p.add_argument(
        "--classifier",
        default=str(SHARED / "grader" / "Classifier.pth"),
        help="course MNIST-M grader",
    )
    p.add_argument(
        "--work", default="outputs/p1", help="generated images, cached USPS grader, results json"
    )
    p.add_argument(
        "--guidance",
        type=non_negative_float,
        nargs="+",
        default=[infer.GUIDANCE],
        help="one run per value",
    )
    p.add_argument("--per-digit", type=positive_int, default=50)
    p.add_argument(
        "--samplers",
        nargs="+",
        default=[infer.SAMPLER],
        choices=SAMPLERS,
        help="one run per sampler ...",
    )
    p.add_argument(
        "--steps", type=positive_int, nargs="+", default=[infer.STEPS], help="... and step count"
    )
    p.add_argument("--precision", default="fp32", help="the UNet's autocast (infer.py --precision)")
    p.add_argument(
        "--speed",
        action="store_true",
        help="time the sampling loop and the throughput knobs instead",
    )
    p.add_argument(
        "--speed-batch",
        type=positive_int,
        default=500,
        help="--speed: images per batch (CFG doubles the UNet batch)",
    )
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def usps_grader(digits_root: Path, cache: Path, device: torch.device) -> tuple[LeNet, float]:
    """The course LeNet trained on USPS train with the grader's preprocessing; val accuracy."""

    def tensors(split):
        images, labels = load_split(digits_root / "usps", split)
        from PIL import Image

        return torch.stack(
            [PREPROCESS(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images]
        ), labels

    x_val, y_val = tensors("val")
    model = LeNet().to(device)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        seed_everything(0)
        x, y = tensors("train")
        # One-cycle Adam, 30 epochs (its USPS val accuracy: p1_ddpm/checkpoints/README.md); a
        # constant rate for 15 epochs scored lower and varied with the thread count.
        epochs, batches = 30, (len(x) + 127) // 128
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=2e-3, total_steps=epochs * batches
        )
        generator = make_generator(0)
        for _ in progress(range(epochs), desc="USPS grader epochs"):
            for idx in torch.randperm(len(x), generator=generator).split(128):
                # mild noise: generated digits are not clean scans
                xb = x[idx] + 0.1 * torch.randn(x[idx].shape, generator=generator)
                loss = torch.nn.functional.cross_entropy(model(xb.to(device)), y[idx].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
        with atomic_path(cache) as tmp:
            torch.save(model.state_dict(), tmp)
    model.eval()
    with torch.no_grad():
        val_acc = (model(x_val.to(device)).argmax(1).cpu() == y_val).float().mean().item()
    return model, val_acc


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    work = Path(args.work)
    if args.speed:
        record = {
            **speed(args.checkpoint, args.speed_batch, device),
            "hardware": describe_hardware(device),
            "command": command_line("bench.p1_ddpm", argv),
        }
        with atomic_path(work / "p1_speed.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        print(f"wrote {work / 'p1_speed.json'}")
        return
    mnistm_grader = load_mnistm_classifier(args.classifier, device)
    # The shipped grader when present (the same training, cached), else trained here into WORK.
    usps_model, usps_val = usps_grader(
        Path(args.data), USPS_GRADER if USPS_GRADER.is_file() else work / "usps_lenet.pt", device
    )
    print(
        f"USPS grader (course LeNet trained on USPS train): val acc = {usps_val:.4f} on 2007 images"
    )
    if usps_val < USPS_MIN_VAL_ACC:
        raise CLIError(
            f"USPS grader val acc {usps_val:.4f} < {USPS_MIN_VAL_ACC}: refusing to grade with it"
        )

    results = []
    for sampler, steps, w in itertools.product(args.samplers, args.steps, args.guidance):
        out = work / f"{sampler}_s{steps}_w{w:g}_n{args.per_digit}"
        t0 = time.perf_counter()
        infer.main(
            [
                str(out),
                "--checkpoint",
                args.checkpoint,
                "--guidance",
                str(w),
                "--per-digit",
                str(args.per_digit),
                "--sampler",
                sampler,
                "--steps",
                str(steps),
                "--precision",
                args.precision,
                "--device",
                str(device),
            ]
        )
        seconds = time.perf_counter() - t0
        mnistm = score_folder(mnistm_grader, out / "mnistm", device)
        second = score_folder(usps_model, out / "svhn", device)
        results.append(
            {
                "sampler": sampler,
                "steps": steps,
                "guidance": w,
                "seconds": round(seconds, 1),
                "mnistm_acc": mnistm["acc"],
                "second_domain_acc": second["acc"],
                "images": mnistm["total"] + second["total"],
            }
        )
        print(
            f"{sampler} {steps} steps, w={w:g}: "
            f"MNIST-M acc = {mnistm['acc']:.4f} ({mnistm['correct']}/{mnistm['total']}), "
            f"second domain (USPS) acc = {second['acc']:.4f} ({second['correct']}/{second['total']}), "
            f"{seconds:.0f} s for {results[-1]['images']} images"
        )

    record = {
        "checkpoint": args.checkpoint,
        "checkpoint_step": torch.load(args.checkpoint, weights_only=True)["step"],
        "per_digit": args.per_digit,
        "precision": str(resolve_dtype(args.precision, device)).removeprefix("torch."),
        "usps_grader_val_acc": usps_val,
        "device": str(device),
        "hardware": describe_hardware(device),
        "results": results,
        "command": command_line("bench.p1_ddpm", argv),
    }
    if len(args.samplers) * len(args.steps) > 1:
        name = "p1_steps.json"
        passing = [r for r in results if min(r["mnistm_acc"], r["second_domain_acc"]) >= TARGET_ACC]
        record["fewest_steps_at_target"] = (
            min(passing, key=lambda r: (r["steps"], r["seconds"])) if passing else None
        )
        print(
            f"fewest steps with both accuracies >= {TARGET_ACC}: {record['fewest_steps_at_target']}"
        )
    else:
        name = "p1_cfg_sweep.json" if len(args.guidance) > 1 else "p1_bench.json"
    with atomic_path(work / name) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    print(f"wrote {work / name}")
    if len(args.guidance) > 1:
        sweep_figure(work, args.guidance, args.per_digit)


def sweep_figure(work: Path, guidances: list[float], per_digit: int) -> None:
    """WORK/cfg_sweep.png: per guidance value one row per domain folder, digits 0-9 (the first noise)."""
    from torchvision.transforms.functional import pil_to_tensor

    rows = [
        [
            work / f"{infer.SAMPLER}_s{infer.STEPS}_w{w:g}_n{per_digit}" / folder / f"{d}_001.png"
            for d in range(10)
        ]
        for w in guidances
        for folder in ("mnistm", "svhn")
    ]
    images = torch.stack([pil_to_tensor(open_rgb(f)) for row in rows for f in row]).float() / 255
    save_grid(images, work / "cfg_sweep.png", nrow=10, value_range=(0.0, 1.0))
    print(
        f"wrote {work / 'cfg_sweep.png'} (rows: w = {', '.join(f'{w:g}' for w in guidances)}, each mnistm then svhn)"
    )


if __name__ == "__main__":
    run_cli(main)
