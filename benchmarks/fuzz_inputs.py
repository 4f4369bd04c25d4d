"""Fuzz every reader beyond .xpm: .xps stores, bank manifests, fit checkpoints and data files.

    python benchmarks/fuzz_inputs.py --cases 1000000      # about 15 minutes on 2 CPU cores

Each kind of input starts from a valid file made here (a tiny random BERT, a bank over it, a fit
checkpoint, a store of profiles, JSONL/CSV/TSV data) and is mutated both blindly (bit flips,
truncation, random bytes, splices) and with knowledge of its structure (forged store index entries
and counts, manifest fields of the wrong type or out of range, checkpoint metadata and tensors,
data rows with a BOM, CRLF, bad UTF-8, NaN/inf labels, ragged CSV rows, deep JSON, a 10 MB line).
Every case is read in-process by the function the CLI uses. A case passes when it reads or raises
an XpeftError with a one-line message; anything else, a case slower than 10 s, or a case whose
traced allocation exceeds 64× its input plus 16 MiB (MEMORY_SLACK) is a bug. Each reader runs once on
its valid seed before the count starts, so one-time imports are not charged to a case.
Writes benchmarks/results/fuzz_inputs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from xpeft_cli.errors import XpeftError  # noqa: E402
from xpeft_cli.fuzz import blind, checkpoint_structured, data_structured, manifest_structured, store_structured  # noqa: E402

from helpers import save_tiny, sentiment_rows  # noqa: E402  (the tests' tiny random BERT)

OUT = Path(__file__).resolve().parent / "results" / "fuzz_inputs"
SLOW_S = 10.0
# A case may allocate 64× its input plus 16 MiB: the data reader (pyarrow's JSON parser) takes a fixed
# ~10 MB block for any file, and a bank's own adapters are regenerated only after its sites and
# sizes are checked against the PLM.
MEMORY_FACTOR, MEMORY_SLACK = 64, 16 << 20


def read_store(path: Path) -> None:
    from xpeft_cli.store import Store

    with Store(path) as s:
        names = [p.name for p in s]
        for n in names[:2]:
            s.get(n)


# ---- bank manifests --------------------------------------------------------------------------
def read_bank(folder: Path, model: str) -> None:
    from xpeft_cli.bank import Bank

    Bank.load(folder, model=model)


# ---- fit checkpoints ---------------------------------------------------------------------------
def make_peft_reader(model: str):
    """`bank create --from-peft`'s reader, with the PLM loaded once (a folder holds the adapter)."""
    from xpeft_cli.bank_build import from_peft
    from xpeft_cli.plm import load_encoder, resolve_model

    plm = resolve_model(model)
    encoder, _ = load_encoder(plm)

    def read(path: Path) -> None:
        from_peft(plm, encoder, [path.parent])

    return read


def read_checkpoint(path: Path) -> None:
    from xpeft_cli.checkpoint import profile_from_checkpoint

    profile_from_checkpoint(path)


# ---- data files ----------------------------------------------------------------------------------
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
    import peft

    lora = peft.get_peft_model(
        enc, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["attention.output.dense", "output.dense"])
    )
    import torch

    torch.manual_seed(0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # peft starts B at 0; a trained adapter's is not
            p.data.normal_(0, 0.02)
    lora.save_pretrained(str(tmp / "peft"))
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    csv = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)
    tsv = "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows)
    return {
        "model": str(model),
        "store": (tmp / "s.xps").read_bytes(),
        "manifest": (tmp / "bank" / "bank.json").read_bytes(),
        "checkpoint": (tmp / "a.ckpt.safetensors").read_bytes(),
        "peft_config": (tmp / "peft" / "adapter_config.json").read_bytes(),
        "peft_tensors": (tmp / "peft" / "adapter_model.safetensors").read_bytes(),
        "data": {".jsonl": jsonl.encode(), ".csv": csv.encode(), ".tsv": tsv.encode()},
    }


# Where each kind's case is written, relative to the work folder; for a peft adapter, its two files
# (the reader is given the first).
STRUCTURED = {"store": store_structured, "manifest": manifest_structured, "checkpoint": checkpoint_structured}
FILES = {
    "store": ("case.xps",),
    "manifest": ("bank/bank.json",),
    "checkpoint": ("case.ckpt.safetensors",),
    "peft": ("peft/adapter_config.json", "peft/adapter_model.safetensors"),
}


def write_case(work: Path, files: dict[str, bytes]) -> tuple[Path, int]:
    """Write {path relative to `work`: bytes}; return (the first path, what the reader is given; bytes in all)."""
    for rel, data in files.items():
        (work / rel).parent.mkdir(exist_ok=True)
        (work / rel).write_bytes(data)
    return work / next(iter(files)), sum(len(d) for d in files.values())


def run_case(kind: str, seeds: dict, rng: random.Random, work: Path) -> tuple[Path, int]:
    """Write one mutated input of `kind` and return (what to read, its size)."""
    structured = rng.random() < 0.6
    if kind in STRUCTURED:
        data = STRUCTURED[kind](seeds[kind], rng) if structured else blind(seeds[kind], rng)
        return write_case(work, {FILES[kind][0]: data})
    if kind == "peft":  # one of the two files mutated, the other as saved
        cfg, st = seeds["peft_config"], seeds["peft_tensors"]
        if rng.random() < 0.5:
            cfg = manifest_structured(cfg, rng) if structured else blind(cfg, rng)
        else:
            st = checkpoint_structured(st, rng) if structured else blind(st, rng)
        return write_case(work, dict(zip(FILES["peft"], (cfg, st))))
    suffix = rng.choice(sorted(seeds["data"]))
    base = seeds["data"][suffix]
    data = data_structured(base, rng, suffix) if structured else blind(base, rng)
    if rng.random() < 0.0005:
        data = b'{"text": "' + b"x" * 10_000_000 + b'", "label": "pos"}\n'  # one 10 MB line
        suffix = ".jsonl"
    return write_case(work, {f"case{suffix}": data})


def run_case_seed(kind: str, seeds: dict, work: Path) -> Path:
    """The unmutated seed of `kind`, written where its cases go."""
    if kind == "peft":
        files = dict(zip(FILES["peft"], (seeds["peft_config"], seeds["peft_tensors"])))
    elif kind == "data":
        files = {"case.jsonl": seeds["data"][".jsonl"]}
    else:
        files = {FILES[kind][0]: seeds[kind]}
    return write_case(work, files)[0]


def work(job: int, jobs: int, cases: int, seed: int, share: dict, trace_every: int) -> dict:
    """One process's share of the cases: its own seeds folder and random stream. Every
    `trace_every`-th case runs under tracemalloc (which slows Python 2-3×) to measure allocation."""
    rng = random.Random(seed * 1000 + job)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    bugs: list[str] = []
    worst: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "alloc_ratio": 0.0, "max_alloc_bytes": 0})
    readers = {"store": read_store, "checkpoint": read_checkpoint, "data": read_data}
    counts = {k: int(round(cases * v)) // jobs + (job < int(round(cases * v)) % jobs) for k, v in share.items()}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        work_dir = Path(d)
        seeds = build_seeds(work_dir / "seed")
        readers["manifest"] = lambda path: read_bank(path.parent, seeds["model"])
        readers["peft"] = make_peft_reader(seeds["model"])
        for kind, read in readers.items():  # one-time imports and caches, outside the measurement
            read(run_case_seed(kind, seeds, work_dir))
        plan = [k for k, c in counts.items() for _ in range(c)]
        rng.shuffle(plan)
        t0 = time.perf_counter()
        for i, kind in enumerate(plan):
            path, size = run_case(kind, seeds, rng, work_dir)
            traced = i % trace_every == 0
            if traced:
                tracemalloc.start()
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
            w = worst[kind]
            w["seconds"] = max(w["seconds"], took)
            if took > SLOW_S:
                bugs.append(f"{kind}: {took:.1f} s on one case")
            if traced:
                alloc = tracemalloc.get_traced_memory()[1] - base
                tracemalloc.stop()
                outcomes[kind]["traced"] += 1
                if alloc > MEMORY_FACTOR * size + MEMORY_SLACK:
                    bugs.append(f"{kind}: allocated {alloc:,} bytes for a {size:,}-byte input")
                w["alloc_ratio"] = max(w["alloc_ratio"], alloc / size if size > 1024 else 0.0)
                w["max_alloc_bytes"] = max(w["max_alloc_bytes"], alloc)
            if (i + 1) % 50_000 == 0:
                print(f"[{job}] {i + 1:,} cases, {time.perf_counter() - t0:.0f} s, {len(bugs)} bugs", flush=True)
        seconds = time.perf_counter() - t0
    import resource

    return {
        "counts": counts,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "bugs": bugs,
        "worst": {k: dict(v) for k, v in worst.items()},
        "seconds": seconds,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--share", default="store=0.5,checkpoint=0.3,manifest=0.145,peft=0.05,data=0.005")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--trace-every", type=int, default=10, help="measure allocation on every N-th case")
    ap.add_argument("--no-record", action="store_true", help="print only (CI's slice, tests)")
    args = ap.parse_args()
    share = {k: float(v) for k, v in (kv.split("=") for kv in args.share.split(","))}
    t0 = time.perf_counter()
    job_args = [(j, args.jobs, args.cases, args.seed, share, args.trace_every) for j in range(args.jobs)]
    if args.jobs == 1:
        parts = [work(*job_args[0])]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            parts = pool.starmap(work, job_args)
    seconds = time.perf_counter() - t0
    counts: Counter = Counter()
    outcomes: dict[str, Counter] = defaultdict(Counter)
    worst: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "alloc_ratio": 0.0, "max_alloc_bytes": 0})
    bugs: list[str] = []
    for part in parts:
        counts.update(part["counts"])
        bugs += part["bugs"]
        for k, o in part["outcomes"].items():
            outcomes[k].update(o)
        for k, w in part["worst"].items():
            for key in ("seconds", "alloc_ratio", "max_alloc_bytes"):
                worst[k][key] = max(worst[k][key], w[key])
    plan_len = sum(counts.values())

    res = {
        "command": "python benchmarks/fuzz_inputs.py " + " ".join(sys.argv[1:]),
        "cases": plan_len,
        "cases_by_kind": dict(counts),
        "jobs": args.jobs,
        "seconds": round(seconds, 1),
        "cases_per_second": round(plan_len / seconds),
        "outcomes": {k: dict(v) for k, v in sorted(outcomes.items())},
        "worst": {
            k: {
                "seconds": round(v["seconds"], 4),
                "traced_cases": outcomes[k]["traced"],
                "max_traced_alloc_bytes": v["max_alloc_bytes"],
                "max_alloc_per_input_byte": round(v["alloc_ratio"], 1),
            }
            for k, v in sorted(worst.items())
        },
        "peak_rss_mib": round(max(part["rss_mib"] for part in parts), 1),
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
        f"# Fuzzing every reader beyond .xpm: {plan_len:,} mutated inputs",
        "",
        f"Command: `{res['command']}` ({res['machine']}, Python {res['python']})",
        "",
        f"{res['cases_per_second']:,} cases/s over {res['seconds']:,} s; peak RSS {res['peak_rss_mib']} MiB; "
        f"bugs: {len(bugs)}. A bug is an exception other than xpeft's one-line errors, a case over {SLOW_S:g} s, "
        f"or a traced case allocating more than {MEMORY_FACTOR}× its input + {MEMORY_SLACK >> 20} MiB.",
        "",
        "| input | cases | read | refused (exit code) | other exception | slowest case | cases traced | "
        "most memory one traced case allocated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted(outcomes):
        o, w = outcomes[k], res["worst"][k]
        refused = ", ".join(
            f"{v:,} {key.removeprefix('refused ')}" for key, v in sorted(o.items()) if key.startswith("refused")
        )
        lines.append(
            f"| {k} | {counts[k]:,} | {o['read']:,} | {refused} | {o['other_exception']:,} | "
            f"{w['seconds'] * 1000:.1f} ms | {w['traced_cases']:,} | {w['max_traced_alloc_bytes']:,} B |"
        )
    if bugs:
        lines += ["", "Bugs:"] + [f"- {b}" for b in bugs[:50]]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(OUT.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
