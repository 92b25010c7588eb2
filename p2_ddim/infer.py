"""Generate faces from the course's noise files with the pretrained face UNet (DDIM).

    python -m p2_ddim.infer NOISE_DIR OUT_DIR UNET_PT                  # what hw2_2.sh runs
    python -m p2_ddim.infer NOISE_DIR OUT_DIR UNET_PT --pixel-map minmax

For every NN.pt in NOISE_DIR (sorted; .PT too) this writes OUT_DIR/NN.png. All noises run as one
batch through 50 DDIM steps (timesteps 981, 961, ..., 1, then alpha_bar[0]), eta = 0,
predicted x0 clipped to [-1, 1]. Pixel maps:
  clip    clip to [-1, 1], then (x + 1) / 2 * 255, rounded (default)
  minmax  per-image min-max stretch, as torchvision's save_image(normalize=True)
`python -m bench.p2_ddim gt` measures the MSE of both against a GT folder.
"""

from __future__ import annotations

import argparse

import torch

from hw2_utils import (
    HelpFormatter,
    check_not_input,
    check_replaceable,
    add_overwrite_option,
    CLIError,
    check_output_path,
    non_negative_float,
    output_dir,
    positive_int,
    progress,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_images,
    seed_int,
)
from p2_ddim.pipeline import PIXEL_MAPS, load_noises, load_unet, sample, to_unit_range


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "noise_dir",
        help="folder of NN.pt noise tensors, (1,3,H,W) or (3,H,W), H and W divisible by 32",
    )
    p.add_argument("out_dir", help="output folder for NN.png (created if missing)")
    p.add_argument("unet", help="the course's UNet.pt state dict, or a train.py OUT/model.pt")
    p.add_argument(
        "--pixel-map",
        choices=list(PIXEL_MAPS),
        default="clip",
        help="how the final tensor becomes 8-bit pixels",
    )
    p.add_argument(
        "--eta", type=non_negative_float, default=0.0, help="DDIM eta (0 = deterministic)"
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=50,
        help="uniform DDIM steps (timesteps range(0, 1000, 1000 // steps) + 1)",
    )
    p.add_argument(
        "--no-clip-x0",
        dest="clip_x0",
        action="store_false",
        help="do not clip the predicted x0 to [-1, 1]",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the eta > 0 noise")
    add_overwrite_option(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32 | bf16 | fp16 for the UNet (fp32 reproduces GT best)",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.steps > 1000:
        raise CLIError(f"--steps must be in 1..1000, got {args.steps}")
    check_not_input([args.out_dir], [args.unet])
    check_output_path(args.out_dir, folder=True)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    names, noises = load_noises(args.noise_dir)
    outputs = [f"{name}.png" for name in names]
    # before the minutes of sampling: a file in the way that this project did not write
    check_replaceable(args.out_dir, outputs, overwrite=args.overwrite)
    unet = load_unet(args.unet, device)
    images = sample(
        unet,
        noises,
        eta=args.eta,
        steps=args.steps,
        clip_x0=args.clip_x0,
        seed=args.seed,
        dtype=dtype,
        progress=progress,
    )
    # load_noises and load_unet refused non-finite or huge noise and non-finite weights, so
    # what is left is an overflow of the arithmetic itself
    if not torch.isfinite(images).all():
        advice = "rerun with --precision fp32" if dtype != torch.float32 else "the weights overflow"
        raise CLIError(
            f"DDIM produced NaN or infinite values in {dtype} from finite noise and weights "
            f"({advice}); nothing was written"
        )
    pixels = to_unit_range(images, args.pixel_map)
    # One set: all images appear together; other files in OUT_DIR are left alone
    with output_dir(args.out_dir, outputs, overwrite=args.overwrite) as stage:
        save_images(pixels, [stage / name for name in outputs], value_range=(0.0, 1.0))
    print(f"wrote {len(names)} images to {args.out_dir} (pixel map: {args.pixel_map})")


if __name__ == "__main__":
    run_cli(main)
