#!/usr/bin/env bash
# DLCV 2022 HW2 P1 (GAN), the course's `bash hw2_1.sh $1`: bash p4_gan/run.sh OUT -> OUT/0000.png ... OUT/0999.png.
# Loads the shipped p4_gan/checkpoints/p4_gan.pt unless --checkpoint PATH is given; extra arguments go to p4_gan/infer.py.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash p4_gan/run.sh OUT_DIR [infer.py options]" >&2; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/hw2_utils/python.sh"  # $PYTHON, else .venv, else python3; the root on PYTHONPATH
HW2_PROG="bash p4_gan/run.sh" exec "$PYTHON" "$ROOT/p4_gan/infer.py" "$@"
