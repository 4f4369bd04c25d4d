#!/usr/bin/env bash
# Check a folder of profiles against a bank, pack the good ones into one store, and summarise
# them with jq over --json output.
#
#   bash examples/verify_and_report.sh PROFILE_DIR [BANK_DIR]
set -euo pipefail
dir="${1:?usage: verify_and_report.sh PROFILE_DIR [BANK_DIR]}"
bank="${2:-bank}"

# 1. verify: exit 4 if any file is damaged or belongs to another bank; list which
if ! xpeft verify "$dir" --bank "$bank" --json > verify.json; then
  echo "some profiles failed:" >&2
  jq -r '.files[] | select(.ok | not) | "  \(.file): \(.error)"' verify.json >&2
fi

# 2. pack every profile that passed into one store (O(1) lookups by name)
mapfile -t good < <(jq -r '.files[] | select(.ok) | .file' verify.json)
[ ${#good[@]} -gt 0 ] || { echo "nothing to pack" >&2; exit 4; }
xpeft pack "${good[@]}" -o profiles.xps --json | jq -r '"packed \(.profiles) profiles, \(.bytes_per_profile) bytes each"'

# 3. one line per profile: name, mask, classes and size of each section
for f in "${good[@]}"; do
  xpeft inspect "$f" --json |
    jq -r '"\(.profile)\t\(.mask) k=\(.k) N=\(.n)\t\(.labels // [] | join(","))\tmasks \(.sections.masks) B, total \(.bytes) B"'
done
