"""`xpeft export`: a profile as a standard peft LoRA adapter folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import IntegrityError, UsageError
from . import output
from .common import BankOpt, JsonOpt, ModelOpt, OptStr, QuietOpt


def export(
    profile: Path = typer.Argument(..., help="Profile file (.xpm)."),
    out: Path = typer.Option(..., "--output", "-o", help="Folder to write the adapter into."),
    to: str = typer.Option("peft", "--to", help="Target format: peft."),
    bank_dir: Path = BankOpt,
    model: OptStr = ModelOpt,
    base_model: OptStr = typer.Option(
        None,
        "--base-model",
        help="How adapter_config.json names the base model (default: the bundled PLM's hub id, "
        "else the bank's model reference); e.g. a local folder for offline loading.",
    ),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Write a profile as a peft LoRA adapter (FEATURE_EXTRACTION) that AutoPeftModelForFeatureExtraction
    loads, with the mean-pooled head beside it (head.safetensors, head.json)."""
    from ..bank import Bank
    from ..export import export_peft
    from ..xpm import read_xpm

    if to != "peft":
        raise UsageError("--to: only 'peft' is supported")
    bank = Bank.load(bank_dir, model=model)
    prof = read_xpm(profile)
    if prof.bank_hash != bank.bank_hash:
        raise IntegrityError(f"{profile} was fitted on another bank than {bank_dir}")
    res = export_peft(bank, prof, out, base_model=base_model)
    if json_out:
        output.emit_json(res)
    elif not quiet:
        output.stdout.print(
            f"wrote {out}: LoRA r={res['rank']} on {res['sites']} modules, {res['bytes']:,} bytes "
            f"({', '.join(res['files'])})"
        )
