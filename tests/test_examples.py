"""The example shell pipelines run as documented (tiny model; exit codes and outputs checked)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import sentiment_rows, write_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.skipif(
    shutil.which("xpeft") is None or shutil.which("jq") is None, reason="needs the installed xpeft command and jq"
)


def test_fit_folder_and_verify_pipeline(tmp_path, tiny_bert):
    env = dict(os.environ, XPEFT_MODEL=str(tiny_bert))
    run = lambda *a: subprocess.run(["bash", *map(str, a)], cwd=tmp_path, env=env, capture_output=True, text=True)
    subprocess.run(
        ["xpeft", "bank", "create", "--random", "-n", "16"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    (tmp_path / "authors").mkdir()
    write_jsonl(tmp_path / "authors" / "ann.jsonl", sentiment_rows(20, 0))
    write_jsonl(tmp_path / "authors" / "ben.jsonl", sentiment_rows(20, 1))
    (tmp_path / "authors" / "cy.jsonl").write_text('{"text": "a row without a label"}\n')
    r = run(EXAMPLES / "fit_folder.sh", "authors", "profs", "--epochs", "1", "--k", "4")
    assert r.returncode == 1 and "fitted 2 profile(s)" in r.stdout and "cy (bad data)" in r.stderr
    data = (tmp_path / "profs" / "ann.xpm").read_bytes()
    (tmp_path / "profs" / "zz-broken.xpm").write_bytes(data[:40])
    r = run(EXAMPLES / "verify_and_report.sh", "profs", "bank")
    assert r.returncode == 0, r.stderr
    assert "zz-broken.xpm: not a valid .xpm" in r.stderr and "packed 2 profiles" in r.stdout
    assert [l.split("\t")[0] for l in r.stdout.splitlines()[1:]] == ["ann", "ben"]
    assert (tmp_path / "profiles.xps").is_file()
