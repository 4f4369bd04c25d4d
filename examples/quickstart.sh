#!/usr/bin/env bash
# The whole X-PEFT loop on the bundled default PLM (all-MiniLM-L6-v2), on a CPU, in a few minutes:
# create a random bank, fit two profiles that label the same sentences their own way,
# inspect and evaluate them, and print the paper's Table 1 with the real measured sizes.
#
#   bash examples/quickstart.sh [WORKDIR]      (default WORKDIR: ./quickstart-out)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${1:-quickstart-out}"
mkdir -p "$work"
cd "$work"
start=$(date +%s)

echo "== 1. a random bank of 400 adapters per site (regenerated from its seed; no tensor file)"
xpeft bank create --random -n 400 --force

echo "== 2. two profiles: alice labels by topic, bob by tone (sign masks: one bit per adapter and site)"
xpeft fit --profile alice --data "$here/alice.jsonl" --epochs 10
xpeft fit --profile bob --data "$here/bob.jsonl" --epochs 10

echo "== 3. what a profile file holds"
xpeft inspect alice.xpm --bank bank

echo "== 4. held-out accuracy"
xpeft eval alice.xpm --data "$here/alice_test.jsonl"
xpeft eval bob.xpm --data "$here/bob_test.jsonl"
echo "-- the same sentences, labelled by each person's own profile:"
xpeft eval alice.xpm --data "$here/alice_test.jsonl" --predictions alice_predictions.jsonl --json >/dev/null
xpeft eval bob.xpm --data "$here/bob_test.jsonl" --predictions bob_predictions.jsonl --json >/dev/null
python3 - <<'PY'
import json
alice = [json.loads(l) for l in open("alice_predictions.jsonl")]
bob = [json.loads(l) for l in open("bob_predictions.jsonl")]
for a, b in list(zip(alice, bob))[::6]:
    print(f"  alice: {a['prediction']:<10}  bob: {b['prediction']:<8}  {a['text']}")
PY

echo "== 5. Table 1, and the real files measured against the same profiles as LoRA adapters"
xpeft report memory alice.xpm --bank bank --profile bob.xpm

echo "== done in $(( $(date +%s) - start ))s; files in $(pwd)"
