"""A slice of benchmarks/fuzz_inputs.py that CI runs: stores, bank manifests, fit checkpoints and data
files, mutated blindly and by structure (xpeft_cli.fuzz), each read as the CLI reads it. A case must
read or raise one of xpeft's errors with a one-line message; nothing else may escape."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpeft_cli.bank import Bank
from xpeft_cli.checkpoint import profile_from_checkpoint
from xpeft_cli.config import FitConfig
from xpeft_cli.data import Examples, encode_labels, infer_task, label_names, load_examples
from xpeft_cli.errors import XpeftError
from xpeft_cli.fuzz import blind, checkpoint_structured, data_structured, manifest_structured, store_structured
from xpeft_cli.store import Store, write_store
from xpeft_cli.train import fit_profile

from helpers import make_bank, sentiment_rows

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def seeds(tiny_bert, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz-seeds")
    bank = make_bank(tiny_bert, root / "bank", n=8)
    rows = sentiment_rows(24, 0)
    ex = Examples([r["text"] for r in rows], None, [r["label"] for r in rows], "seed")
    cfg = FitConfig(epochs=1, batch_size=8, device="cpu", val_fraction=0)
    fit = fit_profile(bank, ex, "alice", cfg, checkpoint_path=root / "a.ckpt.safetensors", checkpoint_every=3)
    other = fit_profile(bank, ex, "bob", FitConfig(epochs=1, batch_size=12, device="cpu", val_fraction=0, seed=1))
    write_store([fit.profile, other.profile], root / "s.xps")
    return {
        "model": str(tiny_bert),
        "store": (root / "s.xps").read_bytes(),
        "manifest": (root / "bank" / "bank.json").read_bytes(),
        "checkpoint": (root / "a.ckpt.safetensors").read_bytes(),
        "jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(),
        "csv": ("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)).encode(),
    }


def _refused_or_read(read) -> None:
    try:
        read()
    except XpeftError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), str(exc)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), structured=st.booleans())
def test_mutated_stores(seeds, tmp_path_factory, seed, structured):
    rng = random.Random(seed)
    data = store_structured(seeds["store"], rng) if structured else blind(seeds["store"], rng)
    path = tmp_path_factory.mktemp("store") / "s.xps"
    path.write_bytes(data)

    def read():
        with Store(path) as s:
            for p in s:
                s.get(p.name)

    _refused_or_read(read)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), structured=st.booleans())
def test_mutated_bank_manifests(seeds, tmp_path_factory, seed, structured):
    rng = random.Random(seed)
    data = manifest_structured(seeds["manifest"], rng) if structured else blind(seeds["manifest"], rng)
    folder = tmp_path_factory.mktemp("bank")
    (folder / "bank.json").write_bytes(data)
    _refused_or_read(lambda: Bank.load(folder, model=seeds["model"]))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), structured=st.booleans())
def test_mutated_checkpoints(seeds, tmp_path_factory, seed, structured):
    rng = random.Random(seed)
    data = checkpoint_structured(seeds["checkpoint"], rng) if structured else blind(seeds["checkpoint"], rng)
    path = tmp_path_factory.mktemp("ckpt") / "a.ckpt.safetensors"
    path.write_bytes(data)
    _refused_or_read(lambda: profile_from_checkpoint(path))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), suffix=st.sampled_from(["jsonl", "csv"]))
def test_mutated_data_files(seeds, tmp_path_factory, seed, suffix):
    rng = random.Random(seed)
    data = data_structured(seeds[suffix], rng, "." + suffix)
    path = tmp_path_factory.mktemp("data") / f"d.{suffix}"
    path.write_bytes(data)

    def read():
        ex = load_examples(path)
        task = infer_task(ex.labels)
        encode_labels(ex, task, label_names(ex.labels) if task == "classification" else None)

    _refused_or_read(read)


def test_forged_size_costs_nothing(seeds, tmp_path):
    """A 1 KB manifest claiming sites the PLM does not have, or a rank above a site's width, is refused
    before any adapter is generated (by the site check against the PLM's weight headers)."""
    for forge in (
        {"rank": 30000},
        {"sites": [{"name": "encoder.layer.0.output.dense", "d_in": 1 << 19, "d_out": 1 << 19}]},
    ):
        m = json.loads(seeds["manifest"]) | forge
        (tmp_path / "bank.json").write_text(json.dumps(m))
        with pytest.raises(XpeftError, match="width|not a Linear"):
            Bank.load(tmp_path, model=seeds["model"])
