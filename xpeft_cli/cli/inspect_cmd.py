"""`xpeft inspect`: what an .xpm holds, byte by byte, and whether it belongs to a bank."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import IntegrityError
from . import output
from .common import JsonOpt, OptPath, QuietOpt


def recorded_bank_hash(bank_dir: Path) -> str:
    """The hash in a bank's manifest (`xpeft bank verify` checks the tensors behind it)."""
    from ..bank import read_manifest

    return read_manifest(bank_dir)["bank_hash"]


def inspect(
    file: Path = typer.Argument(..., help="Profile file (.xpm, or a baseline's .safetensors)."),
    bank: OptPath = typer.Option(None, "--bank", "-b", help="Check the profile belongs to this bank."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Show an .xpm profile: header, sections and their sizes, checksum, selected adapters."""
    from ..describe import describe_file

    info = describe_file(file)
    if bank is not None:
        recorded = recorded_bank_hash(bank)
        info["bank"] = str(bank)
        info["bank_match"] = recorded == info["bank_hash"]
    if json_out:
        output.emit_json(info)
    elif quiet:  # a check only: the exit status says whether the file reads (and matches --bank)
        pass
    elif "method" in info:
        t = Table(show_header=False, box=None, pad_edge=False)
        for key in ("file", "bytes", "format", "profile", "method", "task", "rank", "sites", "trainable_parameters"):
            t.add_row(key, output.plain(info[key]))
        if info["labels"]:
            t.add_row("labels", output.plain(", ".join(info["labels"])))
        t.add_row(
            "bank hash",
            info["bank_hash"] + ("" if bank is None else "  (matches)" if info["bank_match"] else "  (OTHER BANK)"),
        )
        output.stdout.print(t)
    else:
        t = Table(show_header=False, box=None, pad_edge=False)
        for key in ("file", "bytes", "version", "checksum", "profile", "mask", "n", "L", "k", "b", "task", "classes"):
            t.add_row(key, output.plain(info[key]))
        if info["labels"]:
            t.add_row("labels", output.plain(", ".join(info["labels"])))
        t.add_row("bank hash", info["bank_hash"])
        if bank is not None:
            t.add_row("bank match", "yes" if info["bank_match"] else f"NO ({bank} is another bank)")
        t.add_row("sections", ", ".join(f"{k} {v} B" for k, v in info["sections"].items()))
        output.stdout.print(t)
        if info.get("selected_omitted"):
            output.stdout.print(f"selected adapters: not listed ({info['selected_omitted']})")
        if info.get("selected"):
            s = Table("site", "A: selected adapters", "B: selected adapters", box=None)
            for row in info["selected"]:
                s.add_row(str(row["site"]), " ".join(map(str, row["A"])), " ".join(map(str, row["B"])))
            output.stdout.print(s)
        if "plus" in info:
            s = Table("site", "A: adapters with +", "B: adapters with +", box=None)
            for row in info["plus"]:
                s.add_row(str(row["site"]), f"{row['A']} of {info['n']}", f"{row['B']} of {info['n']}")
            output.stdout.print(s)
    if bank is not None and not info["bank_match"]:
        raise IntegrityError(f"{file} was fitted on bank {info['bank_hash'][:16]}…, not on {bank}")
