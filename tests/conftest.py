"""Shared fixtures; the helpers they use live in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpeft_cli.cli.app import main

from helpers import save_tiny, sentiment_rows, write_jsonl


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_bert_nodrop(tmp_path_factory) -> Path:
    """No dropout: a joint multi-profile fit then equals lone fits up to float noise."""
    return save_tiny(tmp_path_factory.mktemp("tiny-bert-nodrop"), "bert", dropout=0.0)


@pytest.fixture(scope="session")
def other_bert(tmp_path_factory) -> Path:
    """Same architecture, other weights: a different PLM as far as banks are concerned."""
    return save_tiny(tmp_path_factory.mktemp("other-bert"), "bert", seed=1)


@pytest.fixture()
def sentiment_files(tmp_path) -> tuple[Path, Path]:
    return (
        write_jsonl(tmp_path / "train.jsonl", sentiment_rows(48, 0)),
        write_jsonl(tmp_path / "test.jsonl", sentiment_rows(20, 1)),
    )


@pytest.fixture()
def cli(capsys, monkeypatch, tmp_path, tiny_bert):
    """Run `xpeft ARGS` in-process in tmp_path, with the tiny model as XPEFT_MODEL."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPEFT_MODEL", str(tiny_bert))
    monkeypatch.delenv("XPEFT_BANK", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run


@pytest.fixture()
def fitted(cli, tmp_path):
    write_jsonl(tmp_path / "alice.jsonl", sentiment_rows(40, 0))
    write_jsonl(tmp_path / "alice_test.jsonl", sentiment_rows(12, 1))
    assert cli("bank", "create", "--random", "-n", "16")[0] == 0
    code, out, err = cli(
        "fit", "--profile", "alice", "--data", "alice.jsonl", "--epochs", "2", "--mask", "hard", "--k", "4", "--quiet"
    )
    assert code == 0, err
    return tmp_path
