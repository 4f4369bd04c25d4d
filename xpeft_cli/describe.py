"""What a profile file holds, as one JSON-ready dict: what `xpeft inspect --json` prints and what
`xpeft serve` answers at /v1/profiles/{name}. In the core so the library can do what the CLI does."""

from __future__ import annotations

from pathlib import Path

from .profile import Profile
from .xpm import Decoded, decode, encode, read_xpm_full

MAX_LISTED = 65536  # adapter indices listed per hard profile (k·L); beyond that, only counts


def describe_decoded(dec: Decoded) -> dict:
    """A decoded .xpm: header, masks, labels, sections; for hard masks the chosen adapters, for sign
    masks how many adapters join with + per site (the rest join with −)."""
    p = dec.profile
    info = {
        "version": f"{dec.version[0]}.{dec.version[1]}",
        "checksum": "ok",
        "profile": p.name,
        "mask": p.mask_kind,
        "n": p.n,
        "L": p.L,
        "k": p.k,
        "b": None if p.ln_weight is None else int(p.ln_weight.shape[1]),
        "task": p.task if p.head_weight is not None else None,
        "classes": p.num_outputs if p.task == "classification" else None,
        "labels": p.labels,
        "bank_hash": p.bank_hash,
        "sections": dec.sizes,
        "skipped_sections": dec.skipped_sections,
        "meta": p.meta,
    }
    if p.mask_kind == "hard" and p.k * p.L <= MAX_LISTED:
        sel_a, sel_b = p.selected()
        info["selected"] = [{"site": l, "A": sel_a[l], "B": sel_b[l]} for l in range(p.L)]
    elif p.mask_kind == "hard":  # bits stay bits: a 2 MB file must not become gigabytes of Python lists
        info["selected"] = None
        info["selected_omitted"] = f"k·L = {p.k * p.L:,} indices; 'xpeft unpack --npy' writes the masks as arrays"
    elif p.mask_kind == "sign":
        info["plus"] = [{"site": l, "A": int(p.mask_a[l].sum()), "B": int(p.mask_b[l].sum())} for l in range(p.L)]
    return info


def describe_profile(p: Profile) -> dict:
    """A profile held in memory, described as the .xpm it is written as ("bytes": that file's size)."""
    data = encode(p)
    return {"bytes": len(data)} | describe_decoded(decode(data))


def describe_adapter(path: Path) -> dict:
    """A baseline (single-adapter / head-only) written by `xpeft fit --method …`."""
    from .baselines import read_adapter  # torch: only for a baseline's file

    a = read_adapter(path)
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": "xpeft-adapter/1 (safetensors)",
        "profile": a.name,
        "method": a.method,
        "task": a.task,
        "labels": a.labels,
        "rank": a.rank,
        "sites": len(a.sites),
        "bank_hash": a.bank_hash,
        "trainable_parameters": a.trainable_parameters(),
        "tensor_bytes": {k: t.numel() * t.element_size() for k, t in a.tensors.items()},
        "meta": a.meta,
    }


def describe_file(path: Path) -> dict:
    """An .xpm (read and verified in full) or a baseline's .safetensors."""
    path = Path(path)
    if path.name.endswith(".safetensors"):
        return describe_adapter(path)
    dec = read_xpm_full(path)
    return {"file": str(path), "bytes": path.stat().st_size} | describe_decoded(dec)
