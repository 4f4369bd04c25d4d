"""What a PLM's configuration and tokenizer mean, as one hash (formats/bank.md §3.2).

A bank records this fingerprint so that a changed activation, layer count or vocabulary is refused
like changed weights. It hashes a canonical form, not the files' bytes: the same model re-saved by
another transformers version (other key order, `transformers_version`, new fields at their default
values, `tokenizer.json` indented differently, no `vocab.txt` beside it) keeps its fingerprint.
Reading it needs only the standard library: no transformers import, so it costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# The tag of the canonical scheme; a recorded value without it is the older byte fingerprint.
CANONICAL_TAG = "c1:"

# config.json keys that never change what AutoModel's encoder computes: bookkeeping, how it was
# loaded or saved, task-head and generation settings (xpeft's heads are its own), output switches.
IGNORED_CONFIG_KEYS = frozenset(
    {
        # bookkeeping and loading
        "transformers_version", "_name_or_path", "name_or_path", "architectures", "_commit_hash",
        "torch_dtype", "dtype", "use_bfloat16", "_attn_implementation", "_attn_implementation_autoset",
        "attn_implementation", "transformers.js_config", "gradient_checkpointing", "torchscript",
        "tf_legacy_loss", "tokenizer_class", "task_specific_params", "prefix",
        # outputs and caching (an encoder's forward gives the same hidden states)
        "use_cache", "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward",
        # task heads, which AutoModel does not build
        "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "classifier_dropout",
        "tie_word_embeddings",
        # generation
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
        "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens", "decoder_start_token_id", "bos_token_id",
        "eos_token_id", "sep_token_id",
    }
)  # fmt: skip

# Keys a newer transformers writes out at their default; at that value they are dropped (any other
# value changes the model and stays). A null value is dropped everywhere: it means "not set".
DEFAULT_CONFIG_VALUES: dict[str, Any] = {
    "is_decoder": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
    "tie_encoder_decoder": False,
    "pruned_heads": {},
    "position_embedding_type": "absolute",  # transformers 5 no longer writes it: absent means absolute
}

# tokenizer_config.json keys that change how text becomes ids (the rest are runtime defaults such as
# padding side, truncation length or decoding cleanup, which every xpeft call sets itself).
TOKENIZER_SETTINGS = (
    "do_lower_case", "strip_accents", "tokenize_chinese_chars", "do_basic_tokenize", "never_split",
    "add_prefix_space", "trim_offsets", "add_bos_token", "add_eos_token", "legacy", "split_special_tokens",
    "tokenizer_class",
)  # fmt: skip
SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
    "additional_special_tokens",
)  # fmt: skip
# tokenizer.json's parts that are runtime settings, not rules (padding, truncation) or decode-only
IGNORED_TOKENIZER_JSON = frozenset({"version", "truncation", "padding", "decoder"})
SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")

# The files the byte fingerprint of banks made before the canonical one (xpeft 0.1) hashed, in order.
LEGACY_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
)  # fmt: skip


class FingerprintError(ValueError):
    """A config or tokenizer file that cannot be read as what its name says."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FingerprintError(f"{path.name} is not readable JSON ({exc.__class__.__name__})") from None


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def canonical_config(config: dict) -> dict:
    """config.json as what it means: ignored keys, nulls and default-valued new keys dropped."""
    out = {}
    for key, value in config.items():
        if key in IGNORED_CONFIG_KEYS or value is None:
            continue
        if key in DEFAULT_CONFIG_VALUES and value == DEFAULT_CONFIG_VALUES[key]:
            continue
        out[key] = _without_nulls(value)
    return out


def _token_content(token: Any) -> Any:
    """A special token as written (a string, or an AddedToken dict): its text."""
    if isinstance(token, dict) and "content" in token:
        return token["content"]
    if isinstance(token, list):
        return [_token_content(t) for t in token]
    return token


def _vocabulary(folder: Path, tokenizer_json: dict | None) -> dict:
    """The tokens by id and the merges, from tokenizer.json when the folder has one (what a fast
    tokenizer reads), else from vocab.txt / vocab.json / merges.txt; a sentencepiece model by bytes."""
    out: dict[str, Any] = {}
    model = tokenizer_json.get("model") if isinstance(tokenizer_json, dict) else None
    if isinstance(model, dict):
        vocab = model.get("vocab")
        if isinstance(vocab, dict):  # WordPiece, BPE, WordLevel: token -> id
            vocab = sorted(([int(i), t] for t, i in vocab.items()), key=lambda p: p[0])
        if vocab is not None:
            out["vocab"] = _sha256(_canonical_json(vocab))
        merges = model.get("merges")
        if merges:  # older tokenizers write "a b", newer ["a", "b"]
            out["merges"] = _sha256(_canonical_json([" ".join(m) if isinstance(m, list) else m for m in merges]))
    else:
        if (folder / "vocab.txt").is_file():
            lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            out["vocab"] = _sha256(_canonical_json([[i, t.rstrip("\r")] for i, t in enumerate(lines)]))
        elif (folder / "vocab.json").is_file():
            vocab = _read_json(folder / "vocab.json")
            if not isinstance(vocab, dict):
                raise FingerprintError("vocab.json is not an object of token ids")
            out["vocab"] = _sha256(_canonical_json(sorted(([int(i), t] for t, i in vocab.items()), key=lambda p: p[0])))
        if (folder / "merges.txt").is_file():
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            out["merges"] = _sha256(_canonical_json([m for m in lines if m and not m.startswith("#version")]))
    for name in SENTENCEPIECE_FILES:
        if (folder / name).is_file():
            out["sentencepiece"] = _sha256((folder / name).read_bytes())
    return out


def canonical_tokenizer(folder: Path) -> dict:
    """The tokenizer as its rules: vocabulary and merges (hashed), the normaliser, pre-tokeniser,
    post-processor, model settings and added tokens of tokenizer.json, and the settings and special
    tokens of tokenizer_config.json / special_tokens_map.json that change how text becomes ids."""
    tokenizer_json = None
    if (folder / "tokenizer.json").is_file():
        tokenizer_json = _read_json(folder / "tokenizer.json")
        if not isinstance(tokenizer_json, dict):
            raise FingerprintError("tokenizer.json is not an object")
    try:
        out: dict[str, Any] = _vocabulary(folder, tokenizer_json)
    except (OSError, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise FingerprintError(f"unreadable vocabulary ({exc.__class__.__name__})") from None
    if tokenizer_json is not None:
        for key, value in tokenizer_json.items():
            if key in IGNORED_TOKENIZER_JSON:
                continue
            if key == "model" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in ("vocab", "merges")}
            if key == "added_tokens" and isinstance(value, list):
                value = sorted(value, key=lambda t: t.get("id", 0) if isinstance(t, dict) else 0)
            out[key] = _without_nulls(value)
    if (folder / "added_tokens.json").is_file():
        out["added_tokens_json"] = _read_json(folder / "added_tokens.json")
    special: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config's entries win
        if not (folder / name).is_file():
            continue
        data = _read_json(folder / name)
        if not isinstance(data, dict):
            raise FingerprintError(f"{name} is not an object")
        special.update({k: _token_content(data[k]) for k in SPECIAL_TOKENS if data.get(k) is not None})
        if name == "tokenizer_config.json":
            settings = {k: data[k] for k in TOKENIZER_SETTINGS if data.get(k) is not None}
    if isinstance(settings.get("tokenizer_class"), str):  # BertTokenizerFast and BertTokenizer load alike
        settings["tokenizer_class"] = settings["tokenizer_class"].removesuffix("Fast")
    if special.get("additional_special_tokens") == []:
        del special["additional_special_tokens"]
    out["special_tokens"] = special
    out["settings"] = settings
    return out


def canonical_fingerprint(folder: Path) -> str:
    """`c1:` + SHA-256 of {"config": canonical_config, "tokenizer": canonical_tokenizer} as canonical JSON."""
    config: dict = {}
    if (folder / "config.json").is_file():
        data = _read_json(folder / "config.json")
        if not isinstance(data, dict):
            raise FingerprintError("config.json is not an object")
        config = canonical_config(data)
    form = {"format": "xpeft-plm-files/2", "config": config, "tokenizer": canonical_tokenizer(folder)}
    return CANONICAL_TAG + _sha256(_canonical_json(form))


def legacy_fingerprint(folder: Path) -> str:
    """The byte fingerprint that banks made before the canonical one recorded (64 hex digits): SHA-256
    of one 'name sha256' line per file of LEGACY_FILES that the folder holds."""
    lines = "".join(f"{n} {_sha256((folder / n).read_bytes())}\n" for n in LEGACY_FILES if (folder / n).is_file())
    return _sha256(lines.encode())


def matches(folder: Path, recorded: str, current: str) -> bool:
    """Whether the PLM in `folder` (whose canonical fingerprint is `current`) is the one a bank recorded:
    a canonical value is compared as such; an older byte value against the files' bytes."""
    if recorded.startswith(CANONICAL_TAG):
        return recorded == current
    return recorded == legacy_fingerprint(folder)
