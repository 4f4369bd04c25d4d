"""Build the example profiles from examples/sentences.tsv (sentences written for xpeft).

Two profiles read the same 108 sentences and label them their own way:
  alice labels each by its topic (sports / technology / food);
  bob labels each by its tone (positive / negative), whatever the topic.
Every 4th sentence of each topic-and-tone group goes to the test files.
"""
import csv
import json
from pathlib import Path

here = Path(__file__).parent
rows = list(csv.DictReader(open(here / "sentences.tsv", encoding="utf-8"), delimiter="\t"))
seen: dict[tuple[str, str], int] = {}
splits = {"train": [], "test": []}
for r in rows:
    key = (r["topic"], r["tone"])
    seen[key] = seen.get(key, 0) + 1
    splits["test" if seen[key] % 4 == 0 else "train"].append(r)
for profile, column in (("alice", "topic"), ("bob", "tone")):
    for split, part in splits.items():
        name = f"{profile}.jsonl" if split == "train" else f"{profile}_test.jsonl"
        with open(here / name, "w", encoding="utf-8") as fh:
            for r in part:
                fh.write(json.dumps({"text": r["text"], "label": r[column]}) + "\n")
print({k: len(v) for k, v in splits.items()})
