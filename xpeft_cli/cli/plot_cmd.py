"""`xpeft plot …`: PNG figures of masks and training runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import DataError
from . import output
from .common import SEED_MAX, JsonOpt, QuietOpt

app = typer.Typer(help="PNG figures: mask t-SNE, mask heatmaps, loss curves.", no_args_is_help=True)


def _profiles(paths: list[Path]) -> list:
    from ..store import Store, is_store
    from ..xpm import read_xpm

    out = []
    for p in paths:
        if p.is_dir():
            files = sorted(p.glob("*.xpm"))
            if not files:
                raise DataError(f"{p}: no .xpm files")
            out += [read_xpm(f) for f in files]
        elif p.is_file() and is_store(p):
            with Store(p) as st:
                out += list(st)
        else:
            out.append(read_xpm(p))
    return out


def _done(res: dict, json_out: bool, quiet: bool) -> None:
    if json_out:
        output.emit_json(res)
    elif not quiet:
        output.stdout.print(f"wrote {res['output']} ({res['bytes']} bytes)")


@app.command("masks")
def masks(
    sources: List[Path] = typer.Argument(..., help="Profiles: folders of .xpm, .xps stores or .xpm files."),
    out: Path = typer.Option(Path("masks.png"), "--output", "-o", help="PNG file to write."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="t-SNE seed."),
    perplexity: float = typer.Option(
        30.0, "--perplexity", min=1, max=10_000, help="t-SNE perplexity (capped below the profile count)."
    ),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """t-SNE of the profiles' masks, coloured by each profile's majority training label (paper Fig. 3)."""
    from .. import plots

    _done(plots.plot_masks(_profiles(sources), out, seed, perplexity), json_out, quiet)


@app.command("heatmap")
def heatmap(
    files: List[Path] = typer.Argument(..., help=".xpm files."),
    out: Path = typer.Option(Path("heatmap.png"), "--output", "-o", help="PNG file to write."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """M_A and M_B of each profile as site × adapter images (paper Fig. 6)."""
    from .. import plots

    _done(plots.plot_heatmap(_profiles(files), out), json_out, quiet)


@app.command("curves")
def curves(
    logs: List[Path] = typer.Argument(..., help="Fit logs (JSONL written by 'xpeft fit --log')."),
    out: Path = typer.Option(Path("curves.png"), "--output", "-o", help="PNG file to write."),
    smooth: int = typer.Option(10, "--smooth", min=1, max=1_000_000, help="Running-mean window in steps."),
    label: Optional[List[str]] = typer.Option(None, "--label", help="A legend name per log, in order."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Training loss against step, one line per log (paper Fig. 5)."""
    from .. import plots

    for p in logs:
        if not p.is_file():
            raise DataError(f"{p}: no such log file")
    _done(plots.plot_curves(list(logs), out, smooth, label), json_out, quiet)
