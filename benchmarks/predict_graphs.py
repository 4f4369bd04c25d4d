"""`xpeft predict`'s server end to end, with and without --cuda-graphs and --cache-gb (GPU).

    python benchmarks/predict_graphs.py --model .devmodel/minilm-fp16 --data .devdata/news/test.jsonl

Real variable-length texts (News Category test rows, from `xpeft convert news-category`), the
default PLM, a random N=400 bank and 300 random hard profiles, one per request at random:
ProfileServer.outputs (tokenising and padding included) in four set-ups, best of three, and
whether the answers equal those of the eager, per-batch-mixing server. Prints JSON lines.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import random_profiles  # noqa: E402

from xpeft_cli.bank import Bank  # noqa: E402
from xpeft_cli.plm import load_encoder, resolve_model  # noqa: E402
from xpeft_cli.serve import ProfileServer  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None, help="the PLM (default: the bundled default model)")
ap.add_argument("--data", required=True, help="JSONL with a 'text' field per line")
args = ap.parse_args()
plm = resolve_model(args.model)
enc, tok = load_encoder(plm)
bank = Bank.create_random(plm, enc, n=400, seed=0)
profs = random_profiles(300, bank.L, bank.n, 50, bank.rank, enc.config.hidden_size, 5, bank.bank_hash)
rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()][:3000]
texts = [r["text"] for r in rows]
g = torch.Generator().manual_seed(0)
pidx = torch.randint(300, (len(texts),), generator=g).tolist()
res = {}
for graphs, cache in ((False, 0.0), (True, 0.0), (False, 4.0), (True, 4.0)):
    srv = ProfileServer(bank, profs, "cuda", encoder=enc, tokenizer=tok, cuda_graphs=graphs, cache_gb=cache)
    srv.outputs(texts[:256], None, pidx[:256], batch_size=64, max_length=128)  # warm-up (and capture)
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = srv.outputs(texts, None, pidx, batch_size=64, max_length=128)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    res[(graphs, cache)] = (out, min(times), len(srv._graphed[64].graphs) if graphs else 0, srv.cached)
    del srv
base, tb = res[(False, 0.0)][:2]
for key, (out, t, ng, cached) in res.items():
    print(
        json.dumps(
            {
                "cuda_graphs": key[0],
                "cache_gb": key[1],
                "precomputed": cached,
                "requests": len(texts),
                "seconds": round(t, 3),
                "speedup_vs_eager_uncached": round(tb / t, 2),
                "graphs_captured": ng,
                "argmax_equal": round(float((out.argmax(-1) == base.argmax(-1)).float().mean()), 4),
                "max_abs_diff": round(float((out - base).abs().max()), 4),
            }
        )
    )
