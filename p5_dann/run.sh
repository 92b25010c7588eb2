#!/usr/bin/env bash
# P5 DANN inference (DLCV 2022 `hw2_3.sh $1 $2` contract): bash p5_dann/run.sh IMG_DIR OUT_CSV
# Writes image_name,label for every image in IMG_DIR; the target model (usps / svhn) is read
# from IMG_DIR's path or given with --target. Extra options go to p5_dann/infer.py.
set -euo pipefail
[ $# -ge 2 ] || [[ "${1:-}" == -h || "${1:-}" == --help ]] || { echo "usage: bash p5_dann/run.sh IMG_DIR OUT_CSV [infer.py options]" >&2; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/hw2_utils/python.sh"  # $PYTHON, else .venv, else python3; the root on PYTHONPATH
HW2_PROG="bash p5_dann/run.sh" exec "$PYTHON" "$ROOT/p5_dann/infer.py" "$@"
