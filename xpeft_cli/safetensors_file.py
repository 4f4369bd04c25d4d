"""Reading a safetensors file whole, with damage reported as an IntegrityError (one line)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import IntegrityError


def read(path: str | Path, prefix: str = "") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors whose names start with `prefix`) of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise IntegrityError(f"{path}: not a readable safetensors file ({first})") from None
