#!/usr/bin/env bash
# P2 DDIM: faces from the course's noise files with its pretrained face UNet.
#   bash hw2_2.sh NOISE_DIR OUT_DIR UNET_PT [infer.py options, e.g. --pixel-map minmax]
# Writes OUT_DIR/NN.png for every NOISE_DIR/NN.pt (50 DDIM steps, eta 0, one batch).
set -euo pipefail
if [ $# -lt 3 ] && [[ "${1:-}" != -h && "${1:-}" != --help ]]; then  # --help: infer.py's full help
    echo "usage: bash hw2_2.sh NOISE_DIR OUT_DIR UNET_PT [options]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/hw2_utils/python.sh"  # $PYTHON, else .venv, else python3; the root on PYTHONPATH
HW2_PROG="bash hw2_2.sh" exec "$PYTHON" "$ROOT/p2_ddim/infer.py" "$@"
