"""`xpeft report memory`: the paper's Table 1, and measured sizes of real profiles."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from . import output
from .common import JsonOpt, ModelOpt, OptPath, OptStr, QuietOpt

app = typer.Typer(help="Reports.", no_args_is_help=True)


@app.command("memory")
def memory(
    files: Optional[List[Path]] = typer.Argument(None, metavar="FILES", help="Profile files to measure (with --bank)."),
    n: Optional[List[int]] = typer.Option(
        None, "--n", min=1, max=1_000_000, help="Adapter counts N (repeatable; default 100, 200, 400)."
    ),
    rank: int = typer.Option(48, "--rank", min=1, max=65535, help="Bottleneck b (Table 1's numbers use 48)."),
    dim: int = typer.Option(768, "--dim", min=1, max=1_000_000, help="Adapter input dimension d."),
    layers: int = typer.Option(12, "--layers", min=1, max=100_000, help="Number of sites L."),
    bank: OptPath = typer.Option(None, "--bank", "-b", help="With FILES: the bank they belong to."),
    profile: Optional[List[Path]] = typer.Option(
        None, "--profile", "-p", hidden=True, help="Profile file(s) to measure (old spelling of FILES)."
    ),
    model: OptStr = ModelOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Trainable parameters and bytes per profile (Table 1); with FILES and --bank, real sizes too."""
    profile = list(files or []) + list(profile or [])
    from ..bank import Bank
    from ..baselines import read_adapter
    from ..memory import measured_sizes, table1
    from ..xpm import read_xpm_full

    res = {"table1": table1(tuple(n or (100, 200, 400)), rank, dim, layers)}
    if profile:
        if bank is None:
            raise typer.BadParameter("measuring profile files needs --bank", param_hint="--bank")
        b = Bank.load(bank, model=model)
        measured = []
        for path in profile:
            if path.name.endswith(".safetensors"):
                a = read_adapter(path)
                measured.append(
                    {
                        "profile": a.name,
                        "method": a.method,
                        "file_bytes": path.stat().st_size,
                        "trainable_parameters": a.trainable_parameters(),
                    }
                )
                continue
            dec = read_xpm_full(path)
            measured.append(measured_sizes(b, dec.profile, path, dec.sizes))
        res["measured"] = measured
    if json_out:
        output.emit_json(res)
        return
    if quiet:
        return
    t1 = res["table1"]
    t = Table(
        "mode",
        "N",
        "trainable",
        "",
        "bytes",
        "",
        box=None,
        title=f"Table 1 (b={t1['rank']}, d={t1['dim']}, L={t1['layers']})",
    )
    for r in t1["rows"]:
        t.add_row(
            r["mode"],
            str(r["n"] or "-"),
            f"{r['trainable']:,}",
            r["trainable_display"],
            f"{r['bytes']:,}",
            r["bytes_display"],
        )
    output.stdout.print(t)
    for m in res.get("measured", []):
        if "method" in m:
            output.stdout.print(
                f"{m['profile']} ({m['method']}): {m['file_bytes']:,} B on disk, "
                f"{m['trainable_parameters']:,} trained parameters"
            )
            continue
        output.stdout.print(
            f"{m['profile']} ({m['mask']}, N={m['n']}, L={m['L']}): .xpm {m['xpm_bytes']:,} B "
            f"(masks-only {m['xpm_masks_only_bytes']:,} B) vs LoRA safetensors {m['lora_safetensors_bytes']:,} B "
            f"= {m['ratio_lora_to_xpm']:,.0f}x ({m['ratio_lora_to_masks_only']:,.0f}x masks-only)"
        )
