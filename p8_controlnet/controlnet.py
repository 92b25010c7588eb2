"""(c) ControlNet: text to image guided by a control map made from an image.

    python -m p8_controlnet.controlnet --pretrained sd-v1-5/ --controlnet sd-controlnet-canny/ --image photo.jpg \\
        --prompt "a watercolour of a harbour" --control-type canny --scale 0.5 1.0 --out outputs/p8/controlnet
    ... --control-type depth --annotators Annotators/    # MiDaS depth via controlnet_aux, local weights
    ... --control-type openpose --image pose.png         # any other type: the image already is the control

--scale takes one or more ControlNet conditioning scales (the residuals it adds to the UNet are
multiplied by it); --guidance-start/--guidance-end give the fraction of the denoising steps during
which the ControlNet acts (e.g. 0 to 0.5 fixes the layout, then lets the prompt finish details).
OUT holds control.png, sSS_iIII.png (scale SS, image III: seed + III), grid.png and run.json.
"""

from __future__ import annotations

import argparse
import time

from hw2_utils import (
    HelpFormatter,
    add_overwrite_option,
    command_line,
    non_negative_float,
    non_negative_int,
    output_dir,
    positive_int,
    run_cli,
    save_images,
    save_json,
)
from p8_controlnet.controls import BUILTIN, CANNY_HIGH, CANNY_LOW, make_control
from p8_controlnet.pipelines import (
    add_control_guidance_args,
    add_pipeline_args,
    call_size,
    check_sampling_args,
    generate,
    pipeline_from_args,
)
from p8_controlnet.records import environment, image_grid


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--image",
        required=True,
        help="source image (canny/depth/hed) or a ready control map (other types)",
    )
    p.add_argument(
        "--controlnet",
        required=True,
        help="diffusers ControlNet folder trained for this control type",
    )
    p.add_argument(
        "--control-type",
        default="canny",
        help=f"{', '.join(BUILTIN)}, or any other name for a ready control image (default: %(default)s)",
    )
    p.add_argument("--annotators", help="local lllyasviel/Annotators folder (depth, hed)")
    p.add_argument(
        "--canny-low", type=non_negative_int, default=CANNY_LOW, help="OpenCV Canny low threshold"
    )
    p.add_argument(
        "--canny-high",
        type=non_negative_int,
        default=CANNY_HIGH,
        help="OpenCV Canny high threshold",
    )
    p.add_argument(
        "--scale",
        type=non_negative_float,
        nargs="+",
        default=[1.0],
        help="conditioning scale(s) (default: 1.0)",
    )
    add_control_guidance_args(p)
    p.add_argument(
        "--n", type=positive_int, default=2, help="images per scale (default: %(default)s)"
    )
    p.add_argument("--out", required=True, help="output folder")
    add_pipeline_args(p)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    check_sampling_args(args)  # before the control image is read
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    pipe, sd, device = pipeline_from_args(args, [args.controlnet])
    size = call_size(args, sd)
    control = make_control(
        args.control_type,
        args.image,
        size["height"],
        args.annotators,
        args.canny_low,
        args.canny_high,
    )

    seeds = [args.seed + i for i in range(args.n)]
    rows, start = [], time.perf_counter()
    # same seeds for every scale: rows differ only by the control's strength
    for scale in args.scale:
        rows.append(
            generate(
                pipe,
                seeds,
                {
                    "prompt": [args.prompt] * args.n,
                    "negative_prompt": [args.negative_prompt] * args.n,
                },
                args.batch_size,
                image=control,
                controlnet_conditioning_scale=scale,
                control_guidance_start=args.guidance_start,
                control_guidance_end=args.guidance_end,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                **size,
            )
        )
    wall_s = time.perf_counter() - start

    files = [[f"s{k:02d}_i{i:03d}.png" for i in range(args.n)] for k in range(len(args.scale))]
    record = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "images": [
            {"file": f, "scale": s, "seed": seed}
            for s, row in zip(args.scale, files)
            for f, seed in zip(row, seeds)
        ],
        "dtype": str(pipe.unet.dtype),
        "wall_s": round(wall_s, 3),
        "command": command_line("p8_controlnet.controlnet", argv),
        "environment": environment(device),
    }
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        control.save(tmp / "control.png")
        for images, names in zip(rows, files):
            save_images(images, [tmp / f for f in names], value_range=(0.0, 1.0))
        save_json(tmp / "run.json", record)
        image_grid(
            tmp / "grid.png",
            [[control, *images] for images in rows],
            [f"scale {s:g}" for s in args.scale],
            ["control", *[f"seed {s}" for s in seeds]],
            title=f"{args.control_type} ControlNet, guidance {args.guidance_start:g}-{args.guidance_end:g}: "
            f"{args.prompt[:40]}",
        )
    print(f"{sum(map(len, rows))} images in {wall_s:.1f} s -> {args.out}")
    return record


if __name__ == "__main__":
    run_cli(main)
