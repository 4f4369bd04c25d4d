"""Fit checkpoints: everything needed to continue a fit bit-for-bit, in one safetensors file.

Tensors: trainable parameters, AdamW moments, and the RNG states (data order at the start of
the epoch, Gumbel noise, dropout). Metadata (JSON strings): position, config, data fingerprint
and the loss history, and a SHA-256 `checksum` over all of it (a flipped bit is refused, never
resumed). No pickle. Written atomically, so a kill leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import safetensors_file
from .atomic import atomic_write_with
from .errors import IntegrityError, UsageError

FORMAT = "xpeft-fit-checkpoint/1"


def data_fingerprint(texts: list[str], pairs: list[str] | None, labels: list) -> str:
    h = hashlib.sha256()
    for i, t in enumerate(texts):
        h.update(json.dumps([t, pairs[i] if pairs else None, labels[i]]).encode())
    return h.hexdigest()


@dataclass
class Position:
    epoch: int  # 1-based epoch in progress
    batch: int  # batches of that epoch already done
    step: int  # optimizer steps done in total


def checksum(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata (but its own `checksum`) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _verified(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a checkpoint whose checksum holds."""
    meta, tensors = safetensors_file.read(path)
    if meta.get("format") != FORMAT:
        raise IntegrityError(f"{path}: not an xpeft fit checkpoint")
    if meta.get("checksum") != checksum(meta, tensors):
        raise IntegrityError(f"{path}: checkpoint checksum mismatch (the file was changed or damaged)")
    return meta, tensors


def save(
    path: Path,
    model,
    opt: torch.optim.Optimizer,
    pos: Position,
    epoch_order_state: torch.Tensor,
    gumbel: torch.Generator,
    config: dict,
    fingerprint: str,
    history: list[dict],
    identity: dict,
) -> None:
    """`identity` (name, n, labels, …) lets `xpeft pack` turn the checkpoint into a profile."""
    from safetensors.torch import save_file

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    for n, p in params.items():
        st = opt.state.get(p)
        if st:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                tensors[f"adam.{index[id(p)]}.{key}"] = torch.as_tensor(st[key]).detach().cpu().reshape(-1).contiguous()
    tensors["rng.order"] = epoch_order_state
    tensors["rng.gumbel"] = gumbel.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "format": FORMAT,
        "position": json.dumps(pos.__dict__),
        "config": json.dumps(config, sort_keys=True),
        "data": fingerprint,
        "history": json.dumps(history),
        "profile": json.dumps(
            identity
            | {"sites": [n.removesuffix(".logits_a") for n, _ in model.named_parameters() if n.endswith(".logits_a")]}
        ),
    }
    meta["checksum"] = checksum(meta, tensors)
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load(
    path: Path,
    model,
    opt: torch.optim.Optimizer,
    gumbel: torch.Generator,
    config: dict,
    fingerprint: str,
    batches: int,
    epochs: int,
) -> tuple[Position, torch.Tensor, list[dict]]:
    """Restore model, optimizer and RNGs; returns (position, data-order RNG state at epoch start, history).
    The position must lie inside this fit (`epochs` of `batches`) and agree with itself."""
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}")
    meta, tensors = _verified(path)
    try:
        pos = Position(**json.loads(meta["position"]))
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (pos.epoch, pos.batch, pos.step))
        ok = ok and 1 <= pos.epoch <= epochs and 0 <= pos.batch <= batches
        ok = ok and pos.step == (pos.epoch - 1) * batches + pos.batch
    except (KeyError, TypeError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise IntegrityError(f"{path}: checkpoint position {meta.get('position')!r} is not a step of this fit")
    if json.loads(meta["config"]) != json.loads(json.dumps(config, sort_keys=True)):
        raise UsageError(f"--resume: {path} was written by a fit with other options")
    if meta["data"] != fingerprint:
        raise UsageError(f"--resume: {path} was written for other training data")
    dev = next(model.parameters()).device
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(tensors[f"param.{n}"].to(dev))
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        if f"adam.{i}.step" in tensors:
            step = tensors[f"adam.{i}.step"].reshape(()).clone()
            opt.state[p] = {
                "step": step.to(dev) if opt.defaults.get("capturable") else step,  # as AdamW keeps it
                "exp_avg": tensors[f"adam.{i}.exp_avg"].reshape(p.shape).to(dev),
                "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"].reshape(p.shape).to(dev),
            }
    gumbel.set_state(tensors["rng.gumbel"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return pos, tensors["rng.order"], json.loads(meta["history"])


def profile_from_checkpoint(path: Path, k: int | None = None):
    """The profile as it stood at a checkpoint: soft logits, or hard top-k bits (k from the fit, or `k`).

    A checkpoint is untrusted input: whatever in it does not make a valid profile (metadata of the
    wrong type, tensors of the wrong shape or kind, a profile the .xpm writer refuses) is an
    IntegrityError naming the file."""
    from .errors import DataError, XpeftError
    from .xpm import encode

    try:
        profile = _profile_from_checkpoint(Path(path), k)
        encode(profile)  # everything the .xpm reader would check
        return profile
    except (DataError, IntegrityError) as exc:
        message = str(exc).removeprefix(f"{path}: ")
        raise IntegrityError(f"{path}: damaged fit checkpoint ({message})") from None
    except XpeftError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        IndexError,
        AttributeError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise IntegrityError(f"{path}: damaged fit checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})") from None


def _profile_from_checkpoint(path: Path, k: int | None):
    from .profile import Profile, stored_masks

    meta, tensors = _verified(path)
    if "profile" not in meta:
        raise IntegrityError(f"{path}: not an xpeft fit checkpoint")
    ident = json.loads(meta["profile"])
    try:
        la = torch.stack([tensors[f"param.{s}.logits_a"] for s in ident["sites"]]).float()
        lb = torch.stack([tensors[f"param.{s}.logits_b"] for s in ident["sites"]]).float()
        ln_w = [tensors.get(f"param.{s}.ln.weight") for s in ident["sites"]]
        ln_b = [tensors.get(f"param.{s}.ln.bias") for s in ident["sites"]]
        head_w, head_b = tensors["param.head.weight"], tensors["param.head.bias"]
    except KeyError as exc:
        raise IntegrityError(f"{path}: checkpoint lacks tensor {exc}") from None
    mask, kk = ident["mask"], k or ident["k"]
    if k is not None:  # --k turns a checkpoint of any kind into a hard profile
        mask = "hard"
    mask_a, mask_b, kk = stored_masks(mask, la, lb, kk)
    lnw, lnb = [t for t in ln_w if t is not None], [t for t in ln_b if t is not None]
    has_ln = len(lnw) == len(lnb) == len(ln_w)
    return Profile(
        name=ident["name"],
        mask_kind=mask,
        n=ident["n"],
        L=len(ident["sites"]),
        k=kk,
        bank_hash=ident["bank_hash"],
        mask_a=mask_a,
        mask_b=mask_b,
        ln_weight=torch.stack(lnw).numpy() if has_ln else None,
        ln_bias=torch.stack(lnb).numpy() if has_ln else None,
        head_weight=head_w.float().numpy(),
        head_bias=head_b.float().numpy(),
        task=ident["task"],
        labels=ident["labels"],
        meta={"packed_from": {"checkpoint_step": json.loads(meta["position"])["step"]}},
    )
