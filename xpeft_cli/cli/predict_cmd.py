"""`xpeft predict`: JSONL requests (a profile per row) in, JSONL answers out, in order."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from ..atomic import atomic_write_text
from ..errors import DataError, UsageError
from . import output
from .common import BATCH_MAX, TOKENS_MAX, BankOpt, CacheGbOpt, DeviceOpt, ModelOpt, OptStr, QuietOpt


def predict(
    profiles: Path = typer.Option(
        ..., "--profiles", "-P", help="A folder of NAME.xpm files, an .xps store, or one .xpm file."
    ),
    data: str = typer.Option(
        "-",
        "--data",
        "-d",
        help='Requests, JSONL: {"profile", "text", ["text_pair"], ["id"]} per line; \'-\' reads standard input.',
    ),
    out: OptStr = typer.Option(None, "--output", "-o", help="Answers file (default: standard output)."),
    bank_dir: Path = BankOpt,
    batch_size: int = typer.Option(64, "--batch-size", min=1, max=BATCH_MAX, help="Request rows per forward pass."),
    max_length: int = typer.Option(
        None, "--max-length", min=1, max=TOKENS_MAX, help="Tokens per request (default: each profile's own, as fitted)."
    ),
    device: str = DeviceOpt,
    cuda_graphs: bool = typer.Option(
        False,
        "--cuda-graphs",
        help="Replay each padded batch shape as a captured "
        "CUDA graph (GPU only): removes kernel-launch time, pads rows to --batch-size "
        "and lengths to a multiple of 32.",
    ),
    cache_gb: float = CacheGbOpt,
    model: OptStr = ModelOpt,
    json_out: bool = typer.Option(
        False,
        "--json",
        help="With --output: print one JSON object saying what was written (without it stdout carries the answers).",
    ),
    quiet: bool = QuietOpt,
) -> None:
    """Answer requests for many profiles with one model: one JSON line per request, in request order,
    streamed as each batch is done: {"profile", "prediction", "score", "scores"} ("id" when given;
    regression: "prediction" only). A line that cannot be answered gets {"line", "error"} and the rest
    go on; the exit status is then 3."""
    from ..bank import Bank
    from ..serve import ProfileSource, stream_predict

    if json_out and not out:
        raise UsageError("--json needs --output: without it stdout carries the answers")
    t0 = time.perf_counter()
    source = ProfileSource(profiles)
    bank = Bank.load(bank_dir, model=model)
    collected: list[str] = []
    write = collected.append if out else _print_now
    if data == "-":
        counts = stream_predict(
            bank, source, sys.stdin, "stdin", write, batch_size, max_length, device, cuda_graphs, cache_gb
        )
    else:
        try:
            with open(data, encoding="utf-8") as fh:
                known = _profile_names(fh)  # loaded together up front: one table build for the whole file
                fh.seek(0)
                counts = stream_predict(
                    bank, source, fh, data, write, batch_size, max_length, device, cuda_graphs, cache_gb, known=known
                )
        except FileNotFoundError:
            raise DataError(f"{data}: no such requests file") from None
    total = counts["answers"] + counts["errors"]
    if out:
        atomic_write_text(out, "".join(collected))
    if not total:
        raise DataError(f"{'stdin' if data == '-' else data}: no requests")
    if counts["errors"]:
        raise DataError(
            f"{counts['errors']} of {total} requests could not be answered (error records in the "
            f"output; first: {counts['first_error']})"
        )
    res = {
        "output": out,
        "answers": counts["answers"],
        "profiles": counts["profiles"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not out:
        return
    if json_out:
        output.emit_json(res)
    else:
        output.note(f"wrote {res['answers']} answers for {res['profiles']} profiles to {out}", quiet)


def _print_now(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()  # a streaming client sees each answer as soon as its batch is done


def _profile_names(fh) -> list[str]:
    """The profile names a requests file asks for, in order of first appearance (bad lines skipped)."""
    names: dict[str, None] = {}
    for line in fh:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("profile"), str):
            names[obj["profile"]] = None
    return list(names)
