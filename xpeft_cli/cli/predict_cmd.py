"""`xpeft predict`: JSONL requests (a profile per row) in, JSONL answers out, in order."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from ..atomic import atomic_write_text
from ..bank import Bank
from ..errors import DataError, UsageError
from . import output
from ..serve import DEFAULT_CACHE_GB, ProfileSource, predict_requests, read_requests
from .common import BankOpt, ModelOpt, OptStr, QuietOpt, BATCH_MAX, GB_MAX, TOKENS_MAX


def predict(
    profiles: Path = typer.Option(..., "--profiles", "-P", help="A folder of NAME.xpm files, or an .xps store."),
    data: str = typer.Option("-", "--data", "-d", help="Requests, JSONL: {\"profile\", \"text\", [\"text_pair\"], "
                             "[\"id\"]} per line; '-' reads standard input."),
    out: OptStr = typer.Option(None, "--output", "-o", help="Answers file (default: standard output)."),
    bank_dir: Path = BankOpt,
    batch_size: int = typer.Option(64, "--batch-size", min=1, max=BATCH_MAX),
    max_length: int = typer.Option(None, "--max-length", min=1, max=TOKENS_MAX, help="Tokens per request (default: each profile's own, "
                                   "as fitted)."),
    device: str = typer.Option("auto", "--device"),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Replay each padded batch shape as a captured "
                                     "CUDA graph (GPU only): removes kernel-launch time, pads rows to --batch-size "
                                     "and lengths to a multiple of 32."),
    cache_gb: float = typer.Option(DEFAULT_CACHE_GB, "--cache-gb", max=GB_MAX, min=0, metavar="GIB", help="Mix every requested profile's "
                                   "Â, B̂ once at start-up when they fit in this many GiB (batches then gather "
                                   "them instead of mixing from the bank); 0 mixes per batch."),
    model: OptStr = ModelOpt,
    json_out: bool = typer.Option(False, "--json", help="With --output: print one JSON object saying what was "
                                  "written (without it stdout carries the answers)."),
    quiet: bool = QuietOpt,
) -> None:
    """Answer requests for many profiles with one model: one JSON line per request, in request order."""
    if json_out and not out:
        raise UsageError("--json needs --output: without it stdout carries the answers")
    t0 = time.perf_counter()
    if data == "-":
        requests = read_requests(sys.stdin, "stdin")
    else:
        try:
            with open(data, encoding="utf-8") as fh:
                requests = read_requests(fh, data)
        except FileNotFoundError:
            raise DataError(f"{data}: no such requests file") from None
    source = ProfileSource(profiles)
    bank = Bank.load(bank_dir, model=model)
    answers = predict_requests(bank, source, requests, batch_size, max_length, device, cuda_graphs, cache_gb)
    text = "".join(json.dumps(a) + "\n" for a in answers)
    if not out:
        sys.stdout.write(text)
        return
    atomic_write_text(out, text)
    res = {"output": out, "answers": len(answers), "profiles": len({r.profile for r in requests}),
           "seconds": round(time.perf_counter() - t0, 2)}
    if json_out:
        output.emit_json(res)
    else:
        output.note(f"wrote {res['answers']} answers for {res['profiles']} profiles to {out}", quiet)
