"""Serving many profiles: mixed batches, profile loading and switching, CPU latency.

    python benchmarks/serving.py                 # GPU: bert-base shape, N=400, 10,000 hard profiles
    python benchmarks/serving.py --tiny          # CPU smoke run of the same code
    python benchmarks/serving.py --cpu-latency   # CPU: one request at a time on the default PLM

Throughput rows use xpeft's serving model (serve.ProfileServer: RoutedModel + FrozenMaskTable,
the `xpeft predict` path) on pre-tokenised 64×128 batches, bf16, median of timed batches:
  - one profile: every row of every batch has the same profile;
  - mixed: every row of a batch has a different profile drawn from 10,000;
  - the single-profile XPeftModel with its Â, B̂ cached (what `eval` runs), for reference.
Loading: writing and reading 10,000 .xpm files, building the table; switching: loading a
profile into an XPeftModel and its first batch vs. the routed model (nothing to switch).
Writes benchmarks/results/serving-<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import random_bank, random_batch  # noqa: E402

from xpeft_cli.batches import compute_context  # noqa: E402
from xpeft_cli.graphs import GraphedForward, capture  # noqa: E402
from xpeft_cli.masks import MaskSpec  # noqa: E402
from xpeft_cli.model import XPeftModel  # noqa: E402
from xpeft_cli.profile import Profile, apply_profile  # noqa: E402
from xpeft_cli.routing import Route  # noqa: E402
from xpeft_cli.serve import ProfileServer  # noqa: E402
from xpeft_cli.xpm import read_xpm, write_xpm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def random_profiles(
    count: int, L: int, n: int, k: int, rank: int, hidden: int, classes: int, bank_hash: str, seed: int = 0
) -> list[Profile]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):

        def bits():
            m = np.zeros((L, n), dtype=bool)
            for row in m:
                row[rng.choice(n, k, replace=False)] = True
            return m

        out.append(
            Profile(
                name=f"user{i:05d}",
                mask_kind="hard",
                n=n,
                L=L,
                k=k,
                bank_hash=bank_hash,
                mask_a=bits(),
                mask_b=bits(),
                ln_weight=(1 + 0.1 * rng.standard_normal((L, rank))).astype(np.float32),
                ln_bias=(0.1 * rng.standard_normal((L, rank))).astype(np.float32),
                head_weight=(0.02 * rng.standard_normal((classes, hidden))).astype(np.float32),
                head_bias=np.zeros(classes, np.float32),
                labels=[f"c{j}" for j in range(classes)],
            )
        )
    return out


def legacy_routes(table, present, rows):
    """FrozenMaskTable's routes before the serving route: Â, B̂ per present profile, site by site,
    gathered per row and LN-affined inside every site (kept here to measure against)."""
    idx = torch.tensor(present).to(table.hard_slot.device)
    w = table.weights(idx)
    ln_w, ln_b = (table.ln_w[idx], table.ln_b[idx]) if table.has_ln else (None, None)
    out = []
    for l in range(table.L):
        bank_a, bank_b = table.bank(l)
        a_hat = torch.einsum("un,nib->uib", w[:, l, 0].to(bank_a.dtype), bank_a)
        b_hat = torch.einsum("un,nbo->ubo", w[:, l, 1].to(bank_b.dtype), bank_b)
        out.append(
            Route(
                a_hat, b_hat, ln_w[:, l] if ln_w is not None else None, ln_b[:, l] if ln_b is not None else None, rows
            )
        )
    return out


def graphed_configs(model, xm, batch, same, draws, device) -> dict:
    """The same three workloads replayed as CUDA graphs: the routed model through GraphedForward
    (what `xpeft predict --cuda-graphs` runs), and the cached XPeftModel captured the same way."""
    b, t = batch["input_ids"].shape
    gf = GraphedForward(model, b, t, device)
    model.table.cached = True  # captured with the precomputed Â, B̂ (the graph keeps the path it saw)
    gf_pre = GraphedForward(model, b, t, device)
    gf_pre(batch, same.to(device))
    model.table.cached = False
    static = {k: v.clone() for k, v in batch.items()}
    with torch.no_grad(), compute_context(device):
        xm(**static)  # fills the Â, B̂ cache that the captured forward reads

    @torch.no_grad()
    def forward():
        with compute_context(device, cache_casts=False):
            return xm(**static)

    graph, out = capture(forward, device)

    def cached():  # the same copy-in, replay, copy-out as GraphedForward does
        for k, v in batch.items():
            static[k].copy_(v)
        graph.replay()
        return out.clone()

    return {
        "graph_one": lambda: gf(batch, same.to(device)),
        "graph_mixed": lambda: gf(batch, next(draws).to(device)),
        "graph_cached": cached,
        "graph_mixed_pre": lambda: gf_pre(batch, next(draws).to(device)),
    }


def check_graph(model, batch, device) -> dict:
    """Graph replay against the eager routed forward on a short, ragged batch (padding rows and
    tokens): the largest output difference and the share of equal argmaxes."""
    b, t = batch["input_ids"].shape
    n, short = max(1, b - 7), (t - 20 if t > 40 else max(2, t // 2))  # 57 × 108 at 64 × 128
    part = {k: v[:n, :short].clone() for k, v in batch.items()}
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, short, (n,), generator=g)
    part["attention_mask"] = (torch.arange(short) < lengths[:, None]).long().to(device)
    ids = torch.randint(model.heads.weight.shape[0], (n,), generator=g)
    gf = GraphedForward(model, b, t, device)
    with torch.no_grad():
        got = gf(part, ids.to(device)).float()
        with compute_context(device):
            want = model(**part, profile_ids=ids).float()
    return {
        "rows": n,
        "max_abs_diff": round(float((got - want).abs().max()), 5),
        "argmax_equal": round(float((got.argmax(-1) == want.argmax(-1)).float().mean()), 4),
    }


def timed(fn, device, warmup: int, reps: int) -> float:
    times = []
    for i in range(warmup + reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def throughput(args, device) -> dict:
    from transformers import BertConfig, BertModel

    cfg = (
        BertConfig()
        if not args.tiny
        else BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    )
    torch.manual_seed(0)
    enc = BertModel(cfg)
    rank = cfg.hidden_size // 16
    bank = random_bank(enc, args.n, rank, "cpu")
    t0 = time.perf_counter()
    profiles = random_profiles(args.profiles, len(bank.sites), args.n, args.k, rank, cfg.hidden_size, 2, bank.bank_hash)
    make_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for p in profiles:
            write_xpm(p, Path(tmp) / f"{p.name}.xpm")
        write_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        t0 = time.perf_counter()
        loaded = [read_xpm(Path(tmp) / f"{p.name}.xpm") for p in profiles]
        read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    server = ProfileServer(bank, loaded, str(device), encoder=enc, tokenizer=None, cache_gb=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    model = server.model
    g = torch.Generator().manual_seed(0)
    b, t = args.batch, args.seq
    batch = random_batch(b, t, device, g)

    def auto():  # what predict and eval run under: bf16 autocast on a GPU, no cuDNN attention
        return compute_context(device)

    same = torch.zeros(b, dtype=torch.long)  # on the CPU, as ProfileServer passes them
    draws = [torch.randperm(args.profiles, generator=g)[:b] for _ in range(64)]
    it = itertools.cycle(draws)

    def run(pid):
        with torch.no_grad(), auto():
            model(**batch, profile_ids=pid)

    # The single-profile model that eval uses, Â and B̂ cached: the plain reference.
    torch.manual_seed(0)
    enc2 = BertModel(cfg).to(device)
    xm = XPeftModel(enc2, bank, 2, spec=MaskSpec("hard", k=args.k)).to(device)
    if device.type == "cuda":
        xm.cast_bank(torch.bfloat16)
    apply_profile(xm, loaded[0])
    xm.eval()

    def run_x():
        with torch.no_grad(), auto():
            xm(**batch)

    table = model.table
    fast_routes = table.routes

    def run_legacy():  # the route of the previous session: U-profile Â, B̂, gathered per site and row
        table.routes = types.MethodType(legacy_routes, table)
        try:
            run(next(it))
        finally:
            table.routes = fast_routes

    t0 = time.perf_counter()
    table.precompute()  # every profile's Â, B̂ mixed once (what --cache-gb allows where they fit)
    if device.type == "cuda":
        torch.cuda.synchronize()
    precompute_s = time.perf_counter() - t0
    table.cached = False

    def run_pre():
        table.cached = True
        try:
            run(next(it))
        finally:
            table.cached = False

    configs = {
        "one": lambda: run(same),
        "mixed": lambda: run(next(it)),
        "cached": run_x,
        "legacy": run_legacy,
        "mixed_pre": run_pre,
    }
    graph_check = None
    if device.type == "cuda" and not args.no_graphs:
        configs.update(graphed_configs(model, xm, batch, same, it, device))
        graph_check = check_graph(model, batch, device)
    for fn in configs.values():
        timed(fn, device, args.warmup, 1)
    # Interleaved rounds, order rotated each round: the host's drift hits every configuration alike.
    per_round = []
    names = list(configs)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        per_round.append({k: timed(configs[k], device, 0, args.reps) for k in order})
    med = {k: statistics.median(rd[k] for rd in per_round) for k in names}

    def ratio(num: str, den: str) -> dict:
        """Throughput of `num` over that of `den`, round by round: median and range."""
        rs = [rd[den] / rd[num] for rd in per_round]
        return {"median": round(statistics.median(rs), 3), "min": round(min(rs), 3), "max": round(max(rs), 3)}

    one_ms, mixed_ms, cached_ms, legacy_ms = med["one"], med["mixed"], med["cached"], med["legacy"]
    graphs = {}
    if "graph_mixed" in med:
        graphs = {
            "check": graph_check,
            "rows": [
                {
                    "config": f"CUDA graph, routed, {b} distinct profiles per batch",
                    "ms_per_batch": round(med["graph_mixed"], 2),
                    "seqs_per_s": round(b / med["graph_mixed"] * 1000),
                },
                {
                    "config": "CUDA graph, routed, one profile per batch",
                    "ms_per_batch": round(med["graph_one"], 2),
                    "seqs_per_s": round(b / med["graph_one"] * 1000),
                },
                {
                    "config": f"CUDA graph, routed, {b} distinct profiles, precomputed Â/B̂",
                    "ms_per_batch": round(med["graph_mixed_pre"], 2),
                    "seqs_per_s": round(b / med["graph_mixed_pre"] * 1000),
                },
                {
                    "config": "CUDA graph, XPeftModel, one profile, cached Â/B̂",
                    "ms_per_batch": round(med["graph_cached"], 2),
                    "seqs_per_s": round(b / med["graph_cached"] * 1000),
                },
            ],
            "mixed_vs_one_profile": ratio("graph_mixed", "graph_one"),
            "mixed_vs_cached_xpeft": ratio("graph_mixed", "graph_cached"),
            "mixed_precomputed_vs_cached_xpeft": ratio("graph_mixed_pre", "graph_cached"),
            "mixed_vs_eager_cached_xpeft": ratio("graph_mixed", "cached"),
        }

    def switch():
        apply_profile(xm, loaded[int(torch.randint(args.profiles, (1,), generator=g))])
        with torch.no_grad(), auto():
            xm(**{k: v[:1] for k, v in batch.items()})

    switch_ms = timed(switch, device, 3, 20)
    rows = [
        {
            "config": "routed, one profile per batch",
            "ms_per_batch": round(one_ms, 2),
            "seqs_per_s": round(b / one_ms * 1000),
        },
        {
            "config": f"routed, {b} distinct profiles per batch (of {args.profiles})",
            "ms_per_batch": round(mixed_ms, 2),
            "seqs_per_s": round(b / mixed_ms * 1000),
        },
        {
            "config": f"routed, {b} distinct profiles, previous route (per-site mixing and gathers)",
            "ms_per_batch": round(legacy_ms, 2),
            "seqs_per_s": round(b / legacy_ms * 1000),
        },
        {
            "config": f"routed, {b} distinct profiles, precomputed Â/B̂",
            "ms_per_batch": round(med["mixed_pre"], 2),
            "seqs_per_s": round(b / med["mixed_pre"] * 1000),
        },
        {
            "config": "XPeftModel, one profile, cached Â/B̂",
            "ms_per_batch": round(cached_ms, 2),
            "seqs_per_s": round(b / cached_ms * 1000),
        },
    ]
    return {
        "throughput": rows,
        "rounds": args.rounds,
        "reps_per_round": args.reps,
        "mixed_vs_one_profile": ratio("mixed", "one"),
        "mixed_vs_cached_xpeft": ratio("mixed", "cached"),
        "legacy_mixed_vs_cached_xpeft": ratio("legacy", "cached"),
        "precomputed_mixed_vs_cached_xpeft": ratio("mixed_pre", "cached"),
        "cuda_graphs": graphs,
        "load": {
            "profiles": args.profiles,
            "xpm_bytes_total": size,
            "write_s": round(write_s, 2),
            "read_s": round(read_s, 2),
            "read_ms_per_profile": round(read_s / args.profiles * 1000, 3),
            "build_table_s": round(build_s, 2),
            "make_s": round(make_s, 2),
            "precompute_s": round(precompute_s, 2),
            "precomputed_gib": round(table.mixed_bytes() / 2**30, 2),
        },
        "switch": {"xpeft_model_apply_and_first_row_ms": round(switch_ms, 2), "routed_ms": 0.0},
        "shape": f"hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, N={args.n}, k={args.k}, batch {b}x{t}",
    }


def cpu_latency(args) -> dict:
    """One request at a time on the default PLM, as `xpeft predict` serves it (CPU, float32)."""
    from xpeft_cli.bank import Bank
    from xpeft_cli.plm import load_encoder, resolve_model

    torch.set_num_threads(args.threads) if args.threads else None
    plm = resolve_model(None)
    enc, tok = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=400, seed=0)
    rank = bank.rank
    profiles = random_profiles(100, bank.L, bank.n, 50, rank, 384, 3, bank.bank_hash)
    server = ProfileServer(bank, profiles, "cpu", encoder=enc, tokenizer=tok, cache_gb=args.cache_gb)
    text = "The council approved the new budget for public transport after a long debate on Tuesday."
    g = torch.Generator().manual_seed(0)
    ms = timed(
        lambda: server.outputs([text], None, [int(torch.randint(100, (1,), generator=g))]),
        torch.device("cpu"),
        5,
        args.reps,
    )
    return {
        "cpu_latency_ms_median": round(ms, 2),
        "precomputed": server.cached,
        "threads": torch.get_num_threads(),
        "model": plm.ref,
        "tokens": len(tok(text)["input_ids"]),
        "reps": args.reps,
        "profiles_loaded": 100,
    }


def markdown(res: dict) -> str:
    """The throughput results as a Markdown table, with the ratios the issue's target reads."""
    meta = res["meta"]
    rows = res["throughput"] + res.get("cuda_graphs", {}).get("rows", [])
    md = [
        f"# Serving throughput ({meta['device']}, {res['shape']})",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}; {res['rounds']} interleaved rounds of "
        f"{res['reps_per_round']} batches, median.",
        "",
        "| config | ms/batch | sequences/s |",
        "|---|---|---|",
    ]
    md += [f"| {r['config']} | {r['ms_per_batch']} | {r['seqs_per_s']} |" for r in rows]

    def line(name: str, r: dict) -> str:
        return f"| {name} | {r['median']} | {r['min']}–{r['max']} |"

    md += [
        "",
        "| throughput ratio | median | range over rounds |",
        "|---|---|---|",
        line("eager: mixed / one profile (routed)", res["mixed_vs_one_profile"]),
        line("eager: mixed / cached XPeftModel", res["mixed_vs_cached_xpeft"]),
        line("eager: mixed, precomputed Â/B̂ / cached XPeftModel", res["precomputed_mixed_vs_cached_xpeft"]),
        line("eager: mixed, previous route / cached XPeftModel", res["legacy_mixed_vs_cached_xpeft"]),
    ]
    g = res.get("cuda_graphs")
    if g:
        md += [
            line("graphs: mixed / one profile (routed)", g["mixed_vs_one_profile"]),
            line("graphs: mixed / cached XPeftModel", g["mixed_vs_cached_xpeft"]),
            line("graphs: mixed, precomputed Â/B̂ / cached XPeftModel", g["mixed_precomputed_vs_cached_xpeft"]),
            line("graphs: mixed / eager cached XPeftModel", g["mixed_vs_eager_cached_xpeft"]),
            "",
            f"Graph replay vs eager routed forward on a ragged batch of {g['check']['rows']} rows: largest output "
            f"difference {g['check']['max_abs_diff']}, argmax equal {g['check']['argmax_equal']}.",
        ]
    ld = res["load"]
    md += [
        "",
        f"Loading {ld['profiles']} profiles: write {ld['write_s']} s, read {ld['read_s']} s "
        f"({ld['read_ms_per_profile']} ms each), table {ld['build_table_s']} s; precomputing every Â/B̂ "
        f"{ld.get('precompute_s', '–')} s, {ld.get('precomputed_gib', '–')} GiB. Switching profile in an "
        f"XPeftModel (load + first row): {res['switch']['xpeft_model_apply_and_first_row_ms']} ms.",
    ]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--cpu-latency", action="store_true")
    ap.add_argument("--profiles", type=int, default=10000)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="timed batches per configuration and round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the throughput configurations")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph rows")
    ap.add_argument(
        "--cache-gb", type=float, default=4.0, help="--cpu-latency: the server's --cache-gb (0: mix per request)"
    )
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if args.cpu_latency:
        res = cpu_latency(args)
        meta["device"] = platform.processor() or platform.machine()
        tag = "cpu-latency" if args.cache_gb else "cpu-latency-mixing"
    else:
        if args.tiny:
            args.profiles, args.n, args.k, args.batch, args.seq, args.reps, args.rounds = 200, 16, 4, 8, 16, 5, 2
        device = torch.device(args.device)
        res = throughput(args, device)
        meta["device"] = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.machine()
        tag = "tiny" if args.tiny else device.type
    out = {"meta": meta, **res}
    (RESULTS / f"serving-{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    if "throughput" in out:
        (RESULTS / f"serving-{tag}.md").write_text(markdown(out))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
