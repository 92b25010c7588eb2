"""(d) Multi-ControlNet: any number of (control type, image, scale) triples in one pipeline, and
a comparison grid across combinations of their conditioning scales.

    python -m p8_controlnet.multi_controlnet --pretrained sd-v1-5/ --prompt "a knight in a forest" \\
        --control canny castle.jpg 1.0 --control depth forest.jpg 0.7 \\
        --controlnet canny=sd-controlnet-canny/ --controlnet depth=sd-controlnet-depth/ --annotators Annotators/ \\
        --out outputs/p8/multi

Every control type needs its ControlNet (--controlnet TYPE=DIR); canny/depth/hed derive the
control map from the image, any other type uses the image as the map. diffusers sums the
ControlNets' residuals, each multiplied by its scale. The grid has one row per scale combination:
by default each control at 0 or at its own scale (none, each alone, all together); --grid-scales
S1 S2 ... tries every listed value for every control instead. All rows share the seeds.
OUT holds controls/kK_TYPE.png, cCC_iIII.png (combination CC, image III), grid.png and run.json.
"""

from __future__ import annotations

import argparse
import itertools
import time

from hw2_utils import (
    HelpFormatter,
    add_overwrite_option,
    CLIError,
    command_line,
    non_negative_float,
    output_dir,
    positive_int,
    run_cli,
    save_images,
    save_json,
)
from p8_controlnet.controls import make_control
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
        "--control",
        nargs=3,
        action="append",
        required=True,
        metavar=("TYPE", "IMAGE", "SCALE"),
        help="one control (repeat for several)",
    )
    p.add_argument(
        "--controlnet",
        action="append",
        required=True,
        metavar="TYPE=DIR",
        help="diffusers ControlNet folder for a control type (repeat per type)",
    )
    p.add_argument(
        "--grid-scales",
        type=non_negative_float,
        nargs="+",
        help="scale values tried for every control",
    )
    p.add_argument("--annotators", help="local lllyasviel/Annotators folder (depth, hed)")
    add_control_guidance_args(p, "ControlNets")
    p.add_argument(
        "--n", type=positive_int, default=1, help="images per combination (default: %(default)s)"
    )
    p.add_argument("--out", required=True, help="output folder")
    add_pipeline_args(p)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    check_sampling_args(args)
    if len(args.control) < 2:
        raise CLIError(
            "multi_controlnet combines at least two --control; for one, use p8_controlnet/controlnet.py"
        )
    args.controls = [parse_triple(*triple) for triple in args.control]
    args.controlnets = dict(parse_pair(pair) for pair in args.controlnet)
    missing = {kind for kind, _, _ in args.controls} - args.controlnets.keys()
    if missing:
        raise CLIError(
            f"no --controlnet TYPE=DIR for control type(s): {', '.join(sorted(missing))}"
        )
    return args


def parse_triple(kind: str, image: str, scale: str) -> tuple[str, str, float]:
    try:
        return kind, image, non_negative_float(scale)
    except argparse.ArgumentTypeError as e:
        raise CLIError(f"--control {kind} {image} {scale}: the scale {e}") from None


def parse_pair(pair: str) -> tuple[str, str]:
    kind, sep, folder = pair.partition("=")
    if not sep or not kind or not folder:
        raise CLIError(f"--controlnet {pair!r}: expected TYPE=DIR")
    return kind, folder


def scale_combinations(
    scales: list[float], grid_scales: list[float] | None
) -> list[tuple[float, ...]]:
    """Every combination of per-control scales: from grid_scales, else 0 or the control's own."""
    options = [grid_scales] * len(scales) if grid_scales else [sorted({0.0, s}) for s in scales]
    return list(itertools.product(*options))


def main(argv=None) -> dict:
    args = parse_args(argv)
    pipe, sd, device = pipeline_from_args(
        args, [args.controlnets[kind] for kind, _, _ in args.controls]
    )
    size = call_size(args, sd)
    controls = [
        make_control(kind, image, size["height"], args.annotators)
        for kind, image, _ in args.controls
    ]
    combos = scale_combinations([s for _, _, s in args.controls], args.grid_scales)

    seeds = [args.seed + i for i in range(args.n)]
    rows, start = [], time.perf_counter()
    for combo in combos:
        rows.append(
            generate(
                pipe,
                seeds,
                {
                    "prompt": [args.prompt] * args.n,
                    "negative_prompt": [args.negative_prompt] * args.n,
                },
                args.batch_size,
                image=controls,
                controlnet_conditioning_scale=list(combo),
                control_guidance_start=[args.guidance_start] * len(controls),
                control_guidance_end=[args.guidance_end] * len(controls),
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                **size,
            )
        )
    wall_s = time.perf_counter() - start

    kinds = [kind for kind, _, _ in args.controls]
    labels = [", ".join(f"{k} {s:g}" for k, s in zip(kinds, combo)) for combo in combos]
    files = [[f"c{c:02d}_i{i:03d}.png" for i in range(args.n)] for c in range(len(combos))]
    record = {
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "control", "controlnet")
        },
        "combinations": [
            {"scales": list(combo), "label": label, "files": names}
            for combo, label, names in zip(combos, labels, files)
        ],
        "seeds": seeds,
        "dtype": str(pipe.unet.dtype),
        "wall_s": round(wall_s, 3),
        "command": command_line("p8_controlnet.multi_controlnet", argv),
        "environment": environment(device),
    }
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        (tmp / "controls").mkdir()
        for k, (kind, control) in enumerate(zip(kinds, controls)):
            control.save(tmp / "controls" / f"k{k}_{kind}.png")
        for images, names in zip(rows, files):
            save_images(images, [tmp / f for f in names], value_range=(0.0, 1.0))
        save_json(tmp / "run.json", record)
        image_grid(
            tmp / "grid.png",
            [controls, *[list(images) for images in rows]],
            ["controls", *labels],
            title=f"multi-ControlNet ({' + '.join(kinds)}): {args.prompt[:40]}",
        )
    print(f"{len(combos)} scale combinations x {args.n} images in {wall_s:.1f} s -> {args.out}")
    return record


if __name__ == "__main__":
    run_cli(main)
