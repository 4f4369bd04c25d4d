"""Options shared by several commands."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..bank import ENV_BANK

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress or notes on stderr.")
BankOpt = typer.Option(Path("bank"), "--bank", "-b", envvar=ENV_BANK, show_envvar=True,
                       help="Bank folder (made by 'xpeft bank create').")
ModelOpt = typer.Option(None, "--model", envvar="XPEFT_MODEL", show_envvar=True,
                        help="Where to find the bank's PLM (folder or cached hub id); its hash must match.")
TextCol = typer.Option("text", "--text-column", help="Column with the text.")
PairCol = typer.Option(None, "--text-pair-column", help="Column with the second text of a pair task.")
LabelCol = typer.Option("label", "--label-column", help="Column with the label.")

OptPath = Optional[Path]
OptStr = Optional[str]
