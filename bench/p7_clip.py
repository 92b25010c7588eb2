"""P7 benchmark: every CLIP study of p7_clip/ on the real data slices, timed, into one folder
that p7_clip/report.py reads.

    python -m bench.p7_clip --clip ViT-B-32=weights/ViT-B-32-openai --clip RN50=weights/RN50-openai \\
        --cifar cifar-10-batches-py --coco COCO_ROOT --out outputs/p7          # the real study (GPU)
    OMP_NUM_THREADS=1 python -m bench.p7_clip --robustness-limit 200 --out outputs/p7   # tiny random models

Without --clip it runs tiny random-weight models (ViT-B-32=tiny, RN50=tiny): their accuracies
are chance level and only show that every pipeline runs end to end on real images. OUT gets
similarity/, zeroshot/, probe/MODEL/, retrieval/, maskclip/MODEL/, robustness/ (each with its
own JSON that records its exact command) and bench.json with the wall time of each part.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hw2_utils import (
    HelpFormatter,
    command_line,
    describe_hardware,
    positive_int,
    resolve_device,
    run_cli,
    save_json,
)
from p7_clip import maskclip, retrieval, robustness, similarity, train, zeroshot
from p7_clip.models import parse_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def folder(spec: str) -> str:
    """MaskCLIP's and the probe's output folder for a model spec: the architecture, `_tiny` for random ones."""
    arch, weights = parse_spec(spec)
    return f"{arch}_tiny" if weights == "tiny" else arch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--clip",
        action="append",
        default=None,
        metavar="ARCH=WEIGHTS",
        help="repeatable; default ViT-B-32=tiny and RN50=tiny",
    )
    p.add_argument("--cifar", default=str(SHARED / "cifar10" / "cifar10_slice.npz"))
    p.add_argument("--coco", default=str(SHARED / "coco"))
    p.add_argument(
        "--maskclip-images", default=None, help="image folder for MaskCLIP (default: COCO val2017)"
    )
    p.add_argument(
        "--maskclip-limit", type=positive_int, default=4, help="MaskCLIP overlays per model"
    )
    p.add_argument(
        "--robustness-limit",
        type=positive_int,
        default=1000,
        help="CIFAR test images in the robustness study",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="outputs/p7")
    args = p.parse_args(argv)
    specs = args.clip or ["ViT-B-32=tiny", "RN50=tiny"]
    models = [a for s in specs for a in ("--clip", s)]
    common = [*models, "--device", args.device]
    out = Path(args.out)
    parts = {
        "similarity": lambda: similarity.main(
            [*common, "--data", args.coco, "--n", "10", "--out", str(out / "similarity")]
        ),
        "zeroshot": lambda: zeroshot.main(
            [*common, "--data", args.cifar, "--out", str(out / "zeroshot")]
        ),
        "probe": lambda: [
            train.main(
                [
                    "--clip",
                    s,
                    "--device",
                    args.device,
                    "--data",
                    args.cifar,
                    "--out",
                    str(out / "probe" / folder(s)),
                ]
            )
            for s in specs
        ],
        "retrieval": lambda: retrieval.main(
            [*common, "--data", args.coco, "--n", "100", "--out", str(out / "retrieval")]
        ),
        "maskclip": lambda: [
            maskclip.main(
                [
                    "--clip",
                    s,
                    "--device",
                    args.device,
                    "--data",
                    args.maskclip_images or str(Path(args.coco) / "val2017"),
                    "--limit",
                    str(args.maskclip_limit),
                    "--classes",
                    "pascal-context-59",
                    "--key-smoothing",
                    "1.0",
                    "--denoise",
                    "0.5",  # the official configs
                    "--out",
                    str(out / "maskclip" / folder(s)),
                ]
            )
            for s in specs
        ],
        "robustness": lambda: robustness.main(
            [
                *common,
                "--data",
                args.cifar,
                "--limit",
                str(args.robustness_limit),
                "--out",
                str(out / "robustness"),
            ]
        ),
    }
    seconds = {}
    for name, run in parts.items():
        start = time.perf_counter()
        run()
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"== {name}: {seconds[name]:.1f} s")
    record = {
        "command": command_line("bench.p7_clip", argv),
        "models": specs,
        "seconds": seconds,
        "hardware": describe_hardware(resolve_device(args.device)),
    }
    save_json(out / "bench.json", record)
    return record


if __name__ == "__main__":
    run_cli(main)
