"""formats/vectors: the reader decodes each file to its JSON; the writer reproduces each file from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xpeft_cli.profile import profile_from_json, profile_to_json
from xpeft_cli.store import Store
from xpeft_cli.xpm import encode, read_xpm

VECTORS = Path(__file__).resolve().parents[1] / "formats" / "vectors"
FILES = sorted(VECTORS.glob("*.xpm"))


def test_there_are_vectors():
    assert len(FILES) >= 4 and (VECTORS / "store.xps").is_file()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_reader_decodes_vector(path):
    expected = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert profile_to_json(read_xpm(path)) == expected


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_writer_reproduces_vector(path):
    obj = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert encode(profile_from_json(obj)) == path.read_bytes()


def test_store_vector():
    names = json.loads((VECTORS / "store.json").read_text(encoding="utf-8"))["names"]
    with Store(VECTORS / "store.xps") as s:
        assert [p.name for p in s] == names
        for name in names:
            assert s.get(name).name == name


def test_spec_example_bytes():
    data = (VECTORS / "hard-minimal.xpm").read_bytes()
    assert len(data) == 60 and data[-8:] == bytes.fromhex("8040408065663d7f")
