"""P8 inference: one entry point for the six generation scripts (`train.py` fine-tunes a ControlNet).

    python -m p8_controlnet.infer txt2img    ARGS   # (a) p8_controlnet/txt2img.py: text to image, gallery, replay
    python -m p8_controlnet.infer study      ARGS   # (b) p8_controlnet/sampling_study.py: schedulers, schedules, ...
    python -m p8_controlnet.infer controlnet ARGS   # (c) p8_controlnet/controlnet.py: one control
    python -m p8_controlnet.infer multi      ARGS   # (d) p8_controlnet/multi_controlnet.py: several controls
    python -m p8_controlnet.infer edit       ARGS   # (e) p8_controlnet/edit.py: attribute editing in latent space
    python -m p8_controlnet.infer refine     ARGS   # (f) p8_controlnet/refine.py: CLIP-guided latent refinement

`python -m p8_controlnet.infer COMMAND --help` explains each. Tiny stand-in weights for a dry run:
`python -m p8_controlnet.tiny DIR` (DIR/sd, DIR/controlnet-canny, DIR/controlnet-depth, DIR/clip).
"""

from __future__ import annotations

import importlib
import os
import sys

from hw2_utils import CLIError, run_cli

COMMANDS = {
    "txt2img": "txt2img",
    "study": "sampling_study",
    "controlnet": "controlnet",
    "multi": "multi_controlnet",
    "edit": "edit",
    "refine": "refine",
}


def main(argv=None) -> object:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return None
    if argv[0] not in COMMANDS:
        raise CLIError(f"unknown command {argv[0]!r}: use one of {', '.join(COMMANDS)}")
    # usage and error lines name the sub-command
    program, sys.argv[0] = sys.argv[0], f"{os.path.basename(sys.argv[0])} {argv[0]}"
    try:
        return importlib.import_module(f"p8_controlnet.{COMMANDS[argv[0]]}").main(argv[1:])
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    run_cli(main)
