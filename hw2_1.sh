#!/usr/bin/env bash
# DLCV HW2 P1: bash hw2_1.sh OUT  ->  OUT/mnistm/{d}_{k:03d}.png and OUT/svhn/..., 1000 images.
# Uses the checkpoint shipped in p1_ddpm/checkpoints/; extra arguments go to p1_ddpm/infer.py.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash hw2_1.sh OUT_DIR [infer.py options]" >&2; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/hw2_utils/python.sh"  # $PYTHON, else .venv, else python3; the root on PYTHONPATH
HW2_PROG="bash hw2_1.sh" exec "$PYTHON" "$ROOT/p1_ddpm/infer.py" "$@"
