"""Banks: the portable generator, hashing, regeneration, tamper and model checks, wiring into encoders."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from xpeft_cli import rng
from xpeft_cli.bank import Bank, find_sites
from xpeft_cli.errors import IntegrityError, ModelNotFoundError, UsageError
from xpeft_cli.masks import MaskSpec
from xpeft_cli.model import XPeftModel
from xpeft_cli.plm import load_encoder, resolve_model

from helpers import make_bank, save_tiny


def _spec_value(seed, site, tensor, adapter, e, bound):
    """formats/bank.md §generator, written out with plain Python integers and floats."""
    M = (1 << 64) - 1
    g = 0x9E3779B97F4A7C15

    def mix(x):
        x &= M
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & M
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & M
        return x ^ (x >> 31)

    k = mix(seed + g)
    for v in (site, tensor, adapter):
        k = mix(k ^ ((v + g) & M))
    h = mix(k + (e + 1) * g)
    m = h >> 40
    return float(np.float32(((2 * m + 1 - 2**24) / 2**24) * bound))


def test_generator_matches_spec_and_golden_values():
    block = rng.uniform_block(42, 3, 1, range(7, 9), 4, 1.0)
    for i, adapter in enumerate(range(7, 9)):
        for e in range(4):
            assert block[i, e] == _spec_value(42, 3, 1, adapter, e, 1.0)
    # pinned bytes: a change here means every random bank ever made changes
    assert struct.pack("<f", block[0, 0]).hex() == "b466293e"
    assert rng.stream_key(0, 0, 0, 0) == 0xC213C59A64D9CF09


def test_any_adapter_can_be_made_alone():
    together = rng.uniform_block(5, 1, 0, range(0, 6), 10, 0.5)
    alone = rng.uniform_block(5, 1, 0, range(4, 5), 10, 0.5)
    assert np.array_equal(together[4], alone[0])


def test_uniform_statistics():
    x = rng.uniform_block(0, 0, 0, range(50), 2000, 1.0)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 3**-0.5) < 0.01
    assert x.min() > -1 and x.max() < 1


@pytest.fixture()
def tiny_bank(tiny_bert, tmp_path):
    return make_bank(tiny_bert, tmp_path / "bank", n=20, seed=3), tmp_path / "bank"


def test_random_bank_defaults(tiny_bank):
    bank, folder = tiny_bank
    assert bank.rank == 32 // 16 and bank.L == 4  # both output projections of each of the 2 blocks
    assert [s.name for s in bank.sites] == [
        f"encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.output.dense", "output.dense")
    ]
    assert not list(folder.glob("adapters*.safetensors"))  # nothing big on disk
    m = json.loads((folder / "bank.json").read_text())
    assert m["bank_hash"] == bank.bank_hash and m["generator"]["seed"] == 3


def test_regenerated_in_new_process_has_same_hash(tiny_bank):
    bank, folder = tiny_bank
    code = f"from xpeft_cli.bank import Bank; print(Bank.load({str(folder)!r}).bank_hash)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == bank.bank_hash


def test_materialized_copy_has_same_hash(tiny_bank, tmp_path):
    bank, _ = tiny_bank
    bank.save(tmp_path / "mat", materialize=True)
    loaded = Bank.load(tmp_path / "mat")
    assert loaded.bank_hash == bank.bank_hash
    assert all(torch.equal(a, b) for a, b in zip(loaded.A, bank.A))


def test_tampered_manifest_is_refused(tiny_bank):
    _, folder = tiny_bank
    m = json.loads((folder / "bank.json").read_text())
    m["generator"]["seed"] = 4  # regenerates other tensors than the hash recorded
    (folder / "bank.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="does not match its recorded hash"):
        Bank.load(folder)


def test_tampered_tensors_are_refused(tiny_bank, tmp_path):
    from safetensors.torch import load_file, save_file

    bank, _ = tiny_bank
    bank.save(tmp_path / "mat", materialize=True)
    (tensors,) = (tmp_path / "mat").glob("adapters-*.safetensors")  # named by content: adapters-<hash16>
    assert tensors.name == f"adapters-{bank.bank_hash[:16]}.safetensors"
    t = load_file(str(tensors))
    t["sites.1.B"][0, 0, 0] += 1e-3
    save_file(t, str(tensors))
    with pytest.raises(IntegrityError):
        Bank.load(tmp_path / "mat")


def test_other_model_is_refused(tiny_bank, other_bert):
    _, folder = tiny_bank
    with pytest.raises(IntegrityError, match="not the PLM this bank was made for"):
        Bank.load(folder, model=str(other_bert))


def test_missing_model(tmp_path):
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(tmp_path / "nowhere"))


def test_bad_targets_and_n(tiny_bert):
    plm = resolve_model(str(tiny_bert))
    enc, _ = load_encoder(plm)
    with pytest.raises(UsageError):
        find_sites(enc, "no.such.module")
    with pytest.raises(UsageError):
        Bank.create_random(plm, enc, n=0)


@pytest.mark.parametrize(
    "kind,suffix",
    [("bert", "output.dense"), ("roberta", "output.dense"), ("distilbert", ("attention.out_lin", "ffn.lin2"))],
)
def test_wires_into_encoder_families(kind, suffix, tmp_path):
    folder = save_tiny(tmp_path / kind, kind)
    plm = resolve_model(str(folder))
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=8, rank=4)
    assert all(s.name.endswith(suffix) for s in bank.sites) and len(bank.sites) == 4
    ids = torch.randint(5, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        base = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    model = XPeftModel(enc, bank, 3, spec=MaskSpec("hard", k=3)).eval()
    with torch.no_grad():
        adapted = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model(ids, mask)
    assert logits.shape == (2, 3)
    assert not torch.allclose(base, adapted)  # the sites are really in the forward path
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("logits_" in n) or (".ln." in n) or n.startswith("head.") for n in trainable)
    assert model.trainable_parameter_count() == 2 * (8 + 4) * 4  # Table 1's 2(N+b)L, L = 4 sites


def test_regenerate_uses_no_stored_tensors(tiny_bank, tmp_path):
    bank, folder = tiny_bank
    shutil.copytree(folder, tmp_path / "copy")
    assert Bank.load(tmp_path / "copy").bank_hash == bank.bank_hash


def test_streamed_hash_equals_the_hash_of_the_tensors(tiny_bank):
    bank, _ = tiny_bank
    assert bank.streamed_hash(chunk_bytes=1000) == bank.compute_hash() == bank.bank_hash


def test_a_forged_large_manifest_is_refused_before_regeneration(tiny_bank, monkeypatch):
    """A 1 KB bank.json claiming many adapters must not cost the regeneration of them all to refuse."""
    import xpeft_cli.bank as bank_mod
    from xpeft_cli.errors import IntegrityError

    _, folder = tiny_bank
    m = json.loads((folder / "bank.json").read_text())
    m["n_adapters"] = 60000
    (folder / "bank.json").write_text(json.dumps(m))
    monkeypatch.setattr(bank_mod, "STREAM_ABOVE", 1 << 20)  # this tiny bank's 60,000 adapters: 123 MB

    def never(*a, **k):
        raise AssertionError("regenerated a bank whose hash does not match")

    real = bank_mod.regenerate
    monkeypatch.setattr(bank_mod, "regenerate", never)
    with pytest.raises(IntegrityError, match="checked before regenerating"):
        Bank.load(folder)
    monkeypatch.setattr(bank_mod, "regenerate", real)  # out-of-range fields are refused before any of it
    for forged in ({"n_adapters": 70000}, {"rank": 0}, {"sites": []}, {"generator": {**m["generator"], "seed": "x"}}):
        (folder / "bank.json").write_text(
            json.dumps(m | forged | ({} if "n_adapters" in forged else {"n_adapters": 20}))
        )
        with pytest.raises(IntegrityError):
            Bank.load(folder)
