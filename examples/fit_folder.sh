#!/usr/bin/env bash
# Fit one profile per JSONL file in a folder (file name = profile name), keep going past bad
# files, and say at the end which failed and why — the exit codes tell bad data (3) from a
# broken bank or file (4) and a missing model (5).
#
#   bash examples/fit_folder.sh DATA_DIR [OUT_DIR] [extra xpeft fit options…]
#   e.g.  bash examples/fit_folder.sh authors/ profiles/ --epochs 5 --mask hard
set -uo pipefail
data="${1:?usage: fit_folder.sh DATA_DIR [OUT_DIR] [xpeft fit options]}"
out="${2:-profiles}"
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
ok=0; failed=()
for f in "$data"/*.jsonl; do
  [ -e "$f" ] || { echo "no .jsonl files in $data" >&2; exit 3; }
  name="$(basename "$f" .jsonl)"
  if xpeft fit --profile "$name" --data "$f" -o "$out/$name.xpm" --quiet "$@"; then
    ok=$((ok + 1))
  else
    code=$?
    case $code in
      3) why="bad data" ;; 4) why="integrity" ;; 5) why="model missing" ;; 2) why="usage" ;; *) why="exit $code" ;;
    esac
    failed+=("$name ($why)")
    [ $code -eq 5 ] && break   # no model: every other fit would fail the same way
  fi
done
echo "fitted $ok profile(s) into $out"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
