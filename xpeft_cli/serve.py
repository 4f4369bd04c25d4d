"""Serving many profiles from one model: requests name their profile, and rows of different
profiles share a batch (routing.py gives each row its own Â, B̂, LN and head). Answers come
back in request order.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .bank import Bank
from .batches import predict_outputs
from .config import DEFAULT_CACHE_GB
from .data import Examples
from .distributed import pick_device
from .errors import DataError, IntegrityError, UsageError, WrongBankError
from .evaluate import default_max_length, with_bank_head
from .model import TASK_REGRESSION
from .names import profile_filename
from .plm import load_encoder
from .profile import Profile
from .store import Store, is_store
from .xpm import read_xpm


@dataclass
class Request:
    index: int
    profile: str
    text: str
    text_pair: str | None
    id: object = None

    @classmethod
    def from_json(cls, obj: object, index: int, where: str) -> "Request":
        """A request from its JSON object (a line of `predict`'s input or a row of serve's body);
        DataError naming `where` when it is not one."""
        if not isinstance(obj, dict) or not isinstance(obj.get("profile"), str) or not isinstance(obj.get("text"), str):
            raise DataError(f"{where}: needs string fields 'profile' and 'text'")
        pair = obj.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise DataError(f"{where}: 'text_pair' must be a string")
        return cls(index, obj["profile"], obj["text"], pair, obj.get("id"))

    def answered(self, answer: dict) -> dict:
        """The answer record: "id" (when the request had one), "profile", then the answer."""
        return ({"id": self.id} if self.id is not None else {}) | {"profile": self.profile, **answer}


class ProfileSource:
    """Profiles by name from a folder of NAME.xpm files or from an .xps store."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.store = Store(self.path) if self.path.is_file() and is_store(self.path) else None
        self.single = None  # one .xpm file: the only profile served
        if self.store is None and self.path.is_file() and self.path.suffix == ".xpm":
            self.single = read_xpm(self.path)
        elif self.store is None and not self.path.is_dir():
            raise DataError(f"{self.path}: neither a folder of .xpm files, an .xps store nor an .xpm file")

    def get(self, name: str, adapters: bool = False):
        """The profile NAME; with `adapters`, a baseline NAME.safetensors in a folder is found too."""
        if self.store is not None:
            return self.store.get(name)
        if self.single is not None:
            if self.single.name != name:
                raise DataError(f"no profile {name!r} in {self.path} (it holds {self.single.name!r})")
            return self.single
        # NAME.xpm only where NAME is a plain file name: a name is never a path ("../x" stays inside)
        plain = Path(name).name == name and not name.startswith(".")
        if adapters:
            from .baselines import read_adapter

            for stem in ((name,) if plain else ()) + (profile_filename(name),):
                if (self.path / f"{stem}.safetensors").is_file():
                    return read_adapter(self.path / f"{stem}.safetensors")
        path = self.path / f"{name}.xpm"
        if not plain or not path.is_file():
            path = self.path / f"{profile_filename(name)}.xpm"
        if not path.is_file():
            raise DataError(f"no profile {name!r} in {self.path}")
        prof = read_xpm(path)
        if prof.name != name:  # profiles are known by the name stored inside them
            raise DataError(f"{path} holds the profile {prof.name!r}, not {name!r} (was the file renamed?)")
        return prof

    def all(self) -> list[Profile]:
        """Every profile: each NAME.xpm of the folder (sorted by file name), or the store's records."""
        if self.store is not None:
            return list(self.store)
        if self.single is not None:
            return [self.single]
        profiles = [read_xpm(f) for f in sorted(self.path.glob("*.xpm")) if f.is_file()]
        seen: dict[str, int] = {}
        for p in profiles:
            seen[p.name] = seen.get(p.name, 0) + 1
        dup = [n for n, c in seen.items() if c > 1]
        if dup:
            raise DataError(f"{self.path}: two files hold the profile {dup[0]!r}")
        return profiles

    def save(self, profile: Profile, data: bytes) -> Path:
        """Keep `profile` (its .xpm bytes `data`) atomically: as its NAME.xpm in a folder (replacing
        that file), or by rewriting a store with what it holds now plus this profile, under the
        store's lock (atomic.locked), so that profiles another process added meanwhile stay."""
        from .atomic import atomic_write_bytes, locked
        from .store import write_store

        if self.single is not None:
            raise DataError(f"{self.path} is one profile file: serve a folder or a store to add profiles")
        if self.store is not None:
            with locked(self.path):
                with Store(self.path) as now:
                    held = [p for p in now if p.name != profile.name]
                write_store(held + [profile], self.path)
            self.store.close()
            self.store = Store(self.path)
            return self.path
        path = self.path / f"{profile_filename(profile.name)}.xpm"  # a file-system-safe name, never a path
        atomic_write_bytes(path, data)
        return path


class ProfileServer:
    """One frozen encoder and a table of stored profiles; any batch may mix any of them.

    Each row runs with its own profile's Â, B̂ (mixed for the profiles a batch holds, or mixed
    once at start-up where all of them fit in `cache_gb`), LN and head, so there is no
    per-profile reload or regrouping: switching profile costs nothing.
    """

    def __init__(
        self,
        bank: Bank,
        profiles: list[Profile],
        device: str = "auto",
        force: bool = False,
        encoder=None,
        tokenizer=None,
        cuda_graphs: bool = False,
        cache_gb: float = DEFAULT_CACHE_GB,
    ):
        from .routing import RoutedModel

        if not profiles:
            raise DataError("no profiles to serve")
        self.device = pick_device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise UsageError("--cuda-graphs needs a CUDA device")
        self.bank, self.force, self.cache_gb = bank, force, cache_gb
        for p in profiles:
            self.check(p)
        self.profiles = [with_bank_head(bank, p) for p in profiles]
        self.index = {p.name: i for i, p in enumerate(self.profiles)}
        if encoder is None:
            encoder, tokenizer = load_encoder(bank.plm)
        self.tokenizer = tokenizer
        table, heads = self._tables(self.profiles)
        self.model = RoutedModel(
            encoder,
            [s.name for s in bank.sites],
            bank.rank,
            table,
            heads,
            "classification",
            ln=bank.config.ln,
            ln_eps=bank.config.ln_eps,
            scale=bank.config.scale,
        )
        self.model.to(self.device).eval()
        self.cuda_graphs = cuda_graphs
        self._graphed: dict[int, object] = {}  # batch size -> GraphedForward

    def check(self, p: Profile) -> None:
        check_profile(self.bank, p, self.force)

    def _tables(self, profiles: list[Profile]):
        """The frozen mask and head tables of `profiles`, on the device, mixed once if they fit."""
        from .routing import FrozenHeadTable, FrozenMaskTable

        bank = self.bank
        table = FrozenMaskTable(bank.A, bank.B, profiles, bank.config.ln).to(self.device)
        heads = FrozenHeadTable([p.head_weight for p in profiles], [p.head_bias for p in profiles]).to(self.device)
        if self.device.type == "cuda":
            table.cast_bank(torch.bfloat16)
        if table.mixed_bytes() <= self.cache_gb * 2**30:  # every Â, B̂ mixed once: batches gather, not mix
            table.precompute()
            table.release_bank()  # the bank and mask tables are not read again (0.7 GB: bert-base, N=400, bf16)
        return table, heads

    def prepare(self, *added: Profile) -> tuple[list[Profile], object]:
        """What install() swaps in: the profile list with `added` appended (or replacing their
        namesakes) and tables built for it. Slow (mixes every profile once), so it runs outside the
        server's lock; checks each profile against the bank first."""
        profiles, index = list(self.profiles), dict(self.index)
        for profile in added:
            self.check(profile)
            profile = with_bank_head(self.bank, profile)
            i = index.get(profile.name)
            if i is None:
                index[profile.name] = len(profiles)
                profiles.append(profile)
            else:
                profiles[i] = profile  # names keep their row: requests already routed stay valid
        return profiles, self._tables(profiles)

    def install(self, profiles: list[Profile], tables) -> None:
        """Swap in what prepare() built (between batches: the caller holds the batches off)."""
        self.model.table, self.model.heads = tables
        self.profiles = profiles
        self.index = {p.name: i for i, p in enumerate(profiles)}
        self._graphed.clear()  # captured graphs read the old tables' memory

    @property
    def cached(self) -> bool:
        """Whether every profile's Â, B̂ was mixed at start-up (they fit in `cache_gb`)."""
        return self.model.table.cached

    @torch.no_grad()
    def outputs(
        self,
        texts: list[str],
        pairs: list[str] | None,
        profile_idx: list[int],
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> torch.Tensor:
        """Raw head outputs (C_max wide; narrower heads padded with −inf), float32 on CPU, in order."""
        from .batches import collate, compute_context
        from .plm import max_tokens

        limit = max_tokens(self.model.encoder)
        lengths = [min(limit, max_length or default_max_length(self.profiles[i])) for i in profile_idx]
        enc: dict[str, list] = {}
        for length in sorted(set(lengths)):  # each row truncated at its own profile's length
            rows = [j for j, n in enumerate(lengths) if n == length]
            part = self.tokenizer(
                [texts[j] for j in rows],
                [pairs[j] for j in rows] if pairs else None,
                truncation=True,
                max_length=length,
            )
            for key in ("input_ids", "token_type_ids", "attention_mask"):
                if key in part:
                    col = enc.setdefault(key, [None] * len(texts))
                    for j, v in zip(rows, part[key]):
                        col[j] = v
        graphed = self._graphs(batch_size, limit) if self.cuda_graphs else None
        outs = []
        for s in range(0, len(texts), batch_size):
            idx = list(range(s, min(s + batch_size, len(texts))))
            batch = collate(self.tokenizer, enc, idx, self.device)
            pid = torch.tensor(profile_idx[s : s + batch_size])  # stays on the CPU: routing needs no sync
            if graphed is not None:
                outs.append(graphed(batch, pid).float().cpu())
                continue
            with compute_context(self.device):
                outs.append(self.model(**batch, profile_ids=pid).float().cpu())
        return torch.cat(outs)

    def _graphs(self, batch_size: int, max_length: int):
        from .graphs import GraphedForward

        if batch_size not in self._graphed:
            pad = getattr(self.tokenizer, "pad_token_id", None) or 0
            self._graphed[batch_size] = GraphedForward(self.model, batch_size, max_length, self.device, pad_id=pad)
        return self._graphed[batch_size]

    def answer(self, out: torch.Tensor, i: int) -> dict:
        prof = self.profiles[i]
        if prof.task == TASK_REGRESSION:
            value = float(out[0])
            return {"prediction": value if math.isfinite(value) else None}
        logits = out[: prof.num_outputs]
        probs = torch.softmax(logits, -1)
        score = float(probs.max())  # NaN (from huge or non-finite head weights) is not JSON: null
        finite = math.isfinite(score)
        return {
            "prediction": prof.labels[int(logits.argmax())],
            "score": round(score, 6) if finite else None,
            "scores": {lab: round(float(v), 6) for lab, v in zip(prof.labels, probs)} if finite else None,
        }


@dataclass
class Failed:
    """A request line that gets an error record instead of an answer."""

    line: int
    error: str
    id: object = None


def parse_line(no: int, line: str, source: str) -> Request | Failed | None:
    """One line of a request stream: a Request, a Failed record, or None for a blank line."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except RecursionError:
        return Failed(no, f"{source}: line {no}: JSON nested too deeply")
    except ValueError as exc:
        return Failed(no, f"{source}: line {no}: not valid JSON ({exc.msg})")
    try:
        return Request.from_json(obj, no, f"{source}: line {no}")
    except DataError as exc:
        return Failed(no, str(exc), obj.get("id") if isinstance(obj, dict) else None)


def stream_predict(
    bank: Bank,
    profiles: ProfileSource,
    lines,
    source: str,
    write,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "auto",
    cuda_graphs: bool = False,
    cache_gb: float = DEFAULT_CACHE_GB,
    known: list[str] | None = None,
    wait_s: float = 0.02,
) -> dict:
    """Answer a stream of request lines as they come: `write` gets one JSON line per request line,
    in order, as soon as the batch holding it is done (a batch closes at `batch_size` rows or when
    no line arrives for `wait_s`). A line that cannot be answered (bad JSON, missing field, unknown
    profile, a profile of another bank) gets {"line", "error"[, "id"]} and the stream goes on.
    Profiles are loaded when first asked for (`known`: names to load up front). Returns counts and
    the first error."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=4 * batch_size)

    def reader() -> None:
        try:
            for no, line in enumerate(lines, 1):
                item = parse_line(no, line, source)
                if item is not None:
                    q.put(item)
        except Exception as exc:  # an unreadable stream (bad UTF-8 on stdin): reported as the last record
            q.put(Failed(-1, f"{source}: cannot read ({type(exc).__name__}: {exc})".splitlines()[0]))
        q.put(None)

    threading.Thread(target=reader, daemon=True).start()
    state = {"server": None, "failed": {}}  # failed: name -> why it cannot be served
    counts = {"answers": 0, "errors": 0, "first_error": None}

    def load(names: list[str]) -> None:
        server = state["server"]
        new = []
        for n in dict.fromkeys(names):
            if n in state["failed"] or (server is not None and n in server.index):
                continue
            try:
                prof = profiles.get(n)
                check_profile(bank, prof)
                new.append(prof)
            except (DataError, IntegrityError) as exc:
                state["failed"][n] = str(exc)
        if not new:
            return
        if server is None:
            state["server"] = ProfileServer(bank, new, device, cuda_graphs=cuda_graphs, cache_gb=cache_gb)
        else:
            server.install(*server.prepare(*new))

    if known:
        load(known)

    def emit(record: dict) -> None:
        write(json.dumps(record) + "\n")

    def run(chunk: list) -> None:
        load([r.profile for r in chunk if isinstance(r, Request)])
        server = state["server"]
        ok = [r for r in chunk if isinstance(r, Request) and r.profile not in state["failed"]]
        out = None
        if ok:
            pidx = [server.index[r.profile] for r in ok]
            pairs = [r.text_pair or "" for r in ok] if any(r.text_pair for r in ok) else None
            out = dict(
                zip(
                    (id(r) for r in ok),
                    zip(server.outputs([r.text for r in ok], pairs, pidx, batch_size, max_length), pidx),
                )
            )
        for r in chunk:
            if isinstance(r, Failed) or r.profile in state["failed"]:
                msg = r.error if isinstance(r, Failed) else f"{source}: line {r.index}: {state['failed'][r.profile]}"
                counts["errors"] += 1
                counts["first_error"] = counts["first_error"] or msg
                emit(
                    {"line": r.line if isinstance(r, Failed) else r.index, "error": msg}
                    | ({"id": r.id} if r.id is not None else {})
                )
                continue
            o, i = out[id(r)]
            counts["answers"] += 1
            emit(r.answered(server.answer(o, i)))

    done = False
    while not done:
        item = q.get()
        if item is None:
            break
        chunk, deadline = [item], time.monotonic() + wait_s
        while len(chunk) < batch_size:
            try:
                item = q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                done = True
                break
            chunk.append(item)
        run(chunk)
    counts["profiles"] = len(state["server"].profiles) if state["server"] is not None else 0
    return counts


def check_profile(bank: Bank, p: Profile, force: bool = False) -> None:
    """Refuse a profile fitted on another bank (unless forced) or of another shape."""
    if p.bank_hash != bank.bank_hash and not force:
        raise WrongBankError(
            f"profile {p.name!r} was fitted on bank {p.bank_hash[:16]}…, not on this bank ({bank.bank_hash[:16]}…)"
        )
    if p.L != bank.L or p.n != bank.n:
        raise WrongBankError(f"profile {p.name!r}: shape (L, N) does not match the bank")


def evaluate_many(
    bank: Bank,
    profiles: ProfileSource,
    data: Examples,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "auto",
) -> tuple[dict, list]:
    """Per-profile metrics of a multi-profile labelled file (its `profiles` column), and their means.

    Returns (report, predictions): the per-profile metrics and means, and each row's prediction in
    the data's order. X-PEFT profiles run together through one ProfileServer; baselines one by one.
    Macro-F1 is over the classes present in a profile's rows (its truth or its predictions), as for
    one profile (evaluate.evaluate_profile); rows whose label a profile was never fitted on count as
    its errors and in its `unseen_labels`.
    """
    from .evaluate import gold_targets, model_for_profile
    from .metrics import classification_metrics, regression_metrics

    groups = data.by_profile()
    found = {name: profiles.get(name, adapters=True) for name in groups}
    outputs: dict[str, torch.Tensor] = {}  # per profile, its head outputs for its rows
    xpm = [n for n, p in found.items() if isinstance(p, Profile)]
    if xpm:
        server = ProfileServer(bank, [found[n] for n in xpm], device)
        found.update({n: server.profiles[server.index[n]] for n in xpm})  # with the bank's head where shared
        rows = [i for n in xpm for i in groups[n]]
        pidx = [server.index[n] for n in xpm for _ in groups[n]]
        out = server.outputs(
            [data.texts[i] for i in rows],
            [data.pairs[i] for i in rows] if data.pairs else None,
            pidx,
            batch_size,
            max_length,
        )
        for n, part in zip(xpm, out.split([len(groups[n]) for n in xpm])):
            outputs[n] = part[:, : found[n].num_outputs]
    for n, prof in found.items():
        if n not in outputs:  # a baseline: its own model
            model, tok, dev = model_for_profile(bank, prof, device)
            outputs[n] = predict_outputs(
                model, tok, data.subset(groups[n]), batch_size, max_length or default_max_length(prof), dev
            ).reshape(len(groups[n]), -1)
    per: dict[str, dict] = {}
    predictions: list = [None] * len(data)
    for n, prof in found.items():
        y, unseen = gold_targets(prof, data.subset(groups[n]))
        if prof.task == TASK_REGRESSION:
            pred = outputs[n][:, 0].tolist()
            per[n] = regression_metrics(y, pred)
        else:
            idx = outputs[n].argmax(-1).tolist()
            per[n] = classification_metrics(y, idx, prof.num_outputs, present_only=True)
            pred = [(prof.labels or [])[i] for i in idx]
        if unseen:
            per[n]["unseen_labels"] = unseen
        for row, p in zip(groups[n], pred):
            predictions[row] = p
    keys = [k for k in ("accuracy", "macro_f1", "pearson", "spearman") if all(k in m for m in per.values())]
    mean = {k: sum(m[k] for m in per.values()) / len(per) for k in keys}
    rows_total = sum(m["n"] for m in per.values())
    pooled = {k: sum(m[k] * m["n"] for m in per.values()) / rows_total for k in keys if k == "accuracy"}
    unseen_rows = sum(sum(m.get("unseen_labels", {}).values()) for m in per.values())
    report = {
        "profiles": {n: per[n] for n in groups},
        "mean": mean,
        "row_weighted": pooled,
        "count": len(per),
        "rows": rows_total,
        "unseen_label_rows": unseen_rows,
    }
    return report, predictions
