"""`xpeft fit` with and without --cuda-graphs, end to end on real data (GPU).

    python benchmarks/fit_graphs.py --model .devmodel/minilm-fp16 --train news/train.jsonl --test news/test.jsonl

One classifier over News Category headlines (29 categories, `xpeft convert news-category`),
fitted on the default PLM over a random bank, eagerly and as CUDA graphs, with the same seed:
the training loop's seconds (graph capture included), steps per second, final loss and test
accuracy; and, apart, the first graphed fit in the process, which compiles the fused kernels. Writes benchmarks/results/fit-graphs-<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from xpeft_cli.bank import Bank
from xpeft_cli.data import load_examples
from xpeft_cli.evaluate import evaluate_profile
from xpeft_cli.plm import load_encoder, resolve_model
from xpeft_cli.train import FitConfig, fit_profile

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="the PLM (default: the bundled default model)")
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, nargs="*", default=[16, 64])
    ap.add_argument("--masks", nargs="*", default=["hard", "soft"])
    ap.add_argument("--tag", default="cuda")
    args = ap.parse_args()
    plm = resolve_model(args.model)
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=args.n, seed=0)
    train, test = load_examples(Path(args.train)), load_examples(Path(args.test))
    rows = []
    for mask in args.masks:
        for bs in args.batch_size:
            # the first graphed fit of a shape in a process compiles the fused kernels (fused.py):
            # timed apart, on 64 rows, so that the rows below compare steady-state loops
            t0 = time.perf_counter()
            fit_profile(
                bank,
                train.subset(list(range(64))),
                "warm-up",
                FitConfig(mask=mask, k=50, epochs=1, batch_size=bs, device="cuda", val_fraction=0.0, cuda_graphs=True),
            )
            compile_s = round(time.perf_counter() - t0, 2)
            for graphs in (False, True):
                cfg = FitConfig(
                    mask=mask,
                    k=50,
                    epochs=args.epochs,
                    batch_size=bs,
                    seed=0,
                    device="cuda",
                    val_fraction=0.0,
                    cuda_graphs=graphs,
                )
                res = fit_profile(bank, train, "news", cfg)
                metrics, _ = evaluate_profile(bank, res.profile, test, device="cuda")
                losses = [h["loss"] for h in res.history if "loss" in h]
                rows.append(
                    {
                        "mask": mask,
                        "batch_size": bs,
                        "cuda_graphs": graphs,
                        "steps": res.steps,
                        "seconds": round(res.seconds, 2),
                        "steps_per_s": round(res.steps / res.seconds, 1),
                        "final_loss_mean_last_20": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                        "test_accuracy": round(metrics["accuracy"], 4),
                        "test_rows": len(test),
                        "first_graphed_fit_64_rows_s": compile_s if graphs else None,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        if r["cuda_graphs"]:
            base = next(
                x
                for x in rows
                if x["mask"] == r["mask"] and x["batch_size"] == r["batch_size"] and not x["cuda_graphs"]
            )
            r["speedup"] = round(base["seconds"] / r["seconds"], 2)
    meta = {
        "command": "python benchmarks/fit_graphs.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plm": plm.fingerprint[:16],
        "n": args.n,
        "epochs": args.epochs,
        "train_rows": len(train),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"fit-graphs-{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [
        f"# `fit` eager and with --cuda-graphs ({meta['device']}, default PLM, N={args.n}, k=50, "
        f"{len(train)} training rows, {args.epochs} epochs)",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}.",
        "",
        "| mask | batch | CUDA graphs | steps | loop s | steps/s | speed-up | loss (last 20) | test accuracy | "
        "first graphed fit (64 rows, compiles) s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['mask']} | {r['batch_size']} | {r['cuda_graphs']} | {r['steps']} | {r['seconds']} | "
        f"{r['steps_per_s']} | {r.get('speedup', '')} | {r['final_loss_mean_last_20']} | {r['test_accuracy']} | "
        f"{r['first_graphed_fit_64_rows_s'] or ''} |"
        for r in rows
    ]
    (RESULTS / f"fit-graphs-{args.tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
