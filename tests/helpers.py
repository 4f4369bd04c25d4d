"""Test helpers (a module, not conftest): tiny random-weight encoders built from a config and saved like
a real model, a random bank over one, learnable sentiment rows, and the one-line error check."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch

WORDS = (
    "good great fine lovely happy bad awful poor sad ugly the a film movie food team game was is "
    "very quite not really and but today this that it"
).split()


def _vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    return specials + chars + ["##" + c for c in chars] + WORDS


def save_tiny(folder: Path, kind: str = "bert", seed: int = 0, dropout: float = 0.1) -> Path:
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizer,
        DistilBertConfig,
        DistilBertModel,
        RobertaConfig,
        RobertaModel,
    )

    torch.manual_seed(seed)
    vocab = _vocab()
    if kind == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
            )
        )
    elif kind == "roberta":
        model = RobertaModel(
            RobertaConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=70,
                pad_token_id=0,
            )
        )
    elif kind == "distilbert":
        model = DistilBertModel(
            DistilBertConfig(
                vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
            )
        )
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


def one_line_error(err: str) -> None:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("xpeft: error:"), err
    assert "Traceback" not in err
