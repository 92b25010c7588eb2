#!/usr/bin/env bash
# Fetch the course data into hw2_data/ with gdown:  bash get_dataset.sh [2024|2022|--help]
# (2024: digits + face + textual_inversion; 2022: face + digits with usps/svhn for DANN).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${PYTHON:-}" ]; then PYTHON=python3; [ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"; fi
case "${1:-2024}" in
  -h|--help) sed -n '2,/^set /s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;  # the header above
  2024) ID=1W6Y1OmjzNw2qHoGDCpGOwGpw27wLg1fi ;;
  2022) ID=1YxkObGDlqZM0-9Zq-QMjk7q1vND4UJl3 ;;
  *) echo "get_dataset.sh: error: unknown year '$1' (use 2024 or 2022)" >&2; exit 2 ;;
esac
cd "$ROOT"
TMP="$(mktemp -d "$ROOT/.hw2_data.partial.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
if ! "$PYTHON" -m gdown --quiet "$ID" -O "$TMP/hw2_data.zip"; then
  echo "get_dataset.sh: error: download of Google Drive file $ID failed (offline? quota?); nothing was written" >&2
  exit 1
fi
unzip -q "$TMP/hw2_data.zip" -d "$TMP/unzipped"
SRC="$TMP/unzipped"; [ -d "$SRC/hw2_data" ] && SRC="$SRC/hw2_data"
mkdir -p hw2_data
cp -rn "$SRC"/. hw2_data/   # merge: the 2022 and 2024 sets can live side by side
echo "hw2_data/ ready: $(ls hw2_data | tr '\n' ' ')"
