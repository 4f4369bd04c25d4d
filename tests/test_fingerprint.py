"""The PLM's config and tokenizer fingerprint (fingerprint.py, formats/bank.md §3.2) hashes what the
files mean: the same model re-saved by another transformers version keeps its banks, a changed
activation, vocabulary or normalisation is refused, and banks recorded with the older byte
fingerprint keep loading while their files are unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xpeft_cli.bank import Bank
from xpeft_cli.errors import IntegrityError
from xpeft_cli.fingerprint import CANONICAL_TAG, canonical_fingerprint, legacy_fingerprint
from xpeft_cli.plm import load_encoder, resolve_model

from helpers import make_bank

# The default PLM's canonical fingerprint: every default bank's hash covers it, so it must never drift.
DEFAULT_PLM_FILES = "c1:1e8ac0aa74fc70ebb95cdc44a83f08ad3293af9c40148ac84f8f4a61b812910e"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _as_another_version_would(folder: Path) -> None:
    """Rewrite config.json and tokenizer_config.json the way another transformers release writes the
    same model: other key order and indentation, its own version, new fields at their defaults, nulls,
    runtime-only tokenizer settings, the Fast class name."""
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "transformers_version": "9.9.9",
        "_name_or_path": "/somewhere/else",
        "architectures": ["BertModel"],
        "dtype": "float32",
        "is_decoder": False,
        "add_cross_attention": False,
        "bos_token_id": None,
        "classifier_dropout": None,
        "tie_word_embeddings": True,
        "use_cache": True,
        "position_embedding_type": "absolute",
    }
    (folder / "config.json").write_text(json.dumps(dict(reversed(list(config.items()))), indent=4))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok |= {"tokenizer_class": "BertTokenizerFast", "padding_side": "right", "max_length": 128, "is_local": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))


def test_a_re_saved_config_keeps_the_bank(tiny_bert, tmp_path):
    folder = _copy(tiny_bert, tmp_path / "m")
    bank = make_bank(folder, tmp_path / "bank", n=4)
    assert bank.plm_files.startswith(CANONICAL_TAG)
    _as_another_version_would(folder)
    again = Bank.load(tmp_path / "bank")  # no "wrong bank"
    assert again.bank_hash == bank.bank_hash
    assert make_bank(folder, tmp_path / "bank2", n=4).bank_hash == bank.bank_hash  # and a new bank is the same bank


def test_the_installed_transformers_re_saving_the_default_plm_keeps_its_banks(tmp_path):
    """The real case: the default PLM's config and tokenizer saved again by the transformers installed here
    (which writes other fields, another tokenizer.json layout, no vocab.txt) are the same PLM."""
    from transformers import AutoConfig, AutoTokenizer

    plm = resolve_model(None)
    assert plm.files == DEFAULT_PLM_FILES
    folder = tmp_path / "resaved"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(plm.path / "model.safetensors")
    AutoConfig.from_pretrained(plm.path).save_pretrained(folder)
    AutoTokenizer.from_pretrained(plm.path).save_pretrained(folder)
    assert (folder / "config.json").read_bytes() != (plm.path / "config.json").read_bytes()
    resaved = resolve_model(str(folder))
    assert resaved.files == plm.files
    encoder, _ = load_encoder(plm)
    bank = Bank.create_random(plm, encoder, n=2, seed=0, targets="attention.output.dense")
    bank.save(tmp_path / "bank")
    assert Bank.load(tmp_path / "bank", model=str(folder)).bank_hash == bank.bank_hash


@pytest.mark.parametrize(
    "change",
    ["activation", "layers", "vocabulary", "lower-case", "special token"],
)
def test_what_changes_the_computation_is_refused(tiny_bert, tmp_path, change):
    folder = _copy(tiny_bert, tmp_path / "m")
    before = canonical_fingerprint(folder)
    make_bank(folder, tmp_path / "bank", n=4)
    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    if change == "activation":
        config["hidden_act"] = "relu"
    elif change == "layers":
        config["num_hidden_layers"] = 1
    elif change == "vocabulary":
        words = (folder / "vocab.txt").read_text().splitlines()
        words[-1], words[-2] = words[-2], words[-1]
        (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    elif change == "lower-case":
        tok["do_lower_case"] = False
    else:
        tok["unk_token"] = "[MASK]"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    assert canonical_fingerprint(folder) != before
    with pytest.raises(IntegrityError, match="config or tokenizer"):
        Bank.load(tmp_path / "bank")


def test_a_tokenizer_json_is_read_for_its_rules_not_its_layout(tiny_bert, tmp_path):
    """tokenizer.json re-indented with another truncation setting is the same tokenizer; another
    normaliser is not."""
    from transformers import AutoTokenizer

    folder = _copy(tiny_bert, tmp_path / "m")
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)  # writes tokenizer.json here
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("this transformers wrote no tokenizer.json")
    before = canonical_fingerprint(folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["truncation"] = {"max_length": 7, "strategy": "LongestFirst", "stride": 0}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert canonical_fingerprint(folder) == before
    data["normalizer"] = {"type": "Lowercase"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert canonical_fingerprint(folder) != before


def test_banks_with_the_older_byte_fingerprint_keep_loading(tiny_bert, tmp_path):
    """A manifest of xpeft 0.1 recorded a bare 64-hex byte fingerprint: it is checked against the files'
    bytes, as it was then."""
    folder = _copy(tiny_bert, tmp_path / "m")
    plm = resolve_model(str(folder))
    encoder, _ = load_encoder(plm)
    old = Bank.create_random(plm, encoder, n=4, seed=0)
    old.plm_files = legacy_fingerprint(folder)
    old.bank_hash = old.compute_hash()
    old.save(tmp_path / "bank")
    manifest = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert len(manifest["plm"]["files_fingerprint"]) == 64
    assert Bank.load(tmp_path / "bank").bank_hash == old.bank_hash
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")  # other bytes
    with pytest.raises(IntegrityError, match="config or tokenizer"):
        Bank.load(tmp_path / "bank")


def test_an_unreadable_config_is_a_one_line_refusal(tiny_bert, tmp_path):
    from xpeft_cli.errors import ModelNotFoundError

    folder = _copy(tiny_bert, tmp_path / "m")
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="tokenizer_config.json is not readable JSON"):
        resolve_model(str(folder))
