"""`xpeft bench glue`: run the Table-2 grid and write its table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..atomic import atomic_write_text
from ..config import METHODS, STORED_KINDS, FitConfig
from ..errors import UsageError
from . import output
from .common import BATCH_MAX, EPOCHS_MAX, ROWS_MAX, SEED_MAX, TOKENS_MAX, DeviceOpt, JsonOpt, OptStr, QuietOpt

app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
D = FitConfig()


@app.command("glue")
def glue(
    tasks: List[str] = typer.Option(
        ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"], "--tasks", "-t", help="Presets to run (repeatable)."
    ),
    methods: List[str] = typer.Option(list(METHODS), "--methods", "-m", help="x-peft, single-adapter, head-only."),
    n: List[int] = typer.Option([100, 400], "--n", min=1, max=65535, help="Bank sizes N for x-peft (repeatable)."),
    mask: List[str] = typer.Option(["soft", "hard"], "--mask", help="Mask kinds for x-peft (repeatable)."),
    data_dir: Path = typer.Option(
        Path("data"),
        "--data-dir",
        envvar="XPEFT_DATA_DIR",
        show_envvar=True,
        help="Folder holding glue/ and superglue/.",
    ),
    out: Path = typer.Option(Path("bench-glue"), "--output", "-o", help="Results folder (cells are resumed)."),
    epochs: int = typer.Option(3, "--epochs", min=1, max=EPOCHS_MAX, help="Training epochs of every cell."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=BATCH_MAX, help="Rows per training step."),
    k: int = typer.Option(D.k, "--k", min=1, max=65535, help="Adapters selected per site by hard masks."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of every fit."),
    max_train_rows: Optional[int] = typer.Option(
        None, "--max-train-rows", min=1, max=ROWS_MAX, help="Seeded sample of at most this many training rows per task."
    ),
    max_length: int = typer.Option(D.max_length, "--max-length", min=1, max=TOKENS_MAX, help="Tokens per example."),
    device: str = DeviceOpt,
    model: OptStr = typer.Option(None, "--model", envvar="XPEFT_MODEL", help="PLM (default: the bundled one)."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Run tasks × methods (× N × mask) and write a Table-2-style table (Markdown and JSON); resumable."""
    from ..bench import plan, run_grid, table

    bad = [m for m in methods if m not in METHODS] + [m for m in mask if m not in STORED_KINDS]
    if bad:
        raise UsageError(f"unknown method or mask: {', '.join(bad)}")
    cells = plan(tasks, methods, n, mask)
    base = FitConfig(epochs=epochs, batch_size=batch_size, k=k, seed=seed, max_length=max_length, device=device)

    def progress(cell, res, cached):
        if not (quiet or json_out):
            output.stderr.print(
                f"{'cached' if cached else 'done  '} {cell.id:<28} {res['metric']} {res['score']:.4f} "
                f"({res['seconds']}s)"
            )

    results = run_grid(cells, data_dir, out, base, model=model, max_train_rows=max_train_rows, on_cell=progress)
    command = "xpeft bench glue " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    md, doc = table(results, command)
    doc |= {
        "epochs": epochs,
        "batch_size": batch_size,
        "k": k,
        "seed": seed,
        "max_train_rows": max_train_rows,
        "cells": results,
    }
    atomic_write_text(out / "results.md", f"Command: `{command}`\n\n" + md)
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2) + "\n")
    if json_out:
        output.emit_json(doc)
    elif not quiet:
        output.stdout.print(md, markup=False)
