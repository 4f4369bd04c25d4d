"""Serving many profiles from one model: requests name their profile; rows are grouped by
profile, each profile is loaded into the shared model once (its Â, B̂ cached), and answers
come back in request order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

import torch

from .bank import Bank
from .data import Examples
from .errors import DataError
from .evaluate import default_max_length
from .masks import MaskSpec
from .model import TASK_REGRESSION, XPeftModel
from .plm import load_encoder
from .profile import Profile, apply_profile
from .store import Store, is_store
from .train import pick_device, predict_outputs
from .xpm import read_xpm


@dataclass
class Request:
    index: int
    profile: str
    text: str
    text_pair: str | None
    id: object = None


def read_requests(stream: TextIO, source: str) -> list[Request]:
    out = []
    for no, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{source}: line {no}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("profile"), str) or not isinstance(obj.get("text"), str):
            raise DataError(f"{source}: line {no}: needs string fields 'profile' and 'text'")
        out.append(Request(len(out), obj["profile"], obj["text"], obj.get("text_pair"), obj.get("id")))
    if not out:
        raise DataError(f"{source}: no requests")
    return out


class ProfileSource:
    """Profiles by name from a folder of NAME.xpm files or from an .xps store."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.store = Store(self.path) if self.path.is_file() and is_store(self.path) else None
        if self.store is None and not self.path.is_dir():
            raise DataError(f"{self.path}: neither a folder of .xpm files nor an .xps store")

    def get(self, name: str) -> Profile:
        if self.store is not None:
            return self.store.get(name)
        path = self.path / f"{name}.xpm"
        if not path.is_file():
            raise DataError(f"no profile {name!r} in {self.path}")
        return read_xpm(path)


def predict_requests(bank: Bank, profiles: ProfileSource, requests: list[Request], batch_size: int = 64,
                     max_length: int | None = None, device: str = "auto") -> Iterable[dict]:
    """Answers in request order. `max_length` None: each profile's own, as it was fitted (as `eval` does)."""
    dev = pick_device(device)
    encoder, tokenizer = load_encoder(bank.plm)
    model: XPeftModel | None = None
    answers: list[dict | None] = [None] * len(requests)
    groups: dict[str, list[Request]] = {}
    for r in requests:
        groups.setdefault(r.profile, []).append(r)
    for name, rows in groups.items():
        prof = profiles.get(name)
        if prof.head_weight is None:
            raise DataError(f"profile {name!r} has no head section")
        if model is None:
            model = XPeftModel(encoder, bank, prof.num_outputs, task=prof.task,
                               spec=MaskSpec(kind=prof.mask_kind, k=max(prof.k, 1))).to(dev)
        elif model.head.out_features != prof.num_outputs:  # only the head's width differs between profiles
            model.head = torch.nn.Linear(model.head.in_features, prof.num_outputs).to(dev)
        apply_profile(model, prof)
        model.eval()
        ex = Examples([r.text for r in rows], [r.text_pair or "" for r in rows] if any(r.text_pair for r in rows)
                      else None, None, name)
        out = predict_outputs(model, tokenizer, ex, batch_size, max_length or default_max_length(prof), dev)
        for r, o in zip(rows, out):
            if prof.task == TASK_REGRESSION:
                ans = {"prediction": float(o)}
            else:
                probs = torch.softmax(o, -1)
                ans = {"prediction": prof.labels[int(o.argmax())], "score": round(float(probs.max()), 6)}
            answers[r.index] = {"id": r.id, "profile": name, **ans} if r.id is not None else {"profile": name, **ans}
    return answers
