"""Shared fixtures: tiny random-weight encoders built from a config, saved like a real model."""
from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
import torch

from xpeft_cli.cli.app import main

WORDS = ("good great fine lovely happy bad awful poor sad ugly the a film movie food team game was is "
         "very quite not really and but today this that it").split()


def _vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    return specials + chars + ["##" + c for c in chars] + WORDS


def save_tiny(folder: Path, kind: str = "bert", seed: int = 0, dropout: float = 0.1) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer, DistilBertConfig, DistilBertModel, \
        RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    vocab = _vocab()
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    elif kind == "roberta":
        model = RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64,
                                           max_position_embeddings=70, pad_token_id=0))
    elif kind == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2,
                                                 hidden_dim=64, max_position_embeddings=64))
    else:
        raise ValueError(kind)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    return folder


def make_bank(model_dir: Path, folder: Path, n: int, seed: int = 0):
    """A random bank over a saved model, written to `folder`."""
    from xpeft_cli.bank import Bank
    from xpeft_cli.plm import load_encoder, resolve_model

    plm = resolve_model(str(model_dir))
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=n, seed=seed)
    bank.save(folder)
    return bank


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


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Short texts whose label is carried by one word: learnable by a tiny random model."""
    rng = random.Random(seed)
    pos, neg = ["good", "great", "lovely", "happy", "fine"], ["bad", "awful", "poor", "sad", "ugly"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(pos if label == "pos" else neg)
        subj = rng.choice(["the film", "the food", "the team", "this game", "that movie"])
        rows.append({"text": f"{subj} was {rng.choice(['very', 'quite', 'really'])} {word} today", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def sentiment_files(tmp_path) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "train.jsonl", sentiment_rows(48, 0)),
            write_jsonl(tmp_path / "test.jsonl", sentiment_rows(20, 1)))


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


def _one_line_error(err: str) -> None:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("xpeft: error:"), err
    assert "Traceback" not in err


@pytest.fixture()
def fitted(cli, tmp_path):
    write_jsonl(tmp_path / "alice.jsonl", sentiment_rows(40, 0))
    write_jsonl(tmp_path / "alice_test.jsonl", sentiment_rows(12, 1))
    assert cli("bank", "create", "--random", "-n", "16")[0] == 0
    code, out, err = cli("fit", "--profile", "alice", "--data", "alice.jsonl", "--epochs", "2", "--mask", "hard", "--k", "4",
                         "--quiet")
    assert code == 0, err
    return tmp_path

