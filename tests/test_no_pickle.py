"""No pickle anywhere: profiles, banks and checkpoints are safetensors and JSON only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("xpeft_cli", "benchmarks", "examples", "formats") for p in (ROOT / d).rglob("*.py"))


def test_sources_found():
    assert len(SOURCES) > 15


def test_no_pickle_imports_or_unguarded_loads():
    offenders = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve)\b", text, re.M):
            offenders.append(f"{path.name}: imports a pickle module")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
        if re.search(r"allow_pickle\s*=\s*True", text) or re.search(r"np\.load\((?![^)]*allow_pickle=False)", text):
            offenders.append(f"{path.name}: numpy load that may unpickle")
    assert not offenders, offenders


def test_a_pickle_beside_the_hashed_weights_is_never_loaded(tiny_bert, tmp_path, monkeypatch):
    """pytorch_model.bin next to a safetensors file that lacks the weights: transformers may fall back to
    the pickle; xpeft loads only the safetensors it hashed (use_safetensors=True), so torch.load never runs."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from xpeft_cli.errors import ModelNotFoundError
    from xpeft_cli.plm import load_encoder, resolve_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_bert, folder)
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    save_file({"unrelated": torch.zeros(1)}, str(folder / "model.safetensors"))  # no "format" metadata either

    def no_pickle(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", no_pickle)
    try:
        encoder, _ = load_encoder(resolve_model(str(folder)))
    except ModelNotFoundError:
        return  # refused: fine
    # loaded from the (weightless) safetensors: the pickle's weights are not in it
    real = load_file(str(tiny_bert / "model.safetensors"))
    key = next(k for k in real if k.endswith("word_embeddings.weight"))
    assert not torch.equal(dict(encoder.named_parameters())[key.removeprefix("bert.")], real[key])


def test_a_changed_config_is_refused_like_changed_weights(tiny_bert, tmp_path):
    """gelu → relu in config.json changes what the PLM computes: a bank made on the original refuses it."""
    import json
    import shutil

    import pytest

    from xpeft_cli.bank import Bank
    from xpeft_cli.errors import IntegrityError

    from helpers import make_bank

    folder = tmp_path / "m"
    shutil.copytree(tiny_bert, folder)
    make_bank(folder, tmp_path / "bank", n=4)
    assert Bank.load(tmp_path / "bank").n == 4
    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match="config or tokenizer"):
        Bank.load(tmp_path / "bank")
