"""Minimal readers for the GLUE files in ../shared/data used by the benchmarks (csv, QUOTE_NONE).

Only what the benchmarks need; full task presets with official metrics are a separate feature.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from xpeft_cli.data import Examples

csv.field_size_limit(sys.maxsize)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def sst2(split: str, limit: int | None = None, seed: int = 0, root: Path = DATA) -> Examples:
    path = root / "sst2" / f"{split}.tsv"
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    if limit and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return Examples([r[0] for r in rows], None, [int(r[1]) for r in rows], str(path))
