"""Fuzz every reader beyond .xpm: .xps stores, bank manifests, fit checkpoints and data files.

    python benchmarks/fuzz_inputs.py --cases 1000000      # about 15 minutes on 2 CPU cores

Each kind of input starts from a valid file made here (a tiny random BERT, a bank over it, a fit
checkpoint, a store of profiles, JSONL/CSV/TSV data) and is mutated both blindly (bit flips,
truncation, random bytes, splices) and with knowledge of its structure (forged store index entries
and counts, manifest fields of the wrong type or out of range, checkpoint metadata and tensors,
data rows with a BOM, CRLF, bad UTF-8, NaN/inf labels, ragged CSV rows, deep JSON, a 10 MB line).
Every case is read in-process by the function the CLI uses. A case passes when it reads or raises
an XpeftError with a one-line message; anything else, a case slower than 10 s, or a case whose
traced allocation exceeds 64× its input (plus 4 MiB for the bank's own tensors) is a bug.
Writes benchmarks/results/fuzz_inputs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import struct
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from xpeft_cli.errors import XpeftError  # noqa: E402

from helpers import save_tiny, sentiment_rows  # noqa: E402  (the tests' tiny random BERT)

OUT = Path(__file__).resolve().parent / "results" / "fuzz_inputs"
SLOW_S = 10.0
MEMORY_FACTOR, MEMORY_SLACK = 64, 4 << 20


# ---- blind byte mutations ---------------------------------------------------------------------
def blind(data: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(6)
    b = bytearray(data)
    if op == 0 and b:  # flip 1-8 bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif op == 2:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 3 and b:  # overwrite a run with random bytes
        i = rng.randrange(len(b))
        for j in range(i, min(len(b), i + rng.randint(1, 16))):
            b[j] = rng.randrange(256)
    elif op == 4 and len(b) > 8:  # splice: repeat a chunk somewhere else
        i, j = sorted(rng.sample(range(len(b)), 2))
        k = rng.randrange(len(b))
        b[k:k] = b[i:j][:4096]
    else:  # set a run of bytes to 0xFF or 0x00 (huge or zero counts)
        if b:
            i = rng.randrange(len(b))
            fill = rng.choice((0, 255))
            for j in range(i, min(len(b), i + rng.choice((1, 2, 4, 8)))):
                b[j] = fill
    return bytes(b)


# ---- .xps stores -----------------------------------------------------------------------------
def store_structured(data: bytes, rng: random.Random) -> bytes:
    """Forge the header (count, buckets, index offset, re-checksummed) or index entries (offsets,
    lengths, keys; all entries pointing at one record; re-checksummed)."""
    from xpeft_cli.store import ENTRY, HEADER

    b = bytearray(data)
    magic, major, minor, reserved, count, buckets, index_offset, crc = HEADER.unpack_from(b, 0)
    op = rng.randrange(4)
    if op == 0:
        count = rng.choice((0, 1, count + 1, 2**31, 2**32 - 1, rng.randrange(2**32)))
        buckets = rng.choice((buckets, buckets * 2, 1, 3, 2**31))
        struct.pack_into(HEADER.format, b, 0, magic, major, minor, reserved, count, buckets, index_offset, 0)
        struct.pack_into("<I", b, HEADER.size - 4, zlib.crc32(bytes(b[: HEADER.size - 4])))
        return bytes(b)
    entries = [list(ENTRY.unpack_from(b, index_offset + i * ENTRY.size)) for i in range(buckets)]
    full = [i for i, e in enumerate(entries) if e[0]]
    if op == 1 and full:  # every entry points at the first record (amplification)
        first = entries[full[0]]
        for i in full:
            entries[i][1], entries[i][2] = first[1], first[2]
    elif op == 2 and full:  # one entry's offset / length / key forged
        e = entries[rng.choice(full)]
        field = rng.choice((0, 1, 1, 2, 2))  # key, offset (u64), length (u32)
        value = rng.choice((0, 1, 31, 32, 33, len(b), 2**32 - 1, 2**63, rng.randrange(2**40)))
        e[field] = value % 2**32 if field == 2 else value
    elif full:  # overlap two records
        i, j = rng.sample(full, 2) if len(full) > 1 else (full[0], full[0])
        entries[j][1] = entries[i][1] + rng.randrange(0, 16)
    for i, e in enumerate(entries):
        struct.pack_into(ENTRY.format, b, index_offset + i * ENTRY.size, *e)
    end = index_offset + buckets * ENTRY.size
    struct.pack_into("<I", b, end, zlib.crc32(bytes(b[index_offset:end])))
    return bytes(b)


def read_store(path: Path) -> None:
    from xpeft_cli.store import Store

    with Store(path) as s:
        names = [p.name for p in s]
        for n in names[:2]:
            s.get(n)


# ---- bank manifests --------------------------------------------------------------------------
def _leaves(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, prefix + (i,))
    yield prefix


WEIRD = [
    None,
    True,
    -1,
    0,
    1,
    2**31,
    2**63,
    10**30,
    1e308,
    -1e308,
    "x",
    "",
    "../../etc/passwd",
    [],
    {},
    [1, 2],
    65535,
    65536,
    1e-9,
    "NaN",
    "a" * 1000,
]


def manifest_structured(data: bytes, rng: random.Random) -> bytes:
    m = json.loads(data)
    paths = [p for p in _leaves(m) if p]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        parent = m
        try:
            for k in path[:-1]:
                parent = parent[k]
            if rng.random() < 0.15 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = rng.choice(WEIRD)
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(m)
    if rng.random() < 0.05:
        text = "[" * 100_000 + "]" * 100_000  # deep nesting
    return text.encode()


def read_bank(folder: Path, model: str) -> None:
    from xpeft_cli.bank import Bank

    Bank.load(folder, model=model)


# ---- fit checkpoints ---------------------------------------------------------------------------
def checkpoint_structured(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the safetensors header JSON: metadata fields (position, profile identity, config) of
    the wrong type or out of range, tensor shapes, dtypes and offsets forged."""
    (n,) = struct.unpack_from("<Q", data, 0)
    head = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    meta = head.get("__metadata__", {})
    keys = [k for k in head if k != "__metadata__"]
    op = rng.randrange(3)
    if op == 0 and meta:
        key = rng.choice(sorted(meta))
        try:
            inner = json.loads(meta[key])
            if isinstance(inner, dict) and inner:
                inner[rng.choice(sorted(inner))] = rng.choice(WEIRD)
            else:
                inner = rng.choice(WEIRD)
            meta[key] = json.dumps(inner)
        except ValueError:
            meta[key] = rng.choice(("", "{", "[]", "null"))
    elif op == 1 and keys:
        t = head[rng.choice(keys)]
        t["shape"] = [rng.choice((0, 1, 2, 7, 2**20, 2**40))] * rng.randint(0, 3)
    elif keys:
        t = head[rng.choice(keys)]
        if rng.random() < 0.5:
            t["dtype"] = rng.choice(("F16", "I64", "BOOL", "F64", "U8", "XX"))
        else:
            t["data_offsets"] = [rng.randrange(len(body) + 10), rng.randrange(len(body) + 10)]
    raw = json.dumps(head).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def read_checkpoint(path: Path) -> None:
    from xpeft_cli.checkpoint import profile_from_checkpoint

    profile_from_checkpoint(path)


# ---- data files ----------------------------------------------------------------------------------
def data_structured(data: bytes, rng: random.Random, suffix: str) -> bytes:
    text = data.decode()
    lines = text.splitlines(keepends=True)
    op = rng.randrange(9)
    if op == 0:
        return b"\xef\xbb\xbf" + data  # BOM
    if op == 1:
        return text.replace("\n", "\r\n").encode()
    if op == 2:  # a byte that is not UTF-8 in a random line
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.choice((0xFF, 0xC3, 0x80, 0xFE))]) + data[i:]
    if op == 3:  # NaN / inf / huge labels
        bad = rng.choice(("NaN", "nan", "inf", "-Infinity", "1e999", '"1e999"', "null", "[]"))
        if suffix == ".jsonl":
            return text.replace('"label": "pos"', f'"label": {bad}', 1).encode()
        return text.replace("\tpos", "\t" + bad, 1).replace(",pos", "," + bad, 1).encode()
    if op == 4 and len(lines) > 2:  # ragged row
        i = rng.randrange(1, len(lines))
        lines[i] = lines[i].rstrip("\n") + rng.choice((",extra", "\textra", '"', ",", "")) + "\n"
        return "".join(lines).encode()
    if op == 5:
        return (text + "[" * 50_000 + "\n").encode()
    if op == 6:
        return b""
    if op == 7 and lines:  # drop or rename the header / a key
        return text.replace("text", rng.choice(("txt", "", "label", "text text")), 1).encode()
    return blind(data, rng)


def read_data(path: Path) -> None:
    from xpeft_cli.data import encode_labels, infer_task, label_names, load_examples

    ex = load_examples(path)
    task = infer_task(ex.labels)
    encode_labels(ex, task, label_names(ex.labels) if task == "classification" else None)


# ---- the run ---------------------------------------------------------------------------------------
def build_seeds(tmp: Path) -> dict:
    from xpeft_cli.bank import Bank
    from xpeft_cli.config import FitConfig
    from xpeft_cli.data import Examples
    from xpeft_cli.plm import load_encoder, resolve_model
    from xpeft_cli.store import write_store
    from xpeft_cli.train import fit_profile

    model = save_tiny(tmp / "tiny", "bert")
    plm = resolve_model(str(model))
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=8, seed=0)
    bank.save(tmp / "bank")
    rows = sentiment_rows(24, 0)
    ex = Examples([r["text"] for r in rows], None, [r["label"] for r in rows], "seed")
    fit = fit_profile(
        bank,
        ex,
        "alice",
        FitConfig(epochs=1, batch_size=8, device="cpu", val_fraction=0),
        checkpoint_path=tmp / "a.ckpt.safetensors",
        checkpoint_every=3,
    )
    profiles = [fit.profile]
    for i in range(4):
        p = fit_profile(bank, ex, f"p{i}", FitConfig(epochs=1, batch_size=12, device="cpu", val_fraction=0, seed=i))
        profiles.append(p.profile)
    write_store(profiles, tmp / "s.xps")
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    csv = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)
    tsv = "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows)
    return {
        "model": str(model),
        "store": (tmp / "s.xps").read_bytes(),
        "manifest": (tmp / "bank" / "bank.json").read_bytes(),
        "checkpoint": (tmp / "a.ckpt.safetensors").read_bytes(),
        "data": {".jsonl": jsonl.encode(), ".csv": csv.encode(), ".tsv": tsv.encode()},
    }


def run_case(kind: str, seeds: dict, rng: random.Random, work: Path) -> tuple[Path, int]:
    """Write one mutated input of `kind` and return (what to read, its size)."""
    structured = rng.random() < 0.6
    if kind == "store":
        data = store_structured(seeds["store"], rng) if structured else blind(seeds["store"], rng)
        path = work / "case.xps"
    elif kind == "manifest":
        data = manifest_structured(seeds["manifest"], rng) if structured else blind(seeds["manifest"], rng)
        path = work / "bank" / "bank.json"
    elif kind == "checkpoint":
        data = checkpoint_structured(seeds["checkpoint"], rng) if structured else blind(seeds["checkpoint"], rng)
        path = work / "case.ckpt.safetensors"
    else:
        suffix = rng.choice(sorted(seeds["data"]))
        base = seeds["data"][suffix]
        data = data_structured(base, rng, suffix) if structured else blind(base, rng)
        if rng.random() < 0.0005:
            data = b'{"text": "' + b"x" * 10_000_000 + b'", "label": "pos"}\n'  # one 10 MB line
            suffix = ".jsonl"
        path = work / f"case{suffix}"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--share", default="store=0.5,checkpoint=0.3,manifest=0.18,data=0.02")
    ap.add_argument("--no-record", action="store_true", help="print only (CI's slice, tests)")
    args = ap.parse_args()
    share = {k: float(v) for k, v in (kv.split("=") for kv in args.share.split(","))}
    rng = random.Random(args.seed)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    bugs: list[str] = []
    worst: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "alloc_ratio": 0.0})
    readers = {"store": read_store, "checkpoint": read_checkpoint, "data": read_data}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        work = Path(d)
        seeds = build_seeds(work / "seed")
        (work / "bank").mkdir()
        readers["manifest"] = lambda path: read_bank(path.parent, seeds["model"])
        counts = {k: int(round(args.cases * v)) for k, v in share.items()}
        plan = [k for k, c in counts.items() for _ in range(c)]
        rng.shuffle(plan)
        tracemalloc.start()
        t0 = time.perf_counter()
        for i, kind in enumerate(plan):
            path, size = run_case(kind, seeds, rng, work)
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t = time.perf_counter()
            try:
                readers[kind](path)
                outcomes[kind]["read"] += 1
            except XpeftError as exc:
                outcomes[kind][f"refused (exit {exc.exit_code})"] += 1
                if "\n" in str(exc).strip():
                    bugs.append(f"{kind}: multi-line message: {str(exc)[:120]!r}")
            except Exception as exc:  # a bug: a reader let something else escape
                outcomes[kind]["other_exception"] += 1
                bugs.append(f"{kind}: {exc.__class__.__name__}: {str(exc)[:160]}")
            took = time.perf_counter() - t
            alloc = tracemalloc.get_traced_memory()[1] - base
            ratio = alloc / max(size, 1)
            w = worst[kind]
            w["seconds"] = max(w["seconds"], took)
            if alloc > MEMORY_FACTOR * size + MEMORY_SLACK:
                bugs.append(f"{kind}: allocated {alloc:,} bytes for a {size:,}-byte input")
            w["alloc_ratio"] = max(w["alloc_ratio"], ratio if size > 1024 else 0.0)
            w["max_alloc_bytes"] = max(w.get("max_alloc_bytes", 0), alloc)
            if took > SLOW_S:
                bugs.append(f"{kind}: {took:.1f} s on one case")
            if (i + 1) % 50_000 == 0:
                print(f"{i + 1:,} cases, {time.perf_counter() - t0:.0f} s, {len(bugs)} bugs", flush=True)
        seconds = time.perf_counter() - t0
        tracemalloc.stop()
    import resource

    res = {
        "command": "python benchmarks/fuzz_inputs.py " + " ".join(sys.argv[1:]),
        "cases": len(plan),
        "cases_by_kind": counts,
        "seconds": round(seconds, 1),
        "cases_per_second": round(len(plan) / seconds),
        "outcomes": {k: dict(v) for k, v in sorted(outcomes.items())},
        "worst": {
            k: {
                "seconds": round(v["seconds"], 4),
                "max_traced_alloc_bytes": v.get("max_alloc_bytes", 0),
                "max_alloc_per_input_byte": round(v["alloc_ratio"], 1),
            }
            for k, v in sorted(worst.items())
        },
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bugs": bugs[:50],
        "bug_count": len(bugs),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps({k: v for k, v in res.items() if k != "bugs"}, indent=1))
    for b in bugs[:20]:
        print("BUG", b)
    if args.no_record:
        sys.exit(1 if bugs else 0)
    OUT.parent.mkdir(exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [
        f"# Fuzzing every reader beyond .xpm: {len(plan):,} mutated inputs",
        "",
        f"Command: `{res['command']}` ({res['machine']}, Python {res['python']})",
        "",
        f"{res['cases_per_second']:,} cases/s over {res['seconds']:,} s; peak RSS {res['peak_rss_mib']} MiB; "
        f"bugs: {len(bugs)}.",
        "",
        "| input | cases | read | refused (exit code) | other exception | slowest case | most traced memory in one case |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in sorted(outcomes):
        o, w = outcomes[k], res["worst"][k]
        refused = ", ".join(
            f"{v:,} {key.removeprefix('refused ')}" for key, v in sorted(o.items()) if key.startswith("refused")
        )
        lines.append(
            f"| {k} | {counts[k]:,} | {o['read']:,} | {refused} | {o['other_exception']:,} | "
            f"{w['seconds'] * 1000:.1f} ms | {w['max_traced_alloc_bytes']:,} B |"
        )
    if bugs:
        lines += ["", "Bugs:"] + [f"- {b}" for b in bugs[:50]]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(OUT.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
