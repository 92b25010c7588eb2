#!/usr/bin/env bash
# P3 Textual Inversion: 25 images per prompt of every concept in INPUT_JSON, with the learned tokens.
#   bash hw2_3.sh INPUT_JSON OUT_DIR MODEL_CKPT [infer.py options, e.g. --embeds FILE --steps 50]
# MODEL_CKPT is SD v1.4 (sd-v1-4.ckpt, CompVis format; `bash hw2_download_ckpt.sh sd-v1-4.ckpt`).
# The learned embeddings are every p3_textual_inversion/checkpoints/*.safetensors. No download
# exists for them: train them with `python -m p3_textual_inversion.train` and copy each run's
# learned_embeds.safetensors there (README "P3"), or pass --embeds FILE ...
set -euo pipefail
if [ $# -lt 3 ] && [[ "${1:-}" != -h && "${1:-}" != --help ]]; then  # --help: infer.py's full help
    echo "usage: bash hw2_3.sh INPUT_JSON OUT_DIR MODEL_CKPT [options]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/hw2_utils/python.sh"  # $PYTHON, else .venv, else python3; the root on PYTHONPATH
HW2_PROG="bash hw2_3.sh" exec "$PYTHON" "$ROOT/p3_textual_inversion/infer.py" "$@"
