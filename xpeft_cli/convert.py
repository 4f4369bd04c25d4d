"""Converters from public multi-profile data to xpeft's JSONL (text, label, profile).

News Category Dataset (Misra 2022; the source of LaMP-2): one JSON object per line with
link, headline, short_description, category, authors, date. The paper's LaMP setting is
reproduced as: profile = the `authors` string, label = `category`, text = headline and
short description. Rows are deduplicated by `link` (the first file given wins), rows
without authors are dropped, and so are authors with fewer than `min_rows` rows.
The split is per author: a seeded shuffle of the author's rows, the last `test_fraction`
(at least one row) to test — the paper's 70/30 holdout per author (its Fig. 4).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from .atomic import atomic_write_text
from .data import json_lines
from .errors import DataError

NEWS_FIELDS = ("link", "headline", "category", "authors")


def read_news(paths: list[Path]) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    seen: set = set()
    stats: Counter = Counter()
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such file")
        with open(path, encoding="utf-8") as fh:
            for no, obj in json_lines(fh, str(path)):
                if not isinstance(obj, dict) or any(not isinstance(obj.get(f), str) for f in NEWS_FIELDS):
                    raise DataError(
                        f"{path}: line {no}: a News Category row needs string fields {', '.join(NEWS_FIELDS)}"
                    )
                stats["read"] += 1
                if obj["link"] in seen:
                    stats["duplicate_link"] += 1
                    continue
                seen.add(obj["link"])
                author = obj["authors"].strip()
                if not author:
                    stats["no_author"] += 1
                    continue
                head, desc = obj["headline"].strip(), str(obj.get("short_description") or "").strip()
                if not head and not desc:
                    stats["no_text"] += 1
                    continue
                sep = " " if head[-1:] in ".?!:" else ". "
                text = f"{head}{sep}{desc}" if head and desc else (head or desc)
                rows.append(
                    {"text": text, "label": obj["category"].strip(), "profile": author, "date": obj.get("date")}
                )
    return rows, dict(stats)


def news_category(
    paths: list[Path], out_dir: Path, min_rows: int = 20, test_fraction: float = 0.3, seed: int = 0
) -> dict:
    """Write out_dir/train.jsonl and out_dir/test.jsonl; returns counts (also written as stats.json)."""
    if not 0 < test_fraction < 1:
        raise DataError("--test-fraction must be between 0 and 1")
    rows, stats = read_news(paths)
    per = Counter(r["profile"] for r in rows)
    keep = {a for a, c in per.items() if c >= min_rows}
    if not keep:
        raise DataError(f"no author has {min_rows} or more rows")
    by_author: dict[str, list[dict]] = {}
    for r in rows:
        if r["profile"] in keep:
            by_author.setdefault(r["profile"], []).append(r)
    train, test = [], []
    for author in sorted(by_author):
        items = by_author[author]
        order = list(range(len(items)))
        random.Random(f"{seed}:{author}").shuffle(order)
        n_test = min(len(items) - 1, max(1, round(len(items) * test_fraction)))
        test += [items[i] for i in sorted(order[-n_test:])]
        train += [items[i] for i in sorted(order[:-n_test])]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", train), ("test.jsonl", test)):
        atomic_write_text(out_dir / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    sizes = sorted(((a, len(v)) for a, v in by_author.items()), key=lambda kv: (-kv[1], kv[0]))
    report = {
        "sources": [str(p) for p in paths],
        **stats,
        "rows_kept": len(train) + len(test),
        "authors": len(keep),
        "min_rows": min_rows,
        "test_fraction": test_fraction,
        "seed": seed,
        "train_rows": len(train),
        "test_rows": len(test),
        "categories": len({r["label"] for r in train + test}),
        "largest_authors": sizes[:5],
        "smallest_rows": sizes[-1][1],
    }
    atomic_write_text(out_dir / "stats.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
