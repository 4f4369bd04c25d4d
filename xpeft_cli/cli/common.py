"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import DEFAULT_CACHE_GB, ENV_BANK
from ..errors import UsageError

# Every numeric option has a range (ints and finite floats; NaN and ±inf fail a bounded range), so no
# number reaches the core unchecked: out of range is exit 2 with one line.
SEED_MAX = 2**32 - 1
LR_MAX = 10.0
ROWS_MAX = 1_000_000_000
TOKENS_MAX = 1_000_000
EPOCHS_MAX = 10_000
BATCH_MAX = 65_536
GB_MAX = 1e6

CacheGbOpt = typer.Option(
    DEFAULT_CACHE_GB,
    "--cache-gb",
    min=0,
    max=GB_MAX,
    metavar="GIB",
    help="Mix every served profile's Â, B̂ once at start-up when they fit in this many GiB "
    "(batches then gather them instead of mixing from the bank); 0 mixes per batch.",
)
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")
QuietOpt = typer.Option(
    False,
    "--quiet",
    "-q",
    help="Print nothing but errors (no notes, progress or summary; "
    "data a command writes to stdout still goes there); the exit status tells how it went.",
)
BankOpt = typer.Option(
    Path("bank"), "--bank", "-b", envvar=ENV_BANK, show_envvar=True, help="Bank folder (made by 'xpeft bank create')."
)
ModelOpt = typer.Option(
    None,
    "--model",
    envvar="XPEFT_MODEL",
    show_envvar=True,
    help="Where to find the bank's PLM (folder or cached hub id); its hash must match.",
)
DevicesOpt = typer.Option(
    1,
    "--devices",
    min=1,
    max=1024,
    help="Run data-parallel on this many processes, one per GPU "
    "(or on CPU with --device cpu). Each profile's fit follows the steps one process takes: "
    "bit for bit on CPU, up to float noise on GPUs (README: Data-parallel fits).",
)


def _check_device(value: str) -> str:
    """Refuse a device this machine does not have while the options are read, before any bank or model
    is loaded (a CPU machine told --device cuda used to answer after the model load)."""
    if value != "auto":
        from ..distributed import pick_device  # torch: only when a device is named

        pick_device(value)
    return value


DeviceOpt = typer.Option(
    "auto",
    "--device",
    callback=_check_device,
    help="Where to compute: auto (a GPU when there is one), cpu, cuda, cuda:1 …",
)
PrecisionOpt = typer.Option("auto", "--precision", help="auto (bf16 autocast on a GPU, fp32 on CPU), bf16 or fp32.")
TextCol = typer.Option("text", "--text-column", help="Column with the text.")
PairCol = typer.Option(None, "--text-pair-column", help="Column with the second text of a pair task.")
LabelCol = typer.Option("label", "--label-column", help="Column with the label.")

OptPath = Optional[Path]
OptStr = Optional[str]


def devices_launch(devices: int, device: str) -> None:
    """With --devices N > 1, run this command as N processes and exit with their exit code."""
    if devices < 1:
        raise UsageError("--devices must be at least 1")
    if devices == 1:
        return
    from .app import ARGV
    from .launch import relaunch

    if not ARGV:
        raise UsageError("--devices needs the xpeft command line (run it from the shell)")
    raise typer.Exit(relaunch(ARGV, devices, device))


def label_list(labels: str | None) -> list[str] | None:
    """--labels a,b,c as a list of at least two distinct names (None when not given)."""
    if labels is None:
        return None
    names = [x.strip() for x in labels.split(",") if x.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError("--labels needs at least two distinct comma-separated names")
    return names
