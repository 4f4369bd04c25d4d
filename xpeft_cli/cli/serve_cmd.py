"""`xpeft serve`: many profiles behind one HTTP endpoint (service.py does the work)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..config import MAX_TEXT_CHARS
from . import output
from .common import ROWS_MAX, BankOpt, CacheGbOpt, DeviceOpt, ModelOpt, OptStr, QuietOpt


def serve(
    profiles: Path = typer.Option(
        ...,
        "--profiles",
        "-P",
        help="A folder of NAME.xpm files, or an .xps store. Profiles added over HTTP are written there.",
    ),
    bank_dir: Path = BankOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: a free one, printed at start)."),
    device: str = DeviceOpt,
    cuda_graphs: bool = typer.Option(
        False, "--cuda-graphs", help="Replay each batch as a captured CUDA graph (GPU only)."
    ),
    cache_gb: float = CacheGbOpt,
    max_batch: int = typer.Option(64, "--max-batch", min=1, max=4096, help="Rows per model batch at most."),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", min=0, max=10_000, help="How long the first row of a batch waits for others to join it."
    ),
    max_text_chars: int = typer.Option(
        MAX_TEXT_CHARS,
        "--max-text-chars",
        max=ROWS_MAX,
        min=1,
        help="Longest text (with its pair) a request row may send; longer ones get 413.",
    ),
    model: OptStr = ModelOpt,
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON line when listening: url, port, "
        "profiles, device (a script started with --port 0 reads its port there).",
    ),
    quiet: bool = QuietOpt,
) -> None:
    """Serve profiles over HTTP: POST /v1/classify, GET|POST /v1/profiles, GET /health, GET /metrics,
    the OpenAPI page at /docs. Requests of many clients share mixed-profile batches on one model."""
    import uvicorn

    from ..service import bind, build_service

    app, server = build_service(
        str(profiles),
        str(bank_dir),
        model=model,
        device=device,
        cuda_graphs=cuda_graphs,
        cache_gb=cache_gb,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_text_chars=max_text_chars,
    )
    sock = bind(host, port)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    if json_out:
        print(
            json.dumps(
                {
                    "url": where,
                    "port": sock.getsockname()[1],
                    "profiles": len(server.profiles),
                    "device": str(server.device),
                    "bank_hash": server.bank.bank_hash,
                }
            ),
            flush=True,
        )
    else:
        output.note(
            f"serving {len(server.profiles)} profiles on {where} ({server.device}; API docs at {where}/docs)", quiet
        )
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal
        pass
    output.note("stopped", quiet)
