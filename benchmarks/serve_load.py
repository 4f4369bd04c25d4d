"""Load test of `xpeft serve` on loopback: throughput and p50/p99 latency against concurrency, beside
the `xpeft predict` path on the same rows, measured in one run.

    python benchmarks/serve_load.py --tiny                          # CPU smoke run, seconds
    python benchmarks/serve_load.py --tag cpu                       # CPU, the default PLM
    python benchmarks/serve_load.py --bert-base --cuda-graphs --tag h200 --model .devmodel/minilm-fp16   # GPU

The server runs in a child process (its own GIL, as `xpeft serve` would), built by service.build_service
from a bank and P profiles with random sign masks written as .xpm files (speed does not depend on
what the masks learned). Before it listens, the child times `predict`'s path on the same server
object: every row through ProfileServer.outputs in batches of --max-batch (CUDA graphs when asked),
tokenisation and answers included. Clients are asyncio tasks on one httpx.AsyncClient in the parent;
each sends requests of R rows (R = 1 and R = --rows-per-request), each row naming a random profile,
until --rows rows are answered or --seconds pass. Every level stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = (
    "the a movie film game plot actor scene music story ending was is very quite rather not at all truly "
    "good bad great awful boring fun sad happy slow fast long short today again so and but with"
).split()


def texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(count)]


def setup(folder: Path, args) -> None:
    """A model folder (the given PLM, or a random-weight bert-base with its tokenizer), a random bank
    and P profiles with random sign masks."""
    import torch

    from xpeft_cli.bank import Bank
    from xpeft_cli.plm import load_encoder, resolve_model
    from xpeft_cli.profile import Profile
    from xpeft_cli.xpm import write_xpm

    model = args.model
    if args.bert_base or args.tiny:  # random weights at bert-base shape (or tiny), the given PLM's tokenizer
        from transformers import AutoTokenizer, BertConfig, BertModel

        src = args.tokenizer or resolve_model(args.model).path
        cfg = (
            BertConfig()
            if args.bert_base
            else BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        )
        torch.manual_seed(0)
        BertModel(cfg).save_pretrained(folder / "plm")
        AutoTokenizer.from_pretrained(src).save_pretrained(folder / "plm")
        model = str(folder / "plm")
    plm = resolve_model(model)
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=args.n, seed=0)
    bank.save(folder / "bank")
    rng = np.random.default_rng(0)
    hidden = int(enc.config.hidden_size)
    (folder / "profs").mkdir()
    for i in range(args.profiles):
        write_xpm(
            Profile(
                name=f"user{i:05d}",
                mask_kind="sign",
                n=bank.n,
                L=bank.L,
                k=0,
                bank_hash=bank.bank_hash,
                mask_a=rng.random((bank.L, bank.n)) < 0.5,
                mask_b=rng.random((bank.L, bank.n)) < 0.5,
                param_dtype="float16",
                ln_weight=(1 + 0.1 * rng.standard_normal((bank.L, bank.rank))).astype(np.float32),
                ln_bias=(0.1 * rng.standard_normal((bank.L, bank.rank))).astype(np.float32),
                head_weight=(0.05 * rng.standard_normal((2, hidden))).astype(np.float32),
                head_bias=np.zeros(2, np.float32),
                labels=["neg", "pos"],
            ),
            folder / "profs" / f"user{i:05d}.xpm",
        )


def child(conn, folder: str, args) -> None:
    """Build the service, time predict's path on its server, then serve until told to stop."""
    import torch

    from xpeft_cli.service import BackgroundServer, build_service

    app, server = build_service(
        str(Path(folder, "profs")),
        str(Path(folder, "bank")),
        device=args.device,
        cuda_graphs=args.cuda_graphs,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    rows = texts(args.predict_rows, seed=1)
    rng = random.Random(1)
    pidx = [rng.randrange(len(server.profiles)) for _ in rows]

    def predict_once() -> float:
        t0 = time.perf_counter()
        out = server.outputs(rows, None, pidx, args.max_batch)
        [server.answer(o, i) for o, i in zip(out, pidx)]
        if server.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    predict_once()  # warm-up: graphs captured, kernels chosen
    times = [predict_once() for _ in range(args.predict_reps)]
    predict = {
        "rows": len(rows),
        "seconds_median": statistics.median(times),
        "rows_per_s": len(rows) / statistics.median(times),
    }
    with BackgroundServer(app) as url:
        conn.send(
            {
                "url": url,
                "predict": predict,
                "device": str(server.device),
                "gpu": torch.cuda.get_device_name(0) if server.device.type == "cuda" else platform.processor() or "cpu",
                "cached": server.cached,
            }
        )
        conn.recv()  # "stop"


async def level(url: str, concurrency: int, rows_per_request: int, profiles: int, max_rows: int, seconds: float):
    import httpx

    pool = texts(2000, seed=2)
    latencies: list[float] = []
    answered = 0
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one_client(k: int) -> None:
            nonlocal answered, errors
            rng = random.Random(100 + k)
            while answered < max_rows and time.perf_counter() < stop_at:
                body = [
                    {"profile": f"user{rng.randrange(profiles):05d}", "text": rng.choice(pool)}
                    for _ in range(rows_per_request)
                ]
                t0 = time.perf_counter()
                r = await client.post("/v1/classify", json=body if rows_per_request > 1 else body[0])
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    answered += rows_per_request
                else:
                    errors += 1

        # warm-up: a few requests per client, not timed
        await asyncio.gather(
            *(client.post("/v1/classify", json={"profile": "user00000", "text": pool[k]}) for k in range(concurrency))
        )
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "concurrency": concurrency,
        "rows_per_request": rows_per_request,
        "requests": len(lat),
        "rows": answered,
        "errors": errors,
        "seconds": round(wall, 3),
        "rows_per_s": answered / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    }


def markdown(res: dict) -> str:
    p = res["predict"]
    lines = [
        f"# `xpeft serve` under load ({res['tag']})",
        "",
        f"Command: `{res['command']}` — {res['gpu']}, torch {res['torch']}, {res['profiles']} profiles "
        f"(random sign masks, N={res['n']}), batches of at most {res['max_batch']} rows, wait ≤ {res['max_wait_ms']} ms"
        + (", CUDA graphs" if res["cuda_graphs"] else ""),
        "",
        f"`predict` path on the same server, {p['rows']} rows of mixed profiles: **{p['rows_per_s']:,.0f} rows/s**.",
        "",
        "| rows/request | clients | rows/s | × predict | p50 ms | p99 ms | requests | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["levels"]:
        lines.append(
            f"| {r['rows_per_request']} | {r['concurrency']} | {r['rows_per_s']:,.0f} | "
            f"{r['rows_per_s'] / p['rows_per_s']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['requests']} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default=None,
        help="PLM folder or id (default: the bundled one); with --bert-base, only its tokenizer is used",
    )
    ap.add_argument("--tokenizer", default=None, help="with --bert-base or --tiny: a folder with the tokenizer to use")
    ap.add_argument("--bert-base", action="store_true", help="a random-weight BertConfig() encoder")
    ap.add_argument("--tiny", action="store_true", help="a tiny random encoder and few rows: a smoke run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--profiles", type=int, default=1000)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--rows-per-request", type=int, default=32)
    ap.add_argument("--rows", type=int, default=20000, help="rows per level at most")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per level at most")
    ap.add_argument("--predict-rows", type=int, default=4096)
    ap.add_argument("--predict-reps", type=int, default=3)
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("-o", "--output", default=str(RESULTS))
    args = ap.parse_args()
    if args.tiny:
        args.n, args.profiles, args.rows, args.seconds = 16, 20, 200, 5.0
        args.concurrency, args.predict_rows, args.predict_reps = [1, 8], 128, 1
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        setup(Path(tmp), args)
        ctx = mp.get_context("spawn")
        parent, kid = ctx.Pipe()
        proc = ctx.Process(target=child, args=(kid, tmp, args), daemon=True)
        proc.start()
        if not parent.poll(900):
            raise SystemExit("the server did not start within 15 minutes")
        info = parent.recv()
        levels = []
        try:
            for rpr in sorted({1, args.rows_per_request}):
                for c in args.concurrency:
                    r = asyncio.run(level(info["url"], c, rpr, args.profiles, args.rows, args.seconds))
                    print(json.dumps(r), flush=True)
                    levels.append(r)
        finally:
            parent.send("stop")
            proc.join(60)
    res = {
        "tag": args.tag,
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "gpu": info["gpu"],
        "device": info["device"],
        "torch": torch.__version__,
        "profiles": args.profiles,
        "n": args.n,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "cuda_graphs": args.cuda_graphs,
        "predict": info["predict"],
        "levels": levels,
        "cached": info["cached"],
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"serve-load-{args.tag}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"serve-load-{args.tag}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
