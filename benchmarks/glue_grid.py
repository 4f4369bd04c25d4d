"""The Table-2 grid on a machine without `datasets` (the GPU box): export here, run there.

    python benchmarks/glue_grid.py export --data-dir ../shared/data --to .devdata/presets   # here
    python benchmarks/glue_grid.py run --from .devdata/presets -o .devbench [bench options]  # there

`export` reads each preset's splits with xpeft's own loaders and writes them as plain JSON;
`run` feeds them to the same grid runner that `xpeft bench glue` uses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xpeft_cli.bench import plan, run_grid, table
from xpeft_cli.data import Examples
from xpeft_cli.train import FitConfig


def export(data_dir: str, to: str, tasks: list[str]) -> None:
    from xpeft_cli.tasks import load_split, preset

    Path(to).mkdir(parents=True, exist_ok=True)
    for t in tasks:
        for which in ("train", "dev"):
            ex = load_split(preset(t), which, data_dir).examples
            Path(to, f"{t}.{which}.json").write_text(
                json.dumps({"texts": ex.texts, "pairs": ex.pairs, "labels": ex.labels, "source": ex.source})
            )
            print(t, which, len(ex))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["export", "run"])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--to", default=".devdata/presets")
    ap.add_argument("--from", dest="src", default=".devdata/presets")
    ap.add_argument("-o", "--output", default=".devbench")
    ap.add_argument("--tasks", nargs="+", default=["cola", "sst2", "mrpc", "stsb", "rte", "wnli"])
    ap.add_argument("--methods", nargs="+", default=["head-only", "single-adapter", "x-peft"])
    ap.add_argument("--n", nargs="+", type=int, default=[100, 400])
    ap.add_argument("--mask", nargs="+", default=["soft", "hard"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-train-rows", type=int, default=20000)
    ap.add_argument("--k", type=int, default=FitConfig.k)
    ap.add_argument("--lr-masks", type=float, default=FitConfig.lr_masks)
    ap.add_argument("--nu", type=float, default=FitConfig.nu)
    ap.add_argument("--tau", type=float, default=FitConfig.tau)
    ap.add_argument("--init-scale", type=float, default=1.0, help="scale of the random banks' B matrices")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.action == "export":
        export(args.data_dir, args.to, args.tasks)
        return

    def loader(task: str, which: str) -> Examples:
        d = json.loads(Path(args.src, f"{task}.{which}.json").read_text())
        return Examples(d["texts"], d["pairs"], d["labels"], d["source"])

    base = FitConfig(
        k=args.k,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        lr_masks=args.lr_masks,
        nu=args.nu,
        tau=args.tau,
    )
    cells = plan(args.tasks, args.methods, args.n, args.mask)
    results = run_grid(
        cells,
        "",
        args.output,
        base,
        model=args.model,
        max_train_rows=args.max_train_rows,
        loader=loader,
        init_scale=args.init_scale,
        on_cell=lambda c, r, cached: print(
            ("cached " if cached else "done   ") + c.id,
            r["metric"],
            round(r["score"], 4),
            f"{r['seconds']}s",
            flush=True,
        ),
    )
    command = (
        "python benchmarks/glue_grid.py run --tasks " + " ".join(args.tasks) + f" --n {' '.join(map(str, args.n))}"
        f" --methods {' '.join(args.methods)} --mask {' '.join(args.mask)} --epochs {args.epochs}"
        f" --batch-size {args.batch_size} --max-train-rows {args.max_train_rows} --lr-masks {args.lr_masks}"
        f" --nu {args.nu} --tau {args.tau} --init-scale {args.init_scale} --k {args.k}"
    )
    md, doc = table(results, command)
    doc |= {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_train_rows": args.max_train_rows,
        "cells": results,
    }
    Path(args.output, "results.md").write_text(f"Command: `{command}`\n\n" + md)
    Path(args.output, "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(md)


if __name__ == "__main__":
    main()
