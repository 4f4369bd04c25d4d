"""`xpeft convert …`: turn public multi-profile data into xpeft's JSONL (text, label, profile)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from . import output
from .common import ROWS_MAX, SEED_MAX, JsonOpt, QuietOpt

app = typer.Typer(help="Convert public multi-profile data into xpeft JSONL.", no_args_is_help=True)


@app.command("news-category")
def news(
    sources: List[Path] = typer.Argument(
        ..., help="News Category Dataset JSONL files (v3, v2, or heads of them); earlier files win duplicate links."
    ),
    out_dir: Path = typer.Option(
        Path("news"), "--output", "-o", help="Folder for train.jsonl, test.jsonl, stats.json."
    ),
    min_rows: int = typer.Option(
        20, "--min-rows", min=1, max=ROWS_MAX, help="Keep authors with at least this many rows."
    ),
    test_fraction: float = typer.Option(
        0.3, "--test-fraction", min=0, max=0.99, help="Per-author share of rows held out for test."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of the per-author shuffle."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """LaMP-2-style data: profile = authors, label = category, text = headline + short description,
    deduplicated by link, split 70/30 per author."""
    from ..convert import news_category

    rep = news_category(list(sources), out_dir, min_rows, test_fraction, seed)
    if json_out:
        output.emit_json(rep)
    elif not quiet:
        output.stdout.print(
            f"{out_dir}: {rep['authors']} authors, {rep['train_rows']} train + {rep['test_rows']} "
            f"test rows, {rep['categories']} categories ({rep.get('duplicate_link', 0)} duplicate "
            f"links and {rep.get('no_author', 0)} rows without authors dropped)"
        )
