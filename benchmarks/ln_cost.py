"""What the bottleneck LayerNorm is worth: the same fits on a bank with LN and on one without
(whose profiles export exactly to peft LoRA). Hard masks, N=400, k=50, default PLM.

    python benchmarks/ln_cost.py --tasks rte mrpc --max-train-rows 2000 --epochs 3 [--device cpu]

Writes benchmarks/results/ln_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from xpeft_cli import Bank, FitConfig, SiteConfig, fit_profile
from xpeft_cli.batches import score
from xpeft_cli.distributed import pick_device
from xpeft_cli.plm import load_encoder, resolve_model
from xpeft_cli.tasks import load_split, official_metrics, preset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "ln_cost"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["rte", "mrpc"])
    ap.add_argument("--max-train-rows", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=str(DATA))
    args = ap.parse_args()
    plm = resolve_model(None)
    enc, _ = load_encoder(plm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        banks = {}
        for ln in (True, False):
            folder = Path(tmp) / f"ln{ln}"
            Bank.create_random(plm, enc, n=400, seed=0, config=SiteConfig(ln=ln)).save(folder)
            banks[ln] = Bank.load(folder)
        for task in args.tasks:
            p = preset(task)
            train, dev = load_split(p, "train", args.data_dir).examples, load_split(p, "dev", args.data_dir).examples
            if len(train) > args.max_train_rows:
                train = train.subset(sorted(random.Random(0).sample(range(len(train)), args.max_train_rows)))
            for ln in (True, False):
                t0 = time.perf_counter()
                cfg = FitConfig(
                    epochs=args.epochs, batch_size=32, device=args.device, val_fraction=0.0, task=p.task_type
                )
                fit = fit_profile(banks[ln], train, task, cfg)
                y = (
                    [fit.profile.labels.index(v) for v in dev.labels]
                    if p.task_type != "regression"
                    else [float(v) for v in dev.labels]
                )
                n_out = len(fit.profile.labels) if fit.profile.labels else 1
                _, preds = score(fit.model, fit.tokenizer, dev, y, n_out, 128, 128, pick_device(args.device))
                m = official_metrics(p, y, preds)
                rows.append(
                    {
                        "task": task,
                        "ln": "layernorm" if ln else "none",
                        "score": m["score"],
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    cmd = "python benchmarks/ln_cost.py " + " ".join(sys.argv[1:])
    OUT.with_suffix(".json").write_text(
        json.dumps({"command": cmd, "rows": rows, "torch": torch.__version__}, indent=2) + "\n"
    )
    md = [
        f"# Bottleneck LayerNorm vs none (hard N=400, k=50, {args.epochs} epochs, ≤{args.max_train_rows} train rows)",
        "",
        f"Command: `{cmd}`",
        "",
        "| task | layernorm | none | cost of none |",
        "|---|---|---|---|",
    ]
    for t in args.tasks:
        a = next(r["score"] for r in rows if r["task"] == t and r["ln"] == "layernorm")
        b = next(r["score"] for r in rows if r["task"] == t and r["ln"] == "none")
        md.append(f"| {t} | {a:.3f} | {b:.3f} | {100 * (a - b):+.1f} points |")
    OUT.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
