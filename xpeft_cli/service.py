"""`xpeft serve`: many profiles behind one HTTP endpoint (FastAPI on uvicorn; no hand-written HTTP).

Requests from any number of clients go to one Batcher. It gathers their rows into mixed-profile
batches (at most `max_batch` rows, waiting at most `max_wait_ms` after the first), runs each on
the ProfileServer's one model in a worker thread, and answers every request with its own rows in
its own order. A profile added over HTTP is checked against the bank, written atomically where
the served profiles live, and swapped in between two batches: no restart, no request lost.

Bad input is a 4xx JSON answer {"error": "<the one line the CLI would print>"}; nothing a request
sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import socket
import threading
import time
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .config import DEFAULT_CACHE_GB, MAX_TEXT_CHARS
from .errors import DataError, UsageError, WrongBankError, XpeftError
from .serve import ProfileServer, ProfileSource, Request

MAX_ROWS = 10_000  # rows in one POST /v1/classify
MAX_PROFILE_BYTES = 64 << 20
GATHER_BATCHES = 8  # model batches one gathering may hold when rows are already queued


class ServiceError(Exception):
    """An answer other than 200: an HTTP status and the one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def status_of(exc: XpeftError) -> int:
    """The HTTP status of a library error: a file for another bank conflicts (409); damaged or
    unusable input is unprocessable (422)."""
    return 409 if isinstance(exc, WrongBankError) else 422


def parse_rows(body: bytes, max_chars: int = MAX_TEXT_CHARS) -> tuple[list[Request], bool]:
    """The rows of a classify body: one object or a list of them. Returns (rows, was_a_list)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError(400, f"request body is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    single = isinstance(obj, dict)
    items = [obj] if single else obj
    if not isinstance(items, list):
        raise ServiceError(422, "request body must be a JSON object or a list of objects")
    if not items:
        raise ServiceError(422, "no requests")
    if len(items) > MAX_ROWS:
        raise ServiceError(413, f"{len(items):,} requests in one body, over the limit of {MAX_ROWS:,}")
    rows = []
    for i, it in enumerate(items):
        where = "request" if single else f"request {i}"
        try:
            row = Request.from_json(it, i, where)
        except DataError as exc:
            raise ServiceError(422, str(exc)) from None
        size = len(row.text) + len(row.text_pair or "")
        if size > max_chars:
            raise ServiceError(413, f"{where}: text is {size:,} characters, over the limit of {max_chars:,}")
        rows.append(row)
    return rows, not single


@dataclass
class _Job:
    rows: list[Request]
    future: asyncio.Future


class Metrics:
    """Prometheus counters of one service (its own registry: two services in a process stay apart)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "xpeft_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.rows = Counter("xpeft_rows", "Rows classified", registry=self.registry)
        self.batch_rows = Histogram(
            "xpeft_batch_rows",
            "Rows per model batch",
            registry=self.registry,
            buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        )
        self.batch_profiles = Histogram(
            "xpeft_batch_profiles",
            "Distinct profiles per model batch",
            registry=self.registry,
            buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        )
        self.latency = Histogram(
            "xpeft_request_seconds",
            "Time from arrival to answer of a classify request",
            registry=self.registry,
            buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        )
        self.profiles = Gauge("xpeft_profiles_loaded", "Profiles the server holds", registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Batcher:
    """Gathers rows of concurrent requests into mixed-profile batches and runs them one at a time."""

    def __init__(
        self,
        server: ProfileServer,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        metrics: Metrics | None = None,
        where: str = "this server",
    ):
        self.where = where
        self.server, self.max_batch, self.max_wait = server, max_batch, max_wait_ms / 1000.0
        self.metrics = metrics
        self.lock = threading.Lock()  # held while a batch runs or while profiles are swapped in
        self.queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def classify(self, rows: list[Request]) -> list[dict]:
        unknown = next((r.profile for r in rows if r.profile not in self.server.index), None)
        if unknown is not None:
            raise ServiceError(404, f"no profile {unknown!r} in {self.where}")
        job = _Job(rows, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size, deadline = len(jobs[0].rows), loop.time() + self.max_wait
            while size < self.max_batch:
                wait = deadline - loop.time()
                try:
                    job = self.queue.get_nowait() if wait <= 0 else await asyncio.wait_for(self.queue.get(), wait)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                jobs.append(job)
                size += len(job.rows)
            # Rows already waiting join too (no more waiting), up to a few model batches: one call
            # tokenises them together and runs its batches back to back, so the HTTP side and the
            # model overlap less badly under load. Each model batch still holds max_batch rows at most.
            while size < self.max_batch * GATHER_BATCHES and not self.queue.empty():
                job = self.queue.get_nowait()
                jobs.append(job)
                size += len(job.rows)
            try:
                answers = await asyncio.to_thread(self._infer, jobs)
            except Exception as exc:  # one failing batch answers its requests with 500; the loop goes on
                err = ServiceError(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(err)
                continue
            for j, a in zip(jobs, answers):
                if not j.future.done():  # a client that went away has a cancelled future
                    j.future.set_result(a)

    def _infer(self, jobs: list[_Job]) -> list[list[dict]]:
        rows = [r for j in jobs for r in j.rows]
        with self.lock:
            server = self.server
            pidx = [server.index[r.profile] for r in rows]
            pairs = [r.text_pair or "" for r in rows] if any(r.text_pair for r in rows) else None
            out = server.outputs([r.text for r in rows], pairs, pidx, self.max_batch)
            answers = [r.answered(server.answer(o, i)) for r, o, i in zip(rows, out, pidx)]
        if self.metrics is not None:
            self.metrics.rows.inc(len(rows))
            for s in range(0, len(rows), self.max_batch):
                self.metrics.batch_rows.observe(min(self.max_batch, len(rows) - s))
                self.metrics.batch_profiles.observe(len(set(pidx[s : s + self.max_batch])))
        per, s = [], 0
        for j in jobs:
            per.append(answers[s : s + len(j.rows)])
            s += len(j.rows)
        return per


def create_app(
    server: ProfileServer,
    source: ProfileSource,
    *,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_text_chars: int = MAX_TEXT_CHARS,
    originals: dict | None = None,
):
    """The ASGI app serving `server`'s profiles; `source` is where added profiles are written.

    `originals`: name → the profile as stored (without a bank's shared head attached), for
    /v1/profiles; default: the server's own.
    """
    from .describe import describe_profile
    from .xpm import MAX_FILE, decode

    metrics = Metrics()
    batcher = Batcher(server, max_batch, max_wait_ms, metrics, str(source.path))
    stored = dict(originals) if originals is not None else {p.name: p for p in server.profiles}
    metrics.profiles.set(len(stored))
    adding = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="xpeft serve",
        summary="X-PEFT profiles behind one endpoint: mixed-profile batches on one frozen model.",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.metrics = batcher, metrics

    def error(status: int, message: str, endpoint: str) -> JSONResponse:
        metrics.requests.labels(endpoint, str(status)).inc()
        return JSONResponse({"error": message}, status_code=status)

    def ok(body, endpoint: str, status: int = 200) -> JSONResponse:
        metrics.requests.labels(endpoint, str(status)).inc()
        return JSONResponse(body, status_code=status)

    row_schema = {
        "type": "object",
        "required": ["profile", "text"],
        "properties": {
            "profile": {"type": "string"},
            "text": {"type": "string"},
            "text_pair": {"type": "string"},
            "id": {},
        },
    }

    @app.post(
        "/v1/classify",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"oneOf": [row_schema, {"type": "array", "items": row_schema}]}}
                },
            }
        },
    )
    async def classify(request: HttpRequest):
        """One request or a list, each naming its profile. Answers as `xpeft predict` does, in order:
        {"profile", "prediction", "score"} (regression: "prediction" only), with "id" when given."""
        t0 = time.perf_counter()
        try:
            rows, many = parse_rows(await request.body(), max_text_chars)
            answers = await batcher.classify(rows)
        except ServiceError as exc:
            return error(exc.status, exc.message, "classify")
        metrics.latency.observe(time.perf_counter() - t0)
        return ok(answers if many else answers[0], "classify")

    @app.get("/v1/profiles")
    async def list_profiles(offset: int = 0, limit: int = 1000):
        """The profiles served, `limit` (≤ 10,000) from `offset` in load order: what `xpeft inspect
        --json` says of each file; `count` is how many there are in all."""
        if offset < 0 or not 1 <= limit <= 10_000:
            return error(422, "offset must be 0 or more and limit 1..10000", "profiles")
        page = list(itertools.islice(stored.values(), offset, offset + limit))
        return ok({"count": len(stored), "offset": offset, "profiles": [describe_profile(p) for p in page]}, "profiles")

    @app.get("/v1/profiles/{name}")
    async def get_profile(name: str):
        if name not in stored:
            return error(404, f"no profile {name!r} in {source.path}", "profile")
        return ok(describe_profile(stored[name]), "profile")

    @app.post(
        "/v1/profiles",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def add_profile(request: HttpRequest):
        """Add or replace a profile from the bytes of its .xpm file: verified in full and against
        the bank, written atomically beside the others, served from the next batch on."""
        data = await request.body()
        if len(data) > min(MAX_FILE, MAX_PROFILE_BYTES):
            return error(413, f"{len(data):,} bytes is larger than a profile may be here", "add")
        async with adding:  # one addition at a time: each builds on the last
            try:
                profile = decode(data).profile
                profiles, tables = await asyncio.to_thread(server.prepare, profile)
                path = await asyncio.to_thread(source.save, profile, data)
            except XpeftError as exc:
                return error(status_of(exc), str(exc), "add")
            replaced = profile.name in stored

            def swap():
                with batcher.lock:
                    server.install(profiles, tables)

            await asyncio.to_thread(swap)
            stored[profile.name] = profile
            metrics.profiles.set(len(stored))
        return ok(
            {"profile": profile.name, "replaced": replaced, "written": str(path)} | describe_profile(profile),
            "add",
            200 if replaced else 201,
        )

    @app.get("/health")
    async def health():
        return ok(
            {
                "status": "ok",
                "profiles": len(stored),
                "device": str(server.device),
                "bank_hash": server.bank.bank_hash,
                "cuda_graphs": server.cuda_graphs,
            },
            "health",
        )

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text: requests by endpoint and status, rows, batch sizes, latency, profiles."""
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):  # FastAPI's own checks (query parameters): one line too
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body"))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request, exc):  # the server answers 500 and goes on
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]}, status_code=500)

    return app


def build_service(
    profiles: str,
    bank_dir: str,
    *,
    model: str | None = None,
    device: str = "auto",
    cuda_graphs: bool = False,
    cache_gb: float = DEFAULT_CACHE_GB,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_text_chars: int = MAX_TEXT_CHARS,
):
    """Load the bank and every profile of a folder or store; returns the app (and its server)."""
    from .bank import Bank

    if max_batch < 1:
        raise UsageError("--max-batch must be at least 1")
    if not (math.isfinite(max_wait_ms) and max_wait_ms >= 0):
        raise UsageError("--max-wait-ms must be a number of milliseconds, 0 or more")
    source = ProfileSource(profiles)
    bank = Bank.load(bank_dir, model=model)
    found = source.all()
    server = ProfileServer(bank, found, device, cuda_graphs=cuda_graphs, cache_gb=cache_gb)
    app = create_app(
        server,
        source,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_text_chars=max_text_chars,
        originals={p.name: p for p in found},
    )
    return app, server


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), bound before the server starts so its port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without, a keep-alive answer written in two parts waits for
    # the client's delayed ACK (~40 ms a request, measured)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    return sock


class BackgroundServer:
    """Runs an app with uvicorn in a thread on a socket of its own (tests, benchmarks, notebooks):

    with BackgroundServer(app) as url: httpx.post(url + "/v1/classify", json=...)
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 60:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
