"""Control images for ControlNet: Canny edges (OpenCV), depth and HED edges (controlnet_aux
annotators from local weights), or any image the user supplies, all at the sampling size.

Every control is an RGB PIL image of size x size, as the SD v1 ControlNets were trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hw2_utils import CLIError, open_rgb, require_file

# OpenCV thresholds of the ControlNet authors' Canny demo: low 100, high 200.
CANNY_LOW, CANNY_HIGH = 100, 200
# controlnet_aux annotator -> (class, weight file it reads from a local lllyasviel/Annotators folder).
ANNOTATORS = {
    "depth": ("MidasDetector", "dpt_hybrid-midas-501f0c75.pt"),
    "hed": ("HEDdetector", "ControlNetHED.pth"),
}
ANNOTATORS_HOW_TO_GET = (
    "`huggingface-cli download lllyasviel/Annotators --local-dir DIR`, then --annotators DIR"
)
BUILTIN = ("canny", *ANNOTATORS)


def square(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, then resize to size x size (bicubic)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def canny(
    image: Image.Image, size: int, low: int = CANNY_LOW, high: int = CANNY_HIGH
) -> Image.Image:
    """Binary edge map (0 or 255 in all three channels) of the squared, resized image."""
    import cv2

    gray = cv2.cvtColor(np.asarray(square(image, size)), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def annotate(
    kind: str, image: Image.Image, size: int, annotators: str | Path | None
) -> Image.Image:
    """Depth (MiDaS) or HED edges with controlnet_aux, from weights in a local folder only."""
    cls_name, weight_file = ANNOTATORS[kind]
    try:
        import controlnet_aux
    except ImportError:
        raise CLIError(
            f"the {kind} control needs controlnet_aux (pip install controlnet_aux) and its weights: "
            f"{ANNOTATORS_HOW_TO_GET}; or pass a ready control image with --control-type image"
        ) from None
    if annotators is None:
        raise CLIError(
            f"the {kind} control needs --annotators DIR holding {weight_file} ({ANNOTATORS_HOW_TO_GET})"
        )
    require_file(Path(annotators) / weight_file, f"{kind} annotator weights", ANNOTATORS_HOW_TO_GET)
    detector = getattr(controlnet_aux, cls_name).from_pretrained(
        str(annotators), filename=weight_file
    )
    out = detector(square(image, size), detect_resolution=size, image_resolution=size)
    return out.convert("RGB").resize((size, size), Image.BICUBIC)


def make_control(
    kind: str,
    image_path: str | Path,
    size: int,
    annotators: str | Path | None = None,
    low: int = CANNY_LOW,
    high: int = CANNY_HIGH,
) -> Image.Image:
    """`kind` canny/depth/hed derives the control from the image; any other kind (e.g. "image",
    "openpose", "scribble") means the image already is the control map."""
    image = open_rgb(require_file(image_path, "image"))
    if kind == "canny":
        return canny(image, size, low, high)
    if kind in ANNOTATORS:
        return annotate(kind, image, size, annotators)
    return square(image, size)
