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


# The tiny encoders' config.json, written as they stand: no save_pretrained, so their bytes (and the
# bank hashes over them) are the same whatever transformers version is installed.
TINY_CONFIGS = {
    "bert": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    },
    "roberta": {
        "model_type": "roberta",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 70,
        "type_vocab_size": 1,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 3,
    },
    "distilbert": {
        "model_type": "distilbert",
        "dim": 32,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dim": 64,
        "max_position_embeddings": 64,
        "activation": "gelu",
        "pad_token_id": 0,
    },
}
DROPOUT_KEYS = {
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "distilbert": ("dropout", "attention_dropout"),
}


def save_tiny(folder: Path, kind: str = "bert", seed: int = 0, dropout: float = 0.1) -> Path:
    """A tiny random encoder saved like a real model: config.json, model.safetensors, vocab.txt and
    tokenizer_config.json. Every byte is a function of (kind, seed, dropout) alone: the config and
    tokenizer files are written here, and the weights come from xpeft's portable generator (rng.py)
    with the parameter names and shapes transformers gives the architecture."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    from xpeft_cli import rng

    if kind not in TINY_CONFIGS:
        raise ValueError(kind)
    vocab = _vocab()
    config = dict(TINY_CONFIGS[kind], vocab_size=len(vocab))
    config.update({key: dropout for key in DROPOUT_KEYS[kind]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shapes = AutoModel.from_config(AutoConfig.from_pretrained(folder)).state_dict()
    tensors = {}
    for i, name in enumerate(sorted(shapes)):
        like = shapes[name]
        if not like.is_floating_point():  # an integer buffer (position ids): as the model makes it
            tensors[name] = like.clone()
        elif like.dim() == 1:  # LayerNorm weights 1, every bias 0, as BERT initialises them
            tensors[name] = (
                torch.ones_like(like) if "norm" in name.lower() and name.endswith("weight") else torch.zeros_like(like)
            )
        else:  # BERT's initializer_range 0.02 as a standard deviation: uniform on ±0.02·√3
            block = rng.uniform_block(seed, i, 0, range(1), like.numel(), 0.02 * 3**0.5)
            tensors[name] = torch.from_numpy(block[0].reshape(tuple(like.shape)).copy())
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "vocab.txt").write_text("".join(w + "\n" for w in vocab))
    tokenizer_config = {"do_lower_case": True, "model_max_length": 64, "tokenizer_class": "BertTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
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
