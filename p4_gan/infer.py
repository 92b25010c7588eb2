"""Generate the course's 1000 faces: OUT/0000.png ... OUT/0999.png, 64x64 RGB.

    python -m p4_gan.infer OUT                                   # p4_gan/checkpoints/p4_gan.pt (shipped)
    python -m p4_gan.infer OUT --checkpoint runs/p4/dcgan/model.pt

The checkpoint is a generator exported by train.py (RUN/model.pt) or chosen among a run's
snapshots by p4_gan/select_snapshot.py. The same checkpoint, --seed, --batch-size and
--truncation give the same bytes on every run.
"""

from __future__ import annotations

import argparse

from hw2_utils import (
    HelpFormatter,
    check_not_input,
    check_replaceable,
    add_overwrite_option,
    CLIError,
    check_output_path,
    non_negative_float,
    positive_int,
    resolve_device,
    run_cli,
    seed_int,
)
from p4_gan.pipeline import (
    DEFAULT_CHECKPOINT,
    generate,
    image_names,
    load_generator,
    write_images,
)

SEED = 2022
# z is plain N(0, I): every truncation tried on the shipped generator raised its train-face FID
# (`python -m bench.p4_gan truncation`, record p4_gan/checkpoints/p4_truncation.json, "chosen").
TRUNCATION = None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "out", help="output directory (created if missing; other files in it are left alone)"
    )
    p.add_argument(
        "--checkpoint",
        default=str(DEFAULT_CHECKPOINT),
        help="generator file written by p4_gan/train.py",
    )
    p.add_argument(
        "--n", type=positive_int, default=1000, help="number of images (names have four digits)"
    )
    p.add_argument("--seed", type=seed_int, default=SEED)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=500,
        help="part of the seed contract: it can change the last bit",
    )
    p.add_argument(
        "--truncation",
        type=non_negative_float,
        default=TRUNCATION,
        help="redraw every z entry outside [-T, T] (BigGAN's truncation trick); 0: none "
        "(default: none, TRUNCATION in infer.py, chosen on training faces)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_overwrite_option(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not 1 <= args.n <= 10_000:
        raise CLIError(f"--n must be in 1..10000 (file names have four digits), got {args.n}")
    device = resolve_device(args.device)
    generator, meta = load_generator(args.checkpoint, device)
    out = check_output_path(args.out, folder=True)
    check_replaceable(out, image_names(args.n), args.overwrite)  # before the sampling
    check_not_input([out / name for name in image_names(args.n)], [args.checkpoint])
    truncation = args.truncation or None
    images = generate(generator, args.n, args.seed, args.batch_size, truncation)
    write_images(images, out, overwrite=args.overwrite)
    trained = (
        f", {meta['model']} trained for {meta['step']} steps"
        if {"model", "step"} <= meta.keys()
        else ""
    )
    truncated = f", z truncated to [-{truncation:g}, {truncation:g}]" if truncation else ""
    print(f"wrote {args.n} images to {out}/ from {args.checkpoint}{trained}{truncated}")


if __name__ == "__main__":
    run_cli(main)
