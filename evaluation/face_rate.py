"""Face recognition rate of generated faces, as the course grades the GAN problem.

    python -m evaluation.face_rate --image_dir OUT

The rate is the share of images in which the HOG face detector finds exactly one face.
The course runs `face_recognition.face_locations(image, model="HOG")` on
`face_recognition.load_image_file(path)`. That package only installs by compiling dlib,
so this grader calls the same detector directly: face_locations with the HOG model is
`dlib.get_frontal_face_detector()(image, 1)` (upsampled once) on the uint8 RGB array
of the file opened with PIL and converted to RGB, and it returns one box per face.
dlib comes from the `dlib-bin` wheel.

As in the course script, every entry of the folder counts except those that cannot be
read, which are dropped from the total.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import numpy as np

from hw2_utils import HelpFormatter, CLIError, open_rgb, progress, require_dir, run_cli

UPSAMPLE = 1  # face_recognition.face_locations' default number_of_times_to_upsample


def hog_face_counter() -> Callable[[np.ndarray], int]:
    """Number of faces dlib's HOG frontal-face detector finds in a uint8 RGB array."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    return lambda image: len(detector(image, UPSAMPLE))


def face_rate(
    image_dir: str | os.PathLike, count_faces: Callable[[np.ndarray], int] | None = None
) -> dict:
    """{'rate': one-face images / readable images, 'one_face', 'total', 'unreadable': names}."""
    folder = require_dir(image_dir, "image folder")
    count_faces = count_faces or hog_face_counter()
    one_face, unreadable = 0, []
    entries = sorted(folder.iterdir())
    for path in progress(entries, desc="faces"):
        try:
            array = np.array(open_rgb(path))
        except CLIError:
            # a folder or a non-image: dropped, as the course does
            unreadable.append(path.name)
            continue
        one_face += int(count_faces(array) == 1)
    total = len(entries) - len(unreadable)
    if total == 0:
        raise CLIError(f"image folder {folder} holds no readable images")
    return {
        "rate": one_face / total,
        "one_face": one_face,
        "total": total,
        "unreadable": unreadable,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--image_dir", required=True, help="folder of generated face images")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = face_rate(args.image_dir)
    for name in result["unreadable"]:
        print(f"can't open {name}: left out of the total")
    print(
        f"Face recognition Accuracy: {100 * result['rate']:.3f}% "
        f"({result['one_face']}/{result['total']} images with exactly one face)"
    )
    return result


if __name__ == "__main__":
    run_cli(main)
