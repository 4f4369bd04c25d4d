"""Fuzz the .xpm reader with mutated files and report outcomes by kind, time and memory.

    python benchmarks/fuzz_xpm.py --cases 100000 [--cli 1000]

Every case must end in either a successful read (the mutation happened to give another valid
file) or an IntegrityError with a one-line message: anything else is a bug and is listed.
`--cli N` also runs N mutated files through `xpeft inspect` in-process and checks exit code 4
and a single stderr line. Writes benchmarks/results/fuzz_xpm.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from xpeft_cli.errors import IntegrityError
from xpeft_cli.fuzz import KINDS, mutate
from xpeft_cli.profile import Profile
from xpeft_cli.xpm import decode, encode

OUT = Path(__file__).resolve().parent / "results" / "fuzz_xpm"


def seeds() -> list[bytes]:
    rng = np.random.default_rng(0)

    def rows(L, n, k):
        m = np.zeros((L, n), dtype=bool)
        for r in m:
            r[rng.choice(n, k, replace=False)] = True
        return m

    full = Profile(
        name="alice",
        mask_kind="hard",
        n=400,
        L=6,
        k=50,
        bank_hash="ab" * 32,
        mask_a=rows(6, 400, 50),
        mask_b=rows(6, 400, 50),
        ln_weight=rng.standard_normal((6, 24)).astype(np.float32),
        ln_bias=rng.standard_normal((6, 24)).astype(np.float32),
        head_weight=rng.standard_normal((3, 384)).astype(np.float32),
        head_bias=rng.standard_normal(3).astype(np.float32),
        labels=["food", "sports", "technology"],
        meta={"fit": {"seed": 0}},
    )
    small = Profile(
        name="x", mask_kind="hard", n=10, L=1, k=2, bank_hash="cd" * 32, mask_a=rows(1, 10, 2), mask_b=rows(1, 10, 2)
    )
    soft = Profile(
        name="s",
        mask_kind="soft",
        n=30,
        L=2,
        k=0,
        bank_hash="ef" * 32,
        mask_a=rng.standard_normal((2, 30)).astype(np.float32),
        mask_b=rng.standard_normal((2, 30)).astype(np.float32),
        soft_dtype="float16",
        head_weight=rng.standard_normal((1, 16)).astype(np.float32),
        head_bias=np.zeros(1, np.float32),
        task="regression",
    )
    return [encode(full), encode(small), encode(soft)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--cli", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    base = seeds()
    outcomes: dict[str, Counter] = defaultdict(Counter)
    bugs: list[str] = []
    slowest = 0.0
    biggest_input = max(len(b) for b in base)
    tracemalloc.start()
    t0 = time.perf_counter()
    for i in range(args.cases):
        kind = KINDS[i % len(KINDS)]
        data = mutate(base[i % len(base)], kind, rng)
        biggest_input = max(biggest_input, len(data))
        t = time.perf_counter()
        try:
            decode(data)
            outcomes[kind]["read"] += 1
        except IntegrityError as exc:
            outcomes[kind]["refused"] += 1
            if "\n" in str(exc):
                bugs.append(f"{kind}: multi-line message")
        except Exception as exc:  # a bug: the reader let something else escape
            outcomes[kind]["other_exception"] += 1
            bugs.append(f"{kind}: {exc.__class__.__name__}: {exc}")
        slowest = max(slowest, time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    cli = Counter()
    if args.cli:
        from xpeft_cli.cli.app import main as xpeft

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "f.xpm"
            for i in range(args.cli):
                path.write_bytes(mutate(base[i % len(base)], KINDS[i % len(KINDS)], rng))
                err, out = io.StringIO(), io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                    try:
                        xpeft(["inspect", str(path), "--json"])
                        code = 0
                    except SystemExit as e:
                        code = e.code
                lines = [l for l in err.getvalue().splitlines() if l.strip()]
                if code == 0:
                    cli["read (exit 0)"] += 1
                elif code == 4 and len(lines) == 1 and lines[0].startswith("xpeft: error:"):
                    cli["refused (exit 4, one line)"] += 1
                else:
                    cli[f"BUG exit {code}, {len(lines)} stderr lines"] += 1
                    bugs.append(f"cli: exit {code}: {err.getvalue()[:200]}")

    res = {
        "command": "python benchmarks/fuzz_xpm.py " + " ".join(sys.argv[1:]),
        "cases": args.cases,
        "seconds": round(seconds, 1),
        "cases_per_second": round(args.cases / seconds),
        "slowest_case_ms": round(slowest * 1000, 3),
        "peak_traced_memory_bytes": peak,
        "largest_input_bytes": biggest_input,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "cli_cases": dict(cli),
        "bugs": bugs[:50],
        "bug_count": len(bugs),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        f"# .xpm reader fuzzing: {args.cases:,} mutated files",
        "",
        f"Command: `{res['command']}`",
        "",
        f"{res['cases_per_second']:,} cases/s; slowest case {res['slowest_case_ms']} ms; peak traced memory "
        f"{peak:,} bytes (largest input {biggest_input:,} bytes); bugs: {len(bugs)}.",
        "",
        "| kind | read | refused | other exception |",
        "|---|---|---|---|",
    ]
    for k in KINDS:
        o = outcomes[k]
        md.append(f"| {k} | {o['read']} | {o['refused']} | {o['other_exception']} |")
    if cli:
        md += ["", "Through `xpeft inspect` (in-process): " + ", ".join(f"{k}: {v}" for k, v in cli.items()) + "."]
    OUT.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    sys.exit(1 if bugs else 0)


if __name__ == "__main__":
    main()
